// Collaboration pruning (DESIGN.md, "Collaboration pruning"): restrict every token to at most
// M devices (and optionally M_nodes nodes) by replacing the selected experts that fall outside
// the kept devices with candidates on the kept devices. Pure functions over spans; on the hot
// path of every MoE forward, so the fast path allocates nothing per token.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "occult/routing/replicas.h"

namespace occult {

// How the kept devices and the replacement experts are chosen.
enum class PruneScheme {
  // Kept devices: the first M distinct devices met walking the top-k in descending p.
  // Replacements: the highest-p not-yet-selected experts on the kept devices (paper Scheme-1).
  kScore,
  // Kept devices as kScore; each replaced expert (in descending p) is swapped for the most
  // similar not-yet-selected expert on a kept device (paper Scheme-2).
  kSimilarity,
  // Kept devices: the M best by device score = sum of the best ceil(k/M) p on the device
  // (DeepSeek-V3 device-limited routing); replacements as kScore.
  kDeviceLimited,
};

// The gate weight a replacement expert receives.
enum class PruneWeights {
  kKeep,       // inherits the replaced expert's weight: the multiset of weights is unchanged
  kRecompute,  // every weight becomes the new expert's own p, normalised by the gating rule
};

// The spelling used on the command line and in JSON ("score", "similarity", "device-limited").
std::string_view prune_scheme_name(PruneScheme scheme);
// Parses a scheme name; nullopt when it is not one.
std::optional<PruneScheme> parse_prune_scheme(std::string_view name);
// "keep" or "recompute".
std::string_view prune_weights_name(PruneWeights weights);
// Parses a weights mode; nullopt when it is not one.
std::optional<PruneWeights> parse_prune_weights(std::string_view name);

// The budget and rules of one pruning call.
struct PruneConfig {
  int num_experts = 0;   // E
  int top_k = 0;         // k
  int num_devices = 0;   // D
  int max_devices = 0;   // M, in [1, D]
  int num_nodes = 1;     // N; devices [n*D/N, (n+1)*D/N) form node n; D % N == 0
  int max_nodes = 0;     // M_nodes in [1, N], or 0 for no node budget
  PruneScheme scheme = PruneScheme::kScore;
  PruneWeights weights = PruneWeights::kKeep;
  // kRecompute only: g_i = p_i / sum over the new selection when set (norm_topk_prob, and
  // always for sigmoid/DeepSeek-V3 gating), g_i = p_i otherwise.
  bool norm_topk_prob = false;
};

// Counters of one or more pruning calls; merge() sums calls (layers, micro-batches).
struct PruneStats {
  std::int64_t num_tokens = 0;
  std::int64_t tokens_changed = 0;        // tokens with at least one selection replaced
  std::int64_t selections_replaced = 0;   // (token, expert) selections replaced
  std::int64_t devices_before = 0;        // sum over tokens of distinct devices before
  std::int64_t devices_after = 0;         // same after pruning
  // Gate mass: a selection's mass is its weight, else its router probability, else 1 (ids
  // only). retained = mass of the selections kept, total = mass of all original selections.
  double gate_mass_total = 0;
  double gate_mass_retained = 0;

