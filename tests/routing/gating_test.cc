#include "occult/routing/gating.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "occult/core/error.h"
#include "routing/reference.h"

namespace occult {
namespace {

GatingConfig softmax_config(int e, int k, bool norm) {
  return GatingConfig{e, k, ScoreFunction::kSoftmax, norm};
}

// Bitwise equality, so that -0.0f vs 0.0f or NaN differences are not hidden.
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(Gating, HandComputedSoftmaxTopk) {
  // logits ln(1..4): p = (1, 2, 3, 4) / 10; top-2 = experts 3, 2 with p 0.4, 0.3.
  const std::vector<float> logits = {std::log(1.0f), std::log(2.0f), std::log(3.0f), std::log(4.0f)};
  std::vector<float> p(4);
  router_scores(logits, 1, softmax_config(4, 2, false), p);
  // Tolerance: exp/log round-trips cost a few float ulps.
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(p[i], (i + 1) / 10.0f, 4e-7f) << i;

  std::vector<std::int32_t> ids(2);
  std::vector<float> w(2);
  select_topk(p, {}, 1, softmax_config(4, 2, false), ids, w);
  EXPECT_EQ(ids, (std::vector<std::int32_t>{3, 2}));
  EXPECT_EQ(w[0], p[3]);
  EXPECT_EQ(w[1], p[2]);

  select_topk(p, {}, 1, softmax_config(4, 2, true), ids, w);
  EXPECT_EQ(ids, (std::vector<std::int32_t>{3, 2}));
  EXPECT_NEAR(w[0], 4.0f / 7.0f, 4e-7f);
  EXPECT_NEAR(w[1], 3.0f / 7.0f, 4e-7f);
}

TEST(Gating, TiesGoToTheLowerIdExactly) {
  // Equal logits: p = 1/4 exactly (exp(0) = 1, sum 4); top-2 are experts 0 and 1.
  const std::vector<float> logits = {5, 5, 5, 5};
  std::vector<float> p(4);
  router_scores(logits, 1, softmax_config(4, 2, false), p);
  EXPECT_EQ(p, (std::vector<float>{0.25f, 0.25f, 0.25f, 0.25f}));
  std::vector<std::int32_t> ids(2);
  std::vector<float> w(2);
  select_topk(p, {}, 1, softmax_config(4, 2, true), ids, w);
  EXPECT_EQ(ids, (std::vector<std::int32_t>{0, 1}));
  EXPECT_EQ(w, (std::vector<float>{0.5f, 0.5f}));

  // Scores 0, 2, 2, 0, 1 (already probabilities or not, selection only compares): top-3 is
  // 1, 2 (tie, lower id first), then 4.
  const std::vector<float> s = {0, 2, 2, 0, 1};
  std::vector<std::int32_t> ids3(3);
  std::vector<float> w3(3);
  select_topk(s, {}, 1, softmax_config(5, 3, false), ids3, w3);
  EXPECT_EQ(ids3, (std::vector<std::int32_t>{1, 2, 4}));
  EXPECT_EQ(w3, (std::vector<float>{2, 2, 1}));
}

TEST(Gating, SigmoidBiasChoosesButDoesNotWeigh) {
  // DeepSeek-V3: selection on s + bias, weights s / sum over the selected.
  GatingConfig config{4, 2, ScoreFunction::kSigmoid, false};
  const std::vector<float> s = {0.5f, 0.25f, 0.125f, 0.0625f};
  const std::vector<float> bias = {0, 0, 1, 0};
  std::vector<std::int32_t> ids(2);
  std::vector<float> w(2);
  select_topk(s, bias, 1, config, ids, w);
  EXPECT_EQ(ids, (std::vector<std::int32_t>{2, 0}));
  // 0.125 / 0.625 and 0.5 / 0.625 are exact binary fractions: 0.2 and 0.8 rounded once.
  EXPECT_EQ(w[0], 0.125f / 0.625f);
  EXPECT_EQ(w[1], 0.5f / 0.625f);

  std::vector<float> scores(2);
  router_scores(std::vector<float>{0.0f, 0.0f}, 1, GatingConfig{2, 1, ScoreFunction::kSigmoid, false},
                scores);
  EXPECT_EQ(scores, (std::vector<float>{0.5f, 0.5f}));
}

TEST(Gating, LargeLogitsDoNotOverflow) {
  const std::vector<float> logits = {1000.0f, 999.0f, -1000.0f};
  std::vector<float> p(3);
  router_scores(logits, 1, softmax_config(3, 1, false), p);
  EXPECT_TRUE(std::isfinite(p[0]) && std::isfinite(p[1]));
  EXPECT_NEAR(p[0], 1.0 / (1.0 + std::exp(-1.0)), 1e-6);
  EXPECT_EQ(p[2], 0.0f);
}

TEST(Gating, MatchesReferenceTwinBitForBit) {
  std::mt19937 rng(1234);
  int cases = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const int e = 1 + static_cast<int>(rng() % 70);
    const int k = 1 + static_cast<int>(rng() % e);
    const std::int64_t t = 1 + rng() % 40;
    GatingConfig config{e, k, rng() % 2 ? ScoreFunction::kSoftmax : ScoreFunction::kSigmoid,
                        rng() % 2 == 0};
    // Half the trials draw logits from a few integers, so ties are frequent.
    const bool coarse = trial % 2 == 0;
    std::uniform_real_distribution<float> uniform(-6.0f, 6.0f);
    std::vector<float> logits(t * e);
    for (float& x : logits) x = coarse ? static_cast<float>(static_cast<int>(rng() % 5) - 2) : uniform(rng);
    std::vector<float> bias;
    if (rng() % 3 == 0) {
      bias.resize(e);
      for (float& b : bias) b = coarse ? static_cast<float>(rng() % 2) * 0.5f : uniform(rng) * 0.1f;
    }

    std::vector<float> fast_scores(t * e), ref_scores(t * e);
    router_scores(logits, t, config, fast_scores);
    reference::router_scores(logits, t, config, ref_scores);
    ASSERT_TRUE(same_bits(fast_scores, ref_scores)) << "trial " << trial;

    std::vector<std::int32_t> fast_ids(t * k), ref_ids(t * k);
    std::vector<float> fast_w(t * k), ref_w(t * k);
    select_topk(fast_scores, bias, t, config, fast_ids, fast_w);
    reference::select_topk(ref_scores, bias, t, config, ref_ids, ref_w);
    ASSERT_EQ(fast_ids, ref_ids) << "trial " << trial << " E=" << e << " k=" << k;
    ASSERT_TRUE(same_bits(fast_w, ref_w)) << "trial " << trial;
    ++cases;
  }
  EXPECT_EQ(cases, 400);
}

// Group-limited selection by hand: each case lists scores, bias and the expected choice.
TEST(Gating, GroupLimitedTopKByHand) {
  std::vector<std::int32_t> ids(2);
  std::vector<float> w(2);
  // DeepSeek-V2 group_limited_greedy: 3 groups of 2, group score = best score, 1 kept group.
  // Plain top-2 would be {1, 4}; the kept group {0, 1} gives {1, 0}; weights scaled by 2.
  GatingConfig v2{6, 2, ScoreFunction::kSoftmax, false, 3, 1, GroupScore::kMax, 2.0f};
  select_topk(std::vector<float>{0.1f, 0.3f, 0.05f, 0.05f, 0.28f, 0.22f}, {}, 1, v2, ids, w);
  EXPECT_EQ(ids, (std::vector<std::int32_t>{1, 0}));
  EXPECT_FLOAT_EQ(w[0], 0.6f);
  EXPECT_FLOAT_EQ(w[1], 0.2f);
  // Two kept groups of the same three: {0,1} and {4,5}: top-2 {1, 4}.
  v2.kept_groups = 2;
  select_topk(std::vector<float>{0.1f, 0.3f, 0.05f, 0.05f, 0.28f, 0.22f}, {}, 1, v2, ids, w);
  EXPECT_EQ(ids, (std::vector<std::int32_t>{1, 4}));

  // DeepSeek-V3 noaux_tc: 4 groups of 2 scored by the sum of their two best biased keys.
  // keys = [0.9, 0.1 | 0.6, 0.6 | 0.5, 0.65 | 0.2, 0.3]: sums 1.0, 1.2, 1.15, 0.5, so groups
  // 1 and 2 are kept and expert 0 (the best single key) is not chosen. Top-3 by key: 5, then
  // 2 and 3 tied at 0.6 (lower id first). Weights from the unbiased scores, normalised, x2.5.
  GatingConfig v3{8, 3, ScoreFunction::kSigmoid, true, 4, 2, GroupScore::kTopTwoSum, 2.5f};
  std::vector<std::int32_t> ids3(3);
  std::vector<float> w3(3);
  const std::vector<float> scores{0.9f, 0.1f, 0.6f, 0.6f, 0.5f, 0.45f, 0.2f, 0.3f};
  const std::vector<float> bias{0, 0, 0, 0, 0, 0.2f, 0, 0};
  select_topk(scores, bias, 1, v3, ids3, w3);
  EXPECT_EQ(ids3, (std::vector<std::int32_t>{5, 2, 3}));
  EXPECT_NEAR(w3[0], 0.45 / 1.65 * 2.5, 1e-6);
  EXPECT_NEAR(w3[1], 0.6 / 1.65 * 2.5, 1e-6);
  EXPECT_NEAR(w3[2], 0.6 / 1.65 * 2.5, 1e-6);
}

TEST(Gating, GroupTiesGoToTheLowerGroupAndId) {
  std::vector<std::int32_t> ids(2);
  std::vector<float> w(2);
  // Groups {0,1} and {2,3} tie at 0.4: group 0 is kept, so expert 2 (also 0.4) is not chosen.
  GatingConfig c{4, 2, ScoreFunction::kSoftmax, false, 2, 1, GroupScore::kMax, 1.0f};
  select_topk(std::vector<float>{0.2f, 0.4f, 0.4f, 0.1f}, {}, 1, c, ids, w);
  EXPECT_EQ(ids, (std::vector<std::int32_t>{1, 0}));
  // Group 0 scores 0.2 + 0.2 = 0.4 and group 1 0.3 + 0.1 = 0.4 by top-two sum: group 0 again.
  c.group_score = GroupScore::kTopTwoSum;
  select_topk(std::vector<float>{0.2f, 0.2f, 0.3f, 0.1f}, {}, 1, c, ids, w);
  EXPECT_EQ(ids, (std::vector<std::int32_t>{0, 1}));
}

TEST(Gating, ExpertsOutsideKeptGroupsCompeteWithKeyZero) {
  // keys = scores + bias = [-0.3, 0.1 | -0.05, -0.05]: group sums -0.2 and -0.1 keep group 1,
  // whose keys are negative, so the masked experts 0 and 1 (key 0) win, as with Hugging Face's
  // masked_fill(0.0). Weights: 0.2 / 0.5 and 0.3 / 0.5.
  GatingConfig c{4, 2, ScoreFunction::kSigmoid, true, 2, 1, GroupScore::kTopTwoSum, 1.0f};
  std::vector<std::int32_t> ids(2);
  std::vector<float> w(2);
  select_topk(std::vector<float>{0.2f, 0.3f, 0.25f, 0.25f}, std::vector<float>{-0.5f, -0.2f, -0.3f, -0.3f}, 1, c,
              ids, w);
  EXPECT_EQ(ids, (std::vector<std::int32_t>{0, 1}));
  EXPECT_FLOAT_EQ(w[0], 0.4f);
  EXPECT_FLOAT_EQ(w[1], 0.6f);
}

TEST(Gating, GroupLimitedMatchesReferenceTwinBitForBit) {
  std::mt19937 rng(99);
  int grouped = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const int groups = 1 + static_cast<int>(rng() % 6);
    const int size = 2 + static_cast<int>(rng() % 5);
    const int e = groups * size;
    const int kept = 1 + static_cast<int>(rng() % groups);
    const int k = 1 + static_cast<int>(rng() % (kept * size));
    const std::int64_t t = 1 + rng() % 30;
    GatingConfig config{e, k, rng() % 2 ? ScoreFunction::kSoftmax : ScoreFunction::kSigmoid, rng() % 2 == 0,
                        groups, kept, rng() % 2 ? GroupScore::kMax : GroupScore::kTopTwoSum,
                        rng() % 2 ? 1.0f : 2.5f};
    // Half the trials draw logits from a few integers, so ties (within and between groups) are frequent.
    const bool coarse = trial % 2 == 0;
    std::uniform_real_distribution<float> uniform(-6.0f, 6.0f);
    std::vector<float> logits(t * e);
    for (float& x : logits) x = coarse ? static_cast<float>(static_cast<int>(rng() % 3) - 1) : uniform(rng);
    std::vector<float> bias;
    if (rng() % 2 == 0) {
      bias.resize(e);
      for (float& b : bias) b = coarse ? static_cast<float>(static_cast<int>(rng() % 3) - 1) * 0.5f : uniform(rng) * 0.2f;
    }
    std::vector<float> scores(t * e);
    router_scores(logits, t, config, scores);
    std::vector<std::int32_t> fast_ids(t * k), ref_ids(t * k);
    std::vector<float> fast_w(t * k), ref_w(t * k);
    select_topk(scores, bias, t, config, fast_ids, fast_w);
    reference::select_topk(scores, bias, t, config, ref_ids, ref_w);
    ASSERT_EQ(fast_ids, ref_ids) << "trial " << trial << " E=" << e << " groups=" << groups << " kept=" << kept;
    ASSERT_TRUE(same_bits(fast_w, ref_w)) << "trial " << trial;
    grouped += groups > 1 && kept < groups ? 1 : 0;
  }
  EXPECT_GT(grouped, 100);
}

