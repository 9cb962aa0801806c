// The compute seam of the MoE layer: where its experts and its router GEMMs run. Routing
// decisions, planning and communication stay in MoeLayer (and the Communicator, whose
// non-blocking exchange is the communication half of the seam); a device backend (CUDA is a
// later step) implements these two interfaces with its own memory and kernels. The CPU backends
// run expert_compute.h and occult::gemm on host memory.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "occult/linalg/linear.h"
#include "occult/moe/expert_compute.h"

namespace occult {

// The experts of one rank. Each method has the contract of the expert_compute.h function of the
// same role (expert_forward, expert_forward_ranges, expert_backward, expert_backward_ranges).
class ExpertBackend {
 public:
  virtual ~ExpertBackend() = default;
  // A short name for reports ("cpu").
  virtual std::string_view name() const = 0;
  virtual void forward(const ReceivePlan& plan, const ExpertWeightsView& weights, std::span<const float> x_recv,
                       std::span<float> out, std::span<float> act_gate, std::span<float> act_up,
                       ExpertScratch& scratch) = 0;
  virtual void forward_ranges(const ReceivePlan& plan, const ExpertWeightsView& weights,
                              std::span<const std::int64_t> begin, std::span<const std::int64_t> end,
                              std::span<const float> x_recv, std::span<float> out, std::span<float> act_gate,
                              std::span<float> act_up, ExpertScratch& scratch, ExpertProgress progress) = 0;
  virtual void backward(const ReceivePlan& plan, const ExpertWeightsView& weights, std::span<const float> x_recv,
                        std::span<const float> dy_recv, std::span<const float> act_gate,
                        std::span<const float> act_up, std::span<float> dx_recv, std::span<float> d_weight,
                        const ExpertGradsView& grads, ExpertScratch& scratch) = 0;
  virtual void backward_ranges(const ReceivePlan& plan, const ExpertWeightsView& weights,
                               std::span<const std::int64_t> begin, std::span<const std::int64_t> end,
                               std::span<const float> x_recv, std::span<const float> dy_recv,
                               std::span<const float> act_gate, std::span<const float> act_up,
                               std::span<float> dx_recv, std::span<float> d_weight, const ExpertGradsView& grads,
                               ExpertScratch& scratch, ExpertProgress progress) = 0;
};

// The router's two products. Always F32: the top-k choice is sensitive to the logits' last bits.
class RouterBackend {
 public:
  virtual ~RouterBackend() = default;
  // A short name for reports ("cpu").
  virtual std::string_view name() const = 0;
  // logits [T, E] (overwritten) = x [T, H] router [E, H]^T.
  virtual void logits(std::span<const float> x, std::int64_t T, std::span<const float> router, int E, int H,
                      std::span<float> logits) = 0;
  // From dlogits [T, E]: d_router [E, H] += dlogits^T x, and dx [T, H] += dlogits router.
  virtual void backward(std::span<const float> dlogits, std::span<const float> x, std::int64_t T,
                        std::span<const float> router, int E, int H, std::span<float> d_router,
                        std::span<float> dx) = 0;
};

// The host backends: the experts with this thread's GEMM options, the router in F32 on `library`.
std::unique_ptr<ExpertBackend> make_cpu_expert_backend();
std::unique_ptr<RouterBackend> make_cpu_router_backend(GemmBackend library);

}  // namespace occult
