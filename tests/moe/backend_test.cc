// The MoE layer's compute seam: every expert and router product goes through the layer's
// backends, and a replacement backend sees exactly the calls the layer makes (forward, the
// overlapped forward and backward per-source ranges, backward, the router's two products).
#include "occult/moe/backend.h"

#include <gtest/gtest.h>

#include <vector>

#include "occult/comm/communicator.h"
#include "occult/core/error.h"
#include "occult/moe/moe_layer.h"
#include "test_util.h"

namespace occult {
namespace {

using testing_util::random_values;

// Delegates to the CPU backends and counts the calls.
struct Calls {
  int forward = 0, forward_ranges = 0, backward = 0, backward_ranges = 0, logits = 0, router_backward = 0;
};

class CountingExperts final : public ExpertBackend {
 public:
  explicit CountingExperts(Calls& calls) : calls_(calls), cpu_(make_cpu_expert_backend()) {}
  std::string_view name() const override { return "counting"; }
  void forward(const ReceivePlan& plan, const ExpertWeightsView& w, std::span<const float> x, std::span<float> out,
               std::span<float> gate, std::span<float> up, ExpertScratch& s) override {
    ++calls_.forward;
    cpu_->forward(plan, w, x, out, gate, up, s);
  }
  void forward_ranges(const ReceivePlan& plan, const ExpertWeightsView& w, std::span<const std::int64_t> begin,
                      std::span<const std::int64_t> end, std::span<const float> x, std::span<float> out,
                      std::span<float> gate, std::span<float> up, ExpertScratch& s, ExpertProgress p) override {
    ++calls_.forward_ranges;
    cpu_->forward_ranges(plan, w, begin, end, x, out, gate, up, s, p);
  }
  void backward(const ReceivePlan& plan, const ExpertWeightsView& w, std::span<const float> x,
                std::span<const float> dy, std::span<const float> gate, std::span<const float> up,
                std::span<float> dx, std::span<float> dw, const ExpertGradsView& g, ExpertScratch& s) override {
    ++calls_.backward;
    cpu_->backward(plan, w, x, dy, gate, up, dx, dw, g, s);
  }
  void backward_ranges(const ReceivePlan& plan, const ExpertWeightsView& w, std::span<const std::int64_t> begin,
                       std::span<const std::int64_t> end, std::span<const float> x, std::span<const float> dy,
                       std::span<const float> gate, std::span<const float> up, std::span<float> dx,
                       std::span<float> dw, const ExpertGradsView& g, ExpertScratch& s, ExpertProgress p) override {
    ++calls_.backward_ranges;
    cpu_->backward_ranges(plan, w, begin, end, x, dy, gate, up, dx, dw, g, s, p);
  }

 private:
  Calls& calls_;
  std::unique_ptr<ExpertBackend> cpu_;
};

class CountingRouter final : public RouterBackend {
 public:
  explicit CountingRouter(Calls& calls) : calls_(calls), cpu_(make_cpu_router_backend(GemmBackend::kOneDnn)) {}
  std::string_view name() const override { return "counting"; }
  void logits(std::span<const float> x, std::int64_t T, std::span<const float> r, int E, int H,
              std::span<float> out) override {
    ++calls_.logits;
    cpu_->logits(x, T, r, E, H, out);
  }
  void backward(std::span<const float> dl, std::span<const float> x, std::int64_t T, std::span<const float> r, int E,
                int H, std::span<float> dr, std::span<float> dx) override {
    ++calls_.router_backward;
    cpu_->backward(dl, x, T, r, E, H, dr, dx);
  }

 private:
  Calls& calls_;
  std::unique_ptr<RouterBackend> cpu_;
};

struct Result {
  std::vector<float> y, dx, d_router, d_gate;
};

Result run(bool overlap, Calls* calls) {
  SelfCommunicator comm;
  MoeLayerConfig c;
  c.num_experts = 6;
  c.top_k = 2;
  c.hidden_size = 8;
  c.ffn_size = 5;
  c.overlap = overlap;
  MoeLayer layer(comm, c, std::vector<int>(6, 0));
  EXPECT_EQ(layer.expert_backend().name(), "cpu");
  EXPECT_EQ(layer.router_backend().name(), "cpu");
  if (calls != nullptr) {
    layer.set_backends(std::make_unique<CountingExperts>(*calls), std::make_unique<CountingRouter>(*calls));
  }
  layer.init_random(3, 0.5f);
  const std::int64_t T = 9;
  const std::vector<float> x = random_values(T * 8, 4), dy = random_values(T * 8, 5);
  Result r;
  r.y.resize(T * 8);
  r.dx.resize(T * 8);
  layer.zero_grad();
  layer.forward(x, T, r.y);
  layer.backward(dy, {}, r.dx);
  r.d_router.assign(layer.router_weight_grad().begin(), layer.router_weight_grad().end());
  r.d_gate.assign(layer.gate_proj_grad(0).begin(), layer.gate_proj_grad(0).end());
  return r;
}

TEST(MoeBackend, EveryProductGoesThroughTheLayersBackends) {
  for (bool overlap : {false, true}) {
    Calls calls;
    const Result counted = run(overlap, &calls);
    const Result plain = run(overlap, nullptr);
    // Same arithmetic through the seam: bit for bit.
    EXPECT_EQ(counted.y, plain.y) << "overlap " << overlap;
    EXPECT_EQ(counted.dx, plain.dx);
    EXPECT_EQ(counted.d_router, plain.d_router);
    EXPECT_EQ(counted.d_gate, plain.d_gate);
    // One forward and one backward (the whole plan, or one range call per source rank when
    // overlapped), and the router's two products.
    EXPECT_EQ(calls.forward, overlap ? 0 : 1);
    EXPECT_EQ(calls.forward_ranges, overlap ? 1 : 0);
    EXPECT_EQ(calls.backward, overlap ? 0 : 1);
    EXPECT_EQ(calls.backward_ranges, overlap ? 1 : 0);
    EXPECT_EQ(calls.logits, 1);
    EXPECT_EQ(calls.router_backward, 1);
  }
}

TEST(MoeBackend, MissingBackendIsAnError) {
  SelfCommunicator comm;
  MoeLayerConfig c;
  c.num_experts = 2;
  c.top_k = 1;
  c.hidden_size = 4;
  c.ffn_size = 3;
  MoeLayer layer(comm, c, {0, 0});
  try {
    layer.set_backends(make_cpu_expert_backend(), nullptr);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("an expert and a router backend are both needed"), std::string::npos) << e.message();
  }
}

}  // namespace
}  // namespace occult
