// The tiled expert kernels (oneDNN and BLAS backends, F32 and BF16 compute) against
// hand-computed values and their naive twins.
#include "occult/moe/expert_compute.h"

#include <gtest/gtest.h>

#include <cmath>

#include "occult/core/error.h"
#include "occult/core/half.h"
#include "occult/moe/moe_layer.h"
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
  reference_expert_forward(plan, w, x, ref_out, ra1, ra3);
  std::vector<float> ref_dx(x.size()), ref_dg(c.assignments), r1(w1.size()), r3(w3.size()), r2(w2.size());
  reference_expert_backward(plan, w, x, dy, ra1, ra3, ref_dx, ref_dg, ExpertGradsView{r1, r3, r2});
  for (const GemmBackend backend : {GemmBackend::kOneDnn, GemmBackend::kBlas}) {
    SCOPED_TRACE(gemm_backend_name(backend));
    const GemmOptionsScope scope({backend, ComputeDType::kF32});
    ExpertScratch scratch;
    expert_forward(plan, w, x, out, a1, a3, scratch);
    EXPECT_LT(relative_error(out, ref_out), 1e-5);
    EXPECT_LT(relative_error(a1, ra1), 1e-5);
    EXPECT_LT(relative_error(a3, ra3), 1e-5);

    std::vector<float> dx(x.size()), dg(c.assignments);
    std::vector<float> g1(w1.size()), g3(w3.size()), g2(w2.size());
    expert_backward(plan, w, x, dy, a1, a3, dx, dg, ExpertGradsView{g1, g3, g2}, scratch);
    EXPECT_LT(relative_error(dx, ref_dx), 1e-5);
    EXPECT_LT(relative_error(dg, ref_dg), 1e-5);
    EXPECT_LT(relative_error(g1, r1), 1e-5);
    EXPECT_LT(relative_error(g3, r3), 1e-5);
    EXPECT_LT(relative_error(g2, r2), 1e-5);
  }
}

// The backward over ranges: each expert's assignments split in two at an arbitrary point (as
// the overlapped backward splits them by source), called half by half, give the whole call's
// results to F32 rounding (the tiles differ); a range outside an expert's assignments is refused.
TEST_P(ExpertKernels, BackwardRangesAddUpToTheWholeCall) {
  const Case c = GetParam();
  const ReceivePlan plan = random_plan(c, 19);
  const std::size_t FH = static_cast<std::size_t>(c.hidden) * c.ffn;
  const auto w1 = random_values(c.num_local_experts * FH, 51, 0.5f), w3 = random_values(c.num_local_experts * FH, 52, 0.5f);
  const auto w2 = random_values(c.num_local_experts * FH, 53, 0.5f);
  const ExpertWeightsView w{c.num_local_experts, c.hidden, c.ffn, w1, w3, w2};
  const auto x = random_values(c.rows * c.hidden, 54), dy = random_values(c.rows * c.hidden, 55);
  const std::size_t AF = c.assignments * c.ffn;
  const auto a1 = random_values(AF, 56), a3 = random_values(AF, 57);
  ExpertScratch scratch;
  std::vector<float> dx(x.size()), dg(c.assignments), g1(w1.size()), g3(w1.size()), g2(w1.size());
  expert_backward(plan, w, x, dy, a1, a3, dx, dg, ExpertGradsView{g1, g3, g2}, scratch);
  std::vector<std::int64_t> lo, mid, hi;
  for (int e = 0; e < c.num_local_experts; ++e) {
    lo.push_back(plan.expert_offsets[e]);
    hi.push_back(plan.expert_offsets[e + 1]);
    mid.push_back(lo.back() + (hi.back() - lo.back()) / 3);
  }
  std::vector<float> rdx(x.size(), 0.0f), rdg(c.assignments, -1.0f), r1(w1.size()), r3(w1.size()), r2(w1.size());
  int calls = 0;
  const ExpertProgress progress{[](void* n) { ++*static_cast<int*>(n); }, &calls};
  expert_backward_ranges(plan, w, mid, hi, x, dy, a1, a3, rdx, rdg, ExpertGradsView{r1, r3, r2}, scratch, progress);
  expert_backward_ranges(plan, w, lo, mid, x, dy, a1, a3, rdx, rdg, ExpertGradsView{r1, r3, r2}, scratch, progress);
  EXPECT_LT(relative_error(rdx, dx), 1e-6);
  EXPECT_LT(relative_error(rdg, dg), 1e-6);  // every assignment written (none left at -1)
  EXPECT_LT(relative_error(r1, g1), 1e-6);
  EXPECT_LT(relative_error(r3, g3), 1e-6);
  EXPECT_LT(relative_error(r2, g2), 1e-6);
  EXPECT_GT(calls, 0);
  if (c.assignments > 0 && plan.expert_offsets[1] > 0) {
    std::vector<std::int64_t> beyond = hi;
    beyond[0] = plan.expert_offsets[1] + 1;
    EXPECT_THROW(expert_backward_ranges(plan, w, lo, beyond, x, dy, a1, a3, rdx, rdg, ExpertGradsView{r1, r3, r2},
                                        scratch),
                 Error);
  }
}

