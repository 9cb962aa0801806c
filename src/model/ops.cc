#include "occult/model/ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "occult/linalg/linear.h"

namespace occult {

void embedding_backward(float* dwte, const float* dout, const std::int32_t* tokens, std::int64_t N, int C) {
  for (std::int64_t n = 0; n < N; ++n) {
    float* row = dwte + static_cast<std::int64_t>(tokens[n]) * C;
    const float* d = dout + n * C;
    for (int c = 0; c < C; ++c) row[c] += d[c];
  }
}

void rmsnorm_forward(float* out, float* rstd, const float* in, const float* weight, std::int64_t N, int C,
                     float eps) {
  for (std::int64_t n = 0; n < N; ++n) {
    const float* x = in + n * C;
    float* y = out + n * C;
    double ss = 0.0;
    for (int c = 0; c < C; ++c) ss += static_cast<double>(x[c]) * x[c];
    const float r = static_cast<float>(1.0 / std::sqrt(ss / C + eps));
    rstd[n] = r;
    for (int c = 0; c < C; ++c) y[c] = x[c] * r * weight[c];
  }
}

void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* in, const float* weight,
                      const float* rstd, std::int64_t N, int C) {
  // y_c = x_c r w_c with r = (mean x^2 + eps)^(-1/2):
  // dx_c = r w_c dy_c - x_c r^3 / C * sum_j dy_j w_j x_j.
  for (std::int64_t n = 0; n < N; ++n) {
    const float* x = in + n * C;
    const float* dy = dout + n * C;
    float* dx = dinp + n * C;
    const float r = rstd[n];
    float dot = 0.0f;
    for (int c = 0; c < C; ++c) dot += dy[c] * weight[c] * x[c];
    const float k = dot * r * r * r / static_cast<float>(C);
    for (int c = 0; c < C; ++c) {
      dweight[c] += dy[c] * x[c] * r;
      dx[c] += r * weight[c] * dy[c] - x[c] * k;
    }
  }
}

void matmul_backward(float* dinp, float* dweight, const float* dout, const float* in, const float* weight,
                     std::int64_t N, int IC, int OC) {
  if (N == 0) return;
  // The products run in the thread's compute precision (BF16: mixed-precision training, F32
  // gradients accumulated from BF16-rounded operands).
  const GemmOptions options = current_gemm_options();
  if (dinp != nullptr) gemm(options, false, false, N, IC, OC, dout, OC, WeightRef(weight), IC, 1.0f, dinp, IC);
  gemm(options, true, false, OC, IC, N, dout, OC, WeightRef(in), IC, 1.0f, dweight, IC);
}

namespace {
// Rotates every head of every token by angle sign * t * theta^(-2i/hs).
void rope_apply(float* x, std::int64_t B, int T, int NH, int hs, float theta, float sign) {
  const int half = hs / 2;
  std::vector<float> cosv(static_cast<std::size_t>(T) * half), sinv(static_cast<std::size_t>(T) * half);
  for (int t = 0; t < T; ++t) {
    for (int i = 0; i < half; ++i) {
      const double freq = std::pow(static_cast<double>(theta), -2.0 * i / hs);
      const double angle = t * freq;
      cosv[t * half + i] = static_cast<float>(std::cos(angle));
      sinv[t * half + i] = sign * static_cast<float>(std::sin(angle));
    }
  }
  for (std::int64_t b = 0; b < B; ++b) {
    for (int t = 0; t < T; ++t) {
      for (int h = 0; h < NH; ++h) {
        float* v = x + ((b * T + t) * NH + h) * hs;
        for (int i = 0; i < half; ++i) {
          const float c = cosv[t * half + i], s = sinv[t * half + i];
          const float a = v[i], bb = v[i + half];
          v[i] = a * c - bb * s;
          v[i + half] = bb * c + a * s;
        }
      }
    }
  }
}
}  // namespace

void rope_forward(float* x, std::int64_t B, int T, int NH, int hs, float theta) {
  rope_apply(x, B, T, NH, hs, theta, 1.0f);
}

void rope_backward(float* dx, std::int64_t B, int T, int NH, int hs, float theta) {
  rope_apply(dx, B, T, NH, hs, theta, -1.0f);
}

void causal_softmax_row(float* row, int last, int len) {
  float maxv = row[0];
  for (int s = 1; s <= last; ++s) maxv = std::max(maxv, row[s]);
  float sum = 0.0f;
  for (int s = 0; s <= last; ++s) {
    row[s] = std::exp(row[s] - maxv);
    sum += row[s];
  }
  const float inv = 1.0f / sum;
  for (int s = 0; s <= last; ++s) row[s] *= inv;
  for (int s = last + 1; s < len; ++s) row[s] = 0.0f;
}

