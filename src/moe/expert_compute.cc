#include "occult/moe/expert_compute.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "occult/core/error.h"
#include "occult/core/half.h"

namespace occult {

namespace {

float sigmoid(float a) { return 1.0f / (1.0f + std::exp(-a)); }

void check_shapes(const ReceivePlan& plan, const ExpertWeightsView& w, std::span<const float> x_recv,
                  std::size_t out_size, std::size_t act_gate, std::size_t act_up) {
  const auto H = static_cast<std::size_t>(w.hidden_size), F = static_cast<std::size_t>(w.ffn_size);
  const auto L = static_cast<std::size_t>(w.num_local_experts);
  const auto R = static_cast<std::size_t>(plan.num_rows()), A = static_cast<std::size_t>(plan.num_assignments());
  OCCULT_CHECK(plan.num_local_experts == w.num_local_experts, "expert compute: plan for {} local experts, weights for {}",
               plan.num_local_experts, w.num_local_experts);
  if (w.dtype() == WeightDType::kBF16) {
    OCCULT_CHECK(w.gate_proj_bf16.size() == L * F * H && w.up_proj_bf16.size() == L * F * H &&
                     w.down_proj_bf16.size() == L * H * F && w.gate_proj.empty() && w.up_proj.empty() &&
                     w.down_proj.empty(),
                 "expert compute: BF16 weights do not have L={} x [F={}, H={}] shapes", L, F, H);
  } else {
    OCCULT_CHECK(w.gate_proj.size() == L * F * H && w.up_proj.size() == L * F * H && w.down_proj.size() == L * H * F &&
                     w.up_proj_bf16.empty() && w.down_proj_bf16.empty(),
                 "expert compute: weights do not have L={} x [F={}, H={}] shapes", L, F, H);
  }
  OCCULT_CHECK(x_recv.size() == R * H && out_size == R * H,
               "expert compute: row buffers hold {} and {} floats, expected R*H = {}*{}", x_recv.size(), out_size, R,
               H);
  OCCULT_CHECK(act_gate == A * F && act_up == A * F, "expert compute: activation buffers hold {} and {} floats, "
               "expected A*F = {}*{}", act_gate, act_up, A, F);
}

// Each local expert's range lies within its assignments in the plan.
void check_ranges(const ReceivePlan& plan, const ExpertWeightsView& w, std::span<const std::int64_t> begins,
                  std::span<const std::int64_t> ends) {
  const auto L = static_cast<std::size_t>(w.num_local_experts);
  OCCULT_CHECK(begins.size() == L && ends.size() == L, "expert compute: ranges for {} and {} experts, expected {}",
               begins.size(), ends.size(), L);
  for (std::size_t e = 0; e < L; ++e) {
    OCCULT_CHECK(plan.expert_offsets[e] <= begins[e] && begins[e] <= ends[e] && ends[e] <= plan.expert_offsets[e + 1],
                 "expert compute: range [{}, {}) of local expert {} is outside its assignments [{}, {})", begins[e],
                 ends[e], e, plan.expert_offsets[e], plan.expert_offsets[e + 1]);
  }
}

void ensure(std::vector<float>& buffer, std::size_t size) {
  if (buffer.size() < size) buffer.resize(size);
}

void require_f32(const ExpertWeightsView& w, const char* what) {
  OCCULT_CHECK(w.dtype() == WeightDType::kF32, "{} needs F32 expert weights; these are held in BF16 for inference",
               what);
}

// The expert matrices in the dtype the GEMMs multiply, converted at most once per expert and call
// into per-thread buffers shared by every layer (so their size does not grow with the model):
// F32 compute over BF16 weights widens them (oneDNN 2.6 has no F32 x BF16 matmul, and widening
// per token tile would repeat the work for every tile), BF16 compute over F32 weights rounds them.
// Weights already in the compute dtype are used in place. One slot per matrix kind (W1, W3, W2),
// since the backward multiplies by all three within one token tile.
class ComputeMatrix {
 public:
  WeightRef prepare(WeightRef w, int kind, std::int64_t numel, ComputeDType compute) {
    if (compute == ComputeDType::kF32 && w.dtype() == WeightDType::kBF16) {
      std::vector<float>& f32 = f32_[kind];
      if (static_cast<std::int64_t>(f32.size()) < numel) f32.resize(static_cast<std::size_t>(numel));
      const std::uint16_t* src = w.bf16_data();
      for (std::int64_t i = 0; i < numel; ++i) f32[i] = bf16_to_float(src[i]);
      return WeightRef(f32.data());
    }
    if (compute == ComputeDType::kBF16 && w.dtype() == WeightDType::kF32) {
      std::vector<std::uint16_t>& bf16 = bf16_[kind];
      if (static_cast<std::int64_t>(bf16.size()) < numel) bf16.resize(static_cast<std::size_t>(numel));
      const float* src = w.f32();
      for (std::int64_t i = 0; i < numel; ++i) bf16[i] = float_to_bf16(src[i]);
      return WeightRef::bf16(bf16.data());
    }
    return w;
  }

