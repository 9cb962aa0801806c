// The building blocks of one decoder layer that every architecture family shares, used by both
// the training forward/backward (model.cc) and the KV-cache inference engine (inference.cc), so
// the two compute a layer with the same arithmetic:
//   - the attention projections: q/k/v (optional biases), QK-norm over the whole projection
//     (OLMoE) or per head (Qwen3-MoE); RoPE and the attention itself stay with the caller, which
//     either runs full causal attention or attends against a KV cache;
//   - the layer's dense SwiGLU branch: a dense MLP on a dense layer, or the shared expert of an
//     MoE layer, optionally scaled by sigmoid(shared_expert_gate . x) (Qwen2-MoE).
// Backward functions accumulate (+=) into dx and into the parameter gradients, like ops.h.
#pragma once

#include <cstdint>

#include "occult/linalg/linear.h"
#include "occult/model/config.h"

namespace occult {

// The dense tensors of one decoder layer: pointers into the model's dense arenas, null where
// the architecture has no such tensor. P points at vectors and small matrices (F32 always); M at
// the large projection matrices, which an inference model may hold in BF16.
template <typename P, typename M>
struct LayerParams {
  P ln1 = nullptr;                      // input_layernorm [H]
  M q = {}, k = {}, v = {}, o = {};     // [QD,H], [KD,H], [KD,H], [H,QD]
  P q_bias = nullptr, k_bias = nullptr, v_bias = nullptr, o_bias = nullptr;
  P q_norm = nullptr, k_norm = nullptr;  // [QD] / [KD] (full) or [hd] (per head)
  P ln2 = nullptr;                       // post_attention_layernorm [H]
  P router = nullptr;                    // [E,H], MoE layers only
  M mlp_gate = {}, mlp_up = {}, mlp_down = {};  // dense MLP or shared expert
  P shared_gate = nullptr;  // [1,H] sigmoid gate of the shared expert
};

// A layer's weights (matrices in F32 or BF16) and its gradients (F32).
using LayerWeights = LayerParams<const float*, WeightRef>;
using LayerGrads = LayerParams<float*, float*>;

// What the q/k/v projection keeps for backward (or scratch of the same sizes at inference):
// the projections before QK-norm and the norms' rstd. Unused when the model has no QK-norm.
struct QkvSaved {
  float* q_pre = nullptr;   // [N, QD]
  float* k_pre = nullptr;   // [N, KD]
  float* q_rstd = nullptr;  // [N * NH]
  float* k_rstd = nullptr;  // [N * NKV]
};

// q[N,QD], k[N,KD], v[N,KD] (overwrites) = the projections of x[N,H] with their biases, then q
// and k normalised by the config's QK-norm. RoPE is not applied.
void qkv_forward(const ModelConfig& c, const LayerWeights& w, const float* x,
                 std::int64_t N, float* q, float* k, float* v, const QkvSaved& saved);
// Backward of qkv_forward from dq, dk, dv (the gradients of its outputs): dx[N,H] += d/dx, and
// the projection, bias and norm gradients. scratch_q [N,QD] and scratch_k [N,KD] are scratch.
void qkv_backward(const ModelConfig& c, const LayerWeights& w,
                  const LayerGrads& g, const float* x, std::int64_t N, const float* dq,
                  const float* dk, const float* dv, const QkvSaved& saved, float* dx,
                  float* scratch_q, float* scratch_k);

// out[N,H] = atty[N,QD] @ o^T (+ o_bias) (overwrites).
void output_projection_forward(const ModelConfig& c, const LayerWeights& w,
                               const float* atty, std::int64_t N, float* out);
// datty[N,QD] += d/d atty, and the o_proj (and bias) gradients, given dout[N,H].
void output_projection_backward(const ModelConfig& c, const LayerWeights& w,
                                const LayerGrads& g, const float* atty, std::int64_t N,
                                const float* dout, float* datty);

// What the SwiGLU branch keeps for backward (or scratch at inference).
struct MlpSaved {
  float* h1 = nullptr;   // [N, F] gate_proj output
  float* h3 = nullptr;   // [N, F] up_proj output
  float* hh = nullptr;   // [N, F] silu(h1) * h3
  float* y = nullptr;    // [N, H] the branch's output before its sigmoid gate (gated only)
  float* sig = nullptr;  // [N] sigmoid(shared_gate . x) (gated only)
};

// out[N,H] += s(x) * down(silu(gate x) * up x), s = sigmoid(shared_gate . x) when w.shared_gate is
// set, else 1; F is the branch's width. `tmp` is [N,H] scratch.
void mlp_forward(const LayerWeights& w, const float* x, std::int64_t N, int H, int F,
                 float* out, const MlpSaved& saved, float* tmp);
// dx[N,H] += d/dx of mlp_forward's contribution given dout[N,H], and its parameter gradients.
// dh1, dh3, dhh [N,F] and dy [N,H] are scratch.
void mlp_backward(const LayerWeights& w, const LayerGrads& g, const float* x,
                  std::int64_t N, int H, int F, const float* dout, const MlpSaved& saved, float* dx,
                  float* dh1, float* dh3, float* dhh, float* dy);

}  // namespace occult