float round_bf16(float v) { return bf16_to_float(float_to_bf16(v)); }

// BF16 compute: x and h = silu(a1) * a3 are rounded to BF16 before their GEMMs, products are
// exact, sums run in F32. The test's weights are BF16 values (so their rounding is exact) and
// the twin runs in double on x rounded to BF16, keeping h exact. Per output element c the
// difference is then bounded, with u = 2^-24, gamma_n = 1.01 n u, S1_j = sum_i |W1_ji x_i| (S3
// likewise) and |silu'| <= 1.1, by
//   sum_a g_a sum_j |W2_cj| (dh_j + 2^-8 (|h_j| + dh_j)) + gamma_{F+1} sum_a g_a sum_j |W2_cj| |h_j| (1 + 2^-7)
// where dh_j = 1.1 gamma_H S1_j |a3_j| + |silu(a1_j)| gamma_H S3_j + (gamma_H S1_j)(gamma_H S3_j)
// bounds the F32 error of h before rounding (a1, a3 carry gamma_H times their S) and 2^-8 is
// BF16's unit roundoff (8 significant bits, round to nearest); the last term is the F32
// accumulation of the W2 product and of the stage-1 sum (k <= F terms).
TEST_P(ExpertKernels, Bf16ComputeWithinRoundingBound) {
  if (!cpu_has_bf16_compute()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  const Case c = GetParam();
  const ReceivePlan plan = random_plan(c, 13);
  const int H = c.hidden, F = c.ffn;
  const std::size_t FH = static_cast<std::size_t>(H) * F;
  std::vector<std::vector<float>> wide(3);
  std::vector<std::vector<std::uint16_t>> narrow(3);
  for (int kind = 0; kind < 3; ++kind) {
    for (float v : random_values(c.num_local_experts * FH, 31 + kind, 0.5f)) {
      narrow[kind].push_back(float_to_bf16(v));
      wide[kind].push_back(bf16_to_float(narrow[kind].back()));
    }
  }
  const auto x = random_values(c.rows * H, 34);
  // The double twin with the bound above.
  std::vector<double> want(x.size(), 0.0), bound(x.size(), 0.0);
  const double gH = 1.01 * H * 0x1p-24, gF = 1.01 * (F + 1) * 0x1p-24, b16 = 0x1p-8;
  for (int e = 0; e < c.num_local_experts; ++e) {
    for (std::int64_t a = plan.expert_offsets[e]; a < plan.expert_offsets[e + 1]; ++a) {
      const std::int64_t row = plan.sorted_row[a];
      const double g = plan.sorted_weight[a];
      std::vector<double> h(F), dh(F);
      for (int j = 0; j < F; ++j) {
        double a1 = 0, a3 = 0, s1 = 0, s3 = 0;
        for (int i = 0; i < H; ++i) {
          const double xi = round_bf16(x[row * H + i]);
          const double w1 = wide[0][e * FH + j * H + i], w3 = wide[1][e * FH + j * H + i];
          a1 += w1 * xi;
          a3 += w3 * xi;
          s1 += std::abs(w1 * xi);
          s3 += std::abs(w3 * xi);
        }
        const double silu = a1 / (1.0 + std::exp(-a1));
        h[j] = silu * a3;
        dh[j] = 1.1 * gH * s1 * std::abs(a3) + std::abs(silu) * gH * s3 + gH * s1 * gH * s3;
      }
      for (int col = 0; col < H; ++col) {
        double y = 0, err = 0, mag = 0;
        for (int j = 0; j < F; ++j) {
          const double w2 = std::abs(wide[2][e * FH + static_cast<std::size_t>(col) * F + j]);
          y += wide[2][e * FH + static_cast<std::size_t>(col) * F + j] * h[j];
          err += w2 * (dh[j] + b16 * (std::abs(h[j]) + dh[j]));
          mag += w2 * std::abs(h[j]);
        }
        want[row * H + col] += g * y;
        bound[row * H + col] += g * (err + gF * mag * (1.0 + 2 * b16));
      }
    }
  }
  for (const GemmBackend backend : {GemmBackend::kOneDnn, GemmBackend::kBlas}) {
    for (int held_bf16 = 0; held_bf16 < 2; ++held_bf16) {
      SCOPED_TRACE(::testing::Message() << gemm_backend_name(backend) << (held_bf16 ? " bf16" : " f32") << " weights");
      const ExpertWeightsView w = held_bf16 ? ExpertWeightsView{c.num_local_experts, H, F, {}, {}, {}, narrow[0],
                                                                narrow[1], narrow[2]}
                                            : ExpertWeightsView{c.num_local_experts, H, F, wide[0], wide[1], wide[2]};
      const std::size_t AF = c.assignments * F;
      std::vector<float> out(x.size()), a1(AF), a3(AF);
      const GemmOptionsScope scope({backend, ComputeDType::kBF16});
      ExpertScratch scratch;
      expert_forward(plan, w, x, out, a1, a3, scratch);
      for (std::size_t i = 0; i < out.size(); ++i) {
        ASSERT_NEAR(out[i], want[i], bound[i]) << "element " << i;
      }
    }
  }
}

// A value the device computes and the radius around the exact value it is guaranteed to lie in.
struct Bounded {
  double value = 0, radius = 0;
  double magnitude() const { return std::abs(value) + radius; }
};

// BF16's unit roundoff (8 significant bits, round to nearest) and F32's.
constexpr double kBf16Unit = 0x1p-8, kF32Unit = 0x1p-24;

// The operand a GEMM multiplies after rounding b to BF16: |fl16(p) - v| <= |p - v| + u16 |p|.
Bounded round16(Bounded b) { return {b.value, b.radius + kBf16Unit * b.magnitude()}; }

// A few F32 operations on a value (each rounds to within u32 of its magnitude).
Bounded f32_ops(Bounded b, int ops) { return {b.value, b.radius + 1.01 * ops * kF32Unit * b.magnitude()}; }

// sum_i a_i b_i over operands within their radii, summed in F32 (n terms plus `extra` further
// additions into the same accumulator): each product is off by at most
// (|a|+ra)(|b|+rb) - |a||b|, and an n-term F32 sum by gamma_n times the sum of magnitudes.
class DotBound {
 public:
  void add(Bounded a, Bounded b) {
    value_ += a.value * b.value;
    radius_ += a.magnitude() * b.magnitude() - std::abs(a.value * b.value);
    magnitude_ += a.magnitude() * b.magnitude();
    ++terms_;
  }
  Bounded result(int extra = 0) const {
    return {value_, radius_ + 1.01 * (terms_ + extra) * kF32Unit * magnitude_};
  }

 private:
  double value_ = 0, radius_ = 0, magnitude_ = 0;
  int terms_ = 0;
};

// BF16 compute in the backward (mixed-precision training): each GEMM multiplies its operands
// rounded to BF16 (dy, g*dy, h, da1, da3, x and the F32 master weights) and accumulates in F32.
// The twin follows the same data flow in double from the exact F32 inputs and carries, for every
// intermediate, the radius the device's value must lie within: rounding adds u16 of the operand's
// magnitude, products and F32 sums add what DotBound says, and the elementwise SwiGLU backward
// is allowed a deliberately generous 64 u32 (1 + |a1|)^2 of its magnitude (a few F32 operations,
// expf and the 1 - s cancellation; 1e-5 of a BF16 rounding). Every gradient must lie within
// its radius, and away from the F32 result by more than F32 noise (the products really ran in
// BF16).
TEST_P(ExpertKernels, Bf16ComputeBackwardWithinRoundingBound) {
  if (!cpu_has_bf16_compute()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  const Case c = GetParam();
  const ReceivePlan plan = random_plan(c, 17);
  const int H = c.hidden, F = c.ffn, L = c.num_local_experts;
  const std::size_t FH = static_cast<std::size_t>(H) * F;
  // Weights that are BF16 values, so the F32 master weights round exactly and stay F32 here.
  std::vector<std::vector<float>> wt(3);
  for (int kind = 0; kind < 3; ++kind) {
    for (float v : random_values(L * FH, 41 + kind, 0.5f)) wt[kind].push_back(round_bf16(v));
  }
  const ExpertWeightsView w{L, H, F, wt[0], wt[1], wt[2]};
  const auto x = random_values(c.rows * H, 44), dy = random_values(c.rows * H, 45);
  const std::size_t AF = c.assignments * F;
  const auto a1 = random_values(AF, 46, 2.0f), a3 = random_values(AF, 47, 2.0f);

  const std::size_t R = c.rows * H;
  std::vector<Bounded> want_dx(R), want_dg(c.assignments), want_w1(L * FH), want_w3(L * FH), want_w2(L * FH);
  std::vector<DotBound> dx_sum(R);
  std::vector<int> row_terms(c.rows, 0);
  std::vector<DotBound> dw1(L * FH), dw3(L * FH), dw2(L * FH);
  auto exact = [](double v) { return Bounded{v, 0.0}; };
  for (int e = 0; e < L; ++e) {
    const std::size_t base = e * FH;
    for (std::int64_t a = plan.expert_offsets[e]; a < plan.expert_offsets[e + 1]; ++a) {
      const std::int64_t row = plan.sorted_row[a];
      const double g = plan.sorted_weight[a];
      std::vector<Bounded> da1(F), da3(F), h(F);
      DotBound dg;
      for (int j = 0; j < F; ++j) {
        DotBound u;  // dy W2 over H terms
        for (int col = 0; col < H; ++col) {
          u.add(round16(exact(dy[row * H + col])), exact(wt[2][base + static_cast<std::size_t>(col) * F + j]));
        }
        const Bounded uj = u.result();
        const double x1 = a1[a * F + j], x3 = a3[a * F + j];
        const double s = 1.0 / (1.0 + std::exp(-x1)), silu = x1 * s, dsilu = s * (1.0 + x1 * (1.0 - s));
        const int generous = static_cast<int>(64 * (1 + std::abs(x1)) * (1 + std::abs(x1)));
        h[j] = f32_ops(exact(silu * x3), generous);
        dg.add(uj, h[j]);
        // da3 = g u silu(a1), da1 = g u a3 silu'(a1): the F32 radius of u scaled, then the F32 ops.
        da3[j] = f32_ops({g * uj.value * silu, g * uj.radius * std::abs(silu)}, generous);
        da1[j] = f32_ops({g * uj.value * x3 * dsilu, g * uj.radius * std::abs(x3 * dsilu)}, generous);
      }
      want_dg[a] = dg.result();  // summed in double on the device: the F32 sum bound is generous
      const Bounded gdy_scale = exact(g);
      for (int col = 0; col < H; ++col) {
        const Bounded gdy = round16(f32_ops({gdy_scale.value * dy[row * H + col], 0.0}, 1));
        const Bounded xc = round16(exact(x[row * H + col]));
        DotBound& out = dx_sum[row * H + col];
        for (int j = 0; j < F; ++j) {
          dw2[base + static_cast<std::size_t>(col) * F + j].add(gdy, round16(h[j]));
          dw1[base + static_cast<std::size_t>(j) * H + col].add(round16(da1[j]), xc);
          dw3[base + static_cast<std::size_t>(j) * H + col].add(round16(da3[j]), xc);
          out.add(round16(da1[j]), exact(wt[0][base + static_cast<std::size_t>(j) * H + col]));
          out.add(round16(da3[j]), exact(wt[1][base + static_cast<std::size_t>(j) * H + col]));
        }
      }
      ++row_terms[row];
    }
  }
  // Accumulations into the gradients add once more per token tile, and each row of dx is the
  // F32 sum of its assignments' tiles (at most k per row).
  const int tiles = static_cast<int>(c.assignments / kExpertTileRows) + 1;
  for (std::size_t i = 0; i < R; ++i) want_dx[i] = dx_sum[i].result(row_terms[i / H]);
  for (std::size_t i = 0; i < L * FH; ++i) {
    want_w1[i] = dw1[i].result(tiles);
    want_w3[i] = dw3[i].result(tiles);
    want_w2[i] = dw2[i].result(tiles);
  }

  // The F32 result, to show that BF16 really ran.
  std::vector<float> f32_dx(R), f32_dg(c.assignments), f1(L * FH), f3(L * FH), f2(L * FH);
  ExpertScratch scratch;
  {
    const GemmOptionsScope scope({GemmBackend::kOneDnn, ComputeDType::kF32});
    expert_backward(plan, w, x, dy, a1, a3, f32_dx, f32_dg, ExpertGradsView{f1, f3, f2}, scratch);
  }
  for (const GemmBackend backend : {GemmBackend::kOneDnn, GemmBackend::kBlas}) {
    SCOPED_TRACE(gemm_backend_name(backend));
    const GemmOptionsScope scope({backend, ComputeDType::kBF16});
    std::vector<float> dx(R), dg(c.assignments), g1(L * FH), g3(L * FH), g2(L * FH);
    expert_backward(plan, w, x, dy, a1, a3, dx, dg, ExpertGradsView{g1, g3, g2}, scratch);
    auto check = [](std::span<const float> got, const std::vector<Bounded>& want, const char* what) {
      for (std::size_t i = 0; i < got.size(); ++i) {
        ASSERT_NEAR(got[i], want[i].value, want[i].radius) << what << " element " << i;
      }
    };
    check(dx, want_dx, "dx");
    check(dg, want_dg, "gate weight gradient");
    check(g1, want_w1, "gate_proj gradient");
    check(g3, want_w3, "up_proj gradient");
    check(g2, want_w2, "down_proj gradient");
    if (c.hidden * c.ffn >= 24) {  // enough elements that some rounding must show
      EXPECT_GT(relative_error(dx, f32_dx), 1e-4);
      EXPECT_GT(relative_error(g1, f1), 1e-4);
      EXPECT_GT(relative_error(g2, f2), 1e-4);
    }
  }
}

// BF16-resident experts: the forward equals the naive twin run on the same values widened to F32
// (BF16 -> F32 is exact, so only the order of the F32 sums differs), and so does the backward,
// which the layer runs on its per-step BF16 rounding of F32 master weights.
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
  const auto dy = random_values(x.size(), 25);
  std::vector<float> dx(x.size()), dg(c.assignments), ref_dx(x.size()), ref_dg(c.assignments);
  std::vector<std::vector<float>> g(3, std::vector<float>(c.num_local_experts * FH)), ref_g = g;
  expert_backward(plan, w16, x, dy, a1, a3, dx, dg, ExpertGradsView{g[0], g[1], g[2]}, scratch);
  reference_expert_backward(plan, w32, x, dy, ra1, ra3, ref_dx, ref_dg, ExpertGradsView{ref_g[0], ref_g[1], ref_g[2]});
  EXPECT_LT(relative_error(dx, ref_dx), 1e-5);
  EXPECT_LT(relative_error(dg, ref_dg), 1e-5);
  for (int kind = 0; kind < 3; ++kind) EXPECT_LT(relative_error(g[kind], ref_g[kind]), 1e-5) << "kind " << kind;
  std::vector<float> short_grad(c.num_local_experts * FH - 1);
  EXPECT_THROW(expert_backward(plan, w16, x, dy, a1, a3, dx, dg, ExpertGradsView{short_grad, g[1], g[2]}, scratch),
               Error);
}

INSTANTIATE_TEST_SUITE_P(Shapes, ExpertKernels,
                         ::testing::Values(Case{1, 4, 3, 5, 5}, Case{3, 8, 6, 20, 31},
                                           // more than one tile for one expert
                                           Case{2, 8, 4, 400, 2 * kExpertTileRows + 37},
                                           // an expert with no assignment
                                           Case{5, 6, 5, 3, 2}));

// BF16 compute trains (F32 master weights); BF16-held weights do not, and BF16 compute needs a
// CPU that has it.
TEST(MoeLayerConfigGemm, Bf16ComputeTrainsButBf16WeightsDoNot) {
  MoeLayerConfig c;
  c.num_experts = 4;
  c.top_k = 2;
  c.hidden_size = 8;
  c.ffn_size = 4;
  c.gemm = {GemmBackend::kOneDnn, ComputeDType::kBF16};
  c.with_grads = true;
  if (cpu_has_bf16_compute()) {
    EXPECT_NO_THROW(validate_moe_layer_config(c));
  } else {
    EXPECT_THROW(validate_moe_layer_config(c), Error);
  }
  c.gemm = {GemmBackend::kBlas, ComputeDType::kF32};
  EXPECT_NO_THROW(validate_moe_layer_config(c));
  c.expert_dtype = WeightDType::kBF16;
  try {
    validate_moe_layer_config(c);
    FAIL() << "BF16 expert weights accepted for training";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("BF16 expert weights are for inference"), std::string::npos) << e.what();
  }
}

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
