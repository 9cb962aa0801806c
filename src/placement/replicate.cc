#include "occult/placement/replicate.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <tuple>

#include "occult/core/error.h"
#include "occult/placement/graph.h"

namespace occult {

namespace {

// Candidates simulated per added replica: the best by estimated devices saved, kGainBatch at a
// time until one improves the score (at most kGainBatches batches), and while the load is over
// the limit, the busiest experts of the overloaded device times the lightest devices with room.
// Small, because each candidate costs one routing pass over the trace.
constexpr std::size_t kGainBatch = 6;
constexpr std::size_t kGainBatches = 4;
constexpr std::size_t kHotExperts = 4;
constexpr std::size_t kColdDevices = 3;

// Score plus what the load shortlist needs: the worst (chunk, device) and, in that chunk,
// the assignments each expert sent to that device.
struct Evaluation {
  ReplicaScore score;
  int hot_chunk = 0;
  int hot_device = 0;
  std::vector<std::int64_t> hot_chunk_load;  // [D] loads in the worst chunk
  std::vector<std::int64_t> hot_served;      // [E] assignments of each expert on hot_device there
};

Evaluation evaluate(const LayerRouting& routing, const ExpertHolders& holders, int num_nodes,
                    double max_imbalance, int num_chunks) {
  const int d_count = holders.num_devices;
  const int e_count = holders.num_experts;
  const int k = routing.top_k;
  const std::int64_t t_count = routing.num_tokens;
  OCCULT_CHECK(num_chunks >= 1 && num_chunks <= t_count,
               "--replica-chunks must lie in [1, tokens = {}], got {}", t_count, num_chunks);
  OCCULT_CHECK(num_nodes >= 1 && d_count % num_nodes == 0,
               "replica placement: num_nodes ({}) must divide num_devices ({})", num_nodes, d_count);
  std::vector<std::int64_t> load(d_count, 0);
  std::vector<std::int64_t> chunk_load(static_cast<std::size_t>(num_chunks) * d_count, 0);
  std::vector<std::int64_t> served(static_cast<std::size_t>(num_chunks) * e_count * d_count, 0);
  std::vector<std::int64_t> chunk_tokens(num_chunks, 0);
  std::vector<int> devices(k);
  Evaluation ev;
  for (std::int64_t t = 0; t < t_count; ++t) {
    const std::span<const std::int32_t> ids(routing.ids_of(t), k);
    const int home = static_cast<int>(t * d_count / t_count);
    ev.score.device_sum += route_token(holders, ids, home, load, devices);
    const int chunk = static_cast<int>(t * num_chunks / t_count);
    ++chunk_tokens[chunk];
    std::uint64_t nodes = 0;
    for (int j = 0; j < k; ++j) {
      ++load[devices[j]];
      ++chunk_load[static_cast<std::size_t>(chunk) * d_count + devices[j]];
      ++served[(static_cast<std::size_t>(chunk) * e_count + ids[j]) * d_count + devices[j]];
      nodes |= std::uint64_t{1} << (devices[j] * num_nodes / d_count);
    }
    if (num_nodes > 1) ev.score.node_sum += std::popcount(nodes);
  }
  for (int c = 0; c < num_chunks; ++c) {
    const double mean = static_cast<double>(chunk_tokens[c]) * k / d_count;
    for (int dev = 0; dev < d_count; ++dev) {
      const double imbalance = static_cast<double>(chunk_load[static_cast<std::size_t>(c) * d_count + dev]) / mean;
      if (imbalance > ev.score.chunk_imbalance) {
        ev.score.chunk_imbalance = imbalance;
        ev.hot_chunk = c;
        ev.hot_device = dev;
      }
    }
  }
  ev.score.excess = std::max(0.0, ev.score.chunk_imbalance - max_imbalance);
  ev.hot_chunk_load.assign(chunk_load.begin() + static_cast<std::ptrdiff_t>(ev.hot_chunk) * d_count,
                           chunk_load.begin() + static_cast<std::ptrdiff_t>(ev.hot_chunk + 1) * d_count);
  ev.hot_served.resize(e_count);
  for (int x = 0; x < e_count; ++x) {
    ev.hot_served[x] = served[(static_cast<std::size_t>(ev.hot_chunk) * e_count + x) * d_count + ev.hot_device];
  }
  return ev;
}

}  // namespace

bool ReplicaScore::better_than(const ReplicaScore& other) const {
  // Imbalances are ratios of integers: a relative epsilon keeps equal loads equal.
  constexpr double kEps = 1e-12;
  if (excess < other.excess - kEps) return true;
  if (excess > other.excess + kEps) return false;
  if (node_sum != other.node_sum) return node_sum < other.node_sum;
  if (device_sum != other.device_sum) return device_sum < other.device_sum;
  return chunk_imbalance < other.chunk_imbalance - kEps;
}

ReplicaScore score_replicas(const LayerRouting& routing, const ExpertHolders& holders, int num_nodes,
                            double max_imbalance, int num_chunks) {
  return evaluate(routing, holders, num_nodes, max_imbalance, num_chunks).score;
}

std::vector<double> replica_gain_weights(const CollaborationGraph& graph, double flatten) {
  OCCULT_CHECK(std::isfinite(flatten) && flatten >= 0 && flatten <= 1,
               "popularity flattening: the exponent must lie in [0, 1], got {}", flatten);
  const double mean = static_cast<double>(graph.num_tokens) * graph.top_k / graph.num_experts;
  std::vector<double> weights(static_cast<std::size_t>(graph.num_edges()));
  for (std::int64_t h = 0; h < graph.num_edges(); ++h) {
    double w = static_cast<double>(graph.edge_weights[h]);
    // Every expert of a set has load >= the set's weight >= 1.
    if (flatten > 0) {
      for (const std::int32_t x : graph.edge(h)) w *= std::pow(mean / static_cast<double>(graph.load[x]), flatten);
    }
    weights[h] = w;
  }
  return weights;
}

CollaborationGraph flatten_collaboration_graph(const CollaborationGraph& graph, double flatten) {
  const std::vector<double> weights = replica_gain_weights(graph, flatten);
  double total = 0;
  for (const double w : weights) total += w;
  const double scale = static_cast<double>(graph.num_tokens) / total;
  CollaborationGraph flat = graph;
  const std::size_t e = static_cast<std::size_t>(graph.num_experts);
  std::fill(flat.coactivation.begin(), flat.coactivation.end(), 0);
  for (std::int64_t h = 0; h < graph.num_edges(); ++h) {
    const std::int64_t w = std::llround(weights[h] * scale);
    flat.edge_weights[h] = w;
    const std::span<const std::int32_t> set = graph.edge(h);
    for (std::size_t a = 0; a < set.size(); ++a) {
      for (std::size_t b = a + 1; b < set.size(); ++b) {
        flat.coactivation[set[a] * e + set[b]] += w;
        flat.coactivation[set[b] * e + set[a]] += w;
      }
    }
  }
  return flat;
}

std::vector<std::vector<int>> choose_replicas(const LayerRouting& routing, int num_experts,
                                              std::span<const int> expert_to_device,
                                              const PartitionOptions& options) {
  const int d_count = options.num_devices;
  const int e_count = num_experts;
  OCCULT_CHECK(static_cast<int>(expert_to_device.size()) == e_count,
               "replica placement: expert_to_device has {} entries, expected {}", expert_to_device.size(), e_count);
  const CollaborationGraph graph = build_collaboration_graph(routing, e_count);
  check_partition_options(graph, options);
  OCCULT_CHECK(options.slots_per_device > 0, "replica placement: --slots-per-device must be given");
  const std::vector<double> weights = replica_gain_weights(graph, options.replica_flatten);
  ExpertHolders holders = holders_from_primary(expert_to_device, d_count);
  std::vector<int> room(d_count, options.slots_per_device);
  for (int x = 0; x < e_count; ++x) --room[expert_to_device[x]];
  for (int dev = 0; dev < d_count; ++dev) {
    OCCULT_CHECK(room[dev] >= 0, "replica placement: device {} holds {} primaries, over --slots-per-device {}", dev,
                 options.slots_per_device - room[dev], options.slots_per_device);
  }
  std::vector<std::vector<int>> added(d_count);
  std::vector<int> cover(graph.num_edges());
  for (std::int64_t h = 0; h < graph.num_edges(); ++h) cover[h] = min_cover_devices(holders, graph.edge(h));
  Evaluation current = evaluate(routing, holders, options.num_nodes, options.max_imbalance, options.replica_chunks);

  // Devices a copy of x on dev saves, exact on the distinct expert sets: (weighted by `weights`,
  // token count).
  auto gain_of = [&](int x, int dev) {
    const std::uint64_t original = holders.masks[x];
    holders.masks[x] = original | (std::uint64_t{1} << dev);
    double weighted = 0;
    std::int64_t saved = 0;
    for (const std::int32_t h : graph.edges_of(x)) {
      if (cover[h] == 1) continue;
      const int drop = cover[h] - min_cover_devices(holders, graph.edge(h));
      weighted += weights[h] * drop;
      saved += graph.edge_weights[h] * drop;
    }
    holders.masks[x] = original;
    return std::pair<double, std::int64_t>{weighted, saved};
  };

  while (std::any_of(room.begin(), room.end(), [](int r) { return r > 0; })) {
    // (-weighted gain, -devices saved, expert, device), best first.
    std::vector<std::tuple<double, std::int64_t, int, int>> gains;
    for (int x = 0; x < e_count; ++x) {
      for (int dev = 0; dev < d_count; ++dev) {
        if (room[dev] == 0 || (holders.masks[x] >> dev & 1u) != 0) continue;
        const auto [weighted, saved] = gain_of(x, dev);
        if (saved > 0) gains.emplace_back(-weighted, -saved, x, dev);
      }
    }
    std::sort(gains.begin(), gains.end());
    std::vector<std::pair<int, int>> load_candidates;
    if (current.score.excess > 0) {
      std::vector<int> hot;
      for (int x = 0; x < e_count; ++x) {
        if (current.hot_served[x] > 0) hot.push_back(x);
      }
      std::sort(hot.begin(), hot.end(), [&](int a, int b) {
        return current.hot_served[a] != current.hot_served[b] ? current.hot_served[a] > current.hot_served[b] : a < b;
      });
      std::vector<int> cold;
      for (int dev = 0; dev < d_count; ++dev) {
        if (room[dev] > 0) cold.push_back(dev);
      }
      std::sort(cold.begin(), cold.end(), [&](int a, int b) {
        return current.hot_chunk_load[a] != current.hot_chunk_load[b]
                   ? current.hot_chunk_load[a] < current.hot_chunk_load[b]
                   : a < b;
      });
      for (std::size_t i = 0; i < hot.size() && i < kHotExperts; ++i) {
        std::size_t taken = 0;
        for (std::size_t c = 0; c < cold.size() && taken < kColdDevices; ++c) {
          if ((holders.masks[hot[i]] >> cold[c] & 1u) != 0) continue;
          load_candidates.emplace_back(hot[i], cold[c]);
          ++taken;
        }
      }
    }
    bool found = false;
    Evaluation best;
    double best_weighted = 0;
    std::pair<int, int> best_candidate{-1, -1};
    std::vector<std::pair<int, int>> tried;
    // A candidate must improve the score; among those the best is ranked by (excess, nodes,
    // weighted devices saved, score), which with flatten 0 is the score's own order.
    auto consider = [&](int x, int dev, double weighted) {
      const std::pair<int, int> candidate{x, dev};
      if (std::find(tried.begin(), tried.end(), candidate) != tried.end()) return;
      tried.push_back(candidate);
      const std::uint64_t original = holders.masks[x];
      holders.masks[x] = original | (std::uint64_t{1} << dev);
      Evaluation ev = evaluate(routing, holders, options.num_nodes, options.max_imbalance, options.replica_chunks);
      holders.masks[x] = original;
      if (!ev.score.better_than(current.score)) return;
      bool take = !found;
      if (!take) {
        constexpr double kEps = 1e-12;
        const ReplicaScore& a = ev.score;
        const ReplicaScore& b = best.score;
        if (std::abs(a.excess - b.excess) > kEps) {
          take = a.excess < b.excess;
        } else if (a.node_sum != b.node_sum) {
          take = a.node_sum < b.node_sum;
        } else if (weighted != best_weighted) {
          take = weighted > best_weighted;
        } else {
          take = a.better_than(b);
        }
      }
      if (take) {
        best = std::move(ev);
        best_weighted = weighted;
        best_candidate = candidate;
        found = true;
      }
    };
    for (const auto& [x, dev] : load_candidates) consider(x, dev, gain_of(x, dev).first);
    for (std::size_t batch = 0; batch < kGainBatches && (batch == 0 || !found); ++batch) {
      for (std::size_t i = batch * kGainBatch; i < gains.size() && i < (batch + 1) * kGainBatch; ++i) {
        consider(std::get<2>(gains[i]), std::get<3>(gains[i]), -std::get<0>(gains[i]));
      }
    }
    if (!found) break;
    const auto [x, dev] = best_candidate;
    holders.masks[x] |= std::uint64_t{1} << dev;
    --room[dev];
    added[dev].push_back(x);
    for (const std::int32_t h : graph.edges_of(x)) cover[h] = min_cover_devices(holders, graph.edge(h));
    current = std::move(best);
  }

  std::vector<std::vector<int>> device_experts(d_count);
  for (int x = 0; x < e_count; ++x) device_experts[expert_to_device[x]].push_back(x);
  for (int dev = 0; dev < d_count; ++dev) {
    device_experts[dev].insert(device_experts[dev].end(), added[dev].begin(), added[dev].end());
  }
  return device_experts;
}

}  // namespace occult
