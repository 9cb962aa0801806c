#include "occult/placement/groups.h"

#include <chrono>

#include "occult/core/error.h"
#include "occult/placement/metrics.h"
#include "occult/placement/place.h"

namespace occult {

std::vector<int> group_placement(int num_experts, int num_groups, int num_devices) {
  const int E = num_experts, G = num_groups, D = num_devices;
  OCCULT_CHECK(E >= 1, "group placement: the model has {} experts", E);
  OCCULT_CHECK(G >= 1 && E % G == 0, "--groups {} must be >= 1 and divide the {} experts", G, E);
  OCCULT_CHECK(D >= 1 && E % D == 0, "--devices {} must be >= 1 and divide the {} experts to place whole groups", D,
               E);
  OCCULT_CHECK(G % D == 0 || D % G == 0,
               "--groups {} and --devices {}: one must be a multiple of the other (whole groups per device, or "
               "each group split evenly over devices)",
               G, D);
  const int group_size = E / G;
  std::vector<int> expert_to_device(E);
  for (int e = 0; e < E; ++e) {
    const int g = e / group_size;
    if (G % D == 0) {
      expert_to_device[e] = g / (G / D);
    } else {
      const int devices_per_group = D / G;
      const int run = group_size / devices_per_group;  // E/D experts: E % D == 0 checked above
      expert_to_device[e] = g * devices_per_group + (e % group_size) / run;
    }
  }
  return expert_to_device;
}

Placement place_expert_groups(const Trace& trace, int num_groups, const PartitionOptions& options) {
  OCCULT_CHECK(trace.num_layers() >= 1, "placement: the trace has no layers");
  Placement placement;
  placement.num_experts = trace.num_experts;
  placement.num_devices = options.num_devices;
  placement.num_nodes = options.num_nodes;
  placement.strategy = "groups";
  const std::vector<int> expert_to_device = group_placement(trace.num_experts, num_groups, options.num_devices);
  for (int l = 0; l < trace.num_layers(); ++l) {
    const auto start = std::chrono::steady_clock::now();
    LayerPlacement lp;
    lp.layer = l;
    lp.expert_to_device = expert_to_device;
    const PlacementMetrics m =
        compute_placement_metrics(trace.layers[l], lp.expert_to_device, options.num_devices, options.num_nodes);
    lp.metrics = metrics_to_json(m, options.num_nodes > 1);
    lp.metrics["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    placement.layers.push_back(std::move(lp));
  }
  return placement;
}

}  // namespace occult
