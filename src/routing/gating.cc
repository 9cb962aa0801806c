#include "occult/routing/gating.h"

#include <cmath>
#include <cstddef>

#include "occult/core/error.h"

namespace occult {

namespace {

void check_config(const GatingConfig& config) {
  OCCULT_CHECK(config.num_experts >= 1, "gating: num_experts must be >= 1, got {}",
               config.num_experts);
  OCCULT_CHECK(config.top_k >= 1 && config.top_k <= config.num_experts,
               "gating: top_k must be in [1, num_experts={}], got {}", config.num_experts,
               config.top_k);
}

std::size_t checked_extent(std::int64_t num_tokens, int width, std::size_t actual, const char* what) {
  OCCULT_CHECK(num_tokens >= 0, "gating: num_tokens must be >= 0, got {}", num_tokens);
  const std::size_t expected = static_cast<std::size_t>(num_tokens) * static_cast<std::size_t>(width);
  OCCULT_CHECK(actual == expected, "gating: {} has {} elements, expected num_tokens * {} = {}", what,
               actual, width, expected);
  return expected;
}

// True when (key_a, a) ranks before (key_b, b): higher key first, ties to the lower id.
inline bool ranks_before(float key_a, int a, float key_b, int b) {
  return key_a > key_b || (key_a == key_b && a < b);
}

}  // namespace

void router_scores(std::span<const float> logits, std::int64_t num_tokens, const GatingConfig& config,
                   std::span<float> scores) {
  check_config(config);
  const int e = config.num_experts;
  checked_extent(num_tokens, e, logits.size(), "logits");
  checked_extent(num_tokens, e, scores.size(), "scores");
  for (std::int64_t t = 0; t < num_tokens; ++t) {
    const float* in = logits.data() + t * e;
    float* out = scores.data() + t * e;
    if (config.score_function == ScoreFunction::kSigmoid) {
      for (int i = 0; i < e; ++i) out[i] = 1.0f / (1.0f + std::exp(-in[i]));
      continue;
    }
    // Max-subtracted so that large logits cannot overflow exp(); the sum is accumulated in
    // expert order, which the reference twin repeats so both agree bit for bit.
    float max_logit = in[0];
    for (int i = 1; i < e; ++i) max_logit = in[i] > max_logit ? in[i] : max_logit;
    OCCULT_CHECK(std::isfinite(max_logit), "gating: token {} has a non-finite logit ({})", t,
                 max_logit);
    float sum = 0.0f;
    for (int i = 0; i < e; ++i) {
      out[i] = std::exp(in[i] - max_logit);
      sum += out[i];
    }
    OCCULT_CHECK(std::isfinite(sum), "gating: token {} has a NaN logit", t);
    const float inv = 1.0f / sum;
    for (int i = 0; i < e; ++i) out[i] *= inv;
  }
}

void select_topk(std::span<const float> scores, std::span<const float> selection_bias,
                 std::int64_t num_tokens, const GatingConfig& config, std::span<std::int32_t> ids,
                 std::span<float> weights) {
  check_config(config);
  const int e = config.num_experts;
  const int k = config.top_k;
  checked_extent(num_tokens, e, scores.size(), "scores");
  checked_extent(num_tokens, k, ids.size(), "ids");
  checked_extent(num_tokens, k, weights.size(), "weights");
  OCCULT_CHECK(selection_bias.empty() || selection_bias.size() == static_cast<std::size_t>(e),
               "gating: selection_bias has {} elements, expected 0 or num_experts={}",
               selection_bias.size(), e);
  const bool has_bias = !selection_bias.empty();
  const bool normalize = config.norm_topk_prob || config.score_function == ScoreFunction::kSigmoid;

  for (std::int64_t t = 0; t < num_tokens; ++t) {
    const float* s = scores.data() + t * e;
    std::int32_t* row_ids = ids.data() + t * k;
    float* row_w = weights.data() + t * k;
    // Partial selection: row_w holds the selection keys of the current best `filled` experts
    // in rank order (insertion sort), so no per-token buffer is needed; they are replaced by
    // the gate weights below. Experts arrive in ascending id, so an equal key never moves
    // ahead of an earlier one: ties go to the lower id.
    int filled = 0;
    for (int i = 0; i < e; ++i) {
      const float key = has_bias ? s[i] + selection_bias[i] : s[i];
      OCCULT_CHECK(key == key, "gating: token {} expert {} has a NaN score", t, i);
      if (filled == k && !ranks_before(key, i, row_w[k - 1], row_ids[k - 1])) continue;
      int pos = filled < k ? filled++ : k - 1;
      while (pos > 0 && ranks_before(key, i, row_w[pos - 1], row_ids[pos - 1])) {
        row_w[pos] = row_w[pos - 1];
        row_ids[pos] = row_ids[pos - 1];
        --pos;
      }
      row_w[pos] = key;
      row_ids[pos] = i;
    }
    // Gate weights come from the unbiased scores, summed in rank order.
    float sum = 0.0f;
    for (int j = 0; j < k; ++j) {
      row_w[j] = s[row_ids[j]];
      sum += row_w[j];
    }
    if (normalize) {
      OCCULT_CHECK(sum > 0.0f, "gating: token {} has zero total score over its top-{} experts", t, k);
      for (int j = 0; j < k; ++j) row_w[j] /= sum;
    }
  }
}

}  // namespace occult
