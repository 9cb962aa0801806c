#include "model/layers/blocks.h"
#include "model/layers/rope_scaling.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "occult/model/ops.h"

namespace occult {

namespace {

// Rows and width of one QK-norm: the whole projection per token, or each head separately.
struct NormShape {
  std::int64_t rows;
  int cols;
};

NormShape norm_shape(const ModelConfig& c, std::int64_t N, int heads) {
  if (c.qk_norm == QkNorm::kPerHead) return {N * heads, c.head_dim()};
  return {N, heads * c.head_dim()};
}

// out[N,OC] = x @ w^T (+ bias), the projection before any norm.
void project(float* out, const float* x, WeightRef w, const float* bias, std::int64_t N, int IC,
             int OC) {
  linear_forward(out, x, w, N, IC, OC);
  if (bias != nullptr) bias_forward(out, bias, N, OC);
}

// dx += dout @ w, dw += dout^T x, dbias += sum dout.
void project_backward(float* dx, float* dw, float* dbias, const float* dout, const float* x,
                      WeightRef w, std::int64_t N, int IC, int OC) {
  if (dbias != nullptr) bias_backward(dbias, dout, N, OC);
  matmul_backward(dx, dw, dout, x, w.f32("a projection weight"), N, IC, OC);
}

}  // namespace

void qkv_forward(const ModelConfig& c, const LayerWeights& w, const float* x,
                 std::int64_t N, float* q, float* k, float* v, const QkvSaved& saved) {
  const int H = c.hidden_size, NH = c.num_attention_heads, NKV = c.kv_heads();
  const int QD = c.q_dim(), KD = c.kv_dim();
  const bool norm = c.qk_norm != QkNorm::kNone;
  float* qp = norm ? saved.q_pre : q;
  float* kp = norm ? saved.k_pre : k;
  project(qp, x, w.q, w.q_bias, N, H, QD);
  project(kp, x, w.k, w.k_bias, N, H, KD);
  project(v, x, w.v, w.v_bias, N, H, KD);
  if (!norm) return;
  const NormShape qs = norm_shape(c, N, NH), ks = norm_shape(c, N, NKV);
  rmsnorm_forward(q, saved.q_rstd, qp, w.q_norm, qs.rows, qs.cols, c.rms_norm_eps);
  rmsnorm_forward(k, saved.k_rstd, kp, w.k_norm, ks.rows, ks.cols, c.rms_norm_eps);
}

void qkv_backward(const ModelConfig& c, const LayerWeights& w,
                  const LayerGrads& g, const float* x, std::int64_t N, const float* dq,
                  const float* dk, const float* dv, const QkvSaved& saved, float* dx,
                  float* scratch_q, float* scratch_k) {
  const int H = c.hidden_size, NH = c.num_attention_heads, NKV = c.kv_heads();
  const int QD = c.q_dim(), KD = c.kv_dim();
  const float* dqp = dq;
  const float* dkp = dk;
  if (c.qk_norm != QkNorm::kNone) {
    const NormShape qs = norm_shape(c, N, NH), ks = norm_shape(c, N, NKV);
    std::fill(scratch_q, scratch_q + N * QD, 0.0f);
    std::fill(scratch_k, scratch_k + N * KD, 0.0f);
    rmsnorm_backward(scratch_q, g.q_norm, dq, saved.q_pre, w.q_norm, saved.q_rstd, qs.rows,
                     qs.cols);
    rmsnorm_backward(scratch_k, g.k_norm, dk, saved.k_pre, w.k_norm, saved.k_rstd, ks.rows,
                     ks.cols);
    dqp = scratch_q;
    dkp = scratch_k;
  }
  project_backward(dx, g.q, g.q_bias, dqp, x, w.q, N, H, QD);
  project_backward(dx, g.k, g.k_bias, dkp, x, w.k, N, H, KD);
  project_backward(dx, g.v, g.v_bias, dv, x, w.v, N, H, KD);
}

std::int64_t mla_scratch_floats(const ModelConfig& c, std::int64_t N) {
  const std::int64_t NH = c.num_attention_heads;
  const std::int64_t q = c.q_lora_rank + NH * c.qk_head_dim() + 1;  // latent q, q, rstd
  const std::int64_t kv = c.kv_lora_rank + static_cast<std::int64_t>(NH) * (c.qk_nope_head_dim + c.v_head_dim);
  return N * std::max(q, kv);
}

namespace {

// cos and sin of position * inv_freq[i] (the angle in double), times `magnitude`, as floats.
void rope_cos_sin(int position, const std::vector<double>& inv_freq, double magnitude, std::vector<float>& cosv,
                  std::vector<float>& sinv) {
  for (std::size_t i = 0; i < cosv.size(); ++i) {
    const double angle = position * inv_freq[i];
    cosv[i] = static_cast<float>(std::cos(angle) * magnitude);
    sinv[i] = static_cast<float>(std::sin(angle) * magnitude);
  }
}

// Calls rotate(v, cos, sin, tmp) for each of the `heads` vectors of `rd` values per row,
// v = x + n*row + h*stride, with the cos and sin (times `magnitude`, rounded to float as ops.cc's
// RoPE) of the angles positions[n] * inv_freq[i] and a scratch of rd floats.
template <typename Rotate>
void for_each_rope_vector(float* x, std::int64_t N, std::int64_t row, int heads, std::int64_t stride, int rd,
                          const int* positions, const std::vector<double>& inv_freq, double magnitude,
                          Rotate&& rotate) {
  const int half = rd / 2;
  std::vector<float> cosv(half), sinv(half), tmp(rd);
  for (std::int64_t n = 0; n < N; ++n) {
    rope_cos_sin(positions[n], inv_freq, magnitude, cosv, sinv);
    for (int h = 0; h < heads; ++h) rotate(x + n * row + h * stride, cosv, sinv, tmp);
  }
}

// Rotates `heads` vectors of `rd` values per row, x[n*row + h*stride + i], at positions[n]:
// de-interleave (even entries first, odd after), then RoPE with rotate_half pairs (i, i+rd/2)
// at the angle positions[n] * inv_freq[i] (in double), cos and sin times `magnitude` and
// rounded to float as ops.cc's RoPE.
void deepseek_rope(float* x, std::int64_t N, std::int64_t row, int heads, std::int64_t stride, int rd,
                   const int* positions, const std::vector<double>& inv_freq, double magnitude) {
  const int half = rd / 2;
  for_each_rope_vector(x, N, row, heads, stride, rd, positions, inv_freq, magnitude,
                       [half](float* v, const std::vector<float>& cosv, const std::vector<float>& sinv,
                              std::vector<float>& tmp) {
                         for (int i = 0; i < half; ++i) {
                           tmp[i] = v[2 * i];
                           tmp[half + i] = v[2 * i + 1];
                         }
                         for (int i = 0; i < half; ++i) {
                           const float a = tmp[i], b = tmp[i + half];
                           v[i] = a * cosv[i] - b * sinv[i];
                           v[i + half] = b * cosv[i] + a * sinv[i];
                         }
                       });
}

// What mla_project multiplies the query by: the kernels scale scores by 1/sqrt(hd), the family
// by 1/sqrt(qk_nope + qk_rope), times YaRN's softmax multiplier when the RoPE is scaled (exactly
// 1 when the heads are not padded and nothing is scaled).
float mla_query_prescale(const ModelConfig& c) {
  return static_cast<float>(std::sqrt(static_cast<double>(c.head_dim()) / c.qk_head_dim()) *
                            rope_softmax_scale_multiplier(c));
}

// The transpose of deepseek_rope (same arguments): the gradient of its input from the gradient
// of its output, x overwritten. Rotation by the negative angle, times `magnitude`, then the
// de-interleaving undone.
void deepseek_rope_backward(float* x, std::int64_t N, std::int64_t row, int heads, std::int64_t stride, int rd,
                            const int* positions, const std::vector<double>& inv_freq, double magnitude) {
  const int half = rd / 2;
  for_each_rope_vector(x, N, row, heads, stride, rd, positions, inv_freq, magnitude,
                       [half](float* v, const std::vector<float>& cosv, const std::vector<float>& sinv,
                              std::vector<float>& tmp) {
                         for (int i = 0; i < half; ++i) {
                           const float lo = v[i], hi = v[i + half];
                           tmp[2 * i] = lo * cosv[i] + hi * sinv[i];
                           tmp[2 * i + 1] = hi * cosv[i] - lo * sinv[i];
                         }
                         std::copy(tmp.begin(), tmp.end(), v);
                       });
}

}  // namespace

void mla_project(const ModelConfig& c, const LayerWeights& w, const float* x, std::int64_t N,
                 const int* positions, float* q, float* latent, float* scratch, const MlaSaved& saved) {
  const int H = c.hidden_size, NH = c.num_attention_heads, hd = c.head_dim(), QK = c.qk_head_dim(),
            NOPE = c.qk_nope_head_dim, R = c.qk_rope_head_dim, KL = c.kv_lora_rank, QL = c.q_lora_rank;
  // Query heads [N, NH, QK] in scratch, then spread into q's padded heads.
  float* qh = scratch;
  float* rstd = scratch + N * NH * QK;
  if (QL > 0) {
    float* qa = rstd + N;  // [N, QL]
    linear_forward(qa, x, w.q_a, N, H, QL);
    if (saved.q_latent != nullptr) std::copy(qa, qa + N * QL, saved.q_latent);
    rmsnorm_forward(qa, rstd, qa, w.q_a_norm, N, QL, kMlaLatentNormEps);
    if (saved.q_latent_norm != nullptr) {
      std::copy(qa, qa + N * QL, saved.q_latent_norm);
      std::copy(rstd, rstd + N, saved.q_rstd);
    }
    linear_forward(qh, qa, w.q_b, N, QL, NH * QK);
  } else {
    linear_forward(qh, x, w.q, N, H, NH * QK);
  }
  const float prescale = mla_query_prescale(c);
  for (std::int64_t n = 0; n < N; ++n) {
    for (int h = 0; h < NH; ++h) {
      const float* src = qh + (n * NH + h) * QK;
      float* dst = q + (n * NH + h) * hd;
      for (int i = 0; i < QK; ++i) dst[i] = src[i];
      std::fill(dst + QK, dst + hd, 0.0f);
    }
  }
  const std::vector<double> inv_freq = rope_inverse_frequencies(c, R);
  const double magnitude = rope_magnitude(c);
  deepseek_rope(q + NOPE, N, static_cast<std::int64_t>(NH) * hd, NH, hd, R, positions, inv_freq, magnitude);
  if (prescale != 1.0f) {
    for (std::int64_t i = 0; i < N * NH * hd; ++i) q[i] *= prescale;
  }
  linear_forward(latent, x, w.kv_a, N, H, KL + R);
  for (std::int64_t n = 0; n < N; ++n) {
    float* row = latent + n * (KL + R);
    if (saved.kv_latent != nullptr) std::copy(row, row + KL, saved.kv_latent + n * KL);
    rmsnorm_forward(row, rstd + n, row, w.kv_a_norm, 1, KL, kMlaLatentNormEps);
    if (saved.kv_rstd != nullptr) saved.kv_rstd[n] = rstd[n];
  }
  deepseek_rope(latent + KL, N, KL + R, 1, 0, R, positions, inv_freq, magnitude);
}

void mla_expand(const ModelConfig& c, const LayerWeights& w, const float* latent, std::int64_t N,
                float* k, float* v, float* scratch) {
  const int NH = c.num_attention_heads, hd = c.head_dim(), NOPE = c.qk_nope_head_dim, R = c.qk_rope_head_dim,
            V = c.v_head_dim, KL = c.kv_lora_rank;
  const int KV = NOPE + V;
  // The latent rows are strided (KL + R); the projection reads KL of each.
  for (std::int64_t n = 0; n < N; ++n) {
    std::copy(latent + n * (KL + R), latent + n * (KL + R) + KL, scratch + n * KL);
  }
  float* kv = scratch + N * KL;  // [N, NH, NOPE + V]
  linear_forward(kv, scratch, w.kv_b, N, KL, NH * KV);
  for (std::int64_t n = 0; n < N; ++n) {
    const float* pe = latent + n * (KL + R) + KL;
    for (int h = 0; h < NH; ++h) {
      const float* src = kv + (n * NH + h) * KV;
      float* kd = k + (n * NH + h) * hd;
      float* vd = v + (n * NH + h) * hd;
      std::copy(src, src + NOPE, kd);
      std::copy(pe, pe + R, kd + NOPE);
      std::fill(kd + NOPE + R, kd + hd, 0.0f);
      std::copy(src + NOPE, src + KV, vd);
      std::fill(vd + V, vd + hd, 0.0f);
    }
  }
}

std::int64_t mla_absorbed_scratch_floats(const ModelConfig& c, std::int64_t N, std::int64_t max_keys) {
  const std::int64_t NH = c.num_attention_heads;
  // Absorbed queries [N, NH, KL+R], contexts [N, NH, KL], one row's scores [NH, max_keys].
  return N * NH * (mla_latent_width(c) + c.kv_lora_rank) + NH * max_keys;
}

void mla_attend_absorbed(const ModelConfig& c, const LayerWeights& w, const float* q, std::int64_t N,
                         const float* const* latents, const int* lengths, float* out, float* scratch) {
  const int NH = c.num_attention_heads, hd = c.head_dim(), NOPE = c.qk_nope_head_dim, R = c.qk_rope_head_dim,
            V = c.v_head_dim, KL = c.kv_lora_rank;
  const int LW = KL + R, KV = NOPE + V;
  const std::int64_t QD = static_cast<std::int64_t>(NH) * hd;
  float* qc = scratch;                                 // [N, NH, LW]
  float* ctx = qc + N * NH * LW;                       // [N, NH, KL]
  float* scores = ctx + N * NH * KL;                   // [NH, keys]
  const GemmOptions weights = current_gemm_options();
  // The latents are activations: their products stay in F32 whatever the weights' precision.
  GemmOptions acts = weights;
  acts.compute = ComputeDType::kF32;
  // Absorbed queries: q_nope W_UK_h for all rows at once per head (kv_b read once per call),
  // then the rope part unchanged, so one dot with a latent row gives the whole score.
  for (int h = 0; h < NH; ++h) {
    gemm(weights, false, false, N, KL, NOPE, q + h * hd, QD, w.kv_b.row_offset(static_cast<std::int64_t>(h) * KV, KL),
         KL, 0.0f, qc + static_cast<std::int64_t>(h) * LW, static_cast<std::int64_t>(NH) * LW);
  }
  for (std::int64_t n = 0; n < N; ++n) {
    for (int h = 0; h < NH; ++h) {
      const float* src = q + n * QD + h * hd + NOPE;
      std::copy(src, src + R, qc + (n * NH + h) * LW + KL);
    }
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  for (std::int64_t n = 0; n < N; ++n) {
    const int len = lengths[n];
    // scores [NH, len] = scale * qc_n [NH, LW] @ latents^T; softmax per head; ctx = P @ c_kv.
    gemm(acts, false, true, NH, len, LW, qc + n * NH * LW, LW, WeightRef(latents[n]), LW, 0.0f, scores, len);
    for (std::int64_t i = 0; i < static_cast<std::int64_t>(NH) * len; ++i) scores[i] *= scale;
    for (int h = 0; h < NH; ++h) causal_softmax_row(scores + static_cast<std::int64_t>(h) * len, len - 1, len);
    gemm(acts, false, false, NH, KL, len, scores, len, WeightRef(latents[n]), LW, 0.0f, ctx + n * NH * KL, KL);
  }
  // o_h = ctx_h W_UV_h^T for all rows per head.
  for (int h = 0; h < NH; ++h) {
    gemm(weights, false, true, N, V, KL, ctx + static_cast<std::int64_t>(h) * KL, static_cast<std::int64_t>(NH) * KL,
         w.kv_b.row_offset(static_cast<std::int64_t>(h) * KV + NOPE, KL), KL, 0.0f, out + static_cast<std::int64_t>(h) * V,
         static_cast<std::int64_t>(NH) * V);
  }
}

void mla_compact_heads(const ModelConfig& c, float* atty, std::int64_t N) {
  const std::int64_t NH = c.num_attention_heads, hd = c.head_dim(), V = c.v_head_dim;
  // Destinations never pass their sources (V <= hd), so one forward sweep is safe.
  for (std::int64_t r = 0; r < N * NH; ++r) std::memmove(atty + r * V, atty + r * hd, sizeof(float) * V);
}

void output_projection_forward(const ModelConfig& c, const LayerWeights& w,
                               const float* atty, std::int64_t N, float* out) {
  project(out, atty, w.o, w.o_bias, N, c.attention_out_dim(), c.hidden_size);
}

void output_projection_backward(const ModelConfig& c, const LayerWeights& w,
                                const LayerGrads& g, const float* atty, std::int64_t N,
                                const float* dout, float* datty) {
  project_backward(datty, g.o, g.o_bias, dout, atty, w.o, N, c.attention_out_dim(), c.hidden_size);
}

void mlp_forward(const LayerWeights& w, const float* x, std::int64_t N, int H, int F,
                 float* out, const MlpSaved& s, float* tmp) {
  linear_forward(s.h1, x, w.mlp_gate, N, H, F);
  linear_forward(s.h3, x, w.mlp_up, N, H, F);
  swiglu_forward(s.hh, s.h1, s.h3, N, F);
  if (w.shared_gate == nullptr) {
    linear_forward(tmp, s.hh, w.mlp_down, N, F, H);
    residual_forward(out, out, tmp, N * H);
    return;
  }
  linear_forward(s.y, s.hh, w.mlp_down, N, F, H);
  for (std::int64_t n = 0; n < N; ++n) {
    const float* xn = x + n * H;
    double z = 0.0;
    for (int h = 0; h < H; ++h) z += static_cast<double>(xn[h]) * w.shared_gate[h];
    const float sig = static_cast<float>(1.0 / (1.0 + std::exp(-z)));
    s.sig[n] = sig;
    const float* yn = s.y + n * H;
    float* on = out + n * H;
    for (int h = 0; h < H; ++h) on[h] += sig * yn[h];
  }
}

void mlp_backward(const LayerWeights& w, const LayerGrads& g, const float* x,
                  std::int64_t N, int H, int F, const float* dout, const MlpSaved& s, float* dx,
                  float* dh1, float* dh3, float* dhh, float* dy) {
  const float* dbranch = dout;
  if (w.shared_gate != nullptr) {
    // out += sig(z) * y with z = gate . x: dy = sig * dout, dz = sig (1 - sig) (dout . y).
    for (std::int64_t n = 0; n < N; ++n) {
      const float* dn = dout + n * H;
      const float* yn = s.y + n * H;
      const float* xn = x + n * H;
      const float sig = s.sig[n];
      double dot = 0.0;
      for (int h = 0; h < H; ++h) dot += static_cast<double>(dn[h]) * yn[h];
      const float dz = static_cast<float>(sig * (1.0 - sig) * dot);
      float* dyn = dy + n * H;
      float* dxn = dx + n * H;
      for (int h = 0; h < H; ++h) {
        dyn[h] = sig * dn[h];
        g.shared_gate[h] += dz * xn[h];
        dxn[h] += dz * w.shared_gate[h];
      }
    }
    dbranch = dy;
  }
  std::fill(dhh, dhh + N * F, 0.0f);
  matmul_backward(dhh, g.mlp_down, dbranch, s.hh, w.mlp_down.f32("mlp down_proj"), N, F, H);
  swiglu_backward(dh1, dh3, dhh, s.h1, s.h3, N, F);
  matmul_backward(dx, g.mlp_gate, dh1, x, w.mlp_gate.f32("mlp gate_proj"), N, H, F);
  matmul_backward(dx, g.mlp_up, dh3, x, w.mlp_up.f32("mlp up_proj"), N, H, F);
}

void mla_pad_heads(const ModelConfig& c, float* d, std::int64_t N) {
  const std::int64_t NH = c.num_attention_heads, hd = c.head_dim(), V = c.v_head_dim;
  // Destinations never fall behind their sources (hd >= V), so one backward sweep is safe.
  for (std::int64_t r = N * NH - 1; r >= 0; --r) {
    std::memmove(d + r * hd, d + r * V, sizeof(float) * V);
    std::fill(d + r * hd + V, d + (r + 1) * hd, 0.0f);
  }
}

std::int64_t mla_backward_scratch_floats(const ModelConfig& c, std::int64_t N) {
  const std::int64_t NH = c.num_attention_heads, KL = c.kv_lora_rank;
  // dqh [N, NH*QK], dkv [N, NH*(NOPE+V)], dlatent [N, KL+R], c_kv copy and its gradient [N, KL]
  // each, the q latent's two gradients [N, QL] each.
  return N * (NH * c.qk_head_dim() + NH * (c.qk_nope_head_dim + c.v_head_dim) + mla_latent_width(c) + 2 * KL +
              2 * static_cast<std::int64_t>(c.q_lora_rank));
}

void mla_backward(const ModelConfig& c, const LayerWeights& w, const LayerGrads& g, const float* x, std::int64_t N,
                  const int* positions, const float* dq, const float* dk, const float* dv, const float* latent,
                  const MlaSaved& saved, float* dx, float* scratch) {
  const int H = c.hidden_size, NH = c.num_attention_heads, hd = c.head_dim(), QK = c.qk_head_dim(),
            NOPE = c.qk_nope_head_dim, R = c.qk_rope_head_dim, V = c.v_head_dim, KL = c.kv_lora_rank,
            QL = c.q_lora_rank;
  const int LW = KL + R, KV = NOPE + V;
  float* dqh = scratch;                  // [N, NH*QK]
  float* dkv = dqh + N * NH * QK;        // [N, NH*KV]
  float* dlat = dkv + N * NH * KV;       // [N, LW]
  float* ckv = dlat + N * LW;            // [N, KL] normalised c_kv, contiguous
  float* dckv = ckv + N * KL;            // [N, KL]
  float* dqa_norm = dckv + N * KL;       // [N, QL]
  float* dqa = dqa_norm + N * QL;        // [N, QL]
  const std::vector<double> inv_freq = rope_inverse_frequencies(c, R);
  const double magnitude = rope_magnitude(c);
  const float prescale = mla_query_prescale(c);

  // Queries: the padded heads' first QK values, times the forward's prescale, RoPE undone.
  for (std::int64_t n = 0; n < N; ++n) {
    for (int h = 0; h < NH; ++h) {
      const float* src = dq + (n * NH + h) * hd;
      float* dst = dqh + (n * NH + h) * QK;
      for (int i = 0; i < QK; ++i) dst[i] = prescale * src[i];
    }
  }
  deepseek_rope_backward(dqh + NOPE, N, static_cast<std::int64_t>(NH) * QK, NH, QK, R, positions, inv_freq, magnitude);
  if (QL > 0) {
    std::fill(dqa_norm, dqa_norm + N * QL, 0.0f);
    matmul_backward(dqa_norm, g.q_b, dqh, saved.q_latent_norm, w.q_b.f32("q_b_proj"), N, QL, NH * QK);
    std::fill(dqa, dqa + N * QL, 0.0f);
    rmsnorm_backward(dqa, g.q_a_norm, dqa_norm, saved.q_latent, w.q_a_norm, saved.q_rstd, N, QL);
    matmul_backward(dx, g.q_a, dqa, x, w.q_a.f32("q_a_proj"), N, H, QL);
  } else {
    matmul_backward(dx, g.q, dqh, x, w.q.f32("q_proj"), N, H, NH * QK);
  }

  // Keys and values: [k_nope | v] per head back through kv_b; k_pe is shared by every head, so
  // its gradient is the sum over heads, then RoPE undone.
  std::fill(dlat, dlat + N * LW, 0.0f);
  for (std::int64_t n = 0; n < N; ++n) {
    float* dpe = dlat + n * LW + KL;
    for (int h = 0; h < NH; ++h) {
      const float* kh = dk + (n * NH + h) * hd;
      const float* vh = dv + (n * NH + h) * hd;
      float* d = dkv + (n * NH + h) * KV;
      std::copy(kh, kh + NOPE, d);
      std::copy(vh, vh + V, d + NOPE);
      for (int r = 0; r < R; ++r) dpe[r] += kh[NOPE + r];
    }
    std::copy(latent + n * LW, latent + n * LW + KL, ckv + n * KL);
  }
  std::fill(dckv, dckv + N * KL, 0.0f);
  matmul_backward(dckv, g.kv_b, dkv, ckv, w.kv_b.f32("kv_b_proj"), N, KL, NH * KV);
  deepseek_rope_backward(dlat + KL, N, LW, 1, 0, R, positions, inv_freq, magnitude);
  for (std::int64_t n = 0; n < N; ++n) {
    rmsnorm_backward(dlat + n * LW, g.kv_a_norm, dckv + n * KL, saved.kv_latent + n * KL, w.kv_a_norm,
                     saved.kv_rstd + n, 1, KL);
  }
  matmul_backward(dx, g.kv_a, dlat, x, w.kv_a.f32("kv_a_proj_with_mqa"), N, H, LW);
}

}  // namespace occult
