// Linear layers and GEMMs over weights kept in the dtype they were stored in. An inference model
// keeps its matrices in BF16 (half the memory of F32). Two backends compute the products:
// oneDNN (the default: its sgemm for F32, which allocates nothing per call; matmul primitives for
// BF16, created once per shape and cached per thread) and cblas_sgemm (the reference and
// fallback). Two compute precisions:
// - F32 (the default): a BF16 weight is widened to F32 (exact), so the result equals that of the
//   same weights held in F32 up to the order of the sums;
// - BF16 (opt-in, only on CPUs with AVX512-BF16; inference and mixed-precision training): both
//   operands are rounded to BF16 (nearest, ties to even), products are accumulated in F32 and
//   the output is F32. The BLAS backend emulates it exactly (rounds both operands, then sgemm).
#pragma once

#include <cstdint>
#include <span>
#include <string>

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

// Which library multiplies: oneDNN matmul, or cblas_sgemm (the reference path).
enum class GemmBackend : std::uint8_t { kOneDnn, kBlas };

// The precision products are computed in (accumulation and output are always F32).
enum class ComputeDType : std::uint8_t { kF32, kBF16 };

// "onednn" / "blas"; "f32" / "bf16".
const char* gemm_backend_name(GemmBackend backend);
const char* compute_dtype_name(ComputeDType dtype);
// Parses the names above; throws occult::Error naming `what` (a flag or key) and the choices.
GemmBackend parse_gemm_backend(const std::string& text, const char* what);
ComputeDType parse_compute_dtype(const std::string& text, const char* what);

// True when this CPU multiplies BF16 natively (AVX512-BF16, as oneDNN detects it).
bool cpu_has_bf16_compute();

// Throws occult::Error naming `what` unless `dtype` can run here (BF16 needs AVX512-BF16).
void check_compute_dtype_supported(ComputeDType dtype, const char* what);

// How the GEMMs of this thread run.
struct GemmOptions {
  GemmBackend backend = GemmBackend::kOneDnn;
  ComputeDType compute = ComputeDType::kF32;
};

// The options linear_forward and gemm use on this thread when given none (initially the defaults
// above). Owners (a model, an MoE layer, a benchmark) set them for the span of their work with a
// GemmOptionsScope, so the kernels below them need no extra parameter.
GemmOptions current_gemm_options();

// Sets this thread's GEMM options until destruction, then restores the previous ones. Throws
// when the compute precision cannot run on this CPU.
class GemmOptionsScope {
 public:
  explicit GemmOptionsScope(GemmOptions options);
  ~GemmOptionsScope();
  GemmOptionsScope(const GemmOptionsScope&) = delete;
  GemmOptionsScope& operator=(const GemmOptionsScope&) = delete;

 private:
  GemmOptions previous_;
};

// C[M, N] = beta * C + op(A) @ op(B), row-major with leading dimensions lda, ldb, ldc; op(A) is
// A [M, K] (or A^T when trans_a, A then [K, M]); op(B) is B [K, N] (or B^T when trans_b, B then
// [N, K]). A is F32, B F32 or BF16, C F32. M, N or K may be 0 (K = 0 scales C by beta).
void gemm(const GemmOptions& options, bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K,
          const float* A, std::int64_t lda, WeightRef B, std::int64_t ldb, float beta, float* C, std::int64_t ldc);

// out[N, OC] = beta * out + x[N, IC] @ W^T for W [OC, IC] (a PyTorch Linear without bias), with
// this thread's current GEMM options. N may be 0.
void linear_forward(float* out, const float* x, WeightRef w, std::int64_t N, int IC, int OC,
                    float beta = 0.0f);
// The same with explicit options.
void linear_forward(const GemmOptions& options, float* out, const float* x, WeightRef w, std::int64_t N, int IC,
                    int OC, float beta = 0.0f);

// out[n, :] = W[ids[n], :] for W [rows, C] (an embedding lookup), widened to F32.
void gather_rows(float* out, WeightRef w, const std::int32_t* ids, std::int64_t N, int C);

// Naive reference twin of linear_forward: plain loops, double accumulation, no BLAS, no panels.
void reference_linear_forward(float* out, const float* x, WeightRef w, std::int64_t N, int IC, int OC,
                              float beta = 0.0f);

// Rows of a BF16 W widened per panel by the BLAS path: as many as fit `kPanelBytes` of F32
// scratch (at least 16), so the widened panel stays in the L2 cache while sgemm streams x past it.
inline constexpr std::int64_t kPanelBytes = 512 * 1024;

}  // namespace occult
