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

// Same contract as occult::route_tokens for the placement where device d holds
// device_experts[d]: tries every assignment of holders to a token's selections and keeps the
// least by the rule's four keys.
std::vector<std::int64_t> route_tokens(const std::vector<std::vector<int>>& device_experts, int num_experts,
                                       std::span<const std::int32_t> ids, std::int64_t num_tokens, int top_k,
                                       std::span<const int> homes, std::span<int> devices);

// Same contract as occult::min_cover_devices, by trying device subsets in increasing size.
int min_cover_devices(const std::vector<std::vector<int>>& device_experts, std::span<const std::int32_t> ids);

// Same contract as occult::prune_routing with replicas, for the placement where device d holds
// device_experts[d] (primaries expert_to_device); devices per token are minimum covers.
PruneStats prune_routing(std::span<std::int32_t> ids, std::span<float> weights,
                         std::span<const float> router_probs, std::int64_t num_tokens,
                         const std::vector<std::vector<int>>& device_experts, std::span<const int> expert_to_device,
                         std::span<const float> similarity, const PruneConfig& config);

// Same contract as occult::probability_similarity, by a triple loop in double.
std::vector<float> probability_similarity(std::span<const float> router_probs, std::int64_t num_tokens,
                                          int num_experts);

}  // namespace occult::reference
