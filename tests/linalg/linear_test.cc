// linear_forward over F32 and BF16 weights against its double reference twin and a hand-computed
// case; shapes cover one row, odd sizes and several widening panels.
#include "occult/linalg/linear.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "occult/core/half.h"

namespace occult {
namespace {

TEST(LinearTest, HandComputedBf16) {
  // W [2, 3] = [[1.5, -2, 0.25], [0, 3, -0.5]] (all exact in BF16); x [1, 3] = [2, 1, 4].
  const std::vector<float> wf = {1.5f, -2.0f, 0.25f, 0.0f, 3.0f, -0.5f};
  std::vector<std::uint16_t> w;
  for (float v : wf) w.push_back(float_to_bf16(v));
  const std::vector<float> x = {2.0f, 1.0f, 4.0f};
  std::vector<float> out(2, 10.0f);
  linear_forward(out.data(), x.data(), WeightRef::bf16(w.data()), 1, 3, 2);
  EXPECT_EQ(out[0], 2.0f);  // 3 - 2 + 1
  EXPECT_EQ(out[1], 1.0f);  // 0 + 3 - 2
  linear_forward(out.data(), x.data(), WeightRef::bf16(w.data()), 1, 3, 2, 1.0f);
  EXPECT_EQ(out[0], 4.0f);
  EXPECT_EQ(out[1], 2.0f);
}

struct Shape {
  std::int64_t n;
  int ic, oc;
};

class LinearShapes : public ::testing::TestWithParam<Shape> {};

TEST_P(LinearShapes, MatchesReferenceTwin) {
  const Shape s = GetParam();
  std::mt19937 rng(static_cast<unsigned>(s.n * 131 + s.ic * 7 + s.oc));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x(static_cast<std::size_t>(s.n * s.ic)), wf(static_cast<std::size_t>(s.oc) * s.ic);
  for (auto& v : x) v = u(rng);
  for (auto& v : wf) v = u(rng);
  std::vector<std::uint16_t> wb(wf.size());
  for (std::size_t i = 0; i < wf.size(); ++i) wb[i] = float_to_bf16(wf[i]);
  std::vector<float> init(static_cast<std::size_t>(s.n * s.oc));
  for (auto& v : init) v = u(rng);
  // Each output is a sum of IC products of magnitude <= 1: F32 summation error is bounded by
  // about IC * 2^-24 * sum|x w| <= IC^2 * 6e-8; use that plus a small absolute floor.
  const double tol = 1e-6 + static_cast<double>(s.ic) * s.ic * 6e-8;
  for (float beta : {0.0f, 1.0f}) {
    for (WeightRef w : {WeightRef(wf.data()), WeightRef::bf16(wb.data())}) {
      std::vector<float> got = init, want = init;
      linear_forward(got.data(), x.data(), w, s.n, s.ic, s.oc, beta);
      reference_linear_forward(want.data(), x.data(), w, s.n, s.ic, s.oc, beta);
      for (std::size_t i = 0; i < got.size(); ++i) {
        ASSERT_NEAR(got[i], want[i], tol) << "element " << i << " dtype " << weight_dtype_name(w.dtype())
                                          << " beta " << beta;
      }
    }
  }
}

// 1100 columns give panels of 119 rows, so 300 output rows span three panels (the last partial).
INSTANTIATE_TEST_SUITE_P(Shapes, LinearShapes,
                         ::testing::Values(Shape{1, 3, 5}, Shape{7, 37, 130}, Shape{3, 1100, 300},
                                           Shape{257, 64, 33}, Shape{0, 8, 8}));

TEST(LinearTest, GatherRowsWidensBf16) {
  const std::vector<float> wf = {1.0f, 2.0f, -3.0f, 0.5f, 7.0f, -8.0f};  // [3, 2]
  std::vector<std::uint16_t> wb;
  for (float v : wf) wb.push_back(float_to_bf16(v));
  const std::vector<std::int32_t> ids = {2, 0, 2};
  std::vector<float> a(6), b(6);
  gather_rows(a.data(), WeightRef(wf.data()), ids.data(), 3, 2);
  gather_rows(b.data(), WeightRef::bf16(wb.data()), ids.data(), 3, 2);
  const std::vector<float> want = {7.0f, -8.0f, 1.0f, 2.0f, 7.0f, -8.0f};
  EXPECT_EQ(a, want);
  EXPECT_EQ(b, want);
}

TEST(LinearTest, Bf16HasNoF32View) {
  const std::uint16_t w[1] = {0x3f80};
  EXPECT_THROW((void)WeightRef::bf16(w).f32("lm_head.weight"), std::exception);
}

}  // namespace
}  // namespace occult
