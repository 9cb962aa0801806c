// Partitioners: strategies that assign each expert of one layer to a device, all returning a
// balanced placement (every device holds floor(E/D) or ceil(E/D) experts).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "occult/placement/graph.h"

namespace occult {

// What every partitioner is told besides the graph.
struct PartitionOptions {
  int num_devices = 1;
  int num_nodes = 1;           // devices [n*D/N, (n+1)*D/N) form node n
  std::uint64_t seed = 0;      // same seed, same graph -> same placement
  double max_imbalance = 1.10; // hypergraph: max device load / mean device load to respect
  int num_restarts = 8;        // hypergraph: perturb-and-refine rounds after the first descent
  // hypergraph: an extra start (e.g. the previous layer's placement); empty for none.
  std::vector<int> warm_start;
  // place_experts: experts a device may hold (S); spare slots beyond ceil(E/D) hold replicas.
  // 0 places primaries only (no slots in the written placement).
  int slots_per_device = 0;
  // Replicas: the load limit must hold on each of this many equal contiguous parts of the
  // calibration routing, so it holds on text unlike the union of the calibration traces too.
  int replica_chunks = 4;
  // Replicas: copies are ranked by the devices they save with each calibration token weighted
  // by the product over its experts of (mean expert load / expert load)^replica_flatten, so
  // they serve the co-activations rather than the calibration text's most popular experts
  // (which another text does not share). 0 counts tokens as they are; in [0, 1].
  double replica_flatten = 0.5;
  // place_experts: the strategy places each layer's primaries on its collaboration graph
  // flattened the same way with this exponent (flatten_collaboration_graph); 0 (the default)
  // places on the tokens as they are. Loads and the load limit stay the tokens' own.
  double primary_flatten = 0.0;
};

// A placement strategy for one layer. Implementations are stateless and thread-compatible.
class Partitioner {
 public:
  virtual ~Partitioner() = default;
  // The strategy name used by `occult place --strategy`.
  virtual std::string_view name() const = 0;
  // expert_to_device[E] for the layer whose graph is given; balanced, deterministic for a seed.
  // Throws occult::Error on invalid options (D < 1, D > E, N not dividing D, ...).
  virtual std::vector<int> partition(const CollaborationGraph& graph,
                                     const PartitionOptions& options) const = 0;
};

// The strategy called `name`; throws listing the known names when there is none.
std::unique_ptr<Partitioner> make_partitioner(std::string_view name);
// Every strategy name, baselines first, the default last.
std::vector<std::string> partitioner_names();
// The strategy `occult place` uses unless told otherwise.
inline constexpr std::string_view kDefaultStrategy = "hypergraph";

// Experts each device holds in a balanced placement: ceil(E/D) for the first E % D devices,
// floor(E/D) for the rest.
std::vector<int> balanced_capacities(int num_experts, int num_devices);
// True when every device in [0, D) holds floor(E/D) or ceil(E/D) of the E experts.
bool is_balanced(std::span<const int> expert_to_device, int num_devices);
// Throws naming the flag unless 1 <= D <= E, N divides D, max_imbalance >= 1, and the slots,
// when given, hold ceil(E/D) experts on at most 64 devices.
void check_partition_options(const CollaborationGraph& graph, const PartitionOptions& options);

// Free-function forms of the strategies (the Partitioner objects call these).
// Expert e on device floor(e*D/E).
std::vector<int> partition_contiguous(const CollaborationGraph& graph, const PartitionOptions& options);
// A seeded uniformly random balanced placement (portable: the same on every platform).
std::vector<int> partition_random(const CollaborationGraph& graph, const PartitionOptions& options);
// The paper's greedy farthest-point-seeded fill on the normalised co-activation graph.
std::vector<int> partition_greedy_fps(const CollaborationGraph& graph, const PartitionOptions& options);
// METIS k-way on the pairwise graph (vertex weights = load), repaired to exact balanced counts
// by the moves that add the least cut.
std::vector<int> partition_metis(const CollaborationGraph& graph, const PartitionOptions& options);
// Ours: minimises the connectivity objective (distinct devices per token; with nodes, distinct
// nodes first) under balanced counts and the load limit max_imbalance * T*k/D (best effort when
// no balanced placement reaches it). Refines the two best of the other strategies' placements
// (and any warm start) with FM-style swap/move descent, adds a penalised path from the best
// unconstrained optimum to the limit, then perturb-and-descend restarts; keeps the best.
std::vector<int> partition_hypergraph(const CollaborationGraph& graph, const PartitionOptions& options);

// The combined objective the hypergraph strategy minimises: with one node, the connectivity;
// with nodes, node connectivity * (T*k + 1) + device connectivity (lexicographic).
std::int64_t hypergraph_objective(const CollaborationGraph& graph, std::span<const int> expert_to_device,
                                  int num_devices, int num_nodes);

// Exact objective change of exchanging the devices of experts a and b, computed incrementally
// as the hypergraph refinement does (O(degree of a + degree of b)); for tests against
// hypergraph_objective.
std::int64_t hypergraph_swap_delta(const CollaborationGraph& graph, std::span<const int> expert_to_device,
                                   int num_devices, int num_nodes, int a, int b);
// The same for moving expert a to device `to` (the result may be unbalanced).
std::int64_t hypergraph_move_delta(const CollaborationGraph& graph, std::span<const int> expert_to_device,
                                   int num_devices, int num_nodes, int a, int to);
// The gain table the refinement keeps: [E, D], entry (a, d) = hypergraph_move_delta(a, d).
// The tables are built for expert_to_device, then `moves_first` ((expert, device) pairs) are
// applied incrementally, as the refinement does; the placement they lead to is written to
// *placement_after when given. Tests compare the maintained table with the naive objective.
std::vector<std::int64_t> hypergraph_move_table(const CollaborationGraph& graph,
                                                std::span<const int> expert_to_device,
                                                int num_devices, int num_nodes,
                                                std::span<const std::pair<int, int>> moves_first = {},
                                                std::vector<int>* placement_after = nullptr);

// Best-effort load repair: swaps (and count-preserving moves) that lower the maximum device
// load until it is <= max_imbalance * mean or no swap lowers it; preferring the swaps that
// cost the least connectivity. Keeps the placement balanced. Returns the new placement.
std::vector<int> repair_load(const CollaborationGraph& graph, std::vector<int> expert_to_device,
                             const PartitionOptions& options);

}  // namespace occult
