#include "occult/linalg/linear.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <oneapi/dnnl/dnnl.hpp>
#include <unordered_map>
#include <vector>

#include "occult/core/error.h"
#include "occult/core/half.h"

namespace occult {

namespace {

thread_local GemmOptions t_options;

// Widens n BF16 values to F32 (exact: a BF16 value is the top half of an F32).
void widen(float* dst, const std::uint16_t* src, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(src[i]);
}

// Copies the [rows, cols] matrix at `src` (leading dimension ld) into a packed F32 or BF16
// buffer, converting each element: F32 -> F32 copies, anything -> BF16 rounds to nearest even.
void pack_f32(float* dst, WeightRef src, std::int64_t rows, std::int64_t cols, std::int64_t ld) {
  for (std::int64_t r = 0; r < rows; ++r) {
    float* d = dst + r * cols;
    if (src.dtype() == WeightDType::kBF16) {
      widen(d, src.bf16_data() + r * ld, cols);
    } else {
      std::memcpy(d, src.f32() + r * ld, sizeof(float) * static_cast<std::size_t>(cols));
    }
  }
}
void pack_bf16(std::uint16_t* dst, WeightRef src, std::int64_t rows, std::int64_t cols,
               std::int64_t ld) {
  for (std::int64_t r = 0; r < rows; ++r) {
    std::uint16_t* d = dst + r * cols;
    if (src.dtype() == WeightDType::kBF16) {
      std::memcpy(d, src.bf16_data() + r * ld,
                  sizeof(std::uint16_t) * static_cast<std::size_t>(cols));
    } else {
      const float* s = src.f32() + r * ld;
      for (std::int64_t c = 0; c < cols; ++c) d[c] = float_to_bf16(s[c]);
    }
  }
}

// The same matrix rounded to BF16 and widened back (the BLAS emulation of BF16 compute).
void pack_bf16_as_f32(float* dst, WeightRef src, std::int64_t rows, std::int64_t cols,
                      std::int64_t ld) {
  pack_f32(dst, src, rows, cols, ld);
  if (src.dtype() == WeightDType::kBF16) return;  // already exact BF16 values
  for (std::int64_t i = 0; i < rows * cols; ++i) dst[i] = bf16_to_float(float_to_bf16(dst[i]));
}

template <typename T>
T* scratch(std::vector<T>& buffer, std::int64_t size) {
  if (static_cast<std::int64_t>(buffer.size()) < size)
    buffer.resize(static_cast<std::size_t>(size));
  return buffer.data();
}

// Per-thread scratch of the conversions above, kept between calls.
struct Scratch {
  std::vector<float> a_f32, b_f32;
  std::vector<std::uint16_t> a_bf16, b_bf16;
};
thread_local Scratch t_scratch;

void scale_rows(float* C, std::int64_t M, std::int64_t N, std::int64_t ldc, float beta) {
  for (std::int64_t i = 0; i < M; ++i) {
    float* row = C + i * ldc;
    if (beta == 0.0f) {
      std::fill(row, row + N, 0.0f);
    } else {
      for (std::int64_t j = 0; j < N; ++j) row[j] *= beta;
    }
  }
}

// ---------------------------------------------------------------- BLAS path

void blas_f32(bool ta, bool tb, std::int64_t M, std::int64_t N, std::int64_t K, const float* A,
              std::int64_t lda, const float* B, std::int64_t ldb, float beta, float* C,
              std::int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), 1.0f, A,
              static_cast<int>(lda), B, static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
}

// F32 products over a BF16 B: calls product(tb, r0, n, b, ldb) for output columns [r0, r0+n)
// with b their widened part of B. B [N, K] (tb) is widened a panel of rows (output columns) at a
// time, so the scratch stays cache-sized and C[:, r0:r0+n] is written in place with ldc; B [K, N]
// is widened whole (no caller streams such a B).
template <typename Product>
void for_each_widened_panel(bool tb, std::int64_t N, std::int64_t K, WeightRef B, std::int64_t ldb, Scratch& s,
                            Product&& product) {
  if (!tb) {
    float* b = scratch(s.b_f32, K * N);
    pack_f32(b, B, K, N, ldb);
    product(false, 0, N, b, N);
    return;
  }
  const std::int64_t rows =
      std::max<std::int64_t>(16, kPanelBytes / (static_cast<std::int64_t>(sizeof(float)) * K));
  float* panel = scratch(s.b_f32, std::min(rows, N) * K);
  for (std::int64_t r0 = 0; r0 < N; r0 += rows) {
    const std::int64_t m = std::min(rows, N - r0);
    pack_f32(panel, B.row_offset(r0, static_cast<int>(ldb)), m, K, ldb);
    product(true, r0, m, panel, K);
  }
}

void blas_gemm(ComputeDType compute, bool ta, bool tb, std::int64_t M, std::int64_t N,
               std::int64_t K, const float* A, std::int64_t lda, WeightRef B, std::int64_t ldb,
               float beta, float* C, std::int64_t ldc) {
  Scratch& s = t_scratch;
  const std::int64_t a_rows = ta ? K : M, a_cols = ta ? M : K;
  const std::int64_t b_rows = tb ? N : K, b_cols = tb ? K : N;
  if (compute == ComputeDType::kBF16) {
    float* a = scratch(s.a_f32, a_rows * a_cols);
    float* b = scratch(s.b_f32, b_rows * b_cols);
    pack_bf16_as_f32(a, WeightRef(A), a_rows, a_cols, lda);
    pack_bf16_as_f32(b, B, b_rows, b_cols, ldb);
    blas_f32(ta, tb, M, N, K, a, a_cols, b, b_cols, beta, C, ldc);
    return;
  }
  if (B.dtype() == WeightDType::kF32) {
    blas_f32(ta, tb, M, N, K, A, lda, B.f32(), ldb, beta, C, ldc);
    return;
  }
  for_each_widened_panel(tb, N, K, B, ldb, s, [&](bool panel_t, std::int64_t r0, std::int64_t n, const float* b,
                                                     std::int64_t b_ld) {
    blas_f32(ta, panel_t, M, n, K, A, lda, b, b_ld, beta, C + r0, ldc);
  });
}

// ---------------------------------------------------------------- oneDNN path

// One cached matmul: the primitive and the memory objects its execution rebinds to new pointers.
struct MatmulKey {
  std::int64_t M, N, K, lda, ldb, ldc;
  std::uint32_t beta_bits;
  bool ta, tb, bf16;
  bool operator==(const MatmulKey&) const = default;
};
struct MatmulKeyHash {
  std::size_t operator()(const MatmulKey& k) const {
    std::uint64_t h = 1469598103934665603ull;
    for (std::int64_t v :
         {k.M, k.N, k.K, k.lda, k.ldb, k.ldc, static_cast<std::int64_t>(k.beta_bits),
          static_cast<std::int64_t>(k.ta + 2 * k.tb + 4 * k.bf16)}) {
      h = (h ^ static_cast<std::uint64_t>(v)) * 1099511628211ull;
    }
    return static_cast<std::size_t>(h);
  }
};
struct MatmulEntry {
  dnnl::matmul primitive;
  dnnl::memory src, weights, dst;
  bool use_blas = false;  // oneDNN offers only its reference kernel for this shape
};

// Bounds the cache: the shapes of a run (token tiles, panels, layers) are few, but a long
// server sees many batch sizes; past this many entries the cache starts over.
constexpr std::size_t kMaxCachedPrimitives = 4096;

struct OneDnn {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::unordered_map<MatmulKey, MatmulEntry, MatmulKeyHash> cache;

