// Linear layers over weights kept in the dtype they were stored in. An inference model keeps its
// matrices in BF16 (half the memory of F32); every product still runs in F32: a BF16 weight is
// widened to F32 a panel of rows at a time into a cache-sized scratch and multiplied by
// cblas_sgemm, so the arithmetic equals that of the same weights held in F32 (BF16 -> F32 is
// exact) up to the order of the sums.
#pragma once

#include <cstdint>
#include <span>

namespace occult {

// The element type a weight matrix is held in.
enum class WeightDType : std::uint8_t { kF32, kBF16 };

// "f32" / "bf16".
const char* weight_dtype_name(WeightDType dtype);

// A read-only weight matrix (row-major [rows, cols], rows given by the caller) in either dtype;
// BF16 elements are the upper 16 bits of an IEEE float (safetensors' BF16). A null WeightRef
// stands for an absent tensor.
class WeightRef {
 public:
  WeightRef() = default;
  WeightRef(const float* f32) : data_(f32), dtype_(WeightDType::kF32) {}  // NOLINT: F32 is the default view
  static WeightRef bf16(const std::uint16_t* data) {
    WeightRef w;
    w.data_ = data;
    w.dtype_ = WeightDType::kBF16;
    return w;
  }

  WeightDType dtype() const { return dtype_; }
  bool is_null() const { return data_ == nullptr; }
  // The F32 data; throws (naming `what`) when the matrix is held in BF16, e.g. for a backward
  // pass, which needs F32 master weights.
  const float* f32(const char* what = "weight") const;
  const std::uint16_t* bf16_data() const { return static_cast<const std::uint16_t*>(data_); }
  // The view of rows [row, ...) of a matrix with `cols` columns.
  WeightRef row_offset(std::int64_t row, int cols) const;
  // Element (row, col) of a matrix with `cols` columns, as F32.
  float at(std::int64_t row, int col, int cols) const;

 private:
  const void* data_ = nullptr;
  WeightDType dtype_ = WeightDType::kF32;
};

// out[N, OC] = beta * out + x[N, IC] @ W^T for W [OC, IC] (a PyTorch Linear without bias).
// N may be 0.
void linear_forward(float* out, const float* x, WeightRef w, std::int64_t N, int IC, int OC,
                    float beta = 0.0f);

// out[n, :] = W[ids[n], :] for W [rows, C] (an embedding lookup), widened to F32.
void gather_rows(float* out, WeightRef w, const std::int32_t* ids, std::int64_t N, int C);

// Naive reference twin of linear_forward: plain loops, double accumulation, no BLAS, no panels.
void reference_linear_forward(float* out, const float* x, WeightRef w, std::int64_t N, int IC, int OC,
                              float beta = 0.0f);

// Rows of W widened per panel by linear_forward: as many as fit `kPanelBytes` of F32 scratch
// (at least 16), so the widened panel stays in the L2 cache while sgemm streams x past it.
inline constexpr std::int64_t kPanelBytes = 512 * 1024;

}  // namespace occult
