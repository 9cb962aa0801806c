#include "occult/routing/pruning.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#include "occult/core/error.h"

namespace occult {

std::string_view prune_scheme_name(PruneScheme scheme) {
  switch (scheme) {
    case PruneScheme::kScore: return "score";
    case PruneScheme::kSimilarity: return "similarity";
    case PruneScheme::kDeviceLimited: return "device-limited";
  }
  return "?";
}

std::optional<PruneScheme> parse_prune_scheme(std::string_view name) {
  for (PruneScheme s : {PruneScheme::kScore, PruneScheme::kSimilarity, PruneScheme::kDeviceLimited}) {
    if (prune_scheme_name(s) == name) return s;
  }
  return std::nullopt;
}

std::string_view prune_weights_name(PruneWeights weights) {
  return weights == PruneWeights::kKeep ? "keep" : "recompute";
}

std::optional<PruneWeights> parse_prune_weights(std::string_view name) {
  if (name == "keep") return PruneWeights::kKeep;
  if (name == "recompute") return PruneWeights::kRecompute;
  return std::nullopt;
}

void PruneStats::merge(const PruneStats& other) {
  num_tokens += other.num_tokens;
  tokens_changed += other.tokens_changed;
  selections_replaced += other.selections_replaced;
  devices_before += other.devices_before;
  devices_after += other.devices_after;
  gate_mass_total += other.gate_mass_total;
  gate_mass_retained += other.gate_mass_retained;
}

double PruneStats::replicas_per_token_before() const {
  return num_tokens == 0 ? 0.0 : static_cast<double>(devices_before) / static_cast<double>(num_tokens);
}

double PruneStats::replicas_per_token_after() const {
  return num_tokens == 0 ? 0.0 : static_cast<double>(devices_after) / static_cast<double>(num_tokens);
}

double PruneStats::fraction_tokens_changed() const {
  return num_tokens == 0 ? 0.0 : static_cast<double>(tokens_changed) / static_cast<double>(num_tokens);
}

double PruneStats::fraction_selections_replaced(int top_k) const {
  const double selections = static_cast<double>(num_tokens) * top_k;
  return selections == 0 ? 0.0 : static_cast<double>(selections_replaced) / selections;
}

double PruneStats::retained_gate_mass() const {
  return gate_mass_total == 0 ? 1.0 : gate_mass_retained / gate_mass_total;
}

int min_kept_capacity(const PruneConfig& config, std::span<const int> expert_to_device) {
  const int d = config.num_devices;
  OCCULT_CHECK(d >= 1, "collaboration pruning: num_devices must be >= 1, got {}", d);
  std::vector<int> counts(d, 0);
  for (std::size_t x = 0; x < expert_to_device.size(); ++x) {
    const int device = expert_to_device[x];
    OCCULT_CHECK(device >= 0 && device < d,
                 "collaboration pruning: expert_to_device[{}] = {} is outside [0, num_devices={})", x,
                 device, d);
    ++counts[device];
  }
  std::vector<int> sorted = counts;
  std::sort(sorted.begin(), sorted.end());
  int capacity = 0;
  for (int i = 0; i < std::min(config.max_devices, d); ++i) capacity += sorted[i];
  // With a node budget a token may keep a single node; when that node has fewer than M
  // devices the token can only use that node's experts.
  if (config.max_nodes > 0 && config.num_nodes >= 1 && d % config.num_nodes == 0 &&
      d / config.num_nodes < config.max_devices) {
    for (int n = 0; n < config.num_nodes; ++n) {
      int node_total = 0;
      for (int dev = n * d / config.num_nodes; dev < (n + 1) * d / config.num_nodes; ++dev) {
        node_total += counts[dev];
      }
      capacity = std::min(capacity, node_total);
    }
  }
  return capacity;
}

void validate_prune_config(const PruneConfig& config, std::span<const int> expert_to_device,
                           std::span<const float> similarity) {
  const int e = config.num_experts;
  OCCULT_CHECK(e >= 1, "collaboration pruning: num_experts must be >= 1, got {}", e);
  OCCULT_CHECK(config.top_k >= 1 && config.top_k <= e,
               "collaboration pruning: top_k must be in [1, num_experts={}], got {}", e, config.top_k);
  OCCULT_CHECK(config.num_devices >= 1, "collaboration pruning: num_devices must be >= 1, got {}",
               config.num_devices);
  OCCULT_CHECK(config.max_devices >= 1 && config.max_devices <= config.num_devices,
               "collaboration pruning: max_devices (M) must be in [1, num_devices={}], got {}",
               config.num_devices, config.max_devices);
  OCCULT_CHECK(config.num_nodes >= 1 && config.num_nodes <= config.num_devices &&
                   config.num_devices % config.num_nodes == 0,
               "collaboration pruning: num_nodes={} must divide num_devices={}", config.num_nodes,
               config.num_devices);
  OCCULT_CHECK(config.max_nodes >= 0 && config.max_nodes <= config.num_nodes,
               "collaboration pruning: max_nodes must be 0 (no node budget) or in [1, num_nodes={}], "
               "got {}",
               config.num_nodes, config.max_nodes);
  OCCULT_CHECK(expert_to_device.size() == static_cast<std::size_t>(e),
               "collaboration pruning: expert_to_device has {} entries, expected num_experts={}",
               expert_to_device.size(), e);
  OCCULT_CHECK(similarity.empty() || similarity.size() == static_cast<std::size_t>(e) * e,
               "collaboration pruning: similarity has {} entries, expected num_experts^2 = {}",
               similarity.size(), static_cast<std::size_t>(e) * e);
  OCCULT_CHECK(config.scheme != PruneScheme::kSimilarity || !similarity.empty(),
               "collaboration pruning: the similarity scheme needs an E x E expert similarity matrix");
  for (std::size_t i = 0; i < similarity.size(); ++i) {
    OCCULT_CHECK(std::isfinite(similarity[i]),
                 "collaboration pruning: similarity[{}][{}] is not finite", i / e, i % e);
  }
  const int capacity = min_kept_capacity(config, expert_to_device);
  OCCULT_CHECK(capacity >= config.top_k,
               "collaboration pruning: max_devices M={}{} cannot hold top_k={} experts: the fewest "
               "experts a token's kept devices may hold in this placement is {}; raise the device "
               "(or node) budget",
               config.max_devices,
               config.max_nodes > 0 ? fmt::format(" with max_nodes={}", config.max_nodes) : "",
               config.top_k, capacity);
}

namespace {

// Descending value, ties to the lower id: the one order of DESIGN.md.
inline bool ranks_before(float value_a, int a, float value_b, int b) {
  return value_a > value_b || (value_a == value_b && a < b);
}

// Keeps keys/ids[0, filled) as the best `limit` (value, id) pairs seen, in rank order.
inline void insert_ranked(float* keys, int* ids, int& filled, int limit, float value, int id) {
  if (filled == limit && !ranks_before(value, id, keys[limit - 1], ids[limit - 1])) return;
  int pos = filled < limit ? filled++ : limit - 1;
  while (pos > 0 && ranks_before(value, id, keys[pos - 1], ids[pos - 1])) {
    keys[pos] = keys[pos - 1];
    ids[pos] = ids[pos - 1];
    --pos;
  }
  keys[pos] = value;
  ids[pos] = id;
}

// Keeps best[0, limit) as the best `limit` values seen, descending (initialised to -inf):
// a branch-free bubble of max/min, since the device scores of every pruned token pass
// E values through it and data-dependent branches would mispredict.
inline void insert_value(float* best, int limit, float value) {
  for (int i = 0; i < limit; ++i) {
    const float hi = best[i] > value ? best[i] : value;
    value = best[i] > value ? value : best[i];
    best[i] = hi;
  }
}

void prepare_workspace(PruneWorkspace& ws, const PruneConfig& config,
                       std::span<const int> expert_to_device, const ExpertHolders* holders) {
  const int e = config.num_experts;
  const int d = config.num_devices;
  const int k = config.top_k;
  // Growing only: a workspace reused with the same shapes never allocates again; stamps
  // only increase, so entries left from earlier calls never look current.
  ws.device_offsets.assign(d + 1, 0);
  std::size_t copies = static_cast<std::size_t>(e);
  if (holders) {
    copies = 0;
    for (int x = 0; x < e; ++x) copies += static_cast<std::size_t>(holders->copies(x));
  }
  ws.device_experts.resize(copies);
  ws.expert_stamp.resize(e, 0);
  ws.device_stamp.resize(d, 0);
  ws.node_stamp.resize(config.num_nodes, 0);
  ws.expert_value.resize(e);
  ws.order.resize(k);
  ws.value.resize(k);
  ws.kept_devices.resize(d);
  ws.replaced_slots.resize(k);
  ws.candidate_ids.resize(k);
  ws.candidate_keys.resize(k);
  ws.candidate_pool.resize(copies);
  ws.grouped_p.resize(copies);
  ws.device_score.resize(d);
  ws.node_score.resize(config.num_nodes);
  ws.best_values.resize(k);
  ws.rank_scratch.resize(std::max(d, config.num_nodes));
  ws.new_weights.resize(k);
  // Each device's experts (replicas included), ascending id within the device.
  auto for_each_holder = [&](int x, auto&& fn) {
    if (!holders) {
      fn(expert_to_device[x]);
      return;
    }
    for (std::uint64_t rest = holders->masks[x]; rest != 0; rest &= rest - 1) fn(std::countr_zero(rest));
  };
  for (int x = 0; x < e; ++x) for_each_holder(x, [&](int dev) { ++ws.device_offsets[dev + 1]; });
  for (int dev = 0; dev < d; ++dev) ws.device_offsets[dev + 1] += ws.device_offsets[dev];
  for (int dev = 0; dev < d; ++dev) ws.rank_scratch[dev] = ws.device_offsets[dev];
  for (int x = 0; x < e; ++x) for_each_holder(x, [&](int dev) { ws.device_experts[ws.rank_scratch[dev]++] = x; });
}

// The pruning of every token; holders is null for a placement without replicas (each expert on
// expert_to_device only), which keeps that path free of cover searches.
PruneStats prune_tokens(std::span<std::int32_t> ids, std::span<float> weights,
                        std::span<const float> router_probs, std::int64_t num_tokens,
                        std::span<const int> expert_to_device, const ExpertHolders* holders,
                        std::span<const float> similarity, const PruneConfig& config, PruneWorkspace& ws) {
  const int e = config.num_experts;
  const int k = config.top_k;
  const int d = config.num_devices;
  const int m = config.max_devices;
  const int num_nodes = config.num_nodes;
  const int max_nodes = config.max_nodes;
  const bool node_budget = max_nodes > 0;
  const bool has_probs = !router_probs.empty();
  const bool has_weights = !weights.empty();
  OCCULT_CHECK(num_tokens >= 0, "collaboration pruning: num_tokens must be >= 0, got {}", num_tokens);
  const std::size_t t_count = static_cast<std::size_t>(num_tokens);
  OCCULT_CHECK(ids.size() == t_count * k,
               "collaboration pruning: ids has {} elements, expected num_tokens * top_k = {}",
               ids.size(), t_count * k);
  OCCULT_CHECK(!has_weights || weights.size() == t_count * k,
               "collaboration pruning: weights has {} elements, expected 0 or num_tokens * top_k = {}",
               weights.size(), t_count * k);
  OCCULT_CHECK(!has_probs || router_probs.size() == t_count * e,
               "collaboration pruning: router_probs has {} elements, expected 0 or num_tokens * "
               "num_experts = {}",
               router_probs.size(), t_count * e);
  OCCULT_CHECK(config.weights == PruneWeights::kKeep || (has_probs && has_weights),
               "collaboration pruning: --weights recompute needs router probabilities and weights "
               "(the trace has {}{})",
               has_probs ? "router_probs" : "no router_probs", has_weights ? "" : " and no weights");
  prepare_workspace(ws, config, expert_to_device, holders);
  const std::uint64_t* const masks = holders ? holders->masks.data() : nullptr;

  const int* const offsets = ws.device_offsets.data();
  const int* const device_experts = ws.device_experts.data();
  std::uint64_t* const expert_stamp = ws.expert_stamp.data();
  std::uint64_t* const device_stamp = ws.device_stamp.data();
  std::uint64_t* const node_stamp = ws.node_stamp.data();
  int* const order = ws.order.data();
  float* const value = ws.value.data();
  int* const kept = ws.kept_devices.data();
  int* const replaced = ws.replaced_slots.data();
  int* const cand_ids = ws.candidate_ids.data();
  float* const cand_keys = ws.candidate_keys.data();
  const int* const e2d = expert_to_device.data();
  auto node_of = [&](int device) { return device * num_nodes / d; };

  PruneStats stats;
  for (std::int64_t t = 0; t < num_tokens; ++t) {
    std::int32_t* row = ids.data() + t * k;
    float* wrow = has_weights ? weights.data() + t * k : nullptr;
    const float* prow = has_probs ? router_probs.data() + t * e : nullptr;
    // Per token: stamp s marks selected experts and seen devices/nodes, s + 1 kept devices and
    // nodes, s + 2 devices used after pruning; no clearing is ever needed.
    ws.stamp += 3;
    const std::uint64_t s = ws.stamp;
    int num_dev = 0;
    int num_node = 0;
    for (int j = 0; j < k; ++j) {
      const int id = row[j];
      OCCULT_CHECK(id >= 0 && id < e, "collaboration pruning: token {} selects expert {}, outside [0, {})",
                   t, id, e);
      OCCULT_CHECK(expert_stamp[id] != s, "collaboration pruning: token {} selects expert {} twice", t, id);
      expert_stamp[id] = s;
      if (masks) continue;
      const int dev = e2d[id];
      if (device_stamp[dev] < s) {
        device_stamp[dev] = s;
        ++num_dev;
        if (node_budget && node_stamp[node_of(dev)] < s) {
          node_stamp[node_of(dev)] = s;
          ++num_node;
        }
      }
    }
    if (masks) num_dev = min_cover_devices(*holders, std::span<const std::int32_t>(row, k));
    // Kept devices as a bit mask (replicas only: an expert is kept when any holder is kept).
    std::uint64_t kept_mask = 0;
    auto held_by_kept = [&](int x) {
      return masks ? (masks[x] & kept_mask) != 0 : device_stamp[e2d[x]] == s + 1;
    };
    auto mass = [&](int j) -> double {
      return has_weights ? static_cast<double>(wrow[j]) : has_probs ? static_cast<double>(prow[row[j]]) : 1.0;
    };
    ++stats.num_tokens;
    stats.devices_before += num_dev;
    if (num_dev <= m && (!node_budget || num_node <= max_nodes)) {
      stats.devices_after += num_dev;
      for (int j = 0; j < k; ++j) {
        const double g = mass(j);
        stats.gate_mass_total += g;
        stats.gate_mass_retained += g;
      }
      continue;
    }

    // p of each slot, and the slots in descending p (ties to the lower expert id).
    for (int j = 0; j < k; ++j) {
      const float v = has_probs ? prow[row[j]] : has_weights ? wrow[j] : 1.0f;
      OCCULT_CHECK(v == v, "collaboration pruning: token {} expert {} has a NaN probability or weight", t,
                   row[j]);
      value[j] = v;
      ws.expert_value[row[j]] = v;
      int pos = j;
      while (pos > 0 && ranks_before(v, row[j], value[order[pos - 1]], row[order[pos - 1]])) {
        order[pos] = order[pos - 1];
        --pos;
      }
      order[pos] = j;
    }

    // Kept devices, marked s + 1.
    int num_kept = 0;
    if (config.scheme != PruneScheme::kDeviceLimited) {
      int kept_nodes = 0;
      int capacity = 0;
      for (int i = 0; i < k; ++i) {
        const int x = row[order[i]];
        if (masks) {
          // The holder that holds the most of the token's experts no kept device holds yet.
          if ((masks[x] & kept_mask) != 0) continue;
          if (num_kept == m) break;
          int best = -1;
          int best_count = -1;
          for (std::uint64_t rest = masks[x]; rest != 0; rest &= rest - 1) {
            const int dev = std::countr_zero(rest);
            int count = 0;
            for (int j = 0; j < k; ++j) {
              count += (masks[row[j]] & kept_mask) == 0 && (masks[row[j]] >> dev & 1u) != 0;
            }
            if (count > best_count) {
              best = dev;
              best_count = count;
            }
          }
          kept_mask |= std::uint64_t{1} << best;
          device_stamp[best] = s + 1;
          kept[num_kept++] = best;
          continue;
        }
        const int dev = e2d[x];
        if (device_stamp[dev] == s + 1) continue;
        if (num_kept == m) break;
        if (node_budget && node_stamp[node_of(dev)] != s + 1) {
          if (kept_nodes == max_nodes) continue;
          node_stamp[node_of(dev)] = s + 1;
          ++kept_nodes;
        }
        device_stamp[dev] = s + 1;
        kept[num_kept++] = dev;
        capacity += offsets[dev + 1] - offsets[dev];
      }
      // A node budget can stop the walk short of devices that hold k experts: the kept nodes'
      // other devices join, lowest id first, until they do (min_kept_capacity guarantees it).
      for (int dev = 0; node_budget && dev < d && num_kept < m && capacity < k; ++dev) {
        if (node_stamp[node_of(dev)] == s + 1 && device_stamp[dev] != s + 1) {
          device_stamp[dev] = s + 1;
          kept[num_kept++] = dev;
          capacity += offsets[dev + 1] - offsets[dev];
        }
      }
    } else {
      // Device-limited: score = sum of the best ceil(k/M) p on the device (unrecorded p = 0).
      // p in device-grouped order, so each device (and node) is one contiguous run.
      float* const grouped = ws.grouped_p.data();
      const int copies = offsets[d];  // E, or more with replicas
      if (has_probs) {
        bool nan = false;
        for (int i = 0; i < copies; ++i) {
          grouped[i] = prow[device_experts[i]];
          nan |= grouped[i] != grouped[i];
        }
        OCCULT_CHECK(!nan, "collaboration pruning: token {} has a NaN router probability", t);
      } else {
        for (int i = 0; i < copies; ++i) {
          const int x = device_experts[i];
          grouped[i] = expert_stamp[x] == s ? ws.expert_value[x] : 0.0f;
        }
      }
      float* const best = ws.best_values.data();
      auto score_of = [&](int first_device, int last_device, int count) {
        std::fill(best, best + count, -std::numeric_limits<float>::infinity());
        for (int i = offsets[first_device]; i < offsets[last_device]; ++i) insert_value(best, count, grouped[i]);
        // Sum the best min(count, experts there) values, best first (as the reference twin).
        const int filled = std::min(count, offsets[last_device] - offsets[first_device]);
        float sum = 0.0f;
        for (int i = 0; i < filled; ++i) sum += best[i];
        return sum;
      };
      if (node_budget) {
        const int per_node = (k + max_nodes - 1) / max_nodes;
        for (int n = 0; n < num_nodes; ++n) {
          ws.node_score[n] = score_of(n * d / num_nodes, (n + 1) * d / num_nodes, per_node);
        }
        for (int chosen = 0; chosen < max_nodes; ++chosen) {
          int best = -1;
          for (int n = 0; n < num_nodes; ++n) {
            if (node_stamp[n] == s + 1) continue;
            if (best < 0 || ranks_before(ws.node_score[n], n, ws.node_score[best], best)) best = n;
          }
          node_stamp[best] = s + 1;
        }
      }
      const int per_device = (k + m - 1) / m;
      for (int dev = 0; dev < d; ++dev) {
        const bool allowed = !node_budget || node_stamp[node_of(dev)] == s + 1;
        ws.device_score[dev] = allowed ? score_of(dev, dev + 1, per_device) : 0.0f;
      }
      for (int chosen = 0; chosen < m; ++chosen) {
        int best = -1;
        for (int dev = 0; dev < d; ++dev) {
          if (device_stamp[dev] == s + 1) continue;
          if (node_budget && node_stamp[node_of(dev)] != s + 1) continue;
          if (best < 0 || ranks_before(ws.device_score[dev], dev, ws.device_score[best], best)) best = dev;
        }
        if (best < 0) break;  // the kept nodes hold fewer than M devices
        device_stamp[best] = s + 1;
        kept_mask |= masks ? std::uint64_t{1} << best : 0;
        kept[num_kept++] = best;
      }
    }

    // Replaced slots, in descending p.
    int num_replaced = 0;
    for (int i = 0; i < k; ++i) {
      if (!held_by_kept(row[order[i]])) replaced[num_replaced++] = order[i];
    }

    // Replacements: cand_ids[i] replaces slot replaced[i].
    if (config.scheme == PruneScheme::kSimilarity) {
      int* const pool = ws.candidate_pool.data();
      int pool_size = 0;
      for (int c = 0; c < num_kept; ++c) {
        for (int q = offsets[kept[c]]; q < offsets[kept[c] + 1]; ++q) {
          // s: selected; s + 1: already pooled (a replica on another kept device).
          const int x = device_experts[q];
          if (expert_stamp[x] >= s) continue;
          expert_stamp[x] = s + 1;
          pool[pool_size++] = x;
        }
      }
      OCCULT_CHECK(pool_size >= num_replaced,
                   "collaboration pruning: token {} has {} candidates on its kept devices for {} "
                   "replacements",
                   t, pool_size, num_replaced);
      for (int i = 0; i < num_replaced; ++i) {
        const float* sim_row = similarity.data() + static_cast<std::size_t>(row[replaced[i]]) * e;
        // The pool's order does not matter: ties compare ids explicitly.
        int best = 0;
        for (int q = 1; q < pool_size; ++q) {
          if (ranks_before(sim_row[pool[q]], pool[q], sim_row[pool[best]], pool[best])) best = q;
        }
        cand_ids[i] = pool[best];
        pool[best] = pool[--pool_size];  // taken: not selectable again for this token
      }
    } else {
      // Without router probabilities no candidate has a recorded p: all tie at 0, lower id first.
      int filled = 0;
      for (int c = 0; c < num_kept; ++c) {
        for (int q = offsets[kept[c]]; q < offsets[kept[c] + 1]; ++q) {
          const int x = device_experts[q];
          if (expert_stamp[x] >= s) continue;  // selected, or met on another kept device
          expert_stamp[x] = s + 1;
          const float p = has_probs ? prow[x] : 0.0f;
          OCCULT_CHECK(p == p, "collaboration pruning: token {} expert {} has a NaN probability", t, x);
          insert_ranked(cand_keys, cand_ids, filled, num_replaced, p, x);
        }
      }
      OCCULT_CHECK(filled == num_replaced,
                   "collaboration pruning: token {} has {} candidates on its kept devices for {} "
                   "replacements",
                   t, filled, num_replaced);
    }

    for (int j = 0; j < k; ++j) {
      const double g = mass(j);
      stats.gate_mass_total += g;
      if (held_by_kept(row[j])) stats.gate_mass_retained += g;
    }
    for (int i = 0; i < num_replaced; ++i) row[replaced[i]] = cand_ids[i];

    if (config.weights == PruneWeights::kRecompute) {
      float* w = ws.new_weights.data();
      float sum = 0.0f;
      for (int j = 0; j < k; ++j) {
        w[j] = prow[row[j]];
        sum += w[j];
      }
      OCCULT_CHECK(!config.norm_topk_prob || sum > 0.0f,
                   "collaboration pruning: token {} has zero probability over its pruned experts", t);
      // Re-sort the row by new weight (descending, ties to the lower id): the trace format
      // lists a token's experts in descending weight.
      for (int j = 0; j < k; ++j) {
        const float g = config.norm_topk_prob ? w[j] / sum : w[j];
        const int id = row[j];
        int pos = j;
        while (pos > 0 && ranks_before(g, id, wrow[pos - 1], row[pos - 1])) {
          wrow[pos] = wrow[pos - 1];
          row[pos] = row[pos - 1];
          --pos;
        }
        wrow[pos] = g;
        row[pos] = id;
      }
    }

    int num_after = 0;
    if (masks) num_after = min_cover_devices(*holders, std::span<const std::int32_t>(row, k));
    for (int j = 0; j < k && !masks; ++j) {
      const int dev = e2d[row[j]];
      if (device_stamp[dev] != s + 2) {
        device_stamp[dev] = s + 2;
        ++num_after;
      }
    }
    stats.devices_after += num_after;
    ++stats.tokens_changed;
    stats.selections_replaced += num_replaced;
  }
  return stats;
}

}  // namespace

PruneStats prune_routing(std::span<std::int32_t> ids, std::span<float> weights,
                         std::span<const float> router_probs, std::int64_t num_tokens,
                         std::span<const int> expert_to_device, std::span<const float> similarity,
                         const PruneConfig& config, PruneWorkspace& ws) {
  validate_prune_config(config, expert_to_device, similarity);
  return prune_tokens(ids, weights, router_probs, num_tokens, expert_to_device, nullptr, similarity, config, ws);
}

PruneStats prune_routing(std::span<std::int32_t> ids, std::span<float> weights,
                         std::span<const float> router_probs, std::int64_t num_tokens,
                         const ExpertHolders& holders, std::span<const float> similarity,
                         const PruneConfig& config, PruneWorkspace& ws) {
  validate_prune_config(config, holders.primary, similarity);
  OCCULT_CHECK(holders.num_experts == config.num_experts && holders.num_devices == config.num_devices &&
                   holders.masks.size() == holders.primary.size(),
               "collaboration pruning: the replicas are for {} experts on {} devices, the config for {} on {}",
               holders.num_experts, holders.num_devices, config.num_experts, config.num_devices);
  const bool replicated = holders.replicated();
  OCCULT_CHECK(!replicated || config.max_nodes == 0,
               "collaboration pruning: a node budget (max_nodes = {}) is not supported with replicas", config.max_nodes);
  return prune_tokens(ids, weights, router_probs, num_tokens, holders.primary, replicated ? &holders : nullptr,
                      similarity, config, ws);
}

}  // namespace occult
