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
#include <optional>
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

// How many of the best starts the hypergraph strategy refines.
constexpr std::size_t kRefinedStarts = 2;

// The largest device load `max_imbalance` allows: floor(max_imbalance * T * k / D).
std::int64_t load_limit(const CollaborationGraph& graph, const PartitionOptions& options) {
  const double mean = static_cast<double>(graph.num_tokens) * graph.top_k / options.num_devices;
  // The epsilon keeps 1.10 * mean from rounding below an exactly representable integer.
  return static_cast<std::int64_t>(std::floor(options.max_imbalance * mean * (1 + 1e-12)));
}

// Incremental state of one placement: pin counts per hyperedge and device/node, device loads
// and expert counts, the objective, and the gain tables that give any single move's exact
// objective change in O(1). The tables are kept up to date by every applied move in
// O(degree * k), instead of being recomputed in O(E * degree * k).
class Refiner {
 public:
  Refiner(const CollaborationGraph& graph, const PartitionOptions& options,
          std::vector<int> expert_to_device)
      : g_(&graph),
        e_(graph.num_experts),
        d_(options.num_devices),
        n_(options.num_nodes),
        k_(graph.top_k),
        node_unit_(node_unit(graph, options.num_nodes)),
        e2d_(std::move(expert_to_device)),
        count_(d_, 0),
        load_(d_, 0),
        cnt_dev_(static_cast<std::size_t>(graph.num_edges()) * d_, 0),
        cnt_node_(n_ > 1 ? static_cast<std::size_t>(graph.num_edges()) * n_ : 0, 0),
        total_(e_, 0),
        freed_(e_, 0),
        node_freed_(e_, 0),
        conn_(static_cast<std::size_t>(e_) * d_, 0),
        node_conn_(static_cast<std::size_t>(e_) * n_, 0) {
    for (int x = 0; x < e_; ++x) {
      ++count_[e2d_[x]];
      load_[e2d_[x]] += g_->load[x];
    }
    for (std::int64_t h = 0; h < g_->num_edges(); ++h) {
      for (int j = 0; j < k_; ++j) {
        const int dev = e2d_[g_->pins[h * k_ + j]];
        ++cnt_dev_[h * d_ + dev];
        if (n_ > 1) ++cnt_node_[h * n_ + node_of(dev)];
      }
    }
    build_tables();
    cost_ = hypergraph_objective(*g_, e2d_, d_, n_);
  }

  std::int64_t cost() const { return cost_; }
  const std::vector<int>& placement() const { return e2d_; }
  std::int64_t max_load() const { return *std::max_element(load_.begin(), load_.end()); }

  // Total device load above `limit` (the penalty term of the penalised descent).
  std::int64_t overload(std::int64_t limit) const {
    std::int64_t over = 0;
    for (std::int64_t l : load_) over += std::max<std::int64_t>(0, l - limit);
    return over;
  }

  // Exact objective change of moving expert a to device `to`, from the gain tables (O(1)).
  std::int64_t gain_delta(int a, int to) const {
    const int p = e2d_[a];
    if (p == to) return 0;
    const std::size_t row = static_cast<std::size_t>(a);
    std::int64_t delta = (total_[a] - conn_[row * d_ + to]) - freed_[a];
    const int qn = node_of(to);
    if (n_ > 1 && qn != node_of(p)) {
      delta += node_unit_ * ((total_[a] - node_conn_[row * n_ + qn]) - node_freed_[a]);
    }
    return delta;
  }

  // The same, recomputed from the pin counts in O(degree): the reference the tables are
  // tested against.
  std::int64_t move_delta(int a, int to) const {
    const int p = e2d_[a];
    if (p == to) return 0;
    const int pn = node_of(p), qn = node_of(to);
    const bool cross_node = n_ > 1 && pn != qn;
    std::int64_t delta = 0;
    for (std::int32_t h : g_->edges_of(a)) {
      const std::int64_t w = g_->edge_weights[h];
      const std::uint8_t* c = dev_counts(h);
      delta += w * ((c[to] == 0) - (c[p] == 1));
      if (cross_node) {
        const std::uint8_t* nc = node_counts(h);
        delta += node_unit_ * w * ((nc[qn] == 0) - (nc[pn] == 1));
      }
    }
    return delta;
  }