  OneDnn() {
    // One thread count for both libraries: oneDNN runs on OpenMP, OpenBLAS on its own pool,
    // and an MPI rank is meant to use the cores OpenBLAS was given (OPENBLAS_NUM_THREADS);
    // an explicit OMP_NUM_THREADS wins.
    if (std::getenv("OMP_NUM_THREADS") == nullptr)
      omp_set_num_threads(std::max(1, openblas_get_num_threads()));
  }

  MatmulEntry& get(const MatmulKey& key) {
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
    if (cache.size() >= kMaxCachedPrimitives) cache.clear();
    using dt = dnnl::memory::data_type;
    const dt in = key.bf16 ? dt::bf16 : dt::f32;
    // Row-major operands; a transposed operand is the same memory read with swapped strides.
    const dnnl::memory::desc src_md(
        {key.M, key.K}, in,
        key.ta ? dnnl::memory::dims{1, key.lda} : dnnl::memory::dims{key.lda, 1});
    const dnnl::memory::desc wei_md(
        {key.K, key.N}, in,
        key.tb ? dnnl::memory::dims{1, key.ldb} : dnnl::memory::dims{key.ldb, 1});
    const dnnl::memory::desc dst_md({key.M, key.N}, dt::f32, dnnl::memory::dims{key.ldc, 1});
    dnnl::primitive_attr attr;
    const float beta = std::bit_cast<float>(key.beta_bits);
    if (beta != 0.0f) {
      dnnl::post_ops ops;
      ops.append_sum(beta);
      attr.set_post_ops(ops);
    }
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src_md, wei_md, dst_md), attr, engine);
    MatmulEntry entry;
    entry.use_blas = std::string(pd.impl_info_str()).rfind("ref", 0) == 0;
    if (!entry.use_blas) {
      entry.primitive = dnnl::matmul(pd);
      entry.src = dnnl::memory(src_md, engine, DNNL_MEMORY_NONE);
      entry.weights = dnnl::memory(wei_md, engine, DNNL_MEMORY_NONE);
      entry.dst = dnnl::memory(dst_md, engine, DNNL_MEMORY_NONE);
    }
    return cache.emplace(key, std::move(entry)).first->second;
  }
};

