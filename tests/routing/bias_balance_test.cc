#include "occult/routing/bias_balance.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "occult/core/error.h"
#include "occult/routing/gating.h"

namespace occult {
namespace {

// Three steps by hand: E = 4, rate 0.5. Step 1: loads 6 2 4 4, mean 4 -> signs -1 +1 0 0.
// Step 2: loads 5 3 4 4 -> same signs again. Step 3: loads 3 5 4 4 -> signs +1 -1 0 0.
TEST(SelectionBiasUpdate, HandComputedSteps) {
  std::vector<float> bias(4, 0.0f);
  const std::vector<std::vector<std::int64_t>> loads = {{6, 2, 4, 4}, {5, 3, 4, 4}, {3, 5, 4, 4}};
  const std::vector<std::vector<float>> expected = {
      {-0.5f, 0.5f, 0.0f, 0.0f}, {-1.0f, 1.0f, 0.0f, 0.0f}, {-0.5f, 0.5f, 0.0f, 0.0f}};
  for (std::size_t s = 0; s < loads.size(); ++s) {
    update_selection_bias(loads[s], 0.5f, bias);
    EXPECT_EQ(bias, expected[s]) << "step " << s + 1;
  }
}

// A mean that is not an integer (3 / 2 = 1.5): no expert is at the mean, both move.
TEST(SelectionBiasUpdate, FractionalMean) {
  std::vector<float> bias = {1.0f, -1.0f};
  const std::vector<std::int64_t> loads = {1, 2};
  update_selection_bias(loads, 0.25f, bias);
  EXPECT_EQ(bias, (std::vector<float>{1.25f, -1.25f}));
}

// Perfect balance and rate 0 leave the bias as it is; so does a step with no tokens.
TEST(SelectionBiasUpdate, BalancedOrZeroRateKeepsBias) {
  std::vector<float> bias = {0.5f, -0.25f, 0.0f};
  const std::vector<float> before = bias;
  const std::vector<std::int64_t> balanced = {7, 7, 7}, skewed = {9, 0, 12}, empty = {0, 0, 0};
  update_selection_bias(balanced, 1.0f, bias);
  EXPECT_EQ(bias, before);
  update_selection_bias(skewed, 0.0f, bias);
  EXPECT_EQ(bias, before);
  update_selection_bias(empty, 1.0f, bias);
  EXPECT_EQ(bias, before);
}

// The update moves the choice of select_topk: two experts with equal sigmoid scores (ties go to
// the lower id, so expert 0 takes every token); after one update expert 1 wins, and the gate
// weight (from the unbiased scores, normalised over k = 1) stays 1.
TEST(SelectionBiasUpdate, MovesTheSelection) {
  GatingConfig g;
  g.num_experts = 2;
  g.top_k = 1;
  g.score_function = ScoreFunction::kSigmoid;
  const std::vector<float> scores = {0.5f, 0.5f, 0.5f, 0.5f};  // two tokens
  std::vector<float> bias(2, 0.0f), weights(2);
  std::vector<std::int32_t> ids(2);
  select_topk(scores, bias, 2, g, ids, weights);
  ASSERT_EQ(ids, (std::vector<std::int32_t>{0, 0}));
  const std::vector<std::int64_t> loads = {2, 0};
  update_selection_bias(loads, 0.001f, bias);
  select_topk(scores, bias, 2, g, ids, weights);
  EXPECT_EQ(ids, (std::vector<std::int32_t>{1, 1}));
  EXPECT_EQ(weights, (std::vector<float>{1.0f, 1.0f}));
}

TEST(SelectionBiasUpdate, BadInputIsAnError) {
  std::vector<float> bias(2, 0.0f);
  const std::vector<std::int64_t> three = {1, 2, 3}, negative = {1, -1}, ok = {1, 2};
  EXPECT_THROW(update_selection_bias(three, 0.1f, bias), Error);
  EXPECT_THROW(update_selection_bias(negative, 0.1f, bias), Error);
  EXPECT_THROW(update_selection_bias(ok, -0.1f, bias), Error);
  EXPECT_THROW(update_selection_bias(ok, std::nanf(""), bias), Error);
}

}  // namespace
}  // namespace occult
