// The naive reference twin of the MoE layer: one process, every expert, plain loops in double
// accumulation, no communication and no BLAS. It defines the numbers the expert-parallel
// layer must reproduce (tests) and is the model's gradient-check oracle. DESIGN.md, "The MoE
// layer", is the specification; pruning follows "Collaboration pruning".
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "occult/moe/moe_layer.h"

namespace occult {

// All of a layer's weights, every expert included (the reference holds the whole layer).
struct ReferenceMoeWeights {
  std::vector<float> router;     // [E, H]
  std::vector<float> gate_proj;  // [E, F, H] W1
  std::vector<float> up_proj;    // [E, F, H] W3
  std::vector<float> down_proj;  // [E, H, F] W2
  std::vector<float> selection_bias;  // [E] when config.selection_bias, else empty

  // Zero-filled weights of the config's shapes.
  static ReferenceMoeWeights zeros(const MoeLayerConfig& config);
  // The same values MoeLayer::init_random(seed, scale) gives, for every expert.
  static ReferenceMoeWeights random(const MoeLayerConfig& config, std::uint64_t seed, float scale);
};

// What the reference forward keeps for its backward (and for comparisons).
struct ReferenceMoeState {
  std::int64_t num_tokens = 0;
  std::vector<float> probs;                  // [T, E] router scores (empty if imposed)
  std::vector<std::int32_t> topk_ids;        // [T, k] final experts (after pruning)
  std::vector<float> topk_weights;           // [T, k] gate weights
  std::vector<std::int32_t> weight_source;   // [T, k] expert whose score gave the weight
  bool routing_imposed = false;
};

// x [T, H] -> y [T, H]. `expert_to_device` is needed only when config.prune.max_devices > 0
// (pruning keeps devices); capacity dropping is not modelled (use capacity_factor 0).
void reference_moe_forward(const MoeLayerConfig& config, const ReferenceMoeWeights& weights,
                           std::span<const float> x, std::int64_t num_tokens,
                           std::span<const int> expert_to_device, ReferenceMoeState& state,
                           std::span<float> y);

// As reference_moe_forward with imposed routing (no router; weights used as given).
void reference_moe_forward_with_routing(const MoeLayerConfig& config,
                                        const ReferenceMoeWeights& weights,
                                        std::span<const float> x, std::int64_t num_tokens,
                                        std::span<const std::int32_t> topk_ids,
                                        std::span<const float> topk_weights,
                                        ReferenceMoeState& state, std::span<float> y);

// dy [T, H] -> dx [T, H] (overwritten); accumulates weight gradients into `grads` (same
// shapes as the weights; call ReferenceMoeWeights::zeros first). `d_router_probs` [T, E] may
// be empty. The router gradient is skipped when the routing was imposed.
void reference_moe_backward(const MoeLayerConfig& config, const ReferenceMoeWeights& weights,
                            const ReferenceMoeState& state, std::span<const float> x,
                            std::span<const float> dy, std::span<const float> d_router_probs,
                            std::span<float> dx, ReferenceMoeWeights& grads);

// The naive routing of one token set: scores, top-k of score + selection bias among the kept
// groups (descending, ties to the lower id; experts of other groups compete with key 0),
// pruning to config.prune.max_devices devices when set, and gate weights with their sources.
void reference_route(const MoeLayerConfig& config, std::span<const float> logits,
                     std::int64_t num_tokens, std::span<const int> expert_to_device,
                     ReferenceMoeState& state, std::span<const float> selection_bias = {});

// The deterministic initial value init_random gives element `index` of tensor `tensor_id`
// (0 = router, 1 + 3e + {0,1,2} = expert e's gate/up/down), uniform in [-scale, scale).
float moe_init_value(std::uint64_t seed, std::uint64_t tensor_id, std::uint64_t index, float scale);

}  // namespace occult
