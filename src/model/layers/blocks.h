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
  P router_bias = nullptr;  // [E] selection bias of the router (DeepSeek-V3), MoE layers only
  // Multi-head latent attention (config.mla()); q above is q_proj when q_lora_rank is 0.
  M q_a = {}, q_b = {};     // [QL,H], [NH*QK,QL]
  P q_a_norm = nullptr;     // [QL]
  M kv_a = {}, kv_b = {};   // [KL+R,H], [NH*(NOPE+V),KL]
  P kv_a_norm = nullptr;    // [KL]
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

// Multi-head latent attention (DeepSeek-V2/V3). The attention kernels run on NH heads of
// hd = config.head_dim() values: q and k hold [nope | rope | zeros], v holds [v | zeros], so
// the scores and outputs are those of the unpadded heads; q is pre-scaled so that the kernels'
// 1/sqrt(hd) becomes the family's 1/sqrt(qk_nope_head_dim + qk_rope_head_dim).
// RMSNorm epsilon of q_a_layernorm and kv_a_layernorm (Hugging Face builds them with its
// default, not the config's rms_norm_eps).
inline constexpr float kMlaLatentNormEps = 1e-6f;
// Floats of one token's latent row (what the KV cache keeps): kv_lora_rank + qk_rope_head_dim.
inline int mla_latent_width(const ModelConfig& c) { return c.kv_lora_rank + c.qk_rope_head_dim; }
// Floats of scratch mla_project and mla_expand need for N rows.
std::int64_t mla_scratch_floats(const ModelConfig& c, std::int64_t N);
// What mla_project keeps for mla_backward (all null at inference): the q latent before and after
// q_a_layernorm and that norm's rstd (q_lora_rank > 0 only), c_kv before kv_a_layernorm and its
// rstd.
struct MlaSaved {
  float* q_latent = nullptr;       // [N, QL]
  float* q_latent_norm = nullptr;  // [N, QL]
  float* q_rstd = nullptr;         // [N]
  float* kv_latent = nullptr;      // [N, KL]
  float* kv_rstd = nullptr;        // [N]
};
// q[N, NH*hd] (overwrites) and latent[N, KL+R] = [RMSNorm(c_kv) | k_pe] of x[N,H], RoPE applied
// to q's rope part and to k_pe at positions[n] (Hugging Face DeepSeek RoPE: the rope part is
// de-interleaved, even entries then odd, then rotated by rotate_half). Fills `saved` where set.
void mla_project(const ModelConfig& c, const LayerWeights& w, const float* x, std::int64_t N,
                 const int* positions, float* q, float* latent, float* scratch, const MlaSaved& saved = {});
// k, v [N, NH*hd] (overwrite) of latent rows [N, KL+R] (as mla_project wrote them): per head
// k = [k_nope | k_pe | zeros], v = [v | zeros].
void mla_expand(const ModelConfig& c, const LayerWeights& w, const float* latent, std::int64_t N,
                float* k, float* v, float* scratch);
// Floats of scratch mla_attend_absorbed needs for N query rows attending over at most
// `max_keys` cached positions.
std::int64_t mla_absorbed_scratch_floats(const ModelConfig& c, std::int64_t N, std::int64_t max_keys);
// Attention of N query rows against cached latents without expanding them into keys and values
// (the absorbed form of multi-head latent attention): per head h, with W_UK_h [NOPE, KL] and
// W_UV_h [V, KL] the key and value rows of kv_b,
//   scores_t = scale * ([q_nope W_UK_h | q_rope] . latent_t),  o_h = (softmax(scores) . c_kv) W_UV_h^T,
// which equals attending over mla_expand's keys and values up to the order of the sums.
// q [N, NH*hd] as mla_project wrote it (pre-scaled, so scale = 1/sqrt(hd)); row n attends over
// its own latent rows latents[n][0 .. lengths[n]) ([lengths[n], KL+R], as mla_project wrote
// them). out [N, NH*v_head_dim] (overwrites). The weight products run with this thread's GEMM
// options, the products with the latents in F32.
void mla_attend_absorbed(const ModelConfig& c, const LayerWeights& w, const float* q, std::int64_t N,
                         const float* const* latents, const int* lengths, float* out, float* scratch);
// atty[N, NH*hd] -> atty[N, NH*v_head_dim] in place: each head's first v_head_dim values.
void mla_compact_heads(const ModelConfig& c, float* atty, std::int64_t N);
// The inverse for gradients: d[N, NH*v_head_dim] -> d[N, NH*hd] in place, padding zeros.
void mla_pad_heads(const ModelConfig& c, float* d, std::int64_t N);
// Floats of scratch mla_backward needs for N rows.
std::int64_t mla_backward_scratch_floats(const ModelConfig& c, std::int64_t N);
// Backward of mla_project then mla_expand, from dq, dk, dv [N, NH*hd] (the gradients of the
// padded heads), the latent rows mla_project wrote and what it saved: dx[N,H] += d/dx, and the
// gradients of q_proj (or q_a_proj, q_a_layernorm, q_b_proj), kv_a_proj_with_mqa,
// kv_a_layernorm and kv_b_proj accumulate into g. F32 weights only (training).
void mla_backward(const ModelConfig& c, const LayerWeights& w, const LayerGrads& g, const float* x, std::int64_t N,
                  const int* positions, const float* dq, const float* dk, const float* dv, const float* latent,
                  const MlaSaved& saved, float* dx, float* scratch);

// out[N,H] = atty[N,AD] @ o^T (+ o_bias) (overwrites); AD = config.attention_out_dim().
void output_projection_forward(const ModelConfig& c, const LayerWeights& w,
                               const float* atty, std::int64_t N, float* out);
// datty[N,AD] += d/d atty, and the o_proj (and bias) gradients, given dout[N,H].
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