  // Adds the counters of `other`.
  void merge(const PruneStats& other);
  // C_T before and after (0 when there are no tokens).
  double replicas_per_token_before() const;
  double replicas_per_token_after() const;
  // tokens_changed / num_tokens (0 when there are no tokens).
  double fraction_tokens_changed() const;
  // selections_replaced / (num_tokens * top_k); top_k is the caller's k.
  double fraction_selections_replaced(int top_k) const;
  // gate_mass_retained / gate_mass_total (1 when the total is 0).
  double retained_gate_mass() const;
};

// Reusable scratch for prune_routing: sized on first use for (E, D, k), reused afterwards so
// steady-state calls allocate nothing. Not thread-safe: one workspace per thread.
struct PruneWorkspace {
  // Internal to prune_routing; callers only keep the object alive between calls.
  std::vector<int> device_offsets;     // [D+1] CSR offsets into device_experts
  std::vector<int> device_experts;     // [copies] experts each device holds, ascending id
  std::vector<std::uint64_t> expert_stamp;   // [E] == stamp: selected by the current token
  std::vector<std::uint64_t> device_stamp;   // [D] == stamp: seen; == stamp + 1: kept
  std::vector<std::uint64_t> node_stamp;     // [N]
  std::uint64_t stamp = 0;
  std::vector<float> expert_value;     // [E] p of a selected expert (ids/weights-only input)
  std::vector<int> order;              // [k] slots in descending p
  std::vector<float> value;            // [k] p of each slot
  std::vector<int> kept_devices;       // [<= D]
  std::vector<int> replaced_slots;     // [k]
  std::vector<int> candidate_ids;      // [k]
  std::vector<float> candidate_keys;   // [k]
  std::vector<int> candidate_pool;     // [copies] unselected experts on the kept devices
  std::vector<float> grouped_p;        // [copies] p of device_experts[i] (device-limited)
  std::vector<float> device_score;     // [D]
  std::vector<float> node_score;       // [N]
  std::vector<float> best_values;      // [k] scratch for the best ceil(k/M) p of a device
  std::vector<int> rank_scratch;       // [max(D, N)]
  std::vector<float> new_weights;      // [k]
};

// Throws occult::Error unless the config, placement and similarity fit together: E >= 1,
// 1 <= k <= E, 1 <= M <= D, node budget valid, expert_to_device has E entries in [0, D),
// similarity empty or E x E (required for kSimilarity), and every set of devices a token may
// keep holds at least k experts (else "M devices cannot hold k experts").
void validate_prune_config(const PruneConfig& config, std::span<const int> expert_to_device,
                           std::span<const float> similarity);

// The fewest experts that the devices a token may keep can hold: the sum of the M smallest
// device expert counts, and with a node budget also any single node holding fewer than M
// devices. Pruning needs this to be >= k.
int min_kept_capacity(const PruneConfig& config, std::span<const int> expert_to_device);

// Prunes, in place, the routing of num_tokens tokens so that every token touches at most M
// devices (and M_nodes nodes). ids[T, k]: k distinct expert ids per token. weights[T, k]: gate
// weights, or empty (ids only). router_probs[T, E]: the token's router probabilities p, or
// empty: then p is known for the selected experts only (their weight, or 1 each for ids only)
// and every other candidate ranks below all recorded ones, by ascending expert id.
// similarity[E, E]: expert similarity, needed by kSimilarity only. kRecompute needs
// router_probs and weights. Replaced experts are taken in descending p; under kScore and
// kDeviceLimited the i-th best candidate replaces the i-th of them. When a node budget stops
// the walk short of devices holding k experts, the kept nodes' other devices join, lowest id
// first, until they do (at most M devices in all). With kKeep a replacement takes the slot and weight of the expert
// it replaces (rows stay in descending weight); with kRecompute each changed row is re-sorted
// by new weight, descending, ties to the lower id. Tokens already within budget are unchanged.
// Throws occult::Error naming the token on bad ids and on NaN probabilities.
PruneStats prune_routing(std::span<std::int32_t> ids, std::span<float> weights,
                         std::span<const float> router_probs, std::int64_t num_tokens,
                         std::span<const int> expert_to_device, std::span<const float> similarity,
                         const PruneConfig& config, PruneWorkspace& workspace);

// prune_routing for a placement with replicas: expert e may be served by any device in
// holders.masks[e]. A token is within budget when its experts fit on M devices (an exact minimum
// cover); otherwise kept devices are chosen walking its top-k in descending p, and an expert no
// kept device holds adds the holder that holds the most of the token's experts not yet on a kept
// device (ties to the lower id); the device-limited scheme scores each device over every expert
// it holds. Selected experts no kept device holds are replaced by unselected experts some kept
// device holds, by the scheme's rule. devices_before/after count minimum covers. Equals
// prune_routing on holders.primary when no expert is replicated. A node budget with replicas is
// an error.
PruneStats prune_routing(std::span<std::int32_t> ids, std::span<float> weights,
                         std::span<const float> router_probs, std::int64_t num_tokens,
                         const ExpertHolders& holders, std::span<const float> similarity,
                         const PruneConfig& config, PruneWorkspace& workspace);

}  // namespace occult
