// Router gating: scores from router logits, top-k selection and the gate weights
// (DESIGN.md, "The MoE layer"). Pure functions over spans; row-major [T, E] / [T, k].
#pragma once

#include <cstdint>
#include <span>

namespace occult {

// How router logits become per-expert scores.
enum class ScoreFunction {
  kSoftmax,  // p = softmax(logits) (OLMoE, Qwen-MoE, DeepSeek-V2)
  kSigmoid,  // s = sigmoid(logits), selection on s + bias, weights s / sum (DeepSeek-V3)
};

// How group-limited selection scores a group of experts from their selection keys (score +
// bias): the best key (DeepSeek-V2 group_limited_greedy) or the sum of the two best keys
// (DeepSeek-V3 noaux_tc).
enum class GroupScore : std::uint8_t { kMax, kTopTwoSum };

// The gating rule of one MoE layer. Fields after norm_topk_prob default to plain top-k.
struct GatingConfig {
  int num_experts = 0;
  int top_k = 0;
  ScoreFunction score_function = ScoreFunction::kSoftmax;
  // Softmax: g_i = p_i / sum_{j in S} p_j when set, g_i = p_i otherwise. Sigmoid: always
  // normalised (DeepSeek-V3), so this flag is ignored.
  bool norm_topk_prob = false;
  // Group-limited top-k: the experts form num_groups groups of E/num_groups consecutive ids;
  // each token keeps its kept_groups best groups by group_score (ties to the lower group id),
  // and the experts of the other groups compete with a selection key of 0 (Hugging Face's
  // masked_fill(0.0)), so with positive keys only kept groups are chosen. num_groups = 1: off.
  int num_groups = 1;
  int kept_groups = 1;
  GroupScore group_score = GroupScore::kMax;
  // Multiplies every gate weight after the normalisation (DeepSeek routed_scaling_factor).
  float routed_scaling_factor = 1.0f;
};

// The most expert groups group-limited selection takes (DeepSeek-V3 uses 8).
inline constexpr int kMaxExpertGroups = 64;

// Throws occult::Error naming the field unless E >= 1, 1 <= k <= E, num_groups divides E and is
// at most kMaxExpertGroups,
// 1 <= kept_groups <= num_groups, the kept groups hold at least k experts, groups of at least
// two experts for kTopTwoSum, and a finite scaling factor > 0.
void validate_gating_config(const GatingConfig& config);

// scores[T, E] = softmax or sigmoid of logits[T, E], row by row (softmax max-subtracted).
void router_scores(std::span<const float> logits, std::int64_t num_tokens, const GatingConfig& config,
                   std::span<float> scores);

// For each token: the k experts with the highest selection keys scores[t, e] + selection_bias[e]
// (bias may be empty; it affects the choice only) among the token's kept groups (see
// GatingConfig), descending, ties to the lower id; and their gate weights per config (computed
// from the unbiased scores, normalised, then scaled). ids[T, k], weights[T, k].
void select_topk(std::span<const float> scores, std::span<const float> selection_bias,
                 std::int64_t num_tokens, const GatingConfig& config, std::span<std::int32_t> ids,
                 std::span<float> weights);

// The backward of router_scores and of the gate weights: given d_weights [T, k], the gradient of
// the gate weights as the layer used them (routed_scaling_factor included), weight_sources
// [T, k] (the expert whose score each slot's weight was computed from: the selection, or after
// pruning with kept weights the replaced expert), the scores [T, E] and an extra gradient on the
// scores d_scores [T, E] (may be empty), writes d_logits [T, E]. The selection itself (top-k,
// groups, bias) is piecewise constant and contributes nothing. `scratch` holds E doubles.
void gating_backward(std::span<const float> scores, std::span<const std::int32_t> weight_sources,
                     std::span<const float> d_weights, std::span<const float> d_scores, std::int64_t num_tokens,
                     const GatingConfig& config, std::span<float> d_logits, std::span<double> scratch);

}  // namespace occult
