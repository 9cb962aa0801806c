// The naive twin of prune_routing: DESIGN.md's "Collaboration pruning" applied literally to one
// token at a time with sets and full sorts.
#include <algorithm>
#include <set>
#include <vector>

#include "occult/core/error.h"
#include "routing/reference.h"

namespace occult::reference {

namespace {

struct Ranked {
  float value;
  int id;
};

// Descending value, ties to the lower id.
bool ranks_before(const Ranked& a, const Ranked& b) {
  return a.value != b.value ? a.value > b.value : a.id < b.id;
}

// Sum of the best `count` values, summed from the best down.
float sum_of_best(std::vector<float> values, int count) {
  std::sort(values.begin(), values.end(), [](float a, float b) { return a > b; });
  float sum = 0.0f;
  for (int i = 0; i < count && i < static_cast<int>(values.size()); ++i) sum += values[i];
  return sum;
}

// The `count` best of `ranked`, by ranks_before.
std::vector<int> best_ids(std::vector<Ranked> ranked, int count) {
  std::sort(ranked.begin(), ranked.end(), ranks_before);
  std::vector<int> out;
  for (int i = 0; i < count && i < static_cast<int>(ranked.size()); ++i) out.push_back(ranked[i].id);
  return out;
}

// The whole pruning, with device_experts[d] the experts device d holds; `replicated` counts
// devices per token as minimum covers (without replicas, the distinct primary devices).
PruneStats prune_with_holders(std::span<std::int32_t> ids, std::span<float> weights,
                              std::span<const float> router_probs, std::int64_t num_tokens,
                              std::span<const int> expert_to_device,
                              const std::vector<std::vector<int>>& device_experts, bool replicated,
                              std::span<const float> similarity, const PruneConfig& config) {
  validate_prune_config(config, expert_to_device, similarity);
  const int e = config.num_experts;
  const int k = config.top_k;
  const int d = config.num_devices;
  const int m = config.max_devices;
  const bool has_probs = !router_probs.empty();
  const bool has_weights = !weights.empty();
  OCCULT_CHECK(ids.size() == static_cast<std::size_t>(num_tokens * k), "reference prune: ids shape");
  OCCULT_CHECK(!has_weights || weights.size() == ids.size(), "reference prune: weights shape");
  OCCULT_CHECK(!has_probs || router_probs.size() == static_cast<std::size_t>(num_tokens * e),
               "reference prune: router_probs shape");
  OCCULT_CHECK(config.weights == PruneWeights::kKeep || (has_probs && has_weights),
               "reference prune: recompute needs router_probs and weights");
  auto node_of = [&](int device) { return device * config.num_nodes / d; };
  std::vector<std::vector<int>> holders(e);
  for (int dev = 0; dev < d; ++dev) {
    for (int x : device_experts[dev]) holders[x].push_back(dev);
  }
  for (auto& h : holders) std::sort(h.begin(), h.end());
  auto holds = [&](int dev, int expert) {
    return std::find(device_experts[dev].begin(), device_experts[dev].end(), expert) != device_experts[dev].end();
  };
  // Devices the token touches: a minimum cover with replicas, else its distinct primaries.
  auto devices_of = [&](const std::vector<int>& selection) -> std::int64_t {
    if (replicated) {
      const std::vector<std::int32_t> token(selection.begin(), selection.end());
      return min_cover_devices(device_experts, token);
    }
    std::set<int> devices;
    for (int id : selection) devices.insert(expert_to_device[id]);
    return static_cast<std::int64_t>(devices.size());
  };

  PruneStats stats;
  for (std::int64_t t = 0; t < num_tokens; ++t) {
    std::vector<int> sel(ids.begin() + t * k, ids.begin() + (t + 1) * k);
    std::set<int> sel_set;
    for (int id : sel) {
      OCCULT_CHECK(id >= 0 && id < e, "reference prune: token {} id {} out of range", t, id);
      OCCULT_CHECK(sel_set.insert(id).second, "reference prune: token {} repeats expert {}", t, id);
    }
    // p of a selected slot: its router probability, else its weight, else 1 (ids only).
    auto slot_value = [&](int j) {
      return has_probs ? router_probs[t * e + sel[j]] : has_weights ? weights[t * k + j] : 1.0f;
    };
    auto mass = [&](int j) {
      return has_weights ? static_cast<double>(weights[t * k + j])
                         : has_probs ? static_cast<double>(router_probs[t * e + sel[j]]) : 1.0;
    };
    // p of any expert as the device-limited score sees it: unrecorded experts count 0.
    auto expert_value = [&](int expert) -> float {
      if (has_probs) return router_probs[t * e + expert];
      for (int j = 0; j < k; ++j) {
        if (sel[j] == expert) return slot_value(j);
      }
      return 0.0f;
    };

    std::set<int> nodes_before;
    for (int id : sel) nodes_before.insert(node_of(expert_to_device[id]));
    const std::int64_t devices_before = devices_of(sel);
    ++stats.num_tokens;
    stats.devices_before += devices_before;
    const bool within = devices_before <= m &&
                        (config.max_nodes == 0 || static_cast<int>(nodes_before.size()) <= config.max_nodes);
    if (within) {
      stats.devices_after += devices_before;
      for (int j = 0; j < k; ++j) {
        stats.gate_mass_total += mass(j);
        stats.gate_mass_retained += mass(j);
      }
      continue;
    }

    // Slots in descending p.
    std::vector<Ranked> slots;
    for (int j = 0; j < k; ++j) slots.push_back({slot_value(j), j});
    std::sort(slots.begin(), slots.end(), [&](const Ranked& a, const Ranked& b) {
      return a.value != b.value ? a.value > b.value : sel[a.id] < sel[b.id];
    });

    // Kept devices (in the order they were chosen).
    std::vector<int> kept;
    auto is_kept = [&](int expert) {
      for (int dev : holders[expert]) {
        if (std::find(kept.begin(), kept.end(), dev) != kept.end()) return true;
      }
      return false;
    };
    if (config.scheme != PruneScheme::kDeviceLimited) {
      std::vector<int> kept_nodes;
      for (const Ranked& slot : slots) {
        const int x = sel[slot.id];
        if (is_kept(x)) continue;
        if (static_cast<int>(kept.size()) == m) break;
        // The holder holding the most selected experts that no kept device holds; lower id on ties.
        int device = -1;
        int best_count = -1;
        for (int dev : holders[x]) {
          int count = 0;
          for (int y : sel) count += (!is_kept(y) && holds(dev, y)) ? 1 : 0;
          if (count > best_count) {
            best_count = count;
            device = dev;
          }
        }
        if (config.max_nodes > 0 &&
            std::find(kept_nodes.begin(), kept_nodes.end(), node_of(device)) == kept_nodes.end()) {
          if (static_cast<int>(kept_nodes.size()) == config.max_nodes) continue;
          kept_nodes.push_back(node_of(device));
        }
        kept.push_back(device);
      }
      // A node budget can stop the walk short of M devices that hold k experts: add the
      // kept nodes' other devices, lowest id first, until they do.
      auto capacity = [&] {
        int c = 0;
        for (int x = 0; x < e; ++x) c += is_kept(x) ? 1 : 0;
        return c;
      };
      for (int dev = 0; dev < d && static_cast<int>(kept.size()) < m && capacity() < k; ++dev) {
        if (std::find(kept_nodes.begin(), kept_nodes.end(), node_of(dev)) != kept_nodes.end() &&
            std::find(kept.begin(), kept.end(), dev) == kept.end()) {
          kept.push_back(dev);
        }
      }
    } else {
      std::vector<bool> allowed(d, true);
      if (config.max_nodes > 0) {
        const int per_node = (k + config.max_nodes - 1) / config.max_nodes;
        std::vector<Ranked> node_scores;
        for (int n = 0; n < config.num_nodes; ++n) {
          std::vector<float> values;
          for (int x = 0; x < e; ++x) {
            bool in_node = false;
            for (int dev : holders[x]) in_node = in_node || node_of(dev) == n;
            if (in_node) values.push_back(expert_value(x));
          }
          node_scores.push_back({sum_of_best(values, per_node), n});
        }
        const std::vector<int> kept_nodes = best_ids(node_scores, config.max_nodes);
        for (int dev = 0; dev < d; ++dev) {
          allowed[dev] = std::find(kept_nodes.begin(), kept_nodes.end(), node_of(dev)) != kept_nodes.end();
        }
      }
      const int per_device = (k + m - 1) / m;
      std::vector<Ranked> device_scores;
      for (int dev = 0; dev < d; ++dev) {
        if (!allowed[dev]) continue;
        std::vector<float> values;
        for (int x : device_experts[dev]) values.push_back(expert_value(x));
        device_scores.push_back({sum_of_best(values, per_device), dev});
      }
      kept = best_ids(device_scores, m);
    }

    // Replaced slots, in descending p; candidates: unselected experts on kept devices.
    std::vector<int> replaced;
    for (const Ranked& slot : slots) {
      if (!is_kept(sel[slot.id])) replaced.push_back(slot.id);
    }
    std::vector<int> candidates;
    for (int x = 0; x < e; ++x) {
      if (is_kept(x) && !sel_set.count(x)) candidates.push_back(x);
    }
    OCCULT_CHECK(candidates.size() >= replaced.size(), "reference prune: token {} lacks candidates", t);

    std::vector<int> chosen;
    if (config.scheme == PruneScheme::kSimilarity) {
      std::set<int> taken;
      for (int slot : replaced) {
        int best = -1;
        for (int c : candidates) {
          if (taken.count(c)) continue;
          if (best < 0 || similarity[sel[slot] * e + c] > similarity[sel[slot] * e + best]) best = c;
        }
        taken.insert(best);
        chosen.push_back(best);
      }
    } else {
      // Without router probabilities no candidate has a recorded p: all tie, lower id first.
      std::vector<Ranked> ranked;
      for (int c : candidates) ranked.push_back({has_probs ? router_probs[t * e + c] : 0.0f, c});
      chosen = best_ids(ranked, static_cast<int>(replaced.size()));
    }

    std::vector<bool> is_replaced(k, false);
    for (int slot : replaced) is_replaced[slot] = true;
    for (int j = 0; j < k; ++j) {
      stats.gate_mass_total += mass(j);
      if (!is_replaced[j]) stats.gate_mass_retained += mass(j);
    }
    for (std::size_t i = 0; i < replaced.size(); ++i) sel[replaced[i]] = chosen[i];

    if (config.weights == PruneWeights::kRecompute) {
      std::vector<float> p(k);
      float sum = 0.0f;
      for (int j = 0; j < k; ++j) {
        p[j] = router_probs[t * e + sel[j]];
        sum += p[j];
      }
      OCCULT_CHECK(!config.norm_topk_prob || sum > 0.0f, "reference prune: token {} zero mass", t);
      std::vector<Ranked> row;
      for (int j = 0; j < k; ++j) row.push_back({config.norm_topk_prob ? p[j] / sum : p[j], sel[j]});
      std::sort(row.begin(), row.end(), ranks_before);
      for (int j = 0; j < k; ++j) {
        sel[j] = row[j].id;
        weights[t * k + j] = row[j].value;
      }
    }
    std::copy(sel.begin(), sel.end(), ids.begin() + t * k);

    stats.devices_after += devices_of(sel);
    ++stats.tokens_changed;
    stats.selections_replaced += static_cast<std::int64_t>(replaced.size());
  }
  return stats;
}

}  // namespace

PruneStats prune_routing(std::span<std::int32_t> ids, std::span<float> weights,
                         std::span<const float> router_probs, std::int64_t num_tokens,
                         std::span<const int> expert_to_device, std::span<const float> similarity,
                         const PruneConfig& config) {
  std::vector<std::vector<int>> device_experts(config.num_devices);
  for (std::size_t x = 0; x < expert_to_device.size(); ++x) {
    const int dev = expert_to_device[x];
    OCCULT_CHECK(dev >= 0 && dev < config.num_devices, "reference prune: expert {} on device {}", x, dev);
    device_experts[dev].push_back(static_cast<int>(x));
  }
  return prune_with_holders(ids, weights, router_probs, num_tokens, expert_to_device, device_experts, false,
                            similarity, config);
}

PruneStats prune_routing(std::span<std::int32_t> ids, std::span<float> weights,
                         std::span<const float> router_probs, std::int64_t num_tokens,
                         const std::vector<std::vector<int>>& device_experts, std::span<const int> expert_to_device,
                         std::span<const float> similarity, const PruneConfig& config) {
  OCCULT_CHECK(config.max_nodes == 0, "reference prune: no node budget with replicas");
  return prune_with_holders(ids, weights, router_probs, num_tokens, expert_to_device, device_experts, true,
                            similarity, config);
}

}  // namespace occult::reference
