// Whole-trace placement and evaluation: what `occult place` and `occult evaluate` run, as
// library calls so benchmarks and other programs reuse them.
#pragma once

#include <functional>
#include <string_view>
#include <vector>

#include "occult/placement/metrics.h"
#include "occult/placement/partitioner.h"
#include "occult/placement/placement.h"
#include "occult/routing/trace.h"

namespace occult {

// Called after each layer is placed: (layer index, layers done, seconds that layer took).
using LayerCallback = std::function<void(int layer, int done, double seconds)>;

// Places every layer of `trace` with strategy `strategy`; each layer's "metrics" holds the
// metrics of DESIGN.md measured on `trace` plus "seconds" (time to partition that layer).
// With `cross_layer`, layer l > 0 also starts from layer l-1's placement (hypergraph only).
Placement place_experts(const Trace& trace, std::string_view strategy, const PartitionOptions& options,
                        bool cross_layer = false, const LayerCallback& on_layer = {});

// Throws naming `source` unless `placement` fits `trace`: same num_experts and a placement for
// every layer of the trace, and no placement layer the trace lacks.
void check_placement_matches_trace(const Placement& placement, const Trace& trace,
                                   const std::string& placement_source,
                                   const std::string& trace_source);

// The metrics of `placement` on every layer of `trace` (checked to match first).
std::vector<PlacementMetrics> evaluate_placement(const Trace& trace, const Placement& placement,
                                                 const std::string& placement_source = "placement",
                                                 const std::string& trace_source = "trace");

// The unweighted mean of per-layer metrics (every layer routes the same tokens).
PlacementMetrics mean_metrics(const std::vector<PlacementMetrics>& layers);

// {"replicas_per_token", "remote_replicas_per_token", "intra_collab_ratio", "load_imbalance"},
// plus "nodes_per_token" when with_nodes.
nlohmann::json metrics_to_json(const PlacementMetrics& metrics, bool with_nodes);

}  // namespace occult
