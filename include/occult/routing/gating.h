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

struct GatingConfig {
  int num_experts = 0;
  int top_k = 0;
  ScoreFunction score_function = ScoreFunction::kSoftmax;
  // Softmax: g_i = p_i / sum_{j in S} p_j when set, g_i = p_i otherwise. Sigmoid: always
  // normalised (DeepSeek-V3), so this flag is ignored.
  bool norm_topk_prob = false;
};

// scores[T, E] = softmax or sigmoid of logits[T, E], row by row (softmax max-subtracted).
void router_scores(std::span<const float> logits, std::int64_t num_tokens, const GatingConfig& config,
                   std::span<float> scores);

// For each token: the k experts with the highest scores[t, e] + selection_bias[e] (bias may be
// empty; it affects the choice only), descending, ties to the lower id; and their gate weights
// per config (computed from the unbiased scores). ids[T, k], weights[T, k].
void select_topk(std::span<const float> scores, std::span<const float> selection_bias,
                 std::int64_t num_tokens, const GatingConfig& config, std::span<std::int32_t> ids,
                 std::span<float> weights);

}  // namespace occult
