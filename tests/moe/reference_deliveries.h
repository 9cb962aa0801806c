// The test oracle of plan + exchange: what every device should receive, computed from every
// rank's routing directly (no plan, no offsets), for the dispatch-plan and MoE-layer tests.
#pragma once

#include <algorithm>
#include <compare>
#include <cstdint>
#include <span>
#include <vector>

namespace occult {

// One token-expert assignment as its device receives it.
struct DeliveredAssignment {
  int source_rank = 0;
  std::int64_t token = 0;
  int expert = 0;
  float weight = 0;
  auto operator<=>(const DeliveredAssignment&) const = default;
};

// Given every rank's routing (topk ids and weights, k per token), the multiset each device
// should receive, as (source rank, source token, global expert, weight) tuples sorted
// lexicographically. Standard and occult deliver the same tuples (dropless).
inline std::vector<std::vector<DeliveredAssignment>> reference_deliveries(
    std::span<const std::vector<std::int32_t>> topk_ids_per_rank,
    std::span<const std::vector<float>> topk_weights_per_rank, int top_k,
    std::span<const int> expert_to_device, int num_devices) {
  std::vector<std::vector<DeliveredAssignment>> out(num_devices);
  for (std::size_t r = 0; r < topk_ids_per_rank.size(); ++r) {
    const auto& ids = topk_ids_per_rank[r];
    const auto& weights = topk_weights_per_rank[r];
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const int e = ids[i];
      out[expert_to_device[e]].push_back(DeliveredAssignment{
          static_cast<int>(r), static_cast<std::int64_t>(i / top_k), e, weights[i]});
    }
  }
  for (auto& list : out) std::sort(list.begin(), list.end());
  return out;
}

}  // namespace occult
