// Naive reference twins of the routing kernels: written for obviousness (full sorts, fresh
// vectors per token), not speed. Tests and benchmarks compare the fast paths against them
// bit for bit, so their arithmetic (operation order included) is the contract of DESIGN.md.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "occult/routing/gating.h"
#include "occult/routing/pruning.h"

namespace occult::reference {

// Same contract as occult::router_scores.
void router_scores(std::span<const float> logits, std::int64_t num_tokens, const GatingConfig& config,
                   std::span<float> scores);

// Same contract as occult::select_topk, by sorting all E experts of each token.
void select_topk(std::span<const float> scores, std::span<const float> selection_bias,
                 std::int64_t num_tokens, const GatingConfig& config, std::span<std::int32_t> ids,
                 std::span<float> weights);

// Same contract as occult::prune_routing, following DESIGN.md step by step per token.
PruneStats prune_routing(std::span<std::int32_t> ids, std::span<float> weights,
                         std::span<const float> router_probs, std::int64_t num_tokens,
                         std::span<const int> expert_to_device, std::span<const float> similarity,
                         const PruneConfig& config);

// Same contract as occult::probability_similarity, by a triple loop in double.
std::vector<float> probability_similarity(std::span<const float> router_probs, std::int64_t num_tokens,
                                          int num_experts);

}  // namespace occult::reference