void attention_forward(float* out, float* att, const float* q, const float* k, const float* v,
                       std::int64_t B, int T, int NH, int NKV, int hs) {
  const int QC = NH * hs, KC = NKV * hs, group = NH / NKV;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  for (std::int64_t b = 0; b < B; ++b) {
    for (int h = 0; h < NH; ++h) {
      const std::int64_t qbase = b * T * QC + h * hs, kbase = b * T * KC + (h / group) * hs;
      float* a = att + (b * NH + h) * static_cast<std::int64_t>(T) * T;  // [T,T]
      // a = scale * Q_bh @ K_bh^T, then causal softmax row by row.
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, scale, q + qbase, QC, k + kbase, KC, 0.0f, a,
                  T);
      for (int t = 0; t < T; ++t) causal_softmax_row(a + static_cast<std::int64_t>(t) * T, t, T);
      // out_bh[T,hs] = a @ V_bh.
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, a, T, v + kbase, KC, 0.0f,
                  out + qbase, QC);
    }
  }
}

void attention_backward(float* dq, float* dk, float* dv, float* scratch, const float* dout,
                        const float* att, const float* q, const float* k, const float* v, std::int64_t B,
                        int T, int NH, int NKV, int hs) {
  const int QC = NH * hs, KC = NKV * hs, group = NH / NKV;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  // Several query heads share a key/value head: their dK, dV add up.
  std::fill(dk, dk + B * T * KC, 0.0f);
  std::fill(dv, dv + B * T * KC, 0.0f);
  for (std::int64_t b = 0; b < B; ++b) {
    for (int h = 0; h < NH; ++h) {
      const std::int64_t qbase = b * T * QC + h * hs, kbase = b * T * KC + (h / group) * hs;
      const float* a = att + (b * NH + h) * static_cast<std::int64_t>(T) * T;
      float* da = scratch;  // [T,T]
      // dV += a^T @ dO ; da = dO @ V^T.
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, a, T, dout + qbase, QC, 1.0f,
                  dv + kbase, KC);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, 1.0f, dout + qbase, QC, v + kbase, KC, 0.0f,
                  da, T);
      // Softmax backward: ds = a * (da - sum_s a*da), masked entries have a = 0.
      for (int t = 0; t < T; ++t) {
        const float* arow = a + static_cast<std::int64_t>(t) * T;
        float* drow = da + static_cast<std::int64_t>(t) * T;
        float dot = 0.0f;
        for (int s = 0; s <= t; ++s) dot += arow[s] * drow[s];
        for (int s = 0; s <= t; ++s) drow[s] = arow[s] * (drow[s] - dot) * scale;
        for (int s = t + 1; s < T; ++s) drow[s] = 0.0f;
      }
      // dQ = ds @ K ; dK += ds^T @ Q.
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, da, T, k + kbase, KC, 0.0f,
                  dq + qbase, QC);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, da, T, q + qbase, QC, 1.0f,
                  dk + kbase, KC);
    }
  }
}

void bias_forward(float* out, const float* bias, std::int64_t N, int C) {
  for (std::int64_t n = 0; n < N; ++n) {
    float* row = out + n * C;
    for (int c = 0; c < C; ++c) row[c] += bias[c];
  }
}

void bias_backward(float* dbias, const float* dout, std::int64_t N, int C) {
  for (std::int64_t n = 0; n < N; ++n) {
    const float* row = dout + n * C;
    for (int c = 0; c < C; ++c) dbias[c] += row[c];
  }
}

void swiglu_forward(float* out, const float* h1, const float* h3, std::int64_t N, int F) {
  const std::int64_t count = N * F;
  for (std::int64_t i = 0; i < count; ++i) {
    const float a = h1[i];
    out[i] = a / (1.0f + std::exp(-a)) * h3[i];
  }
}

void swiglu_backward(float* dh1, float* dh3, const float* dout, const float* h1, const float* h3,
                     std::int64_t N, int F) {
  const std::int64_t count = N * F;
  for (std::int64_t i = 0; i < count; ++i) {
    const float a = h1[i];
    const float sig = 1.0f / (1.0f + std::exp(-a));
    const float silu = a * sig;
    dh3[i] = dout[i] * silu;
    dh1[i] = dout[i] * h3[i] * sig * (1.0f + a * (1.0f - sig));
  }
}

double crossentropy_forward(float* probs, const float* logits, const std::int32_t* targets,
                            std::int64_t N, int V) {
  double total = 0.0;
  for (std::int64_t n = 0; n < N; ++n) {
    const float* z = logits + n * V;
    float* p = probs + n * V;
    float maxv = z[0];
    for (int i = 1; i < V; ++i) maxv = std::max(maxv, z[i]);
    double sum = 0.0;
    for (int i = 0; i < V; ++i) sum += std::exp(static_cast<double>(z[i] - maxv));
    const double log_sum = std::log(sum);
    for (int i = 0; i < V; ++i) p[i] = static_cast<float>(std::exp(static_cast<double>(z[i] - maxv) - log_sum));
    total += log_sum - static_cast<double>(z[targets[n]] - maxv);
  }
  return total;
}

void crossentropy_backward(float* dlogits, const float* probs, const std::int32_t* targets, float scale,
                           std::int64_t N, int V) {
  for (std::int64_t n = 0; n < N; ++n) {
    const float* p = probs + n * V;
    float* d = dlogits + n * V;
    for (int i = 0; i < V; ++i) d[i] = scale * p[i];
    d[targets[n]] -= scale;
  }
}

void residual_forward(float* out, const float* a, const float* b, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) out[i] = a[i] + b[i];
}

}  // namespace occult