OneDnn& onednn() {
  thread_local OneDnn state;
  return state;
}

// Runs one cached matmul on raw pointers; false when this shape must go to BLAS instead.
bool onednn_matmul(const MatmulKey& key, const void* a, const void* b, float* c) {
  OneDnn& d = onednn();
  MatmulEntry& e = d.get(key);
  if (e.use_blas) return false;
  e.src.set_data_handle(const_cast<void*>(a));
  e.weights.set_data_handle(const_cast<void*>(b));
  e.dst.set_data_handle(c);
  // The C API takes a plain array: the C++ execute() would build an unordered_map every call.
  const dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, e.src.get()},
                                  {DNNL_ARG_WEIGHTS, e.weights.get()},
                                  {DNNL_ARG_DST, e.dst.get()}};
  OCCULT_CHECK(dnnl_primitive_execute(e.primitive.get(), d.stream.get(), 3, args) == dnnl_success,
               "oneDNN matmul failed ({} x {} x {})", key.M, key.N, key.K);
  return true;
}

// F32 x F32 through oneDNN's BLAS-like sgemm rather than a matmul primitive: it needs no
// primitive, makes no heap allocation per call (a primitive's execute builds an argument map
// every time), and is as fast on token tiles and far faster on single rows (bench/linalg).
void onednn_sgemm(bool ta, bool tb, std::int64_t M, std::int64_t N, std::int64_t K, const float* A,
                  std::int64_t lda, const float* B, std::int64_t ldb, float beta, float* C,
                  std::int64_t ldc) {
  onednn();  // sets the thread count on first use
  OCCULT_CHECK(dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, 1.0f, A, lda, B, ldb, beta, C,
                          ldc) == dnnl_success,
               "oneDNN sgemm failed ({} x {} x {})", M, N, K);
}

void onednn_gemm(ComputeDType compute, bool ta, bool tb, std::int64_t M, std::int64_t N,
                 std::int64_t K, const float* A, std::int64_t lda, WeightRef B, std::int64_t ldb,
                 float beta, float* C, std::int64_t ldc) {
  Scratch& s = t_scratch;
  const std::uint32_t beta_bits = std::bit_cast<std::uint32_t>(beta);
  if (compute == ComputeDType::kBF16) {
    // A is rounded to BF16 in its own layout ([M, K], or [K, M] read transposed by the matmul:
    // a row-by-row pass instead of a strided transpose); B is used in place when already BF16.
    std::uint16_t* a = scratch(s.a_bf16, M * K);
    const std::int64_t a_ld = ta ? M : K;
    if (ta) {
      pack_bf16(a, WeightRef(A), K, M, lda);
    } else {
      pack_bf16(a, WeightRef(A), M, K, lda);
    }
    const void* b =
        B.dtype() == WeightDType::kBF16 ? static_cast<const void*>(B.bf16_data()) : nullptr;
    std::int64_t b_ld = ldb;
    if (b == nullptr) {
      const std::int64_t rows = tb ? N : K, cols = tb ? K : N;
      std::uint16_t* packed = scratch(s.b_bf16, rows * cols);
      pack_bf16(packed, B, rows, cols, ldb);
      b = packed;
      b_ld = cols;
    }
    const MatmulKey key{M, N, K, a_ld, b_ld, ldc, beta_bits, ta, tb, true};
    if (!onednn_matmul(key, a, b, C)) {
      blas_gemm(compute, ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
    }
    return;
  }
  if (B.dtype() == WeightDType::kF32) {
    onednn_sgemm(ta, tb, M, N, K, A, lda, B.f32(), ldb, beta, C, ldc);
    return;
  }
  // F32 compute over a BF16 B (oneDNN 2.6 has no f32 x bf16 matmul): widened as the BLAS path does.
  for_each_widened_panel(tb, N, K, B, ldb, s, [&](bool panel_t, std::int64_t r0, std::int64_t n, const float* b,
                                                     std::int64_t b_ld) {
    onednn_sgemm(ta, panel_t, M, n, K, A, lda, b, b_ld, beta, C + r0, ldc);
  });
}

}  // namespace

