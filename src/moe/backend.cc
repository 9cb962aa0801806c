#include "occult/moe/backend.h"

namespace occult {

namespace {

class CpuExpertBackend final : public ExpertBackend {
 public:
  std::string_view name() const override { return "cpu"; }
  void forward(const ReceivePlan& plan, const ExpertWeightsView& weights, std::span<const float> x_recv,
               std::span<float> out, std::span<float> act_gate, std::span<float> act_up,
               ExpertScratch& scratch) override {
    expert_forward(plan, weights, x_recv, out, act_gate, act_up, scratch);
  }
  void forward_ranges(const ReceivePlan& plan, const ExpertWeightsView& weights, std::span<const std::int64_t> begin,
                      std::span<const std::int64_t> end, std::span<const float> x_recv, std::span<float> out,
                      std::span<float> act_gate, std::span<float> act_up, ExpertScratch& scratch,
                      ExpertProgress progress) override {
    expert_forward_ranges(plan, weights, begin, end, x_recv, out, act_gate, act_up, scratch, progress);
  }
  void backward(const ReceivePlan& plan, const ExpertWeightsView& weights, std::span<const float> x_recv,
                std::span<const float> dy_recv, std::span<const float> act_gate, std::span<const float> act_up,
                std::span<float> dx_recv, std::span<float> d_weight, const ExpertGradsView& grads,
                ExpertScratch& scratch) override {
    expert_backward(plan, weights, x_recv, dy_recv, act_gate, act_up, dx_recv, d_weight, grads, scratch);
  }
  void backward_ranges(const ReceivePlan& plan, const ExpertWeightsView& weights, std::span<const std::int64_t> begin,
                       std::span<const std::int64_t> end, std::span<const float> x_recv,
                       std::span<const float> dy_recv, std::span<const float> act_gate,
                       std::span<const float> act_up, std::span<float> dx_recv, std::span<float> d_weight,
                       const ExpertGradsView& grads, ExpertScratch& scratch, ExpertProgress progress) override {
    expert_backward_ranges(plan, weights, begin, end, x_recv, dy_recv, act_gate, act_up, dx_recv, d_weight, grads,
                           scratch, progress);
  }
};

class CpuRouterBackend final : public RouterBackend {
 public:
  explicit CpuRouterBackend(GemmBackend library) : f32_{library, ComputeDType::kF32} {}
  std::string_view name() const override { return "cpu"; }
  void logits(std::span<const float> x, std::int64_t T, std::span<const float> router, int E, int H,
              std::span<float> logits) override {
    if (T == 0) return;
    gemm(f32_, false, true, T, E, H, x.data(), H, WeightRef(router.data()), H, 0.0f, logits.data(), E);
  }
  void backward(std::span<const float> dlogits, std::span<const float> x, std::int64_t T,
                std::span<const float> router, int E, int H, std::span<float> d_router,
                std::span<float> dx) override {
    if (T == 0) return;
    gemm(f32_, true, false, E, H, T, dlogits.data(), E, WeightRef(x.data()), H, 1.0f, d_router.data(), H);
    gemm(f32_, false, false, T, H, E, dlogits.data(), E, WeightRef(router.data()), H, 1.0f, dx.data(), H);
  }

 private:
  GemmOptions f32_;
};

}  // namespace

std::unique_ptr<ExpertBackend> make_cpu_expert_backend() { return std::make_unique<CpuExpertBackend>(); }

std::unique_ptr<RouterBackend> make_cpu_router_backend(GemmBackend library) {
  return std::make_unique<CpuRouterBackend>(library);
}

}  // namespace occult