  // Exact objective change of exchanging the devices of experts a and b: the two moves'
  // table deltas, corrected on the hyperedges holding both (whose device set a swap leaves
  // unchanged). Their incidence lists are ascending, so a merge finds them.
  std::int64_t swap_delta(int a, int b) const {
    const int p = e2d_[a], q = e2d_[b];
    if (p == q) return 0;
    std::int64_t delta = gain_delta(a, q) + gain_delta(b, p);
    const int pn = node_of(p), qn = node_of(q);
    const bool cross_node = n_ > 1 && pn != qn;
    const std::span<const std::int32_t> ea = g_->edges_of(a), eb = g_->edges_of(b);
    std::size_t i = 0, j = 0;
    while (i < ea.size() && j < eb.size()) {
      if (ea[i] < eb[j]) {
        ++i;
      } else if (eb[j] < ea[i]) {
        ++j;
      } else {
        const std::int32_t h = ea[i];
        const std::int64_t w = g_->edge_weights[h];
        // a's table delta counted "p freed" when a was alone there, b's "q freed" likewise;
        // "q newly touched" / "p newly touched" were already 0 (b / a are there).
        const std::uint8_t* c = dev_counts(h);
        delta += w * ((c[p] == 1) + (c[q] == 1));
        if (cross_node) {
          const std::uint8_t* nc = node_counts(h);
          delta += node_unit_ * w * ((nc[pn] == 1) + (nc[qn] == 1));
        }
        ++i;
        ++j;
      }
    }
    return delta;
  }

  // Moves expert a to device `to`, updating pin counts, gain tables, loads and the cost.
  void apply_move(int a, int to) {
    const int p = e2d_[a];
    if (p == to) return;
    cost_ += gain_delta(a, to);
    const int pn = node_of(p), qn = node_of(to);
    const bool cross_node = n_ > 1 && pn != qn;
    for (std::int32_t h : g_->edges_of(a)) {
      const std::int64_t w = g_->edge_weights[h];
      std::uint8_t* c = dev_counts(h);
      const int cp = c[p], cq = c[to];
      int ncp = 0, ncq = 0;
      if (cross_node) {
        const std::uint8_t* nc = node_counts(h);
        ncp = nc[pn];
        ncq = nc[qn];
      }
      const std::int32_t* pins = g_->pins.data() + static_cast<std::size_t>(h) * k_;
      for (int j = 0; j < k_; ++j) {
        const int x = pins[j];
        const std::size_t row = static_cast<std::size_t>(x);
        // h stops touching p / starts touching `to`.
        if (cp == 1) conn_[row * d_ + p] -= w;
        if (cq == 0) conn_[row * d_ + to] += w;
        if (cross_node) {
          if (ncp == 1) node_conn_[row * n_ + pn] -= w;
          if (ncq == 0) node_conn_[row * n_ + qn] += w;
        }
        if (x == a) {
          // a's own "alone on my device" term moves from p to `to`.
          freed_[x] += w * ((cq == 0) - (cp == 1));
          if (cross_node) node_freed_[x] += w * ((ncq == 0) - (ncp == 1));
          continue;
        }
        const int dx = e2d_[x];
        if (dx == p && cp == 2) freed_[x] += w;  // x is now alone on p
        if (dx == to && cq == 1) freed_[x] -= w; // x is no longer alone on `to`
        if (cross_node) {
          const int nx = node_of(dx);
          if (nx == pn && ncp == 2) node_freed_[x] += w;
          if (nx == qn && ncq == 1) node_freed_[x] -= w;
        }
      }
      --c[p];
      ++c[to];
      if (n_ > 1) {
        std::uint8_t* nc = node_counts(h);
        --nc[pn];
        ++nc[qn];
      }
    }
    e2d_[a] = to;
    --count_[p];
    ++count_[to];
    load_[p] -= g_->load[a];
    load_[to] += g_->load[a];
  }

  void apply_swap(int a, int b) {
    const int p = e2d_[a], q = e2d_[b];
    apply_move(a, q);
    apply_move(b, p);
  }

