// The transformer's layers as free functions in the llm.c style: `op_forward(out, ..., in,
// weights, dims)` and `op_backward(dinp, dweight, ..., dout, saved inputs, dims)`. Outputs come
// first and dims last; every buffer is row-major with its shape in the comment. Backward
// functions ACCUMULATE (+=) into parameter gradients and into dinp unless the comment says
// "overwrites", so residual branches and tied weights add up naturally. Kernels own nothing and
// check nothing: the model validates shapes once, when it carves its arenas.
#pragma once

#include <cstdint>

namespace occult {

// dwte[tokens[n], :] += dout[n, :].
void embedding_backward(float* dwte, const float* dout, const std::int32_t* tokens, std::int64_t N, int C);

// out[N,C] = in * rstd * weight[C], rstd[N] = 1/sqrt(mean(in^2) + eps) (saved for backward).
void rmsnorm_forward(float* out, float* rstd, const float* in, const float* weight, std::int64_t N, int C,
                     float eps);
// dinp[N,C] += d/d in, dweight[C] += d/d weight, given dout[N,C] and the saved in, rstd.
void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* in, const float* weight,
                      const float* rstd, std::int64_t N, int C);

// dinp[N,IC] += dout @ weight (skipped when dinp is null); dweight[OC,IC] += dout^T @ in.
void matmul_backward(float* dinp, float* dweight, const float* dout, const float* in, const float* weight,
                     std::int64_t N, int IC, int OC);

// Rotates x[B,T,NH,hs] in place by RoPE (Hugging Face rotate_half convention: pairs (i, i+hs/2),
// frequency theta^(-2i/hs), position = index t within the sequence).
void rope_forward(float* x, std::int64_t B, int T, int NH, int hs, float theta);
// The adjoint of rope_forward (rotation by the opposite angle), in place on dx[B,T,NH,hs].
void rope_backward(float* dx, std::int64_t B, int T, int NH, int hs, float theta);

// In place over row[len]: row[0..last] becomes its softmax (max-subtracted, float), row(last, len)
// becomes 0. The one causal softmax every attention path (training, prefill, decode) shares, so
// cached decoding reproduces the full forward's arithmetic exactly.
void causal_softmax_row(float* row, int last, int len);

// Causal multi-head attention with grouped-query heads: q[B,T,NH*hs], k,v[B,T,NKV*hs] with heads
// in columns; query head h reads key/value head h / (NH/NKV) (NKV divides NH). Writes
// att[B,NH,T,T] (softmax probabilities, zero above the diagonal) and out[B,T,NH*hs] (overwrites).
void attention_forward(float* out, float* att, const float* q, const float* k, const float* v,
                       std::int64_t B, int T, int NH, int NKV, int hs);
// Overwrites dq[B,T,NH*hs], dk, dv[B,T,NKV*hs] from dout[B,T,NH*hs] and the saved att, q, k, v;
// scratch[T,T].
void attention_backward(float* dq, float* dk, float* dv, float* scratch, const float* dout,
                        const float* att, const float* q, const float* k, const float* v, std::int64_t B,
                        int T, int NH, int NKV, int hs);

// out[N,C] += bias[C] (a linear layer's bias).
void bias_forward(float* out, const float* bias, std::int64_t N, int C);
// dbias[C] += sum over n of dout[n,:].
void bias_backward(float* dbias, const float* dout, std::int64_t N, int C);

// out[N,F] = silu(h1) * h3 (the SwiGLU gate; overwrites).
void swiglu_forward(float* out, const float* h1, const float* h3, std::int64_t N, int F);
// Overwrites dh1, dh3[N,F] from dout[N,F] and the saved h1, h3.
void swiglu_backward(float* dh1, float* dh3, const float* dout, const float* h1, const float* h3,
                     std::int64_t N, int F);

// probs[N,V] = softmax(logits) (max-subtracted); returns sum over n of -log probs[n, targets[n]]
// accumulated in double. targets must lie in [0, V).
double crossentropy_forward(float* probs, const float* logits, const std::int32_t* targets,
                            std::int64_t N, int V);
// Overwrites dlogits[N,V] = scale * (probs - onehot(targets)).
void crossentropy_backward(float* dlogits, const float* probs, const std::int32_t* targets, float scale,
                           std::int64_t N, int V);

// out[n] = a[n] + b[n] for n < count (out may alias a).
void residual_forward(float* out, const float* a, const float* b, std::int64_t count);

}  // namespace occult
