#include "occult/placement/partitioner.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "occult/core/error.h"
#include "occult/routing/replicas.h"

namespace occult {

namespace {

// Wraps a free-function strategy as a Partitioner.
class FunctionPartitioner final : public Partitioner {
 public:
  using Fn = std::vector<int> (*)(const CollaborationGraph&, const PartitionOptions&);
  FunctionPartitioner(std::string_view name, Fn fn) : name_(name), fn_(fn) {}
  std::string_view name() const override { return name_; }
  std::vector<int> partition(const CollaborationGraph& graph,
                             const PartitionOptions& options) const override {
    check_partition_options(graph, options);
    std::vector<int> result = fn_(graph, options);
    // Every strategy promises a balanced placement; a violation is a bug, not bad input.
    OCCULT_CHECK(is_balanced(result, options.num_devices) &&
                     static_cast<int>(result.size()) == graph.num_experts,
                 "internal error: strategy '{}' returned an unbalanced placement", name_);
    return result;
  }

 private:
  std::string_view name_;
  Fn fn_;
};

struct StrategyEntry {
  std::string_view name;
  FunctionPartitioner::Fn fn;
};

constexpr StrategyEntry kStrategies[] = {
    {"contiguous", &partition_contiguous}, {"random", &partition_random},
    {"greedy-fps", &partition_greedy_fps}, {"metis", &partition_metis},
    {"hypergraph", &partition_hypergraph},
};

}  // namespace

std::unique_ptr<Partitioner> make_partitioner(std::string_view name) {
  for (const StrategyEntry& s : kStrategies) {
    if (s.name == name) return std::make_unique<FunctionPartitioner>(s.name, s.fn);
  }
  OCCULT_FAIL("unknown placement strategy '{}'; expected one of: {}", name,
              fmt::join(partitioner_names(), ", "));
}

std::vector<std::string> partitioner_names() {
  std::vector<std::string> names;
  for (const StrategyEntry& s : kStrategies) names.emplace_back(s.name);
  return names;
}

std::vector<int> balanced_capacities(int num_experts, int num_devices) {
  OCCULT_CHECK(num_devices >= 1 && num_devices <= num_experts,
               "balanced placement needs 1 <= num_devices ({}) <= num_experts ({})", num_devices,
               num_experts);
  std::vector<int> capacity(num_devices, num_experts / num_devices);
  for (int d = 0; d < num_experts % num_devices; ++d) ++capacity[d];
  return capacity;
}

bool is_balanced(std::span<const int> expert_to_device, int num_devices) {
  if (num_devices < 1) return false;
  const int e = static_cast<int>(expert_to_device.size());
  std::vector<int> count(num_devices, 0);
  for (int dev : expert_to_device) {
    if (dev < 0 || dev >= num_devices) return false;
    ++count[dev];
  }
  const int lo = e / num_devices;
  const int hi = (e + num_devices - 1) / num_devices;
  return std::all_of(count.begin(), count.end(), [&](int c) { return c == lo || c == hi; });
}

void check_partition_options(const CollaborationGraph& graph, const PartitionOptions& options) {
  const int e = graph.num_experts;
  const int d = options.num_devices;
  OCCULT_CHECK(e >= 1, "placement: the layer has no experts");
  OCCULT_CHECK(d >= 1 && d <= e, "--devices must lie in [1, num_experts = {}], got {}", e, d);
  OCCULT_CHECK(options.num_nodes >= 1 && options.num_nodes <= d && d % options.num_nodes == 0,
               "--nodes must divide --devices ({}), got {}", d, options.num_nodes);
  OCCULT_CHECK(options.max_imbalance >= 1.0,
               "--max-imbalance must be >= 1 (max device load / mean), got {}",
               options.max_imbalance);
  OCCULT_CHECK(options.num_restarts >= 0, "hypergraph restarts must be >= 0, got {}",
               options.num_restarts);
  OCCULT_CHECK(options.slots_per_device >= 0, "--slots-per-device must be >= 0, got {}", options.slots_per_device);
  OCCULT_CHECK(std::isfinite(options.primary_flatten) && options.primary_flatten >= 0 &&
                   options.primary_flatten <= 1,
               "--primary-flatten must lie in [0, 1], got {}", options.primary_flatten);
  if (options.slots_per_device > 0) {
    const int ceil_count = (e + d - 1) / d;
    OCCULT_CHECK(options.slots_per_device >= ceil_count,
                 "--slots-per-device {} cannot hold {} experts on {} devices: needs at least ceil(E/D) = {}",
                 options.slots_per_device, e, d, ceil_count);
    OCCULT_CHECK(std::isfinite(options.replica_flatten) && options.replica_flatten >= 0 &&
                     options.replica_flatten <= 1,
                 "--replica-flatten must lie in [0, 1], got {}", options.replica_flatten);
    OCCULT_CHECK(d <= kMaxReplicaDevices, "--slots-per-device needs --devices <= {}, got {}", kMaxReplicaDevices, d);
  }
  if (!options.warm_start.empty()) {
    OCCULT_CHECK(static_cast<int>(options.warm_start.size()) == e &&
                     is_balanced(options.warm_start, d),
                 "placement: the warm start must be a balanced placement of {} experts on {} "
                 "devices",
                 e, d);
  }
}

std::vector<int> partition_contiguous(const CollaborationGraph& graph,
                                      const PartitionOptions& options) {
  const int e = graph.num_experts;
  std::vector<int> result(e);
  for (int x = 0; x < e; ++x) {
    result[x] = static_cast<int>(static_cast<std::int64_t>(x) * options.num_devices / e);
  }
  return result;
}

std::vector<int> partition_random(const CollaborationGraph& graph, const PartitionOptions& options) {
  // mt19937_64's output is specified by the standard; the distributions are not, so the
  // bounded draw is done here to give the same placement on every platform.
  std::mt19937_64 rng(options.seed);
  std::vector<int> result;
  const std::vector<int> capacity = balanced_capacities(graph.num_experts, options.num_devices);
  for (int d = 0; d < options.num_devices; ++d) result.insert(result.end(), capacity[d], d);
  for (std::size_t i = result.size(); i > 1; --i) {
    const std::size_t j = static_cast<std::size_t>(rng() % i);
    std::swap(result[i - 1], result[j]);
  }
  return result;
}

std::vector<int> partition_greedy_fps(const CollaborationGraph& graph,
                                      const PartitionOptions& options) {
  const int e = graph.num_experts;
  const int d_count = options.num_devices;
  const std::size_t es = static_cast<std::size_t>(e);
  // Normalised by the maximum, as the paper does (it changes no decision, only the scale).
  const std::int64_t w_max =
      std::max<std::int64_t>(1, *std::max_element(graph.coactivation.begin(), graph.coactivation.end()));
  std::vector<double> c(es * es);
  for (std::size_t i = 0; i < es * es; ++i) c[i] = static_cast<double>(graph.coactivation[i]) / w_max;

  const std::vector<int> capacity = balanced_capacities(e, d_count);
  std::vector<int> result(e, -1);
  std::vector<int> placed;  // every placed expert, for the next seed's "all placed" mean
  std::vector<double> sum_to_placed(es, 0.0);
  auto place = [&](int x, int dev) {
    result[x] = dev;
    placed.push_back(x);
    for (std::size_t y = 0; y < es; ++y) sum_to_placed[y] += c[y * es + x];
  };

  for (int dev = 0; dev < d_count; ++dev) {
    std::vector<int> members;
    std::vector<double> sum_to_members(es, 0.0);
    auto add_member = [&](int x) {
      place(x, dev);
      members.push_back(x);
      for (std::size_t y = 0; y < es; ++y) sum_to_members[y] += c[y * es + x];
    };
    if (dev == 0) {
      // The most co-activated pair (ties: lower ids).
      int best_i = 0, best_j = e > 1 ? 1 : 0;
      double best = -1;
      for (int i = 0; i < e; ++i) {
        for (int j = i + 1; j < e; ++j) {
          if (c[i * es + j] > best) {
            best = c[i * es + j];
            best_i = i;
            best_j = j;
          }
        }
      }
      add_member(best_i);
      if (capacity[0] >= 2 && best_j != best_i) add_member(best_j);
    } else {
      // The unplaced expert least co-activated, on average, with everything placed so far.
      int seed_expert = -1;
      double lowest = std::numeric_limits<double>::infinity();
      for (int x = 0; x < e; ++x) {
        if (result[x] != -1) continue;
        const double mean = sum_to_placed[x] / static_cast<double>(placed.size());
        if (mean < lowest) {
          lowest = mean;
          seed_expert = x;
        }
      }
      add_member(seed_expert);
    }
    while (static_cast<int>(members.size()) < capacity[dev]) {
      // The unplaced expert most co-activated, on average, with this device's members.
      int best_x = -1;
      double best = -1;
      for (int x = 0; x < e; ++x) {
        if (result[x] != -1) continue;
        const double mean = sum_to_members[x] / static_cast<double>(members.size());
        if (mean > best) {
          best = mean;
          best_x = x;
        }
      }
      add_member(best_x);
    }
  }
  return result;
}

}  // namespace occult
