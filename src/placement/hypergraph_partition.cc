// The `hypergraph` strategy: minimise the mean number of distinct devices per token (the
// connectivity of the token hypergraph) under balanced expert counts and a device-load limit.
//
// Refinement keeps, per hyperedge, the number of its pins on each device (and node), so the
// cost change of moving one expert is a sum over its hyperedges with O(1) work each, and a swap
// is two such sums plus a correction on the hyperedges that hold both experts.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <tuple>

#include "occult/core/error.h"
#include "occult/placement/partitioner.h"

namespace occult {

namespace {

// Weight of one node-connectivity unit: more than any total device connectivity can change,
// so nodes per token are minimised first and devices per token second.
std::int64_t node_unit(const CollaborationGraph& graph, int num_nodes) {
  return num_nodes > 1 ? graph.num_tokens * graph.top_k + 1 : 0;
}

// The largest device load `max_imbalance` allows: floor(max_imbalance * T * k / D).
std::int64_t load_limit(const CollaborationGraph& graph, const PartitionOptions& options) {
  const double mean = static_cast<double>(graph.num_tokens) * graph.top_k / options.num_devices;
  // The epsilon keeps 1.10 * mean from rounding below an exactly representable integer.
  return static_cast<std::int64_t>(std::floor(options.max_imbalance * mean * (1 + 1e-12)));
}

// Incremental state of one placement: pin counts per hyperedge and device/node, device
// loads and expert counts, and the objective.
class Refiner {
 public:
  Refiner(const CollaborationGraph& graph, const PartitionOptions& options,
          std::vector<int> expert_to_device)
      : g_(graph),
        e_(graph.num_experts),
        d_(options.num_devices),
        n_(options.num_nodes),
        node_unit_(node_unit(graph, options.num_nodes)),
        e2d_(std::move(expert_to_device)),
        count_(d_, 0),
        load_(d_, 0),
        cnt_dev_(static_cast<std::size_t>(graph.num_edges()) * d_, 0),
        cnt_node_(n_ > 1 ? static_cast<std::size_t>(graph.num_edges()) * n_ : 0, 0),
        stamp_(static_cast<std::size_t>(graph.num_edges()), 0),
        table_(static_cast<std::size_t>(e_) * d_, 0) {
    for (int x = 0; x < e_; ++x) {
      ++count_[e2d_[x]];
      load_[e2d_[x]] += g_.load[x];
    }
    const int k = g_.top_k;
    for (std::int64_t h = 0; h < g_.num_edges(); ++h) {
      for (int j = 0; j < k; ++j) {
        const int dev = e2d_[g_.pins[h * k + j]];
        ++cnt_dev_[h * d_ + dev];
        if (n_ > 1) ++cnt_node_[h * n_ + node_of(dev)];
      }
    }
    cost_ = hypergraph_objective(g_, e2d_, d_, n_);
  }

  std::int64_t cost() const { return cost_; }
  const std::vector<int>& placement() const { return e2d_; }
  std::int64_t max_load() const { return *std::max_element(load_.begin(), load_.end()); }
  const std::vector<std::int64_t>& move_table() const { return table_; }

  // Cost change of moving expert a to device `to` (negative: better).
  std::int64_t move_delta(int a, int to) const {
    const int p = e2d_[a];
    if (p == to) return 0;
    const int pn = node_of(p), qn = node_of(to);
    const bool cross_node = n_ > 1 && pn != qn;
    std::int64_t delta = 0;
    for (std::int32_t h : g_.edges_of(a)) {
      const std::int64_t w = g_.edge_weights[h];
      const std::uint8_t* c = cnt_dev_.data() + static_cast<std::size_t>(h) * d_;
      delta += w * ((c[to] == 0) - (c[p] == 1));
      if (cross_node) {
        const std::uint8_t* nc = cnt_node_.data() + static_cast<std::size_t>(h) * n_;
        delta += node_unit_ * w * ((nc[qn] == 0) - (nc[pn] == 1));
      }
    }
    return delta;
  }

