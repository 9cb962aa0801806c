// The model's view of one MoE block: what the transformer needs from the MoE layer, so the
// expert-parallel layer of src/moe and the single-process naive block used as its reference
// are interchangeable behind one interface.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "occult/model/config.h"

namespace occult {

class Communicator;
struct ParallelOptions;

// One MoE block instance (one per transformer layer). The router W_r [E,H] is data-parallel and
// lives in the model's dense arena; the experts live in the block (only this rank's).
class MoeBlock {
 public:
  virtual ~MoeBlock() = default;
  // Collective. y[N,H] = MoE(x[N,H]) with router weight router[E,H] and, when the config has
  // one, the selection bias selection_bias[E] (else null) (overwrites y); keeps what backward
  // needs. x must stay alive and unchanged until backward.
  virtual void forward(const float* router, const float* selection_bias, const float* x, std::int64_t N,
                       float* y) = 0;
  // Collective. dx[N,H] += d/dx and d_router[E,H] += d/dW_r (local, not reduced), given dy[N,H]
  // and an extra gradient on the router probabilities d_probs[N,E] (the aux loss). Expert
  // gradients are overwritten (one backward per step).
  virtual void backward(const float* dy, const float* d_probs, float* dx, float* d_router) = 0;
  // Router probabilities [N,E] and selected experts [N,k] of the last forward.
  virtual const float* router_probs() const = 0;
  virtual const std::int32_t* topk_ids() const = 0;
  // Sum over this rank's tokens of the distinct devices each token's kept slots went to in the
  // last forward.
  virtual std::int64_t token_device_pairs() const = 0;
  // Global ids of the experts this rank holds, ascending.
  virtual const std::vector<int>& local_experts() const = 0;
  // Expert e's tensor `kind` (0 gate_proj [F,H], 1 up_proj [F,H], 2 down_proj [H,F]) and its
  // gradient; e must be local.
  virtual std::span<float> expert_weight(int e, int kind) = 0;
  virtual std::span<float> expert_grad(int e, int kind) = 0;
  // The same tensor when the block holds its experts in BF16 (inference); throws otherwise.
  virtual std::span<std::uint16_t> expert_weight_bf16(int e, int kind) = 0;
};

// Builds layer `layer`'s block: the expert-parallel MoeLayer of src/moe (collective).
// `device_experts` lists each device's experts when the placement has replicas (else empty).
std::unique_ptr<MoeBlock> make_moe_block(const ModelConfig& config, Communicator& comm,
                                         const ParallelOptions& options, int layer,
                                         std::span<const int> expert_to_device,
                                         std::vector<std::vector<int>> device_experts);

// Single-process MoE block holding every expert: the naive reference semantics of DESIGN.md
// (softmax router, top-k with ties to the lower id, optional norm_topk_prob, SwiGLU experts).
std::unique_ptr<MoeBlock> make_local_moe_block(const ModelConfig& config);

}  // namespace occult