  // The [E, D] table of gain_delta values.
  std::vector<std::int64_t> move_table() const {
    std::vector<std::int64_t> table(static_cast<std::size_t>(e_) * d_);
    for (int a = 0; a < e_; ++a) {
      for (int dev = 0; dev < d_; ++dev) table[static_cast<std::size_t>(a) * d_ + dev] = gain_delta(a, dev);
    }
    return table;
  }

  // Descent: improving swaps (and, when E % D != 0, moves from a device with ceil(E/D) experts
  // to one with floor(E/D)). With lambda < 0 the load limit is hard: no step may leave a
  // device above `limit` unless it was above it and gets lighter. With lambda >= 0 the step
  // must improve cost + lambda * overload(limit) instead: a continuation path from a good
  // unconstrained placement towards a feasible one (the caller raises lambda), which keeps
  // more of the unconstrained gain than refusing every overloading step.
  // Candidates are ranked by their table bound (a swap's exact delta is never below it), the
  // bound is re-read from the live tables before each exact evaluation.
  void descend(std::int64_t limit, double lambda = -1) {
    const bool uneven = e_ % d_ != 0;
    const bool soft = lambda >= 0;
    auto over = [&](std::int64_t l) { return std::max<std::int64_t>(0, l - limit); };
    // Penalty change of a step that leaves devices p and q with loads lp and lq; under the
    // hard limit, whether the step is admissible.
    auto penalty = [&](int p, int q, std::int64_t lp, std::int64_t lq, bool& admissible) {
      admissible = true;
      if (soft) {
        return lambda * static_cast<double>(over(lp) + over(lq) - over(load_[p]) - over(load_[q]));
      }
      if ((lp > limit && lp > load_[p]) || (lq > limit && lq > load_[q])) admissible = false;
      return 0.0;
    };
    std::vector<std::tuple<double, int, int>> candidates;
    for (int pass = 0; pass < 256; ++pass) {
      candidates.clear();
      for (int a = 0; a < e_; ++a) {
        const int p = e2d_[a];
        for (int b = a + 1; b < e_; ++b) {
          const int q = e2d_[b];
          if (p == q) continue;
          const std::int64_t table_bound = gain_delta(a, q) + gain_delta(b, p);
          if (!soft && table_bound >= 0) continue;
          bool ok = true;
          const double bound =
              static_cast<double>(table_bound) +
              penalty(p, q, load_[p] - g_->load[a] + g_->load[b], load_[q] - g_->load[b] + g_->load[a], ok);
          if (ok && bound < 0) candidates.push_back({bound, a, b});
        }
        if (uneven) {
          for (int dev = 0; dev < d_; ++dev) {
            if (dev == p || count_[dev] >= count_[p]) continue;
            bool ok = true;
            const double delta =
                static_cast<double>(gain_delta(a, dev)) +
                penalty(p, dev, load_[p] - g_->load[a], load_[dev] + g_->load[a], ok);
            if (ok && delta < 0) candidates.push_back({delta, a, -1 - dev});
          }
        }
      }
      if (candidates.empty()) return;
      std::sort(candidates.begin(), candidates.end());
      bool improved = false;
      for (const auto& [ranked, a, other] : candidates) {
        const int p = e2d_[a];
        bool ok = true;
        double exact = 0;
        if (other >= 0) {
          const int b = other;
          const int q = e2d_[b];
          if (p == q) continue;
          const double pen =
              penalty(p, q, load_[p] - g_->load[a] + g_->load[b], load_[q] - g_->load[b] + g_->load[a], ok);
          if (!ok || static_cast<double>(gain_delta(a, q) + gain_delta(b, p)) + pen >= 0) continue;
          exact = static_cast<double>(swap_delta(a, b)) + pen;
          if (exact < 0) {
            apply_swap(a, b);
            improved = true;
          }
        } else {
          const int to = -1 - other;
          if (p == to || count_[to] >= count_[p]) continue;
          const double pen = penalty(p, to, load_[p] - g_->load[a], load_[to] + g_->load[a], ok);
          exact = static_cast<double>(gain_delta(a, to)) + pen;
          if (ok && exact < 0) {
            apply_move(a, to);
            improved = true;
          }
        }
      }
      if (!improved) return;
    }
  }

