// Expert compute on the device that holds the experts: SwiGLU experts over the rows a rank
// received, grouped per local expert, with the gate weights applied here and the stage-1 sum
// (over a token's experts on this device) formed by scatter-adding weighted results into the
// token's row. Rows are gathered tile by tile into a small reusable buffer and results are
// scatter-added tile by tile, so neither the input nor the output is ever copied k times (the
// CPU form of the paper's scattering/merging sparse matmul). GEMMs go through occult::gemm with
// this thread's GEMM options (oneDNN or BLAS; F32 or BF16 compute, forward and backward).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "occult/linalg/linear.h"
#include "occult/moe/dispatch_plan.h"

namespace occult {

// Rows per tile: large enough that sgemm runs near its peak, small enough that the gathered
// tile of x ([tile, H]) and the hidden tile ([tile, F]) stay in cache-sized scratch.
inline constexpr std::int64_t kExpertTileRows = 256;

// The experts of one rank, packed: W1 (gate_proj) [L, F, H], W3 (up_proj) [L, F, H],
// W2 (down_proj) [L, H, F], where L = number of local experts. Held either in F32 (the three
// F32 spans; training and the reference twins) or in BF16 (the three BF16 spans, the others
// empty; inference forward only).
struct ExpertWeightsView {
  int num_local_experts = 0;
  int hidden_size = 0;  // H
  int ffn_size = 0;     // F
  std::span<const float> gate_proj;
  std::span<const float> up_proj;
  std::span<const float> down_proj;
  std::span<const std::uint16_t> gate_proj_bf16 = {};
  std::span<const std::uint16_t> up_proj_bf16 = {};
  std::span<const std::uint16_t> down_proj_bf16 = {};

  // kBF16 when the BF16 spans are set, else kF32.
  WeightDType dtype() const { return gate_proj_bf16.empty() ? WeightDType::kF32 : WeightDType::kBF16; }
  // Local expert e's matrix `kind` (0 gate [F,H], 1 up [F,H], 2 down [H,F]).
  WeightRef matrix(int kind, int e) const;
};

// Gradients of the same shapes (accumulated into).
struct ExpertGradsView {
  std::span<float> gate_proj;
  std::span<float> up_proj;
  std::span<float> down_proj;
};

// Reusable tile buffers; sized on first use, kept between calls.
struct ExpertScratch {
  std::vector<float> x_tile, dy_tile, h_tile, y_tile, u_tile, da_gate, da_up;
};

// Forward (F32 or BF16 weights; the products in this thread's compute precision, sums in F32;
// a matrix whose dtype differs from the compute precision is converted once per expert and
// call, not per token tile). x_recv [R, H] -> out [R, H] (overwritten): out[r] = sum over the assignments a of
// row r of weight_a * W2_e (silu(W1_e x_r) * (W3_e x_r)). act_gate and act_up [A, F] receive
// W1_e x and W3_e x per assignment in the plan's expert-sorted order (for backward).
void expert_forward(const ReceivePlan& plan, const ExpertWeightsView& weights, std::span<const float> x_recv,
                    std::span<float> out, std::span<float> act_gate, std::span<float> act_up,
                    ExpertScratch& scratch);

// A hook that the range kernels call as they go (e.g. to let pending messages
// progress when a rank has one core); does nothing when `call` is null. Does not allocate.
struct ExpertProgress {
  void (*call)(void* context) = nullptr;
  void* context = nullptr;
  void operator()() const {
    if (call != nullptr) call(context);
  }
};

// As expert_forward, for the assignments [begin[e], end[e]) of each local expert e only (a
// sub-range of e's range in the plan's expert-sorted order; begin and end hold one entry per
// local expert): writes those assignments' activations and ADDS their weighted results into
// `out` (the caller zeroes the rows first). Only those assignments' sorted_row and
// sorted_weight are read. Each row's results are added in ascending expert order. Tiles start
// at begin[e], so splitting a plan into ranges changes which rows share a GEMM call, and a
// GEMM's last bits can depend on that: results agree with one call over the whole plan to F32
// rounding, not bit for bit. Calls `progress` after every GEMM.
void expert_forward_ranges(const ReceivePlan& plan, const ExpertWeightsView& weights,
                           std::span<const std::int64_t> begin, std::span<const std::int64_t> end,
                           std::span<const float> x_recv, std::span<float> out, std::span<float> act_gate,
                           std::span<float> act_up, ExpertScratch& scratch, ExpertProgress progress = {});

// Backward (F32 master weights, or BF16 ones such as a training layer's per-step rounding of
// them; the products in this thread's compute precision, sums and gradients in F32). dy_recv [R, H] is the gradient of out; writes dx_recv [R, H] (overwritten) and
// d_weight [A] (gradient of each assignment's gate weight, expert-sorted order), and
// accumulates the expert weight gradients.
void expert_backward(const ReceivePlan& plan, const ExpertWeightsView& weights, std::span<const float> x_recv,
                     std::span<const float> dy_recv, std::span<const float> act_gate,
                     std::span<const float> act_up, std::span<float> dx_recv, std::span<float> d_weight,
                     const ExpertGradsView& grads, ExpertScratch& scratch);

// As expert_backward, for the assignments [begin[e], end[e]) of each local expert e only (as in
// expert_forward_ranges): writes those assignments' d_weight, ADDS their input gradients into
// dx_recv (the caller zeroes the rows first) and accumulates their weight gradients. Splitting
// a plan into ranges changes the tiles, so results agree with one call to F32 rounding. Calls
// `progress` after every token tile.
void expert_backward_ranges(const ReceivePlan& plan, const ExpertWeightsView& weights,
                            std::span<const std::int64_t> begin, std::span<const std::int64_t> end,
                            std::span<const float> x_recv, std::span<const float> dy_recv,
                            std::span<const float> act_gate, std::span<const float> act_up,
                            std::span<float> dx_recv, std::span<float> d_weight, const ExpertGradsView& grads,
                            ExpertScratch& scratch, ExpertProgress progress = {});

// Naive reference twins (plain loops, double accumulation, no BLAS, no tiling, F32 weights):
// same contracts as expert_forward / expert_backward.
void reference_expert_forward(const ReceivePlan& plan, const ExpertWeightsView& weights,
                              std::span<const float> x_recv, std::span<float> out, std::span<float> act_gate,
                              std::span<float> act_up);
void reference_expert_backward(const ReceivePlan& plan, const ExpertWeightsView& weights,
                               std::span<const float> x_recv, std::span<const float> dy_recv,
                               std::span<const float> act_gate, std::span<const float> act_up,
                               std::span<float> dx_recv, std::span<float> d_weight, const ExpertGradsView& grads);

// FLOPs of expert_forward over `assignments` assignments: three H x F matrix-vector products
// (2 FLOPs per multiply-add) each; backward does twice as many.
inline double expert_forward_flops(std::int64_t assignments, int hidden, int ffn) {
  return 6.0 * static_cast<double>(assignments) * hidden * ffn;
}

}  // namespace occult
