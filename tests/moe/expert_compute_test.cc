// The tiled BLAS expert kernels against hand-computed values and their naive twins.
#include "occult/moe/expert_compute.h"

#include <gtest/gtest.h>

#include <cmath>

#include "occult/core/error.h"
#include "occult/core/half.h"
#include "test_util.h"

namespace occult {
namespace {

using testing_util::random_values;
using testing_util::relative_error;

TEST(ExpertForward, HandComputedStageOneSum) {
  // H = F = 1, one local expert with W1 = W3 = W2 = 1; two rows; row 0 carries two
  // assignments of the same expert (weights 0.5 and 0.25), row 1 one (weight 1).
  // y(x) = silu(x) * x; out[0] = 0.75 * y(1), out[1] = y(2).
  std::vector<Assignment> received = {{0, 0, 0.5f}, {1, 0, 1.0f}, {0, 0, 0.25f}};
  ReceivePlan plan = build_receive_plan(std::vector<std::int64_t>{2}, std::vector<std::int64_t>{3}, received, 1);
  std::vector<float> one = {1.0f};
  ExpertWeightsView w{1, 1, 1, one, one, one};
  std::vector<float> x = {1.0f, 2.0f}, out(2), a1(3), a3(3);
  ExpertScratch scratch;
  expert_forward(plan, w, x, out, a1, a3, scratch);
  const double y1 = 1.0 / (1.0 + std::exp(-1.0)), y2 = 2.0 * 2.0 / (1.0 + std::exp(-2.0));
  EXPECT_NEAR(out[0], 0.75 * y1, 1e-6);
  EXPECT_NEAR(out[1], y2, 1e-6);
  EXPECT_EQ(a1, (std::vector<float>{1.0f, 2.0f, 1.0f}));  // expert-sorted, arrival order
}

struct Case {
  int num_local_experts, hidden, ffn;
  std::int64_t rows, assignments;
};

class ExpertKernels : public ::testing::TestWithParam<Case> {};

// A receive plan of c.assignments random (row, local expert, weight) arrivals from one source.
ReceivePlan random_plan(const Case& c, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<Assignment> received;
  for (std::int64_t a = 0; a < c.assignments; ++a) {
    received.push_back({static_cast<std::int32_t>(rng() % c.rows), static_cast<std::int32_t>(rng() % c.num_local_experts),
                        static_cast<float>(rng() % 1000) / 1000.0f});
  }
  return build_receive_plan(std::vector<std::int64_t>{c.rows}, std::vector<std::int64_t>{c.assignments}, received,
                            c.num_local_experts);
}

TEST_P(ExpertKernels, MatchNaiveTwinForwardAndBackward) {
  const Case c = GetParam();
  const ReceivePlan plan = random_plan(c, 7);
  const std::size_t FH = static_cast<std::size_t>(c.hidden) * c.ffn;
  auto w1 = random_values(c.num_local_experts * FH, 1, 0.5f);
  auto w3 = random_values(c.num_local_experts * FH, 2, 0.5f);
  auto w2 = random_values(c.num_local_experts * FH, 3, 0.5f);
  ExpertWeightsView w{c.num_local_experts, c.hidden, c.ffn, w1, w3, w2};
  auto x = random_values(c.rows * c.hidden, 4);
  auto dy = random_values(c.rows * c.hidden, 5);
  const std::size_t AF = c.assignments * c.ffn;
  std::vector<float> out(x.size()), ref_out(x.size()), a1(AF), a3(AF), ra1(AF), ra3(AF);
  ExpertScratch scratch;
  expert_forward(plan, w, x, out, a1, a3, scratch);
  reference_expert_forward(plan, w, x, ref_out, ra1, ra3);
  EXPECT_LT(relative_error(out, ref_out), 1e-5);
  EXPECT_LT(relative_error(a1, ra1), 1e-5);
  EXPECT_LT(relative_error(a3, ra3), 1e-5);

  std::vector<float> dx(x.size()), ref_dx(x.size()), dg(c.assignments), ref_dg(c.assignments);
  std::vector<float> g1(w1.size()), g3(w3.size()), g2(w2.size()), r1(w1.size()), r3(w3.size()), r2(w2.size());
  expert_backward(plan, w, x, dy, a1, a3, dx, dg, ExpertGradsView{g1, g3, g2}, scratch);
  reference_expert_backward(plan, w, x, dy, ra1, ra3, ref_dx, ref_dg, ExpertGradsView{r1, r3, r2});
  EXPECT_LT(relative_error(dx, ref_dx), 1e-5);
  EXPECT_LT(relative_error(dg, ref_dg), 1e-5);
  EXPECT_LT(relative_error(g1, r1), 1e-5);
  EXPECT_LT(relative_error(g3, r3), 1e-5);
  EXPECT_LT(relative_error(g2, r2), 1e-5);
}

// BF16-resident experts: the forward equals the naive twin run on the same values widened to F32
// (BF16 -> F32 is exact, so only the order of the F32 sums differs); backward refuses them.
TEST_P(ExpertKernels, Bf16WeightsMatchTwinOnWidenedValues) {
  const Case c = GetParam();
  const ReceivePlan plan = random_plan(c, 11);
  const std::size_t FH = static_cast<std::size_t>(c.hidden) * c.ffn;
  std::vector<std::vector<float>> wide(3);
  std::vector<std::vector<std::uint16_t>> narrow(3);
  for (int kind = 0; kind < 3; ++kind) {
    const auto values = random_values(c.num_local_experts * FH, 21 + kind, 0.5f);
    for (float v : values) {
      narrow[kind].push_back(float_to_bf16(v));
      wide[kind].push_back(bf16_to_float(narrow[kind].back()));
    }
  }
  ExpertWeightsView w32{c.num_local_experts, c.hidden, c.ffn, wide[0], wide[1], wide[2]};
  ExpertWeightsView w16{c.num_local_experts, c.hidden, c.ffn, {}, {}, {}, narrow[0], narrow[1], narrow[2]};
  ASSERT_EQ(w16.dtype(), WeightDType::kBF16);
  auto x = random_values(c.rows * c.hidden, 24);
  const std::size_t AF = c.assignments * c.ffn;
  std::vector<float> out(x.size()), ref_out(x.size()), a1(AF), a3(AF), ra1(AF), ra3(AF);
  ExpertScratch scratch;
  expert_forward(plan, w16, x, out, a1, a3, scratch);
  reference_expert_forward(plan, w32, x, ref_out, ra1, ra3);
  EXPECT_LT(relative_error(out, ref_out), 1e-5);
  EXPECT_LT(relative_error(a1, ra1), 1e-5);
  EXPECT_LT(relative_error(a3, ra3), 1e-5);
  std::vector<float> dx(x.size()), dg(c.assignments), g(c.num_local_experts * FH);
  EXPECT_THROW(expert_backward(plan, w16, x, x, a1, a3, dx, dg, ExpertGradsView{g, g, g}, scratch), Error);
}

INSTANTIATE_TEST_SUITE_P(Shapes, ExpertKernels,
                         ::testing::Values(Case{1, 4, 3, 5, 5}, Case{3, 8, 6, 20, 31},
                                           // more than one tile for one expert
                                           Case{2, 8, 4, 400, 2 * kExpertTileRows + 37},
                                           // an expert with no assignment
                                           Case{5, 6, 5, 3, 2}));

TEST(ExpertForward, RejectsMismatchedBuffers) {
  std::vector<Assignment> received = {{0, 0, 1.0f}};
  ReceivePlan plan = build_receive_plan(std::vector<std::int64_t>{1}, std::vector<std::int64_t>{1}, received, 1);
  std::vector<float> one = {1.0f}, two = {1.0f, 1.0f};
  ExpertScratch scratch;
  std::vector<float> x = {1.0f}, out(1), a1(1), a3(1);
  EXPECT_THROW(expert_forward(plan, ExpertWeightsView{1, 1, 1, two, one, one}, x, out, a1, a3, scratch), Error);
  std::vector<float> short_out;
  EXPECT_THROW(expert_forward(plan, ExpertWeightsView{1, 1, 1, one, one, one}, x, short_out, a1, a3, scratch), Error);
}

}  // namespace
}  // namespace occult
