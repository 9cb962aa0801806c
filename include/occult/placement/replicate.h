// Replica selection (DESIGN.md, "Replicas"): fill a placement's spare slots with copies of
// experts chosen for collaboration (fewer devices per token under the replica routing rule) and
// for load (every device within the limit on each part of the calibration routing).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "occult/placement/graph.h"
#include "occult/placement/partitioner.h"
#include "occult/routing/replicas.h"
#include "occult/routing/trace.h"

namespace occult {

// How a replicated placement is scored on a calibration routing; lower is better, compared
// lexicographically in member order.
struct ReplicaScore {
  double excess = 0;              // max(0, worst chunk imbalance - max_imbalance)
  std::int64_t node_sum = 0;      // sum over tokens of distinct nodes (0 with one node)
  std::int64_t device_sum = 0;    // sum over tokens of distinct devices (T * C_T)
  double chunk_imbalance = 0;     // worst over chunks of max device load / chunk mean load

  // True when this score is strictly better than `other`.
  bool better_than(const ReplicaScore& other) const;
};

// Routes `routing` with route_tokens on `holders` and scores it: the load limit is checked on
// each of num_chunks equal contiguous token ranges (so it holds on several samples of text, not
// only their union). Throws unless 1 <= num_chunks <= T.
ReplicaScore score_replicas(const LayerRouting& routing, const ExpertHolders& holders, int num_nodes,
                            double max_imbalance, int num_chunks);

// The weight of each distinct expert set h of `graph` when ranking copies: edge_weights[h] times
// the product over its experts x of (T*k/E / load[x])^flatten. Throws unless 0 <= flatten <= 1.
std::vector<double> replica_gain_weights(const CollaborationGraph& graph, double flatten);

// `graph` with each distinct set's weight replaced by replica_gain_weights(graph, flatten)[h]
// scaled so the weights sum to T again and rounded to an integer (a set may drop to 0), and the
// coactivation matrix recomputed from them; num_tokens and load (the tokens' own) unchanged.
// What a strategy sees under --primary-flatten. Throws unless 0 <= flatten <= 1.
CollaborationGraph flatten_collaboration_graph(const CollaborationGraph& graph, double flatten);

// Spare-slot filling for one layer (options.slots_per_device slots per device): starting from
// the primary placement expert_to_device, adds replicas (expert, device) one at a time. The
// shortlist: the copies that remove the most devices per token, exact on the distinct expert
// sets weighted by replica_gain_weights with options.replica_flatten, and, while a chunk is over
// the limit, copies of the overloaded device's busiest experts onto the lightest devices with
// room. Of the shortlisted copies that improve score_replicas, the one added is the best by
// (excess, node_sum, weighted devices saved, score); stops when none improves the score or no
// slot is free. Returns device_experts [D][<= S] (each device's primaries first, ascending, then
// its replicas in the order added). Deterministic.
std::vector<std::vector<int>> choose_replicas(const LayerRouting& routing, int num_experts,
                                              std::span<const int> expert_to_device,
                                              const PartitionOptions& options);

}  // namespace occult
