// The single-process reference MoE layer: hand-computed forward values and gradients checked
// by central finite differences (the reference is the oracle everything else is compared to).
#include "occult/moe/reference.h"

#include <gtest/gtest.h>

#include <cmath>

#include "occult/core/error.h"
#include "test_util.h"

namespace occult {
namespace {

using testing_util::random_values;

MoeLayerConfig tiny_config(bool norm) {
  MoeLayerConfig c;
  c.num_experts = 2;
  c.top_k = 1;
  c.hidden_size = 1;
  c.ffn_size = 1;
  c.norm_topk_prob = norm;
  return c;
}

TEST(ReferenceMoe, HandComputedForward) {
  for (bool norm : {false, true}) {
    MoeLayerConfig c = tiny_config(norm);
    ReferenceMoeWeights w = ReferenceMoeWeights::zeros(c);
    w.router = {1.0f, -1.0f};
    w.gate_proj = {1.0f, 0.0f};
    w.up_proj = {1.0f, 0.0f};
    w.down_proj = {2.0f, 0.0f};
    std::vector<float> x = {1.0f}, y(1);
    ReferenceMoeState s;
    reference_moe_forward(c, w, x, 1, {}, s, y);
    const double p0 = std::exp(1.0) / (std::exp(1.0) + std::exp(-1.0));
    const double y0 = 2.0 / (1.0 + std::exp(-1.0));  // W2 * silu(1) * 1
    EXPECT_EQ(s.topk_ids, (std::vector<std::int32_t>{0}));
    EXPECT_NEAR(s.topk_weights[0], norm ? 1.0 : p0, 1e-7);
    EXPECT_NEAR(y[0], (norm ? 1.0 : p0) * y0, 1e-6);
  }
}

TEST(ReferenceMoe, TopKTiesGoToTheLowerId) {
  MoeLayerConfig c = tiny_config(false);
  c.num_experts = 3;
  c.top_k = 2;
  ReferenceMoeState s;
  std::vector<float> logits = {0.5f, 1.0f, 1.0f};
  reference_route(c, logits, 1, {}, s);
  EXPECT_EQ(s.topk_ids, (std::vector<std::int32_t>{1, 2}));
}

struct GradCase {
  bool norm;
  ScoreFunction score;
  // Group-limited selection (2 groups of 2, 1 kept), output scaling and a selection bias.
  bool groups = false;
  GroupScore group_score = GroupScore::kMax;
  float scale = 1.0f;
  bool bias = false;
};

class ReferenceGradients : public ::testing::TestWithParam<GradCase> {};

// Loss = sum(y * r) + sum(probs * q): checks every gradient, including the extra
// router-probability gradient path, against central differences.
TEST_P(ReferenceGradients, MatchFiniteDifferences) {
  MoeLayerConfig c;
  c.num_experts = 4;
  c.top_k = 2;
  c.hidden_size = 3;
  c.ffn_size = 2;
  c.norm_topk_prob = GetParam().norm;
  c.score_function = GetParam().score;
  c.num_groups = GetParam().groups ? 2 : 1;
  c.group_score = GetParam().group_score;
  c.routed_scaling_factor = GetParam().scale;
  c.selection_bias = GetParam().bias;
  const std::int64_t T = 3;
  ReferenceMoeWeights w = ReferenceMoeWeights::random(c, 11, 0.8f);
  if (c.selection_bias) w.selection_bias = {0.3f, -0.2f, 0.1f, 0.0f};
  std::vector<float> x = random_values(T * c.hidden_size, 12);
  const std::vector<float> r = random_values(T * c.hidden_size, 13);
  const std::vector<float> q = random_values(T * c.num_experts, 14);
  auto loss = [&](const ReferenceMoeWeights& ww, const std::vector<float>& xx) {
    std::vector<float> y(xx.size());
    ReferenceMoeState s;
    reference_moe_forward(c, ww, xx, T, {}, s, y);
    double l = 0;
    for (std::size_t i = 0; i < y.size(); ++i) l += static_cast<double>(y[i]) * r[i];
    for (std::size_t i = 0; i < s.probs.size(); ++i) l += static_cast<double>(s.probs[i]) * q[i];
    return l;
  };
  ReferenceMoeState s;
  std::vector<float> y(x.size()), dx(x.size());
  reference_moe_forward(c, w, x, T, {}, s, y);
  ReferenceMoeWeights g = ReferenceMoeWeights::zeros(c);
  reference_moe_backward(c, w, s, x, r, q, dx, g);

  const float eps = 1e-2f;
  auto check = [&](std::vector<float>& param, const std::vector<float>& grad, const char* name) {
    for (std::size_t i = 0; i < param.size(); ++i) {
      const float saved = param[i];
      param[i] = saved + eps;
      const double up = loss(w, x);
      param[i] = saved - eps;
      const double down = loss(w, x);
      param[i] = saved;
      const double fd = (up - down) / (2 * eps);
      // Central differences of a smooth function: error O(eps^2) plus float rounding of y.
      EXPECT_NEAR(grad[i], fd, 2e-3 + 2e-3 * std::abs(fd)) << name << "[" << i << "]";
    }
  };
  check(w.router, g.router, "router");
  check(w.gate_proj, g.gate_proj, "gate_proj");
  check(w.up_proj, g.up_proj, "up_proj");
  check(w.down_proj, g.down_proj, "down_proj");
  check(x, dx, "x");
}

INSTANTIATE_TEST_SUITE_P(Gating, ReferenceGradients,
                         ::testing::Values(GradCase{false, ScoreFunction::kSoftmax},
                                           GradCase{true, ScoreFunction::kSoftmax},
                                           GradCase{true, ScoreFunction::kSigmoid},
                                           GradCase{false, ScoreFunction::kSoftmax, true, GroupScore::kMax, 1.5f},
                                           GradCase{true, ScoreFunction::kSigmoid, true, GroupScore::kTopTwoSum,
                                                    2.5f, true}));

TEST(ReferenceMoe, RejectsBadShapes) {
  MoeLayerConfig c = tiny_config(false);
  ReferenceMoeWeights w = ReferenceMoeWeights::zeros(c);
  std::vector<float> x = {1.0f, 2.0f}, y(2);
  ReferenceMoeState s;
  EXPECT_THROW(reference_moe_forward(c, w, x, 3, {}, s, y), Error);
  c.top_k = 3;
  EXPECT_THROW(reference_moe_forward(c, w, x, 2, {}, s, y), Error);
}

TEST(MoeInitValue, IsDeterministicAndInRange) {
  EXPECT_EQ(moe_init_value(1, 2, 3, 0.5f), moe_init_value(1, 2, 3, 0.5f));
  EXPECT_NE(moe_init_value(1, 2, 3, 0.5f), moe_init_value(1, 2, 4, 0.5f));
  for (int i = 0; i < 1000; ++i) {
    const float v = moe_init_value(9, 1, i, 0.5f);
    EXPECT_GE(v, -0.5f);
    EXPECT_LT(v, 0.5f);
  }
}

}  // namespace
}  // namespace occult
