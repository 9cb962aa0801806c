#include "occult/placement/place.h"

#include <chrono>

#include "occult/core/error.h"
#include "occult/placement/replicate.h"

namespace occult {

namespace {

// The primary placement and replicas of one layer with spare slots: the strategy's placement
// under the load limit, then its spare slots filled by choose_replicas. (Primaries placed with
// a looser or tighter limit, then given replicas, were measured on the shipped traces: never
// better held-out, so they are not tried; bench/RESULTS.md, "Replicas".)
void place_with_replicas(const LayerRouting& routing, const CollaborationGraph& graph, const Partitioner& partitioner,
                         const PartitionOptions& options, LayerPlacement& lp) {
  lp.expert_to_device = partitioner.partition(graph, options);
  lp.device_experts = choose_replicas(routing, graph.num_experts, lp.expert_to_device, options);
}

}  // namespace

Placement place_experts(const Trace& trace, std::string_view strategy, const PartitionOptions& options,
                        bool cross_layer, const LayerCallback& on_layer) {
  OCCULT_CHECK(trace.num_layers() >= 1, "placement: the trace has no layers");
  const auto partitioner = make_partitioner(strategy);
  Placement placement;
  placement.num_experts = trace.num_experts;
  placement.num_devices = options.num_devices;
  placement.num_nodes = options.num_nodes;
  placement.strategy = std::string(strategy);
  placement.slots_per_device = options.slots_per_device;
  const bool slots = options.slots_per_device > 0;
  PartitionOptions layer_options = options;
  for (int l = 0; l < trace.num_layers(); ++l) {
    const auto start = std::chrono::steady_clock::now();
    const CollaborationGraph tokens_graph = build_collaboration_graph(trace.layers[l], trace.num_experts);
    const bool flatten = options.primary_flatten > 0;
    if (flatten) check_partition_options(tokens_graph, layer_options);  // names the flag first
    const CollaborationGraph flat =
        flatten ? flatten_collaboration_graph(tokens_graph, options.primary_flatten) : CollaborationGraph{};
    const CollaborationGraph& graph = flatten ? flat : tokens_graph;
    if (cross_layer && l > 0) layer_options.warm_start = placement.layers.back().expert_to_device;
    LayerPlacement lp;
    lp.layer = l;
    if (slots) {
      place_with_replicas(trace.layers[l], graph, *partitioner, layer_options, lp);
    } else {
      lp.expert_to_device = partitioner->partition(graph, layer_options);
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const PlacementMetrics m =
        slots ? compute_replica_metrics(trace.layers[l], layer_holders(placement, lp), options.num_nodes)
              : compute_placement_metrics(trace.layers[l], lp.expert_to_device, options.num_devices,
                                          options.num_nodes);
    lp.metrics = metrics_to_json(m, options.num_nodes > 1);
    if (slots) {
      // What the replicas bought: the primaries' own C_T, and how many copies were added.
      lp.metrics["primary_replicas_per_token"] =
          compute_placement_metrics(trace.layers[l], lp.expert_to_device, options.num_devices, options.num_nodes)
              .replicas_per_token;
      std::size_t held = 0;
      for (const std::vector<int>& experts : lp.device_experts) held += experts.size();
      lp.metrics["replica_copies"] = held - lp.expert_to_device.size();
    }
    lp.metrics["seconds"] = seconds;
    placement.layers.push_back(std::move(lp));
    if (on_layer) on_layer(l, l + 1, seconds);
  }
  return placement;
}

void check_placement_matches_trace(const Placement& placement, const Trace& trace,
                                   const std::string& placement_source,
                                   const std::string& trace_source) {
  OCCULT_CHECK(placement.num_experts == trace.num_experts,
               "{} places {} experts per layer but {} has {}", placement_source,
               placement.num_experts, trace_source, trace.num_experts);
  for (int l = 0; l < trace.num_layers(); ++l) {
    bool found = false;
    for (const LayerPlacement& lp : placement.layers) found = found || lp.layer == l;
    OCCULT_CHECK(found, "{} has no placement for layer {} of {} ({} layers)", placement_source, l,
                 trace_source, trace.num_layers());
  }
  for (const LayerPlacement& lp : placement.layers) {
    OCCULT_CHECK(lp.layer < trace.num_layers(),
                 "{} places layer {} but {} has only {} layers", placement_source, lp.layer,
                 trace_source, trace.num_layers());
  }
}

std::vector<PlacementMetrics> evaluate_placement(const Trace& trace, const Placement& placement,
                                                 const std::string& placement_source,
                                                 const std::string& trace_source) {
  check_placement_matches_trace(placement, trace, placement_source, trace_source);
  std::vector<PlacementMetrics> result;
  for (int l = 0; l < trace.num_layers(); ++l) {
    const LayerPlacement& lp = placement.layer(l);
    result.push_back(lp.device_experts.empty()
                         ? compute_placement_metrics(trace.layers[l], lp.expert_to_device,
                                                     placement.num_devices, placement.num_nodes)
                         : compute_replica_metrics(trace.layers[l], layer_holders(placement, lp),
                                                   placement.num_nodes));
  }
  return result;
}

PlacementMetrics mean_metrics(const std::vector<PlacementMetrics>& layers) {
  PlacementMetrics mean;
  if (layers.empty()) return mean;
  for (const PlacementMetrics& m : layers) {
    mean.replicas_per_token += m.replicas_per_token;
    mean.remote_replicas_per_token += m.remote_replicas_per_token;
    mean.intra_collab_ratio += m.intra_collab_ratio;
    mean.load_imbalance += m.load_imbalance;
    mean.nodes_per_token += m.nodes_per_token;
  }
  const double n = static_cast<double>(layers.size());
  mean.replicas_per_token /= n;
  mean.remote_replicas_per_token /= n;
  mean.intra_collab_ratio /= n;
  mean.load_imbalance /= n;
  mean.nodes_per_token /= n;
  return mean;
}

nlohmann::json metrics_to_json(const PlacementMetrics& m, bool with_nodes) {
  nlohmann::json j;
  j["replicas_per_token"] = m.replicas_per_token;
  j["remote_replicas_per_token"] = m.remote_replicas_per_token;
  j["intra_collab_ratio"] = m.intra_collab_ratio;
  j["load_imbalance"] = m.load_imbalance;
  if (with_nodes) j["nodes_per_token"] = m.nodes_per_token;
  return j;
}

}  // namespace occult