  // Cost change of exchanging the devices of experts a and b (on different devices).
  std::int64_t swap_delta(int a, int b) {
    const int p = e2d_[a], q = e2d_[b];
    const int pn = node_of(p), qn = node_of(q);
    const bool cross_node = n_ > 1 && pn != qn;
    ++stamp_counter_;
    std::int64_t delta = 0;
    for (std::int32_t h : g_.edges_of(a)) {
      stamp_[h] = stamp_counter_;
      const std::int64_t w = g_.edge_weights[h];
      const std::uint8_t* c = cnt_dev_.data() + static_cast<std::size_t>(h) * d_;
      delta += w * ((c[q] == 0) - (c[p] == 1));
      if (cross_node) {
        const std::uint8_t* nc = cnt_node_.data() + static_cast<std::size_t>(h) * n_;
        delta += node_unit_ * w * ((nc[qn] == 0) - (nc[pn] == 1));
      }
    }
    for (std::int32_t h : g_.edges_of(b)) {
      const std::int64_t w = g_.edge_weights[h];
      const std::uint8_t* c = cnt_dev_.data() + static_cast<std::size_t>(h) * d_;
      const std::uint8_t* nc =
          cross_node ? cnt_node_.data() + static_cast<std::size_t>(h) * n_ : nullptr;
      if (stamp_[h] == stamp_counter_) {
        // A hyperedge holding both keeps its device (and node) set: undo a's estimate, add 0.
        delta += w * (c[p] == 1);
        if (cross_node) delta += node_unit_ * w * (nc[pn] == 1);
        continue;
      }
      delta += w * ((c[p] == 0) - (c[q] == 1));
      if (cross_node) delta += node_unit_ * w * ((nc[pn] == 0) - (nc[qn] == 1));
    }
    return delta;
  }

  // Moves expert a to device `to`, updating counts, loads and the cost.
  void apply_move(int a, int to) {
    const int p = e2d_[a];
    if (p == to) return;
    cost_ += move_delta(a, to);
    const int pn = node_of(p), qn = node_of(to);
    for (std::int32_t h : g_.edges_of(a)) {
      --cnt_dev_[static_cast<std::size_t>(h) * d_ + p];
      ++cnt_dev_[static_cast<std::size_t>(h) * d_ + to];
      if (n_ > 1) {
        --cnt_node_[static_cast<std::size_t>(h) * n_ + pn];
        ++cnt_node_[static_cast<std::size_t>(h) * n_ + qn];
      }
    }
    e2d_[a] = to;
    --count_[p];
    ++count_[to];
    load_[p] -= g_.load[a];
    load_[to] += g_.load[a];
  }

  void apply_swap(int a, int b) {
    const int p = e2d_[a], q = e2d_[b];
    apply_move(a, q);
    apply_move(b, p);
  }

  // table_[a*D + d] = move_delta(a, d) for every expert and device, in one pass per expert
  // (O(sum of degrees * k)) instead of D passes.
  void compute_move_table() {
    const int k = g_.top_k;
    std::vector<std::int64_t> conn(d_), node_conn(n_);
    std::vector<std::int64_t> mark(d_), node_mark(n_);
    for (int a = 0; a < e_; ++a) {
      const int p = e2d_[a];
      const int pn = node_of(p);
      std::fill(conn.begin(), conn.end(), 0);
      std::fill(node_conn.begin(), node_conn.end(), 0);
      std::fill(mark.begin(), mark.end(), -1);
      std::fill(node_mark.begin(), node_mark.end(), -1);
      std::int64_t total = 0, freed = 0, node_freed = 0;
      for (std::int32_t h : g_.edges_of(a)) {
        const std::int64_t w = g_.edge_weights[h];
        total += w;
        if (cnt_dev_[static_cast<std::size_t>(h) * d_ + p] == 1) freed += w;
        if (n_ > 1 && cnt_node_[static_cast<std::size_t>(h) * n_ + pn] == 1) node_freed += w;
        for (int j = 0; j < k; ++j) {
          const int dev = e2d_[g_.pins[static_cast<std::size_t>(h) * k + j]];
          if (mark[dev] != h) {
            mark[dev] = h;
            conn[dev] += w;
            const int node = node_of(dev);
            if (node_mark[node] != h) {
              node_mark[node] = h;
              node_conn[node] += w;
            }
          }
        }
      }
      for (int dev = 0; dev < d_; ++dev) {
        std::int64_t delta = 0;
        if (dev != p) {
          delta = (total - conn[dev]) - freed;
          const int node = node_of(dev);
          if (n_ > 1 && node != pn) delta += node_unit_ * ((total - node_conn[node]) - node_freed);
        }
        table_[static_cast<std::size_t>(a) * d_ + dev] = delta;
      }
    }
  }