 private:
  std::vector<float> f32_[3];
  std::vector<std::uint16_t> bf16_[3];
};

ComputeMatrix& compute_matrix() {
  thread_local ComputeMatrix matrix;
  return matrix;
}

// Gathers the n rows of x_recv that assignments [begin, begin + n) read into x_tile [n, H].
void gather_tile(const ReceivePlan& plan, std::span<const float> x_recv, std::int64_t begin, int n, int H,
                 float* x_tile) {
  for (int i = 0; i < n; ++i) {
    std::memcpy(x_tile + static_cast<std::size_t>(i) * H, x_recv.data() + plan.sorted_row[begin + i] * H,
                sizeof(float) * H);
  }
}

}  // namespace

WeightRef ExpertWeightsView::matrix(int kind, int e) const {
  const std::size_t offset = static_cast<std::size_t>(e) * ffn_size * hidden_size;
  if (dtype() == WeightDType::kBF16) {
    const auto& m = kind == 0 ? gate_proj_bf16 : kind == 1 ? up_proj_bf16 : down_proj_bf16;
    return WeightRef::bf16(m.data() + offset);
  }
  const auto& m = kind == 0 ? gate_proj : kind == 1 ? up_proj : down_proj;
  return WeightRef(m.data() + offset);
}

void expert_forward(const ReceivePlan& plan, const ExpertWeightsView& w, std::span<const float> x_recv,
                    std::span<float> out, std::span<float> act_gate, std::span<float> act_up,
                    ExpertScratch& scratch) {
  check_shapes(plan, w, x_recv, out.size(), act_gate.size(), act_up.size());
  std::fill(out.begin(), out.end(), 0.0f);
  const std::span<const std::int64_t> offsets(plan.expert_offsets);
  const auto L = static_cast<std::size_t>(w.num_local_experts);
  expert_forward_ranges(plan, w, offsets.first(L), offsets.subspan(1, L), x_recv, out, act_gate, act_up, scratch);
}

void expert_forward_ranges(const ReceivePlan& plan, const ExpertWeightsView& w, std::span<const std::int64_t> begins,
                           std::span<const std::int64_t> ends, std::span<const float> x_recv, std::span<float> out,
                           std::span<float> act_gate, std::span<float> act_up, ExpertScratch& scratch,
                           ExpertProgress progress) {
  check_shapes(plan, w, x_recv, out.size(), act_gate.size(), act_up.size());
  check_ranges(plan, w, begins, ends);
  const int H = w.hidden_size, F = w.ffn_size;
  ensure(scratch.x_tile, kExpertTileRows * H);
  ensure(scratch.h_tile, kExpertTileRows * F);
  ensure(scratch.y_tile, kExpertTileRows * H);
  float* x_tile = scratch.x_tile.data();
  float* h_tile = scratch.h_tile.data();
  float* y_tile = scratch.y_tile.data();
  const GemmOptions options = current_gemm_options();
  ComputeMatrix& matrix = compute_matrix();
  const std::int64_t FH = static_cast<std::int64_t>(F) * H;
  for (int e = 0; e < w.num_local_experts; ++e) {
    const std::int64_t first = begins[e], last = ends[e];
    if (first == last) continue;
    // One matrix at a time, each converted (when needed) once for all of this expert's tiles:
    // a1 = x W1^T over every tile, then a3 = x W3^T, then y = (silu(a1) * a3) W2^T. W1 and W3 are
    // not fused into one [2F, H] GEMM: they are separate tensors, and on this CPU a fused
    // product of twice the width ran no faster than the two halves (bench/linalg, RESULTS.md).
    for (int kind = 0; kind < 2; ++kind) {
      const WeightRef wk = matrix.prepare(w.matrix(kind, e), kind, FH, options.compute);
      float* act = (kind == 0 ? act_gate : act_up).data();
      for (std::int64_t begin = first; begin < last; begin += kExpertTileRows) {
        const int n = static_cast<int>(std::min(kExpertTileRows, last - begin));
        gather_tile(plan, x_recv, begin, n, H, x_tile);
        // act [n, F] = x_tile [n, H] * W^T.
        linear_forward(options, act + begin * F, x_tile, wk, n, H, F);
        progress();
      }
    }
    const WeightRef w2 = matrix.prepare(w.matrix(2, e), 2, FH, options.compute);
    for (std::int64_t begin = first; begin < last; begin += kExpertTileRows) {
      const int n = static_cast<int>(std::min(kExpertTileRows, last - begin));
      const float* a1 = act_gate.data() + begin * F;
      const float* a3 = act_up.data() + begin * F;
      for (std::int64_t i = 0; i < static_cast<std::int64_t>(n) * F; ++i) {
        h_tile[i] = a1[i] * sigmoid(a1[i]) * a3[i];
      }
      // y_tile [n, H] = h_tile [n, F] * W2^T.
      linear_forward(options, y_tile, h_tile, w2, n, F, H);
      progress();
      for (int i = 0; i < n; ++i) {
        const float g = plan.sorted_weight[begin + i];
        float* dst = out.data() + plan.sorted_row[begin + i] * H;
        const float* src = y_tile + static_cast<std::size_t>(i) * H;
        for (int c = 0; c < H; ++c) dst[c] += g * src[c];
      }
    }
  }
}

void expert_backward(const ReceivePlan& plan, const ExpertWeightsView& w, std::span<const float> x_recv,
                     std::span<const float> dy_recv, std::span<const float> act_gate,
                     std::span<const float> act_up, std::span<float> dx_recv, std::span<float> d_weight,
                     const ExpertGradsView& grads, ExpertScratch& scratch) {
  check_shapes(plan, w, x_recv, dx_recv.size(), act_gate.size(), act_up.size());
  std::fill(dx_recv.begin(), dx_recv.end(), 0.0f);
  const std::span<const std::int64_t> offsets(plan.expert_offsets);
  const auto L = static_cast<std::size_t>(w.num_local_experts);
  expert_backward_ranges(plan, w, offsets.first(L), offsets.subspan(1, L), x_recv, dy_recv, act_gate, act_up, dx_recv,
                         d_weight, grads, scratch);
}

void expert_backward_ranges(const ReceivePlan& plan, const ExpertWeightsView& w, std::span<const std::int64_t> begins,
                            std::span<const std::int64_t> ends, std::span<const float> x_recv,
                            std::span<const float> dy_recv, std::span<const float> act_gate,
                            std::span<const float> act_up, std::span<float> dx_recv, std::span<float> d_weight,
                            const ExpertGradsView& grads, ExpertScratch& scratch, ExpertProgress progress) {
  check_shapes(plan, w, x_recv, dx_recv.size(), act_gate.size(), act_up.size());
  check_ranges(plan, w, begins, ends);
  // The products run in this thread's compute precision: under BF16 (mixed-precision training)
  // each GEMM rounds its operands (F32 master weights once per expert, unless the caller passes
  // them already rounded) and accumulates in F32 into the F32 gradients; the elementwise SwiGLU
  // backward stays F32.
  const GemmOptions options = current_gemm_options();
  ComputeMatrix& matrix = compute_matrix();
  const int H = w.hidden_size, F = w.ffn_size;
  OCCULT_CHECK(dy_recv.size() == x_recv.size(), "expert backward: gradient rows hold {} floats, expected {}",
               dy_recv.size(), x_recv.size());
  OCCULT_CHECK(static_cast<std::int64_t>(d_weight.size()) == plan.num_assignments(),
               "expert backward: gate gradient buffer holds {}, expected {}", d_weight.size(), plan.num_assignments());
  const std::size_t expert_numel = static_cast<std::size_t>(w.num_local_experts) * F * H;
  OCCULT_CHECK(grads.gate_proj.size() == expert_numel && grads.up_proj.size() == expert_numel &&
                   grads.down_proj.size() == expert_numel,
               "expert backward: gradient tensors do not match the weights' shapes");
  ensure(scratch.x_tile, kExpertTileRows * H);
  ensure(scratch.dy_tile, kExpertTileRows * H);
  ensure(scratch.y_tile, kExpertTileRows * H);
  ensure(scratch.h_tile, kExpertTileRows * F);
  ensure(scratch.u_tile, kExpertTileRows * F);
  ensure(scratch.da_gate, kExpertTileRows * F);
  ensure(scratch.da_up, kExpertTileRows * F);
  float* x_tile = scratch.x_tile.data();
  float* dy_tile = scratch.dy_tile.data();  // g * dy
  float* dx_tile = scratch.y_tile.data();
  float* h_tile = scratch.h_tile.data();
  float* u_tile = scratch.u_tile.data();
  float* da1 = scratch.da_gate.data();
  float* da3 = scratch.da_up.data();
  for (int e = 0; e < w.num_local_experts; ++e) {
    const std::size_t fh = static_cast<std::size_t>(F) * H;
    if (begins[e] == ends[e]) continue;
    const WeightRef w1 = matrix.prepare(w.matrix(0, e), 0, static_cast<std::int64_t>(fh), options.compute);
    const WeightRef w3 = matrix.prepare(w.matrix(1, e), 1, static_cast<std::int64_t>(fh), options.compute);
    const WeightRef w2 = matrix.prepare(w.matrix(2, e), 2, static_cast<std::int64_t>(fh), options.compute);
    float* dw1 = grads.gate_proj.data() + e * fh;
    float* dw3 = grads.up_proj.data() + e * fh;
    float* dw2 = grads.down_proj.data() + e * fh;
    for (std::int64_t begin = begins[e]; begin < ends[e]; begin += kExpertTileRows) {
      const int n = static_cast<int>(std::min(kExpertTileRows, ends[e] - begin));
      for (int i = 0; i < n; ++i) {
        const std::int64_t row = plan.sorted_row[begin + i];
        std::memcpy(x_tile + static_cast<std::size_t>(i) * H, x_recv.data() + row * H, sizeof(float) * H);
        std::memcpy(dy_tile + static_cast<std::size_t>(i) * H, dy_recv.data() + row * H, sizeof(float) * H);
      }
      // u [n, F] = dy [n, H] * W2 [H, F]: the gradient of h before the gate weight.
      gemm(options, false, false, n, F, H, dy_tile, H, w2, F, 0.0f, u_tile, F);
      const float* a1 = act_gate.data() + begin * F;
      const float* a3 = act_up.data() + begin * F;
      for (int i = 0; i < n; ++i) {
        const float g = plan.sorted_weight[begin + i];
        double dg = 0;
        for (int j = 0; j < F; ++j) {
          const std::size_t ij = static_cast<std::size_t>(i) * F + j;
          const float s = sigmoid(a1[ij]);
          const float silu = a1[ij] * s;
          h_tile[ij] = silu * a3[ij];
          dg += static_cast<double>(u_tile[ij]) * h_tile[ij];
          const float dh = g * u_tile[ij];
          da3[ij] = dh * silu;
          da1[ij] = dh * a3[ij] * s * (1.0f + a1[ij] * (1.0f - s));
        }
        d_weight[begin + i] = static_cast<float>(dg);
        float* dyg = dy_tile + static_cast<std::size_t>(i) * H;
        for (int c = 0; c < H; ++c) dyg[c] *= g;
      }
      // dW2 [H, F] += (g dy)^T [H, n] * h [n, F].
      gemm(options, true, false, H, F, n, dy_tile, H, WeightRef(h_tile), F, 1.0f, dw2, F);
      // dW1 [F, H] += da1^T [F, n] * x [n, H]; dW3 likewise.
      gemm(options, true, false, F, H, n, da1, F, WeightRef(x_tile), H, 1.0f, dw1, H);
      gemm(options, true, false, F, H, n, da3, F, WeightRef(x_tile), H, 1.0f, dw3, H);
      // dx [n, H] = da1 [n, F] * W1 [F, H] + da3 * W3.
      gemm(options, false, false, n, H, F, da1, F, w1, H, 0.0f, dx_tile, H);
      gemm(options, false, false, n, H, F, da3, F, w3, H, 1.0f, dx_tile, H);
      for (int i = 0; i < n; ++i) {
        float* dst = dx_recv.data() + plan.sorted_row[begin + i] * H;
        const float* src = dx_tile + static_cast<std::size_t>(i) * H;
        for (int c = 0; c < H; ++c) dst[c] += src[c];
      }
      progress();
    }
  }
}

void reference_expert_forward(const ReceivePlan& plan, const ExpertWeightsView& w, std::span<const float> x_recv,
                              std::span<float> out, std::span<float> act_gate, std::span<float> act_up) {
  check_shapes(plan, w, x_recv, out.size(), act_gate.size(), act_up.size());
  require_f32(w, "the reference expert forward");
  const int H = w.hidden_size, F = w.ffn_size;
  std::vector<double> acc(out.size(), 0.0);
  std::vector<double> h(F);
  for (int e = 0; e < w.num_local_experts; ++e) {
    const std::size_t fh = static_cast<std::size_t>(F) * H;
    for (std::int64_t a = plan.expert_offsets[e]; a < plan.expert_offsets[e + 1]; ++a) {
      const float* x = x_recv.data() + plan.sorted_row[a] * H;
      for (int j = 0; j < F; ++j) {
        double g1 = 0, g3 = 0;
        for (int c = 0; c < H; ++c) {
          g1 += static_cast<double>(w.gate_proj[e * fh + static_cast<std::size_t>(j) * H + c]) * x[c];
          g3 += static_cast<double>(w.up_proj[e * fh + static_cast<std::size_t>(j) * H + c]) * x[c];
        }
        act_gate[a * F + j] = static_cast<float>(g1);
        act_up[a * F + j] = static_cast<float>(g3);
        h[j] = g1 / (1.0 + std::exp(-g1)) * g3;
      }
      for (int c = 0; c < H; ++c) {
        double y = 0;
        for (int j = 0; j < F; ++j) y += static_cast<double>(w.down_proj[e * fh + static_cast<std::size_t>(c) * F + j]) * h[j];
        acc[plan.sorted_row[a] * H + c] += plan.sorted_weight[a] * y;
      }
    }
  }
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(acc[i]);
}

void reference_expert_backward(const ReceivePlan& plan, const ExpertWeightsView& w, std::span<const float> x_recv,
                               std::span<const float> dy_recv, std::span<const float> act_gate,
                               std::span<const float> act_up, std::span<float> dx_recv, std::span<float> d_weight,
                               const ExpertGradsView& grads) {
  check_shapes(plan, w, x_recv, dx_recv.size(), act_gate.size(), act_up.size());
  require_f32(w, "the reference expert backward");
  const int H = w.hidden_size, F = w.ffn_size;
  std::vector<double> dx(dx_recv.size(), 0.0), u(F), da1(F), da3(F), h(F);
  for (int e = 0; e < w.num_local_experts; ++e) {
    const std::size_t fh = static_cast<std::size_t>(F) * H;
    for (std::int64_t a = plan.expert_offsets[e]; a < plan.expert_offsets[e + 1]; ++a) {
      const float* x = x_recv.data() + plan.sorted_row[a] * H;
      const float* dy = dy_recv.data() + plan.sorted_row[a] * H;
      const double g = plan.sorted_weight[a];
      double dg = 0;
      for (int j = 0; j < F; ++j) {
        u[j] = 0;
        for (int c = 0; c < H; ++c) u[j] += static_cast<double>(dy[c]) * w.down_proj[e * fh + static_cast<std::size_t>(c) * F + j];
        const double a1 = act_gate[a * F + j], a3 = act_up[a * F + j];
        const double s = 1.0 / (1.0 + std::exp(-a1));
        h[j] = a1 * s * a3;
        dg += u[j] * h[j];
        da3[j] = g * u[j] * a1 * s;
        da1[j] = g * u[j] * a3 * s * (1.0 + a1 * (1.0 - s));
      }
      d_weight[a] = static_cast<float>(dg);
      for (int c = 0; c < H; ++c) {
        for (int j = 0; j < F; ++j) {
          grads.down_proj[e * fh + static_cast<std::size_t>(c) * F + j] += static_cast<float>(g * dy[c] * h[j]);
          grads.gate_proj[e * fh + static_cast<std::size_t>(j) * H + c] += static_cast<float>(da1[j] * x[c]);
          grads.up_proj[e * fh + static_cast<std::size_t>(j) * H + c] += static_cast<float>(da3[j] * x[c]);
          dx[plan.sorted_row[a] * H + c] += da1[j] * w.gate_proj[e * fh + static_cast<std::size_t>(j) * H + c] +
                                            da3[j] * w.up_proj[e * fh + static_cast<std::size_t>(j) * H + c];
        }
      }
    }
  }
  for (std::size_t i = 0; i < dx_recv.size(); ++i) dx_recv[i] = static_cast<float>(dx[i]);
}

}  // namespace occult
