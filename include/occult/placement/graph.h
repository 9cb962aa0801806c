// Collaboration graphs of one MoE layer (DESIGN.md, "collaboration graph"): the token
// hypergraph (each token is a hyperedge over its k experts) and the pairwise weighted graph.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "occult/routing/trace.h"

namespace occult {

// One layer's collaboration structure. Tokens that selected the same expert set are merged
// into one hyperedge whose weight is their count, so the partitioners' work scales with the
// number of distinct expert sets, not tokens.
struct CollaborationGraph {
  int num_experts = 0;
  int top_k = 0;
  std::int64_t num_tokens = 0;
  std::vector<std::int32_t> pins;           // [H, k] each distinct expert set, ascending ids
  std::vector<std::int64_t> edge_weights;   // [H] tokens that selected exactly that set
  std::vector<std::int64_t> load;           // [E] tokens that selected expert e
  std::vector<std::int64_t> coactivation;   // [E, E] W[i][j] = tokens selecting i and j; 0 diagonal
  std::vector<std::int64_t> incidence_begin;  // [E + 1] CSR offsets into incidence
  std::vector<std::int32_t> incidence;        // hyperedges containing expert e, ascending

  // Number of distinct hyperedges H.
  std::int64_t num_edges() const { return static_cast<std::int64_t>(edge_weights.size()); }
  // The k ascending expert ids of hyperedge h.
  std::span<const std::int32_t> edge(std::int64_t h) const {
    return {pins.data() + h * top_k, static_cast<std::size_t>(top_k)};
  }
  // The hyperedges that contain expert e.
  std::span<const std::int32_t> edges_of(int e) const {
    return {incidence.data() + incidence_begin[e],
            static_cast<std::size_t>(incidence_begin[e + 1] - incidence_begin[e])};
  }
};

// Builds the graph of one layer's routing; throws when ids fall outside [0, num_experts), a
// token repeats an expert, or the routing has no tokens.
CollaborationGraph build_collaboration_graph(const LayerRouting& routing, int num_experts);

// Connectivity objective: sum over tokens of the number of distinct devices among its experts
// (T * replicas_per_token). With num_nodes > 1 also returns the node count in *node_sum.
std::int64_t connectivity(const CollaborationGraph& graph, std::span<const int> expert_to_device,
                          int num_devices, int num_nodes = 1, std::int64_t* node_sum = nullptr);

// Token-expert assignments each device receives: sum of load[e] over the experts it holds.
std::vector<std::int64_t> device_loads(const CollaborationGraph& graph,
                                       std::span<const int> expert_to_device, int num_devices);

// max device load / mean device load (mean = T * k / D): DESIGN.md's load_imbalance.
double load_imbalance(const CollaborationGraph& graph, std::span<const int> expert_to_device,
                      int num_devices);

}  // namespace occult