  // Best-improvement descent: improving swaps (and, when E % D != 0, moves from a device with
  // ceil(E/D) experts to one with floor(E/D)) that keep every device load <= limit. Candidates
  // are ranked by the move table (a lower bound on a swap's exact delta) and each is
  // re-evaluated exactly on the current state before it is applied.
  void descend(std::int64_t limit) {
    const bool uneven = e_ % d_ != 0;
    const int max_passes = 64;
    for (int pass = 0; pass < max_passes; ++pass) {
      compute_move_table();
      candidates_.clear();
      for (int a = 0; a < e_; ++a) {
        const int p = e2d_[a];
        for (int b = a + 1; b < e_; ++b) {
          const int q = e2d_[b];
          if (p == q) continue;
          const std::int64_t bound = table_[static_cast<std::size_t>(a) * d_ + q] +
                                     table_[static_cast<std::size_t>(b) * d_ + p];
          if (bound < 0) candidates_.push_back({bound, a, b});
        }
        if (uneven) {
          for (int dev = 0; dev < d_; ++dev) {
            const std::int64_t delta = table_[static_cast<std::size_t>(a) * d_ + dev];
            if (dev != p && count_[dev] < count_[p] && delta < 0) {
              candidates_.push_back({delta, a, -1 - dev});
            }
          }
        }
      }
      if (candidates_.empty()) return;
      std::sort(candidates_.begin(), candidates_.end());
      bool improved = false;
      int misses = 0;
      // After this many exact evaluations in a row that do not improve, the table is too stale
      // to guide the walk; start a new pass with a fresh one.
      const int max_misses = 4 * e_;
      for (const auto& [bound, a, other] : candidates_) {
        if (misses > max_misses) break;
        if (other >= 0) {
          const int b = other;
          const int p = e2d_[a], q = e2d_[b];
          if (p == q) continue;
          const std::int64_t lp = load_[p] - g_.load[a] + g_.load[b];
          const std::int64_t lq = load_[q] - g_.load[b] + g_.load[a];
          if ((lp > limit && lp > load_[p]) || (lq > limit && lq > load_[q])) continue;
          if (swap_delta(a, b) < 0) {
            apply_swap(a, b);
            improved = true;
            misses = 0;
          } else {
            ++misses;
          }
        } else {
          const int to = -1 - other;
          const int p = e2d_[a];
          if (p == to || count_[to] >= count_[p]) continue;
          if (load_[to] + g_.load[a] > limit) continue;
          if (move_delta(a, to) < 0) {
            apply_move(a, to);
            improved = true;
            misses = 0;
          } else {
            ++misses;
          }
        }
      }
      if (!improved) return;
    }
  }

  // Lowers the maximum device load below `limit` where swaps or count-preserving moves can;
  // among the swaps that fix the heaviest device, takes the one the move table rates cheapest.
  void repair(std::int64_t limit) {
    const bool uneven = e_ % d_ != 0;
    for (int guard = 0; guard < 4 * e_ * d_ && max_load() > limit; ++guard) {
      const int p = static_cast<int>(std::max_element(load_.begin(), load_.end()) - load_.begin());
      compute_move_table();
      // key: (0, cost bound) when both devices end within the limit, else (1, new max, bound).
      std::tuple<int, std::int64_t, std::int64_t> best_key{2, 0, 0};
      int best_a = -1, best_b = -1, best_to = -1;
      for (int a = 0; a < e_; ++a) {
        if (e2d_[a] != p) continue;
        for (int b = 0; b < e_; ++b) {
          const int q = e2d_[b];
          if (q == p || g_.load[b] >= g_.load[a]) continue;
          const std::int64_t lp = load_[p] - g_.load[a] + g_.load[b];
          const std::int64_t lq = load_[q] - g_.load[b] + g_.load[a];
          if (lq >= load_[p]) continue;
          const std::int64_t bound = table_[static_cast<std::size_t>(a) * d_ + q] +
                                     table_[static_cast<std::size_t>(b) * d_ + p];
          const std::tuple<int, std::int64_t, std::int64_t> key =
              (lp <= limit && lq <= limit) ? std::make_tuple(0, std::int64_t{0}, bound)
                                           : std::make_tuple(1, std::max(lp, lq), bound);
          if (key < best_key) {
            best_key = key;
            best_a = a;
            best_b = b;
            best_to = -1;
          }
        }
        if (uneven) {
          for (int dev = 0; dev < d_; ++dev) {
            if (dev == p || count_[dev] >= count_[p]) continue;
            const std::int64_t lq = load_[dev] + g_.load[a];
            const std::int64_t lp = load_[p] - g_.load[a];
            if (lq >= load_[p]) continue;
            const std::int64_t bound = table_[static_cast<std::size_t>(a) * d_ + dev];
            const std::tuple<int, std::int64_t, std::int64_t> key =
                (lp <= limit && lq <= limit) ? std::make_tuple(0, std::int64_t{0}, bound)
                                             : std::make_tuple(1, std::max(lp, lq), bound);
            if (key < best_key) {
              best_key = key;
              best_a = a;
              best_b = -1;
              best_to = dev;
            }
          }
        }
      }
      if (best_a < 0) return;  // no swap lowers the heaviest device: the limit is out of reach
      if (best_b >= 0) {
        apply_swap(best_a, best_b);
      } else {
        apply_move(best_a, best_to);
      }
    }
  }

