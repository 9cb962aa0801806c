// Placement metrics of DESIGN.md, measured on one layer's routing.
#pragma once

#include <span>

#include "occult/routing/replicas.h"
#include "occult/routing/trace.h"

namespace occult {

struct PlacementMetrics {
  double replicas_per_token = 0;         // mean distinct devices among a token's k experts
  double remote_replicas_per_token = 0;  // same, excluding the token's home device floor(t*D/T)
  double intra_collab_ratio = 0;         // fraction of a token's expert pairs on one device (1 if k == 1)
  double load_imbalance = 0;             // max device token-expert assignments / mean
  double nodes_per_token = 0;            // mean distinct nodes (equals 1 when num_nodes == 1)
};

// Computes every metric exactly as DESIGN.md defines it; expert_to_device.size() is E. Throws on
// an empty routing, ids >= E, devices outside [0, num_devices) or num_nodes not dividing it.
PlacementMetrics compute_placement_metrics(const LayerRouting& routing,
                                           std::span<const int> expert_to_device, int num_devices,
                                           int num_nodes = 1);

// The same metrics when experts may have several holders: tokens are routed in order by
// route_tokens (fewest devices, then the home device floor(t*D/T), then the lighter device,
// then the lower id) and every metric is measured on the devices chosen; the intra ratio counts
// the pairs of a token's experts served by one device. Without replicas it equals
// compute_placement_metrics.
PlacementMetrics compute_replica_metrics(const LayerRouting& routing, const ExpertHolders& holders,
                                         int num_nodes = 1);

}  // namespace occult