  // Lowers the maximum device load below `limit` where swaps or count-preserving moves can;
  // among the steps that relieve the heaviest device, takes the one with the lowest bound.
  void repair(std::int64_t limit) {
    const bool uneven = e_ % d_ != 0;
    for (int guard = 0; guard < 4 * e_ * d_ && max_load() > limit; ++guard) {
      const int p = static_cast<int>(std::max_element(load_.begin(), load_.end()) - load_.begin());
      // key: (0, cost bound) when both devices end within the limit, else (1, new max, bound).
      std::tuple<int, std::int64_t, std::int64_t> best_key{2, 0, 0};
      int best_a = -1, best_b = -1, best_to = -1;
      for (int a = 0; a < e_; ++a) {
        if (e2d_[a] != p) continue;
        for (int b = 0; b < e_; ++b) {
          const int q = e2d_[b];
          if (q == p || g_->load[b] >= g_->load[a]) continue;
          const std::int64_t lp = load_[p] - g_->load[a] + g_->load[b];
          const std::int64_t lq = load_[q] - g_->load[b] + g_->load[a];
          if (lq >= load_[p]) continue;
          const std::int64_t bound = gain_delta(a, q) + gain_delta(b, p);
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
            const std::int64_t lq = load_[dev] + g_->load[a];
            const std::int64_t lp = load_[p] - g_->load[a];
            if (lq >= load_[p]) continue;
            const std::int64_t bound = gain_delta(a, dev);
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
      if (best_a < 0) return;  // no step relieves the heaviest device: the limit is out of reach
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
      const std::int64_t lp = load_[p] - g_->load[a] + g_->load[b];
      const std::int64_t lq = load_[q] - g_->load[b] + g_->load[a];
      if ((lp > limit && lp > load_[p]) || (lq > limit && lq > load_[q])) continue;
      apply_swap(a, b);
      ++done;
    }
  }

 private:
  int node_of(int dev) const { return dev * n_ / d_; }
  std::uint8_t* dev_counts(std::int32_t h) { return cnt_dev_.data() + static_cast<std::size_t>(h) * d_; }
  const std::uint8_t* dev_counts(std::int32_t h) const {
    return cnt_dev_.data() + static_cast<std::size_t>(h) * d_;
  }
  std::uint8_t* node_counts(std::int32_t h) { return cnt_node_.data() + static_cast<std::size_t>(h) * n_; }
  const std::uint8_t* node_counts(std::int32_t h) const {
    return cnt_node_.data() + static_cast<std::size_t>(h) * n_;
  }

  // total_[x] = weight of x's hyperedges; conn_[x][d] = weight of those touching device d;
  // freed_[x] = weight of those where x is alone on its device (node_* likewise for nodes).
  // Then moving x to d changes the objective by (total - conn[d]) - freed (+ node terms).
  void build_tables() {
    std::vector<std::int64_t> mark(d_, -1), node_mark(n_, -1);
    for (int a = 0; a < e_; ++a) {
      const int p = e2d_[a];
      const int pn = node_of(p);
      const std::size_t row = static_cast<std::size_t>(a);
      std::fill(mark.begin(), mark.end(), -1);
      std::fill(node_mark.begin(), node_mark.end(), -1);
      for (std::int32_t h : g_->edges_of(a)) {
        const std::int64_t w = g_->edge_weights[h];
        total_[a] += w;
        if (dev_counts(h)[p] == 1) freed_[a] += w;
        if (n_ > 1 && node_counts(h)[pn] == 1) node_freed_[a] += w;
        for (int j = 0; j < k_; ++j) {
          const int dev = e2d_[g_->pins[static_cast<std::size_t>(h) * k_ + j]];
          if (mark[dev] == h) continue;
          mark[dev] = h;
          conn_[row * d_ + dev] += w;
          const int node = node_of(dev);
          if (node_mark[node] != h) {
            node_mark[node] = h;
            node_conn_[row * n_ + node] += w;
          }
        }
      }
    }
  }

  const CollaborationGraph* g_;  // a pointer, so refiners can be sorted and assigned
  int e_, d_, n_, k_;
  std::int64_t node_unit_;
  std::vector<int> e2d_;
  std::vector<int> count_;
  std::vector<std::int64_t> load_;
  std::vector<std::uint8_t> cnt_dev_;   // [H, D] pins of hyperedge h on device d
  std::vector<std::uint8_t> cnt_node_;  // [H, N] pins of hyperedge h on node n (N > 1 only)
  std::vector<std::int64_t> total_, freed_, node_freed_;  // [E]
  std::vector<std::int64_t> conn_;       // [E, D]
  std::vector<std::int64_t> node_conn_;  // [E, N]
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
                                                int num_devices, int num_nodes,
                                                std::span<const std::pair<int, int>> moves_first,
                                                std::vector<int>* placement_after) {
  check_placement_for(graph, expert_to_device, num_devices, num_nodes);
  Refiner refiner(graph, options_for(num_devices, num_nodes),
                  std::vector<int>(expert_to_device.begin(), expert_to_device.end()));
  for (const auto& [expert, device] : moves_first) {
    OCCULT_CHECK(expert >= 0 && expert < graph.num_experts && device >= 0 && device < num_devices,
                 "move of expert {} to device {} out of range", expert, device);
    refiner.apply_move(expert, device);
  }
  if (placement_after) *placement_after = refiner.placement();
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
  // Refiners are copied rather than rebuilt: a copy is a few memcpys, a build a graph pass.
  std::optional<Refiner> best;
  auto offer = [&](const Refiner& candidate) {
    if (!best || rank(candidate) < rank(*best)) best.emplace(candidate);
  };

  // Refine only the best few starts by objective: the baselines far behind (contiguous and
  // random, typically) would cost many moves to bring level and rarely finish ahead.
  std::vector<Refiner> refiners;
  for (std::vector<int>& start : starts) refiners.emplace_back(graph, options, std::move(start));
  std::stable_sort(refiners.begin(), refiners.end(),
                   [](const Refiner& a, const Refiner& b) { return a.cost() < b.cost(); });
  const std::size_t kept = std::min<std::size_t>(refiners.size(), kRefinedStarts);
  if (!options.warm_start.empty()) {
    // The warm start is refined whatever its rank (it was built last).
    const auto warm = std::find_if(refiners.begin(), refiners.end(), [&](const Refiner& r) {
      return r.placement() == options.warm_start;
    });
    if (warm - refiners.begin() >= static_cast<std::ptrdiff_t>(kept)) std::iter_swap(warm, refiners.begin() + kept - 1);
  }
  refiners.erase(refiners.begin() + static_cast<std::ptrdiff_t>(kept), refiners.end());

  std::optional<Refiner> unconstrained;
  for (Refiner& refiner : refiners) {
    // Continuation candidates: each start's unconstrained local optimum.
    Refiner free_descent(refiner);
    free_descent.descend(std::numeric_limits<std::int64_t>::max());
    if (!unconstrained || free_descent.cost() < unconstrained->cost()) {
      unconstrained.emplace(free_descent);
    }
    refiner.repair(limit);
    // Never let refinement raise the maximum load beyond what the repair reached.
    refiner.descend(std::max(limit, refiner.max_load()));
    offer(refiner);
  }

  // Continuation: from the best unconstrained optimum, raise the overload penalty step by step
  // until the placement fits the limit; then repair any remainder and descend under it.
  {
    Refiner path(*unconstrained);
    // The penalty starts small against the objective's unit (one device of one token) and
    // doubles; 40 doublings reach ~1e10, beyond any swap's connectivity change.
    double lambda = 1.0 / 64;
    for (int step = 0; step < 40 && path.overload(limit) > 0; ++step, lambda *= 2) {
      path.descend(limit, lambda);
    }
    path.repair(limit);
    path.descend(std::max(limit, path.max_load()));
    offer(path);
  }

  // Iterated local search: perturb the best with a few random swaps, descend, keep if better.
  std::mt19937_64 rng(options.seed ^ 0x9e3779b97f4a7c15ULL);
  const std::int64_t effective_limit = std::max(limit, best->max_load());
  const int perturb_swaps = std::max(2, e / 16);
  for (int round = 0; round < options.num_restarts; ++round) {
    Refiner trial(*best);
    trial.perturb(rng, perturb_swaps, effective_limit);
    trial.descend(effective_limit);
    offer(trial);
  }
  return best->placement();
}

}  // namespace occult