  // Random load-feasible swaps, to leave a local optimum.
  void perturb(std::mt19937_64& rng, int num_swaps, std::int64_t limit) {
    for (int done = 0, tries = 0; done < num_swaps && tries < 64 * num_swaps; ++tries) {
      const int a = static_cast<int>(rng() % static_cast<std::uint64_t>(e_));
      const int b = static_cast<int>(rng() % static_cast<std::uint64_t>(e_));
      const int p = e2d_[a], q = e2d_[b];
      if (p == q) continue;
      const std::int64_t lp = load_[p] - g_.load[a] + g_.load[b];
      const std::int64_t lq = load_[q] - g_.load[b] + g_.load[a];
      if ((lp > limit && lp > load_[p]) || (lq > limit && lq > load_[q])) continue;
      apply_swap(a, b);
      ++done;
    }
  }

 private:
  int node_of(int dev) const { return dev * n_ / d_; }

  const CollaborationGraph& g_;
  int e_, d_, n_;
  std::int64_t node_unit_;
  std::vector<int> e2d_;
  std::vector<int> count_;
  std::vector<std::int64_t> load_;
  std::vector<std::uint8_t> cnt_dev_;   // [H, D] pins of hyperedge h on device d
  std::vector<std::uint8_t> cnt_node_;  // [H, N] pins of hyperedge h on node n (N > 1 only)
  std::vector<std::uint32_t> stamp_;    // [H] marks a's hyperedges during swap_delta
  std::uint32_t stamp_counter_ = 0;
  std::vector<std::int64_t> table_;     // [E, D] move deltas
  std::vector<std::tuple<std::int64_t, int, int>> candidates_;
  std::int64_t cost_ = 0;
};

}  // namespace

std::int64_t hypergraph_objective(const CollaborationGraph& graph,
                                  std::span<const int> expert_to_device, int num_devices,
                                  int num_nodes) {
  std::int64_t nodes = 0;
  const std::int64_t devices = connectivity(graph, expert_to_device, num_devices, num_nodes, &nodes);
  return num_nodes > 1 ? nodes * node_unit(graph, num_nodes) + devices : devices;
}

namespace {
PartitionOptions options_for(int num_devices, int num_nodes) {
  PartitionOptions options;
  options.num_devices = num_devices;
  options.num_nodes = num_nodes;
  return options;
}
void check_placement_for(const CollaborationGraph& graph, std::span<const int> expert_to_device,
                         int num_devices, int num_nodes) {
  OCCULT_CHECK(static_cast<int>(expert_to_device.size()) == graph.num_experts,
               "expert_to_device has {} entries, expected {}", expert_to_device.size(),
               graph.num_experts);
  OCCULT_CHECK(num_devices >= 1 && num_nodes >= 1 && num_devices % num_nodes == 0,
               "num_nodes ({}) must divide num_devices ({})", num_nodes, num_devices);
  for (int dev : expert_to_device) {
    OCCULT_CHECK(dev >= 0 && dev < num_devices, "device {} outside [0, {})", dev, num_devices);
  }
}
}  // namespace

std::int64_t hypergraph_swap_delta(const CollaborationGraph& graph,
                                   std::span<const int> expert_to_device, int num_devices,
                                   int num_nodes, int a, int b) {
  check_placement_for(graph, expert_to_device, num_devices, num_nodes);
  OCCULT_CHECK(a >= 0 && a < graph.num_experts && b >= 0 && b < graph.num_experts,
               "swap of experts {} and {} outside [0, {})", a, b, graph.num_experts);
  if (expert_to_device[a] == expert_to_device[b]) return 0;
  Refiner refiner(graph, options_for(num_devices, num_nodes),
                  std::vector<int>(expert_to_device.begin(), expert_to_device.end()));
  return refiner.swap_delta(a, b);
}

std::int64_t hypergraph_move_delta(const CollaborationGraph& graph,
                                   std::span<const int> expert_to_device, int num_devices,
                                   int num_nodes, int a, int to) {
  check_placement_for(graph, expert_to_device, num_devices, num_nodes);
  OCCULT_CHECK(a >= 0 && a < graph.num_experts && to >= 0 && to < num_devices,
               "move of expert {} to device {} out of range", a, to);
  Refiner refiner(graph, options_for(num_devices, num_nodes),
                  std::vector<int>(expert_to_device.begin(), expert_to_device.end()));
  return refiner.move_delta(a, to);
}

std::vector<std::int64_t> hypergraph_move_table(const CollaborationGraph& graph,
                                                std::span<const int> expert_to_device,
                                                int num_devices, int num_nodes) {
  check_placement_for(graph, expert_to_device, num_devices, num_nodes);
  Refiner refiner(graph, options_for(num_devices, num_nodes),
                  std::vector<int>(expert_to_device.begin(), expert_to_device.end()));
  refiner.compute_move_table();
  return refiner.move_table();
}

std::vector<int> repair_load(const CollaborationGraph& graph, std::vector<int> expert_to_device,
                             const PartitionOptions& options) {
  check_partition_options(graph, options);
  OCCULT_CHECK(is_balanced(expert_to_device, options.num_devices) &&
                   static_cast<int>(expert_to_device.size()) == graph.num_experts,
               "repair_load: the placement must be balanced over {} devices", options.num_devices);
  Refiner refiner(graph, options, std::move(expert_to_device));
  refiner.repair(load_limit(graph, options));
  return refiner.placement();
}

std::vector<int> partition_hypergraph(const CollaborationGraph& graph,
                                      const PartitionOptions& options) {
  const int e = graph.num_experts;
  const int d = options.num_devices;
  if (d == 1) return std::vector<int>(e, 0);
  const std::int64_t limit = load_limit(graph, options);

  // Starts: every other strategy (and the warm start), each repaired to the load limit.
  std::vector<std::vector<int>> starts = {
      partition_greedy_fps(graph, options), partition_metis(graph, options),
      partition_contiguous(graph, options), partition_random(graph, options)};
  if (!options.warm_start.empty()) starts.push_back(options.warm_start);

  // Rank: within the limit first, then the lower maximum load, then the lower objective.
  auto rank = [&](const Refiner& r) {
    const std::int64_t max_load = r.max_load();
    return std::make_tuple(max_load > limit ? max_load : 0, r.cost());
  };
  std::vector<int> best;
  std::tuple<std::int64_t, std::int64_t> best_rank{std::numeric_limits<std::int64_t>::max(), 0};
  for (std::vector<int>& start : starts) {
    Refiner refiner(graph, options, std::move(start));
    refiner.repair(limit);
    // Never let refinement raise the maximum load beyond what the repair reached.
    refiner.descend(std::max(limit, refiner.max_load()));
    if (rank(refiner) < best_rank) {
      best_rank = rank(refiner);
      best = refiner.placement();
    }
  }

  // Iterated local search: perturb the best with a few random swaps, descend, keep if better.
  std::mt19937_64 rng(options.seed ^ 0x9e3779b97f4a7c15ULL);
  Refiner refiner(graph, options, best);
  const std::int64_t effective_limit = std::max(limit, refiner.max_load());
  const int perturb_swaps = std::max(2, e / 16);
  for (int round = 0; round < options.num_restarts; ++round) {
    Refiner trial(graph, options, best);
    trial.perturb(rng, perturb_swaps, effective_limit);
    trial.descend(effective_limit);
    if (rank(trial) < best_rank) {
      best_rank = rank(trial);
      best = trial.placement();
    }
  }
  return best;
}

}  // namespace occult
