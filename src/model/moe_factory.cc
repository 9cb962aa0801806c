// The model's MoE blocks on top of the expert-parallel MoeLayer of src/moe.
#include <algorithm>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "model/moe_block.h"
#include "occult/comm/communicator.h"
#include "occult/core/error.h"
#include "occult/model/model.h"
#include "occult/moe/moe_layer.h"
#include "occult/routing/pruning.h"

namespace occult {

namespace {

// Adapts MoeLayer to MoeBlock: the router stays in the model's dense arena (copied in before
// each forward, its gradient added out after backward: E*H floats, negligible next to the
// exchange), the experts live in the layer.
class EpMoeBlock final : public MoeBlock {
 public:
  // `layer` (the transformer layer) names the block in the activity a stuck collective reports.
  EpMoeBlock(Communicator& comm, const MoeLayerConfig& config, std::vector<int> expert_to_device,
             std::vector<std::vector<int>> device_experts, int layer)
      : comm_(comm),
        layer_(comm, config, std::move(expert_to_device), std::move(device_experts)),
        forward_activity_(fmt::format("MoE layer {} forward", layer)),
        backward_activity_(fmt::format("MoE layer {} backward", layer)) {}

  void forward(const float* router, const float* selection_bias, const float* x, std::int64_t N,
               float* y) override {
    const auto& c = layer_.config();
    auto r = layer_.router_weight();
    std::copy(router, router + static_cast<std::int64_t>(c.num_experts) * c.hidden_size, r.begin());
    if (c.selection_bias) {
      OCCULT_CHECK(selection_bias != nullptr, "the MoE layer's router needs its selection bias");
      std::copy(selection_bias, selection_bias + c.num_experts, layer_.selection_bias().begin());
    }
    const std::int64_t n = N * c.hidden_size;
    dx_.resize(static_cast<std::size_t>(n));
    comm_.set_activity(forward_activity_);
    layer_.forward(std::span<const float>(x, n), N, std::span<float>(y, n));
  }

  void backward(const float* dy, const float* d_probs, float* dx, float* d_router) override {
    const auto& c = layer_.config();
    const std::int64_t N = layer_.num_tokens();
    const std::int64_t n = N * c.hidden_size;
    layer_.zero_grad();
    comm_.set_activity(backward_activity_);
    layer_.backward(std::span<const float>(dy, n),
                    std::span<const float>(d_probs, d_probs != nullptr ? N * c.num_experts : 0),
                    std::span<float>(dx_.data(), n));
    for (std::int64_t i = 0; i < n; ++i) dx[i] += dx_[i];
    const auto g = layer_.router_weight_grad();
    for (std::size_t i = 0; i < g.size(); ++i) d_router[i] += g[i];
  }

  const float* router_probs() const override { return layer_.router_probs().data(); }
  const std::int32_t* topk_ids() const override { return layer_.topk_ids().data(); }
  const std::vector<int>& local_experts() const override { return layer_.local_experts(); }
  std::int64_t token_device_pairs() const override { return layer_.token_device_pairs(); }
  std::span<float> expert_weight(int e, int kind) override {
    return kind == 0 ? layer_.gate_proj(e) : kind == 1 ? layer_.up_proj(e) : layer_.down_proj(e);
  }
  std::span<std::uint16_t> expert_weight_bf16(int e, int kind) override { return layer_.expert_weight_bf16(e, kind); }
  std::span<float> expert_grad(int e, int kind) override {
    return kind == 0 ? layer_.gate_proj_grad(e) : kind == 1 ? layer_.up_proj_grad(e) : layer_.down_proj_grad(e);
  }

 private:
  Communicator& comm_;
  MoeLayer layer_;
  const std::string forward_activity_, backward_activity_;
  std::vector<float> dx_;  // [N,H] the layer overwrites its dx; the model accumulates
};

}  // namespace

std::unique_ptr<MoeBlock> make_moe_block(const ModelConfig& config, Communicator& comm,
                                         const ParallelOptions& options, int layer,
                                         std::span<const int> expert_to_device,
                                         std::vector<std::vector<int>> device_experts) {
  MoeLayerConfig c;
  static_cast<GatingConfig&>(c) = config.gating();
  c.hidden_size = config.hidden_size;
  c.ffn_size = config.moe_intermediate_size;
  c.selection_bias = config.router_selection_bias;
  c.with_grads = options.training;
  c.expert_dtype = options.weight_dtype;
  c.dispatch = options.dispatch;
  c.prune.max_devices = options.prune_devices;
  c.wire = options.wire;
  c.overlap = options.overlap;
  c.gemm = options.gemm;
  if (options.prune_devices > 0) {
    const auto scheme = parse_prune_scheme(options.prune_scheme);
    OCCULT_CHECK(scheme.has_value(), "--prune-scheme must be score, similarity or device-limited, got \"{}\"",
                 options.prune_scheme);
    c.prune.scheme = *scheme;
    if (*scheme == PruneScheme::kSimilarity) {
      OCCULT_CHECK(layer < static_cast<int>(options.similarity.size()) && !options.similarity[layer].empty(),
                   "--prune-scheme similarity needs an expert similarity for layer {} in the placement file; "
                   "embed one with `occult prune --traces ROUTING.safetensors --placement P.json "
                   "--embed-similarity P-sim.json` (ROUTING from `occult profile`) and pass --placement P-sim.json",
                   layer);
      c.prune.similarity = options.similarity[layer];
    }
  }
  return std::make_unique<EpMoeBlock>(comm, c, std::vector<int>(expert_to_device.begin(), expert_to_device.end()),
                                      std::move(device_experts), config.moe_layer(layer));
}

}  // namespace occult
