#include "occult/routing/gating.h"

#include <cmath>
#include <cstddef>
#include <array>

#include "occult/core/error.h"

namespace occult {

namespace {

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

void validate_gating_config(const GatingConfig& config) {
  OCCULT_CHECK(config.num_experts >= 1, "gating: num_experts must be >= 1, got {}",
               config.num_experts);
  OCCULT_CHECK(config.top_k >= 1 && config.top_k <= config.num_experts,
               "gating: top_k must be in [1, num_experts={}], got {}", config.num_experts,
               config.top_k);
  OCCULT_CHECK(config.num_groups >= 1 && config.num_experts % config.num_groups == 0,
               "gating: the number of expert groups ({}) must be >= 1 and divide num_experts={}",
               config.num_groups, config.num_experts);
  OCCULT_CHECK(config.num_groups <= kMaxExpertGroups, "gating: at most {} expert groups are supported, got {}",
               kMaxExpertGroups, config.num_groups);
  OCCULT_CHECK(config.kept_groups >= 1 && config.kept_groups <= config.num_groups,
               "gating: the kept groups per token ({}) must be in [1, number of groups={}]",
               config.kept_groups, config.num_groups);
  const int group_size = config.num_experts / config.num_groups;
  OCCULT_CHECK(config.num_groups == 1 || config.kept_groups * group_size >= config.top_k,
               "gating: {} kept groups of {} experts hold fewer than top_k={} experts",
               config.kept_groups, group_size, config.top_k);
  OCCULT_CHECK(config.num_groups == 1 || config.group_score != GroupScore::kTopTwoSum || group_size >= 2,
               "gating: scoring a group by its two best experts needs groups of >= 2 experts, got {}",
               group_size);
  OCCULT_CHECK(std::isfinite(config.routed_scaling_factor) && config.routed_scaling_factor > 0.0f,
               "gating: the routed scaling factor must be finite and > 0, got {}",
               config.routed_scaling_factor);
}

void router_scores(std::span<const float> logits, std::int64_t num_tokens, const GatingConfig& config,
                   std::span<float> scores) {
  validate_gating_config(config);
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
  validate_gating_config(config);
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
  const int num_groups = config.num_groups;
  const int group_size = e / num_groups;
  const bool grouped = num_groups > 1;
  // Per token: the group scores, then 1 for each kept group (on the stack: the MoE layer's steady
  // state allocates nothing).
  std::array<float, kMaxExpertGroups> group_scores{};
  std::array<char, kMaxExpertGroups> kept{};

  for (std::int64_t t = 0; t < num_tokens; ++t) {
    const float* s = scores.data() + t * e;
    std::int32_t* row_ids = ids.data() + t * k;
    float* row_w = weights.data() + t * k;
    auto biased = [&](int i) {
      const float key = has_bias ? s[i] + selection_bias[i] : s[i];
      OCCULT_CHECK(key == key, "gating: token {} expert {} has a NaN score", t, i);
      return key;
    };
    if (grouped) {
      for (int g = 0; g < num_groups; ++g) {
        float best = biased(g * group_size), second = 0.0f;
        bool has_second = false;
        for (int i = g * group_size + 1; i < (g + 1) * group_size; ++i) {
          const float key = biased(i);
          if (key > best) {
            second = best;
            best = key;
          } else if (!has_second || key > second) {
            second = key;
          }
          has_second = true;
        }
        group_scores[g] = config.group_score == GroupScore::kMax ? best : best + second;
      }
      // Keep the kept_groups best groups: a group is kept when fewer than kept_groups groups
      // rank before it (higher score, or equal score and a lower id).
      for (int g = 0; g < num_groups; ++g) {
        int before = 0;
        for (int h = 0; h < num_groups; ++h) before += ranks_before(group_scores[h], h, group_scores[g], g) ? 1 : 0;
        kept[g] = before < config.kept_groups ? 1 : 0;
      }
    }
    // Partial selection: row_w holds the selection keys of the current best `filled` experts
    // in rank order (insertion sort), so no per-token buffer is needed; they are replaced by
    // the gate weights below. Experts arrive in ascending id, so an equal key never moves
    // ahead of an earlier one: ties go to the lower id.
    int filled = 0;
    for (int i = 0; i < e; ++i) {
      const float key = biased(i);
      const float masked = grouped && kept[i / group_size] == 0 ? 0.0f : key;
      if (filled == k && !ranks_before(masked, i, row_w[k - 1], row_ids[k - 1])) continue;
      int pos = filled < k ? filled++ : k - 1;
      while (pos > 0 && ranks_before(masked, i, row_w[pos - 1], row_ids[pos - 1])) {
        row_w[pos] = row_w[pos - 1];
        row_ids[pos] = row_ids[pos - 1];
        --pos;
      }
      row_w[pos] = masked;
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
    if (config.routed_scaling_factor != 1.0f) {
      for (int j = 0; j < k; ++j) row_w[j] *= config.routed_scaling_factor;
    }
  }
}

void gating_backward(std::span<const float> scores, std::span<const std::int32_t> weight_sources,
                     std::span<const float> d_weights, std::span<const float> d_scores, std::int64_t num_tokens,
                     const GatingConfig& config, std::span<float> d_logits, std::span<double> scratch) {
  const int E = config.num_experts, k = config.top_k;
  const std::int64_t T = num_tokens;
  OCCULT_CHECK(static_cast<std::int64_t>(scores.size()) == T * E && static_cast<std::int64_t>(d_logits.size()) == T * E &&
                   static_cast<std::int64_t>(weight_sources.size()) == T * k &&
                   static_cast<std::int64_t>(d_weights.size()) == T * k &&
                   (d_scores.empty() || static_cast<std::int64_t>(d_scores.size()) == T * E) &&
                   static_cast<int>(scratch.size()) >= E,
               "gating backward: sizes disagree with T = {}, E = {}, k = {}", T, E, k);
  // g = scale * (normalised) score: the scale multiplies the gradient reaching the scores.
  const double scale = config.routed_scaling_factor;
  const bool normalise = config.norm_topk_prob || config.score_function == ScoreFunction::kSigmoid;
  std::span<double> dp = scratch.first(E);
  for (std::int64_t t = 0; t < T; ++t) {
    const float* p = scores.data() + t * E;
    const float* dg = d_weights.data() + t * k;
    for (int e = 0; e < E; ++e) dp[e] = d_scores.empty() ? 0.0 : d_scores[t * E + e];
    const std::int32_t* src = weight_sources.data() + t * k;
    if (normalise) {
      // g_j = p_src(j) / Z: dL/dp_src(j) = (dg_j - sum_i dg_i g_i) / Z.
      double z = 0, gdot = 0;
      for (int j = 0; j < k; ++j) z += p[src[j]];
      for (int j = 0; j < k; ++j) gdot += static_cast<double>(static_cast<float>(scale * dg[j])) * p[src[j]] / z;
      for (int j = 0; j < k; ++j) dp[src[j]] += (static_cast<float>(scale * dg[j]) - gdot) / z;
    } else {
      for (int j = 0; j < k; ++j) dp[src[j]] += static_cast<float>(scale * dg[j]);
    }
    float* dl = d_logits.data() + t * E;
    if (config.score_function == ScoreFunction::kSoftmax) {
      double dot = 0;
      for (int e = 0; e < E; ++e) dot += dp[e] * p[e];
      for (int e = 0; e < E; ++e) dl[e] = static_cast<float>(p[e] * (dp[e] - dot));
    } else {
      for (int e = 0; e < E; ++e) dl[e] = static_cast<float>(dp[e] * p[e] * (1.0 - p[e]));
    }
  }
}

}  // namespace occult
