#include "occult/linalg/linear.h"

#include <cblas.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "occult/core/error.h"
#include "occult/core/half.h"

namespace occult {

namespace {

// Widens n BF16 values to F32 (exact: a BF16 value is the top half of an F32).
void widen(float* dst, const std::uint16_t* src, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(src[i]);
}

}  // namespace

const char* weight_dtype_name(WeightDType dtype) { return dtype == WeightDType::kBF16 ? "bf16" : "f32"; }

const float* WeightRef::f32(const char* what) const {
  OCCULT_CHECK(dtype_ == WeightDType::kF32,
               "{} is held in BF16 for inference; this operation (a backward pass or an F32 view) needs F32 "
               "weights (load the model for training)", what);
  return static_cast<const float*>(data_);
}

WeightRef WeightRef::row_offset(std::int64_t row, int cols) const {
  if (dtype_ == WeightDType::kBF16) return bf16(bf16_data() + row * cols);
  return WeightRef(static_cast<const float*>(data_) + row * cols);
}

float WeightRef::at(std::int64_t row, int col, int cols) const {
  const std::int64_t i = row * cols + col;
  if (dtype_ == WeightDType::kBF16) return bf16_to_float(bf16_data()[i]);
  return static_cast<const float*>(data_)[i];
}

void linear_forward(float* out, const float* x, WeightRef w, std::int64_t N, int IC, int OC, float beta) {
  if (N == 0 || OC == 0) return;
  const int n = static_cast<int>(N);
  if (w.dtype() == WeightDType::kF32) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, OC, IC, 1.0f, x, IC, w.f32(), IC, beta, out, OC);
    return;
  }
  const std::int64_t rows = std::max<std::int64_t>(16, kPanelBytes / (static_cast<std::int64_t>(sizeof(float)) * IC));
  thread_local std::vector<float> panel;
  if (static_cast<std::int64_t>(panel.size()) < rows * IC) panel.resize(static_cast<std::size_t>(rows * IC));
  for (std::int64_t r0 = 0; r0 < OC; r0 += rows) {
    const int m = static_cast<int>(std::min<std::int64_t>(rows, OC - r0));
    widen(panel.data(), w.bf16_data() + r0 * IC, static_cast<std::int64_t>(m) * IC);
    // out[:, r0:r0+m] = beta * out[:, r0:r0+m] + x @ panel^T, written in place with ldc = OC.
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, m, IC, 1.0f, x, IC, panel.data(), IC, beta,
                out + r0, OC);
  }
}

void gather_rows(float* out, WeightRef w, const std::int32_t* ids, std::int64_t N, int C) {
  for (std::int64_t i = 0; i < N; ++i) {
    const std::int64_t row = ids[i];
    if (w.dtype() == WeightDType::kBF16) {
      widen(out + i * C, w.bf16_data() + row * C, C);
    } else {
      std::memcpy(out + i * C, w.f32() + row * C, sizeof(float) * static_cast<std::size_t>(C));
    }
  }
}

void reference_linear_forward(float* out, const float* x, WeightRef w, std::int64_t N, int IC, int OC, float beta) {
  for (std::int64_t i = 0; i < N; ++i) {
    for (int o = 0; o < OC; ++o) {
      double acc = 0.0;
      for (int c = 0; c < IC; ++c) acc += static_cast<double>(x[i * IC + c]) * w.at(o, c, IC);
      float& dst = out[i * OC + o];
      dst = static_cast<float>(acc + (beta == 0.0f ? 0.0 : static_cast<double>(beta) * dst));
    }
  }
}

}  // namespace occult
