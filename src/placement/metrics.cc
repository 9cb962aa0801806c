#include "occult/placement/metrics.h"

#include <algorithm>
#include <vector>

#include "occult/core/error.h"

namespace occult {

namespace {

// Checks the routing and the topology shared by both metric entry points.
void check_routing(const LayerRouting& routing, int num_devices, int num_nodes) {
  const int d = num_devices;
  OCCULT_CHECK(d >= 1, "placement metrics: num_devices must be >= 1, got {}", d);
  OCCULT_CHECK(num_nodes >= 1 && num_nodes <= d && d % num_nodes == 0,
               "placement metrics: num_nodes ({}) must divide num_devices ({})", num_nodes, d);
  OCCULT_CHECK(routing.num_tokens >= 1, "placement metrics: the routing has no tokens");
  OCCULT_CHECK(routing.top_k >= 1, "placement metrics: top_k must be >= 1, got {}", routing.top_k);
  OCCULT_CHECK(routing.topk_ids.size() == static_cast<std::size_t>(routing.num_tokens) * routing.top_k,
               "placement metrics: topk_ids has {} entries, expected {} tokens x k = {}",
               routing.topk_ids.size(), routing.num_tokens, routing.top_k);
}

// The metrics of DESIGN.md given the device serving each selection: devices [T, k].
PlacementMetrics measure(const std::vector<int>& devices, std::int64_t t_count, int k, int d, int num_nodes) {
  // Per-token scratch: pins per device (k is small, so a stamp array beats clearing D slots).
  std::vector<int> pins(d, 0);
  std::vector<std::int64_t> stamp(d, -1);
  std::vector<std::int64_t> node_stamp(num_nodes, -1);
  std::vector<std::int64_t> device_assignments(d, 0);
  std::int64_t devices_sum = 0;
  std::int64_t remote_sum = 0;
  std::int64_t nodes_sum = 0;
  std::int64_t intra_pairs = 0;
  for (std::int64_t t = 0; t < t_count; ++t) {
    const int* row = devices.data() + t * k;
    const int home = static_cast<int>(t * d / t_count);
    int distinct = 0;
    int distinct_nodes = 0;
    bool touches_home = false;
    for (int j = 0; j < k; ++j) {
      const int dev = row[j];
      ++device_assignments[dev];
      if (stamp[dev] != t) {
        stamp[dev] = t;
        pins[dev] = 0;
        ++distinct;
        if (dev == home) touches_home = true;
        const int node = dev * num_nodes / d;
        if (node_stamp[node] != t) {
          node_stamp[node] = t;
          ++distinct_nodes;
        }
      }
      // A new expert on a device that already has c of this token's experts forms c new pairs.
      intra_pairs += pins[dev];
      ++pins[dev];
    }
    devices_sum += distinct;
    remote_sum += distinct - (touches_home ? 1 : 0);
    nodes_sum += distinct_nodes;
  }

  PlacementMetrics m;
  const double tokens = static_cast<double>(t_count);
  m.replicas_per_token = static_cast<double>(devices_sum) / tokens;
  m.remote_replicas_per_token = static_cast<double>(remote_sum) / tokens;
  m.nodes_per_token = static_cast<double>(nodes_sum) / tokens;
  const std::int64_t pairs_per_token = static_cast<std::int64_t>(k) * (k - 1) / 2;
  // With k == 1 there are no pairs, so no collaboration can be inter-device: the ratio is 1.
  m.intra_collab_ratio =
      pairs_per_token == 0 ? 1.0
                           : static_cast<double>(intra_pairs) /
                                 (static_cast<double>(pairs_per_token) * tokens);
  const std::int64_t max_assign = *std::max_element(device_assignments.begin(), device_assignments.end());
  const double mean_assign = tokens * k / d;
  m.load_imbalance = static_cast<double>(max_assign) / mean_assign;
  return m;
}

}  // namespace

PlacementMetrics compute_placement_metrics(const LayerRouting& routing,
                                           std::span<const int> expert_to_device, int num_devices,
                                           int num_nodes) {
  check_routing(routing, num_devices, num_nodes);
  const int d = num_devices;
  const std::int64_t t_count = routing.num_tokens;
  const int k = routing.top_k;
  const int e_count = static_cast<int>(expert_to_device.size());
  for (int e = 0; e < e_count; ++e) {
    OCCULT_CHECK(expert_to_device[e] >= 0 && expert_to_device[e] < d,
                 "placement metrics: expert {} is on device {}, outside [0, {})", e,
                 expert_to_device[e], d);
  }
  std::vector<int> devices(routing.topk_ids.size());
  for (std::int64_t t = 0; t < t_count; ++t) {
    const std::int32_t* ids = routing.ids_of(t);
    for (int j = 0; j < k; ++j) {
      OCCULT_CHECK(ids[j] >= 0 && ids[j] < e_count,
                   "placement metrics: token {} selects expert {}, but the placement has {} experts",
                   t, ids[j], e_count);
      devices[t * k + j] = expert_to_device[ids[j]];
    }
  }
  return measure(devices, t_count, k, d, num_nodes);
}

PlacementMetrics compute_replica_metrics(const LayerRouting& routing, const ExpertHolders& holders,
                                         int num_nodes) {
  check_routing(routing, holders.num_devices, num_nodes);
  std::vector<int> devices(routing.topk_ids.size());
  route_tokens(holders, routing.topk_ids, routing.num_tokens, routing.top_k, {}, devices);
  return measure(devices, routing.num_tokens, routing.top_k, holders.num_devices, num_nodes);
}

}  // namespace occult
