// Synthetic routing traces with planted structure: groups of experts that tokens co-select and
// hot experts with skewed load. Placement tests use the planted groups as a known optimum
// (a partitioner should recover them), and benchmarks use large synthetic traces.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "occult/routing/trace.h"

namespace occult {

// What to plant. The generator is deterministic for a given options value (same seed, same
// trace, on every platform: it uses its own RNG and distributions, not <random>'s).
struct SynthOptions {
  int num_experts = 64;        // E
  int top_k = 6;               // k, 1 <= k <= E
  int num_layers = 1;          // L >= 1
  std::int64_t num_tokens = 4096;  // T >= 1
  // G: experts are split into G planted groups of E/G experts each (G must divide E). The
  // assignment is a seeded shuffle per layer, so groups are not runs of contiguous ids.
  int num_groups = 1;
  // Probability that each of a token's k picks comes from the token's own group (its other
  // picks come from outside it). Every token has one group, drawn uniformly, the same in
  // every layer (a token's "topic"). When a pool runs out of distinct experts the pick comes
  // from the other pool, so every token still has k distinct experts.
  double group_affinity = 0.9;
  // H hot experts per layer (chosen by the seed); the hot expert of rank r = 1..H is picked
  // with relative weight 1 + hot_skew / r against weight 1 for the others (a Zipf-like tail).
  int hot_experts = 0;
  double hot_skew = 4.0;
  // Mean sequence length; 0 writes no sequence_lengths. Lengths are uniform in
  // [ceil(S/2), floor(3S/2)], the last one cut so they sum to T.
  std::int64_t sequence_length = 0;
  // Also record router_probs [T, E]: a softmax over E logits in which the chosen experts have
  // the k highest probabilities, in the chosen (descending) order. Costs T*E floats per layer.
  bool router_probs = false;
  std::uint64_t seed = 0;
  std::string model = "synthetic";
  std::string dataset = "occult trace synth";
};

// A synthetic trace and the structure planted in it.
struct SynthTrace {
  Trace trace;  // validated; weights present and descending per token
  // expert_group[l][e] = planted group of expert e in layer l, in [0, G).
  std::vector<std::vector<int>> expert_group;
  // hot_experts[l] = layer l's hot experts, hottest first.
  std::vector<std::vector<int>> hot_experts;
  // token_group[t] = the group of token t (the same in every layer).
  std::vector<int> token_group;
};

// Generates a trace per `options`; throws occult::Error naming the option that is invalid.
// `on_layer_done(l)`, when given, is called after layer l is generated (progress display).
SynthTrace synthesize_trace(const SynthOptions& options,
                            const std::function<void(int)>& on_layer_done = {});

// The planted optimum as a placement for `num_devices` devices: group g on device g. Requires
// num_groups == num_devices (throws otherwise); balanced because groups have equal size.
std::vector<int> planted_expert_to_device(const SynthTrace& synth, int layer, int num_devices);

}  // namespace occult
