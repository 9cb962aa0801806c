#include "occult/placement/graph.h"

#include <algorithm>
#include <numeric>

#include "occult/core/error.h"

namespace occult {

CollaborationGraph build_collaboration_graph(const LayerRouting& routing, int num_experts) {
  const std::int64_t t_count = routing.num_tokens;
  const int k = routing.top_k;
  OCCULT_CHECK(num_experts >= 1, "collaboration graph: num_experts must be >= 1, got {}",
               num_experts);
  OCCULT_CHECK(t_count >= 1, "collaboration graph: the routing has no tokens");
  OCCULT_CHECK(k >= 1 && k <= num_experts,
               "collaboration graph: top_k ({}) must lie in [1, num_experts = {}]", k, num_experts);
  OCCULT_CHECK(k <= 255, "collaboration graph: top_k ({}) above 255 is not supported", k);
  OCCULT_CHECK(routing.topk_ids.size() == static_cast<std::size_t>(t_count) * k,
               "collaboration graph: topk_ids has {} entries, expected {} tokens x k = {}",
               routing.topk_ids.size(), t_count, k);

  // Sorted expert set of every token, then tokens ordered by set so equal sets are adjacent.
  std::vector<std::int32_t> sets(routing.topk_ids);
  for (std::int64_t t = 0; t < t_count; ++t) {
    std::int32_t* s = sets.data() + t * k;
    std::sort(s, s + k);
    for (int j = 0; j < k; ++j) {
      OCCULT_CHECK(s[j] >= 0 && s[j] < num_experts,
                   "collaboration graph: token {} selects expert {}, outside [0, {})", t, s[j],
                   num_experts);
      OCCULT_CHECK(j == 0 || s[j] != s[j - 1],
                   "collaboration graph: token {} selects expert {} twice", t, s[j]);
    }
  }
  std::vector<std::int64_t> order(t_count);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
    return std::lexicographical_compare(sets.begin() + a * k, sets.begin() + (a + 1) * k,
                                        sets.begin() + b * k, sets.begin() + (b + 1) * k);
  });

  CollaborationGraph g;
  g.num_experts = num_experts;
  g.top_k = k;
  g.num_tokens = t_count;
  for (std::int64_t i = 0; i < t_count; ++i) {
    const std::int32_t* s = sets.data() + order[i] * k;
    const bool same_as_last =
        !g.edge_weights.empty() && std::equal(s, s + k, g.pins.end() - k);
    if (same_as_last) {
      ++g.edge_weights.back();
    } else {
      g.pins.insert(g.pins.end(), s, s + k);
      g.edge_weights.push_back(1);
    }
  }

  const std::size_t e = static_cast<std::size_t>(num_experts);
  g.load.assign(e, 0);
  g.coactivation.assign(e * e, 0);
  g.incidence_begin.assign(e + 1, 0);
  const std::int64_t h_count = g.num_edges();
  for (std::int64_t h = 0; h < h_count; ++h) {
    const std::int32_t* s = g.pins.data() + h * k;
    const std::int64_t w = g.edge_weights[h];
    for (int a = 0; a < k; ++a) {
      g.load[s[a]] += w;
      ++g.incidence_begin[s[a] + 1];
      for (int b = a + 1; b < k; ++b) {
        g.coactivation[s[a] * e + s[b]] += w;
        g.coactivation[s[b] * e + s[a]] += w;
      }
    }
  }
  std::partial_sum(g.incidence_begin.begin(), g.incidence_begin.end(), g.incidence_begin.begin());
  g.incidence.resize(static_cast<std::size_t>(g.incidence_begin[e]));
  std::vector<std::int64_t> fill(g.incidence_begin.begin(), g.incidence_begin.end() - 1);
  for (std::int64_t h = 0; h < h_count; ++h) {
    for (int a = 0; a < k; ++a) {
      g.incidence[fill[g.pins[h * k + a]]++] = static_cast<std::int32_t>(h);
    }
  }
  return g;
}

std::int64_t connectivity(const CollaborationGraph& graph, std::span<const int> expert_to_device,
                          int num_devices, int num_nodes, std::int64_t* node_sum) {
  OCCULT_CHECK(static_cast<int>(expert_to_device.size()) == graph.num_experts,
               "connectivity: expert_to_device has {} entries, expected {}",
               expert_to_device.size(), graph.num_experts);
  OCCULT_CHECK(num_nodes >= 1 && num_devices % num_nodes == 0,
               "connectivity: num_nodes ({}) must divide num_devices ({})", num_nodes, num_devices);
  const int k = graph.top_k;
  std::int64_t devices = 0;
  std::int64_t nodes = 0;
  std::vector<int> seen_dev(num_devices, -1);
  std::vector<int> seen_node(num_nodes, -1);
  for (std::int64_t h = 0; h < graph.num_edges(); ++h) {
    int distinct = 0;
    int distinct_nodes = 0;
    const int stamp = static_cast<int>(h);
    for (int j = 0; j < k; ++j) {
      const int dev = expert_to_device[graph.pins[h * k + j]];
      OCCULT_CHECK(dev >= 0 && dev < num_devices, "connectivity: device {} outside [0, {})", dev,
                   num_devices);
      if (seen_dev[dev] != stamp) {
        seen_dev[dev] = stamp;
        ++distinct;
        const int node = dev * num_nodes / num_devices;
        if (seen_node[node] != stamp) {
          seen_node[node] = stamp;
          ++distinct_nodes;
        }
      }
    }
    devices += distinct * graph.edge_weights[h];
    nodes += distinct_nodes * graph.edge_weights[h];
  }
  if (node_sum) *node_sum = nodes;
  return devices;
}

std::vector<std::int64_t> device_loads(const CollaborationGraph& graph,
                                       std::span<const int> expert_to_device, int num_devices) {
  std::vector<std::int64_t> loads(num_devices, 0);
  for (int e = 0; e < graph.num_experts; ++e) {
    const int dev = expert_to_device[e];
    OCCULT_CHECK(dev >= 0 && dev < num_devices, "device_loads: expert {} on device {}, outside [0, {})",
                 e, dev, num_devices);
    loads[dev] += graph.load[e];
  }
  return loads;
}

double load_imbalance(const CollaborationGraph& graph, std::span<const int> expert_to_device,
                      int num_devices) {
  const std::vector<std::int64_t> loads = device_loads(graph, expert_to_device, num_devices);
  const double mean =
      static_cast<double>(graph.num_tokens) * graph.top_k / static_cast<double>(num_devices);
  return static_cast<double>(*std::max_element(loads.begin(), loads.end())) / mean;
}

}  // namespace occult