const char* weight_dtype_name(WeightDType dtype) {
  return dtype == WeightDType::kBF16 ? "bf16" : "f32";
}
const char* gemm_backend_name(GemmBackend backend) {
  return backend == GemmBackend::kBlas ? "blas" : "onednn";
}
const char* compute_dtype_name(ComputeDType dtype) {
  return dtype == ComputeDType::kBF16 ? "bf16" : "f32";
}

GemmBackend parse_gemm_backend(const std::string& text, const char* what) {
  if (text == "onednn") return GemmBackend::kOneDnn;
  if (text == "blas") return GemmBackend::kBlas;
  OCCULT_FAIL("{}: unknown GEMM backend '{}' (expected onednn or blas)", what, text);
}

ComputeDType parse_compute_dtype(const std::string& text, const char* what) {
  if (text == "f32") return ComputeDType::kF32;
  if (text == "bf16") return ComputeDType::kBF16;
  OCCULT_FAIL("{}: unknown compute precision '{}' (expected f32 or bf16)", what, text);
}

bool cpu_has_bf16_compute() {
  const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  const auto bf16 = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
  return (isa & bf16) == bf16;  // the ISA values are nested bit masks (AMX includes AVX512-BF16)
}

void check_compute_dtype_supported(ComputeDType dtype, const char* what) {
  OCCULT_CHECK(dtype == ComputeDType::kF32 || cpu_has_bf16_compute(),
               "{}: BF16 compute needs a CPU with AVX512-BF16, which this one lacks (use f32)",
               what);
}

GemmOptions current_gemm_options() {
  return t_options;
}

GemmOptionsScope::GemmOptionsScope(GemmOptions options) : previous_(t_options) {
  check_compute_dtype_supported(options.compute, "GEMM options");
  t_options = options;
}
GemmOptionsScope::~GemmOptionsScope() {
  t_options = previous_;
}

const float* WeightRef::f32(const char* what) const {
  OCCULT_CHECK(
      dtype_ == WeightDType::kF32,
      "{} is held in BF16 for inference; this operation (a backward pass or an F32 view) needs F32 "
      "weights (load the model for training)",
      what);
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

void gemm(const GemmOptions& options, bool trans_a, bool trans_b, std::int64_t M, std::int64_t N,
          std::int64_t K, const float* A, std::int64_t lda, WeightRef B, std::int64_t ldb,
          float beta, float* C, std::int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    scale_rows(C, M, N, ldc, beta);
    return;
  }
  if (options.backend == GemmBackend::kBlas) {
    blas_gemm(options.compute, trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc);
  } else {
    onednn_gemm(options.compute, trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc);
  }
}

void linear_forward(const GemmOptions& options, float* out, const float* x, WeightRef w,
                    std::int64_t N, int IC, int OC, float beta) {
  gemm(options, false, true, N, OC, IC, x, IC, w, IC, beta, out, OC);
}

void linear_forward(float* out, const float* x, WeightRef w, std::int64_t N, int IC, int OC,
                    float beta) {
  linear_forward(t_options, out, x, w, N, IC, OC, beta);
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

void reference_linear_forward(float* out, const float* x, WeightRef w, std::int64_t N, int IC,
                              int OC, float beta) {
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