TEST(Gating, RejectsBadGroups) {
  std::vector<float> s(8), w(2);
  std::vector<std::int32_t> ids(2);
  auto config = [](int groups, int kept, int k, GroupScore score, float scale) {
    return GatingConfig{8, k, ScoreFunction::kSoftmax, false, groups, kept, score, scale};
  };
  EXPECT_THROW(select_topk(s, {}, 1, config(3, 1, 2, GroupScore::kMax, 1.0f), ids, w), Error);  // 3 does not divide 8
  EXPECT_THROW(select_topk(s, {}, 1, config(4, 5, 2, GroupScore::kMax, 1.0f), ids, w), Error);  // kept > groups
  EXPECT_THROW(select_topk(s, {}, 1, config(8, 1, 2, GroupScore::kMax, 1.0f), ids, w), Error);  // 1 expert < k
  EXPECT_THROW(select_topk(s, {}, 1, config(8, 2, 2, GroupScore::kTopTwoSum, 1.0f), ids, w), Error);  // size 1
  EXPECT_THROW(select_topk(s, {}, 1, config(1, 1, 2, GroupScore::kMax, 0.0f), ids, w), Error);  // scale 0
}

TEST(Gating, RejectsBadShapesAndConfig) {
  std::vector<float> s(8), w(2);
  std::vector<std::int32_t> ids(2);
  EXPECT_THROW(select_topk(s, {}, 1, softmax_config(8, 9, false), ids, w), Error);  // k > E
  EXPECT_THROW(select_topk(s, {}, 2, softmax_config(8, 2, false), ids, w), Error);  // T mismatch
  EXPECT_THROW(select_topk(s, std::vector<float>(3), 1, softmax_config(8, 2, false), ids, w), Error);
  EXPECT_THROW(router_scores(s, 1, softmax_config(0, 1, false), s), Error);
  s[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(select_topk(s, {}, 1, softmax_config(8, 2, false), ids, w), Error);
  try {
    select_topk(s, {}, 1, softmax_config(8, 2, false), ids, w);
  } catch (const Error& error) {
    EXPECT_NE(error.message().find("token 0 expert 3"), std::string::npos) << error.message();
  }
}

}  // namespace
}  // namespace occult
