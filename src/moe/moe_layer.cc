#include "occult/moe/moe_layer.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "occult/core/error.h"
#include "occult/core/safetensors.h"
#include "occult/moe/expert_compute.h"
#include "occult/moe/reference.h"

namespace occult {

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Per-layer scratch for the exchanges, kept out of the header (grows to the largest batch).
struct ExchangeBuffers {
  std::vector<float> send_rows;       // [R_send, H]
  std::vector<float> recv_rows;       // [R_recv, H]
  std::vector<float> expert_out;      // [R_recv, H]
  std::vector<float> back_rows;       // [R_send, H]
  std::vector<float> d_weight_sorted; // [A_recv]
  std::vector<float> d_weight_arrival;
  std::vector<float> d_weight_send;   // [A_send]
  ExpertScratch expert;
};

// Stage-2 reduction at home: out[t] (+)= sum of the rows the plan maps to token t.
void reduce_rows_home(const DispatchPlan& plan, std::span<const float> rows, int H, std::span<float> out) {
  std::fill(out.begin(), out.end(), 0.0f);
  for (std::int64_t r = 0; r < plan.num_send_rows(); ++r) {
    float* dst = out.data() + static_cast<std::int64_t>(plan.row_token[r]) * H;
    const float* src = rows.data() + r * H;
    for (int c = 0; c < H; ++c) dst[c] += src[c];
  }
}

}  // namespace

struct MoeLayerBuffers : ExchangeBuffers {};

GatingConfig MoeLayerConfig::gating() const {
  GatingConfig g;
  g.num_experts = num_experts;
  g.top_k = top_k;
  g.score_function = score_function;
  g.norm_topk_prob = norm_topk_prob;
  return g;
}

void validate_moe_layer_config(const MoeLayerConfig& c) {
  OCCULT_CHECK(c.num_experts >= 1, "MoE layer: num_experts (E) is {}, expected >= 1", c.num_experts);
  OCCULT_CHECK(c.top_k >= 1 && c.top_k <= c.num_experts, "MoE layer: top-k is {}, expected in [1, E={}]", c.top_k,
               c.num_experts);
  OCCULT_CHECK(c.hidden_size >= 1, "MoE layer: hidden size (H) is {}, expected >= 1", c.hidden_size);
  OCCULT_CHECK(c.ffn_size >= 1, "MoE layer: expert FFN size (F) is {}, expected >= 1", c.ffn_size);
  OCCULT_CHECK(c.capacity_factor >= 0, "MoE layer: capacity factor {} is negative", c.capacity_factor);
  OCCULT_CHECK(c.capacity_factor == 0 || c.dispatch == DispatchKind::kStandard,
               "MoE layer: a capacity factor applies to standard dispatch only (occult is dropless)");
  OCCULT_CHECK(c.prune.max_devices >= 0, "MoE layer: prune devices (M) is {}, expected >= 0", c.prune.max_devices);
  OCCULT_CHECK(c.prune.scheme != PruneScheme::kSimilarity ||
                   c.prune.similarity.size() == static_cast<std::size_t>(c.num_experts) * c.num_experts,
               "MoE layer: the similarity prune scheme needs an E x E similarity ({} x {}), got {} values",
               c.num_experts, c.num_experts, c.prune.similarity.size());
  OCCULT_CHECK(c.expert_dtype == WeightDType::kF32 || !c.with_grads,
               "MoE layer: BF16 expert weights are for inference; training needs F32 weights and gradients");
}

MoeLayer::MoeLayer(Communicator& comm, MoeLayerConfig config, std::vector<int> expert_to_device)
    : comm_(comm), config_(std::move(config)), expert_to_device_(std::move(expert_to_device)) {
  agree_on_errors(comm_, [&] {
    validate_moe_layer_config(config_);
    OCCULT_CHECK(static_cast<int>(expert_to_device_.size()) == config_.num_experts,
                 "MoE layer: the placement has {} experts, the layer has E = {}", expert_to_device_.size(),
                 config_.num_experts);
    for (std::size_t e = 0; e < expert_to_device_.size(); ++e) {
      OCCULT_CHECK(expert_to_device_[e] >= 0 && expert_to_device_[e] < comm_.size(),
                   "MoE layer: the placement puts expert {} on device {}, but there are {} ranks (a placement "
                   "made for another number of devices?)", e, expert_to_device_[e], comm_.size());
    }
    if (config_.prune.max_devices > 0) {
      PruneConfig pc;
      pc.num_experts = config_.num_experts;
      pc.top_k = config_.top_k;
      pc.num_devices = comm_.size();
      pc.max_devices = config_.prune.max_devices;
      pc.scheme = config_.prune.scheme;
      pc.weights = config_.prune.weights;
      pc.norm_topk_prob = config_.norm_topk_prob || config_.score_function == ScoreFunction::kSigmoid;
      validate_prune_config(pc, expert_to_device_, config_.prune.similarity);
    }
  });
  {
    // Every rank must build the same layer: a hash of what the exchanges depend on, compared
    // as max == min over ranks (one reduction), catches a rank given another config or placement.
    std::uint64_t h = 1469598103934665603ull;
    auto mix = [&](std::int64_t v) { h = (h ^ static_cast<std::uint64_t>(v)) * 1099511628211ull; };
    for (std::int64_t v : {std::int64_t(config_.num_experts), std::int64_t(config_.top_k),
                           std::int64_t(config_.hidden_size), std::int64_t(config_.ffn_size),
                           std::int64_t(config_.dispatch), std::int64_t(config_.prune.max_devices)}) {
      mix(v);
    }
    for (int d : expert_to_device_) mix(d);
    const auto hash = static_cast<std::int64_t>(h >> 2);
    std::vector<std::int64_t> extremes = {hash, -hash};
    comm_.all_reduce_max(extremes);
    OCCULT_CHECK(extremes[0] == -extremes[1],
                 "MoE layer: the ranks were given different layer configs or placements (E, k, H, F, dispatch, "
                 "prune devices and expert_to_device must be identical on every rank)");
  }
  local_index_of_.assign(config_.num_experts, -1);
  for (int e = 0; e < config_.num_experts; ++e) {
    if (expert_to_device_[e] == comm_.rank()) {
      local_index_of_[e] = static_cast<int>(local_experts_.size());
      local_experts_.push_back(e);
    }
  }
  const std::size_t E = config_.num_experts, H = config_.hidden_size, F = config_.ffn_size;
  const std::size_t L = local_experts_.size();
  router_.assign(E * H, 0.0f);
  if (config_.expert_dtype == WeightDType::kBF16) {
    w1_bf16_.assign(L * F * H, 0);
    w3_bf16_.assign(L * F * H, 0);
    w2_bf16_.assign(L * H * F, 0);
  } else {
    w1_.assign(L * F * H, 0.0f);
    w3_.assign(L * F * H, 0.0f);
    w2_.assign(L * H * F, 0.0f);
  }
  if (config_.with_grads) {
    d_router_.assign(E * H, 0.0f);
    d_w1_.assign(L * F * H, 0.0f);
    d_w3_.assign(L * F * H, 0.0f);
    d_w2_.assign(L * H * F, 0.0f);
  }
  buffers_ = std::make_unique<MoeLayerBuffers>();
}

MoeLayer::~MoeLayer() = default;

bool MoeLayer::is_local(int expert) const {
  return expert >= 0 && expert < config_.num_experts && local_index_of_[expert] >= 0;
}

int MoeLayer::local_index(int expert, const char* what) const {
  OCCULT_CHECK(expert >= 0 && expert < config_.num_experts, "MoE layer: {} of expert {}: id outside [0, E={})", what,
               expert, config_.num_experts);
  OCCULT_CHECK(local_index_of_[expert] >= 0, "MoE layer: {} of expert {}: it lives on rank {}, not on rank {}", what,
               expert, expert_to_device_[expert], comm_.rank());
  return local_index_of_[expert];
}

namespace {
// The F32 expert tensor v, after checking the layer holds its experts in F32.
std::vector<float>& f32_experts(const MoeLayerConfig& c, std::vector<float>& v, const char* what) {
  OCCULT_CHECK(c.expert_dtype == WeightDType::kF32,
               "MoE layer: {} requested in F32, but the experts are held in BF16 (use expert_weight_bf16)", what);
  return v;
}
// Expert `index`'s part of v; empty when v is (gradients of an inference-only layer).
std::span<float> slice(std::vector<float>& v, int index, std::size_t size) {
  if (v.empty()) return {};
  return std::span<float>(v).subspan(static_cast<std::size_t>(index) * size, size);
}
}  // namespace

std::span<float> MoeLayer::gate_proj(int e) {
  return slice(f32_experts(config_, w1_, "gate_proj"), local_index(e, "gate_proj"),
               std::size_t(config_.ffn_size) * config_.hidden_size);
}
std::span<float> MoeLayer::up_proj(int e) {
  return slice(f32_experts(config_, w3_, "up_proj"), local_index(e, "up_proj"),
               std::size_t(config_.ffn_size) * config_.hidden_size);
}
std::span<float> MoeLayer::down_proj(int e) {
  return slice(f32_experts(config_, w2_, "down_proj"), local_index(e, "down_proj"),
               std::size_t(config_.ffn_size) * config_.hidden_size);
}
std::span<std::uint16_t> MoeLayer::expert_weight_bf16(int e, int kind) {
  OCCULT_CHECK(config_.expert_dtype == WeightDType::kBF16 && kind >= 0 && kind < 3,
               "MoE layer: expert {} tensor {} requested in BF16, but the experts are held in {}", e, kind,
               weight_dtype_name(config_.expert_dtype));
  auto& v = kind == 0 ? w1_bf16_ : kind == 1 ? w3_bf16_ : w2_bf16_;
  const std::size_t size = std::size_t(config_.ffn_size) * config_.hidden_size;
  return std::span<std::uint16_t>(v).subspan(static_cast<std::size_t>(local_index(e, "a BF16 weight")) * size, size);
}
std::span<float> MoeLayer::gate_proj_grad(int e) {
  return slice(d_w1_, local_index(e, "gate_proj grad"), std::size_t(config_.ffn_size) * config_.hidden_size);
}
std::span<float> MoeLayer::up_proj_grad(int e) {
  return slice(d_w3_, local_index(e, "up_proj grad"), std::size_t(config_.ffn_size) * config_.hidden_size);
}
std::span<float> MoeLayer::down_proj_grad(int e) {
  return slice(d_w2_, local_index(e, "down_proj grad"), std::size_t(config_.ffn_size) * config_.hidden_size);
}

std::vector<MoeParameter> MoeLayer::parameters() {
  const std::int64_t E = config_.num_experts, H = config_.hidden_size, F = config_.ffn_size;
  std::vector<MoeParameter> params;
  params.push_back({"mlp.gate.weight", {E, H}, router_, d_router_, true});
  for (int e : local_experts_) {
    const std::string base = fmt::format("mlp.experts.{}.", e);
    params.push_back({base + "gate_proj.weight", {F, H}, gate_proj(e), gate_proj_grad(e), false});
    params.push_back({base + "up_proj.weight", {F, H}, up_proj(e), up_proj_grad(e), false});
    params.push_back({base + "down_proj.weight", {H, F}, down_proj(e), down_proj_grad(e), false});
  }
  return params;
}

void MoeLayer::load_weights(const SafetensorsReader& reader, std::string_view prefix) {
  agree_on_errors(comm_, [&] {
    if (config_.expert_dtype == WeightDType::kBF16) {
      const std::string router = std::string(prefix) + "mlp.gate.weight";
      reader.expect_shape(router, std::vector<std::int64_t>{config_.num_experts, config_.hidden_size});
      const std::vector<float> values = reader.read_f32(router);
      std::copy(values.begin(), values.end(), router_.begin());
      const std::int64_t H = config_.hidden_size, F = config_.ffn_size;
      for (int e : local_experts_) {
        for (int kind = 0; kind < 3; ++kind) {
          static constexpr const char* kNames[] = {"gate_proj", "up_proj", "down_proj"};
          const std::string name = fmt::format("{}mlp.experts.{}.{}.weight", prefix, e, kNames[kind]);
          reader.expect_shape(name, kind < 2 ? std::vector<std::int64_t>{F, H} : std::vector<std::int64_t>{H, F});
          const std::vector<float> w = reader.read_f32(name);
          auto dst = expert_weight_bf16(e, kind);
          for (std::size_t i = 0; i < w.size(); ++i) dst[i] = float_to_bf16(w[i]);
        }
      }
      return;
    }
    for (MoeParameter& p : parameters()) {
      const std::string name = std::string(prefix) + p.name;
      reader.expect_shape(name, p.shape);
      std::vector<float> values = reader.read_f32(name);
      std::copy(values.begin(), values.end(), p.value.begin());
    }
  });
}

void MoeLayer::init_random(std::uint64_t seed, float scale) {
  for (std::size_t i = 0; i < router_.size(); ++i) router_[i] = moe_init_value(seed, 0, i, scale);
  const std::size_t FH = std::size_t(config_.ffn_size) * config_.hidden_size;
  for (std::size_t l = 0; l < local_experts_.size(); ++l) {
    const std::uint64_t e = local_experts_[l];
    if (config_.expert_dtype == WeightDType::kBF16) {
      for (std::size_t i = 0; i < FH; ++i) {
        w1_bf16_[l * FH + i] = float_to_bf16(moe_init_value(seed, 1 + 3 * e + 0, i, scale));
        w3_bf16_[l * FH + i] = float_to_bf16(moe_init_value(seed, 1 + 3 * e + 1, i, scale));
        w2_bf16_[l * FH + i] = float_to_bf16(moe_init_value(seed, 1 + 3 * e + 2, i, scale));
      }
      continue;
    }
    for (std::size_t i = 0; i < FH; ++i) {
      w1_[l * FH + i] = moe_init_value(seed, 1 + 3 * e + 0, i, scale);
      w3_[l * FH + i] = moe_init_value(seed, 1 + 3 * e + 1, i, scale);
      w2_[l * FH + i] = moe_init_value(seed, 1 + 3 * e + 2, i, scale);
    }
  }
}

ExpertWeightsView MoeLayer::expert_view() const {
  ExpertWeightsView view{static_cast<int>(local_experts_.size()), config_.hidden_size, config_.ffn_size, w1_, w3_, w2_};
  view.gate_proj_bf16 = w1_bf16_;
  view.up_proj_bf16 = w3_bf16_;
  view.down_proj_bf16 = w2_bf16_;
  return view;
}

void MoeLayer::zero_grad() {
  for (auto* v : {&d_router_, &d_w1_, &d_w3_, &d_w2_}) std::fill(v->begin(), v->end(), 0.0f);
}

double MoeLayer::forward_expert_flops() const {
  return expert_forward_flops(receive_.num_assignments(), config_.hidden_size, config_.ffn_size);
}
double MoeLayer::backward_expert_flops() const { return 2.0 * forward_expert_flops(); }

void MoeLayer::forward(std::span<const float> x, std::int64_t num_tokens, std::span<float> y) {
  const int E = config_.num_experts, H = config_.hidden_size, k = config_.top_k;
  agree_on_errors(comm_, [&] {
    OCCULT_CHECK(num_tokens >= 0, "MoE layer forward: {} tokens", num_tokens);
    OCCULT_CHECK(x.size() == static_cast<std::size_t>(num_tokens) * H,
                 "MoE layer forward: hidden states hold {} floats, expected T*H = {}*{}", x.size(), num_tokens, H);
    OCCULT_CHECK(y.size() == x.size(), "MoE layer forward: output holds {} floats, expected {}", y.size(), x.size());
  });
  const double t0 = now_seconds();
  num_tokens_ = num_tokens;
  routing_imposed_ = false;
  x_.assign(x.begin(), x.end());
  const std::size_t T = num_tokens;
  std::vector<float> logits(T * E);
  if (T > 0) {
    // logits [T, E] = x [T, H] * W_r^T.
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(T), E, H, 1.0f, x.data(), H,
                router_.data(), H, 0.0f, logits.data(), E);
  }
  probs_.assign(T * E, 0.0f);
  ids_.assign(T * k, 0);
  weights_.assign(T * k, 0.0f);
  const GatingConfig gating = config_.gating();
  prune_stats_ = PruneStats{};
  // Router errors (non-finite logits) are local to a rank: agree before any exchange.
  agree_on_errors(comm_, [&] {
    router_scores(logits, num_tokens, gating, probs_);
    select_topk(probs_, {}, num_tokens, gating, ids_, weights_);
    weight_source_ = ids_;
    if (config_.prune.max_devices > 0) {
      PruneConfig pc;
      pc.num_experts = E;
      pc.top_k = k;
      pc.num_devices = comm_.size();
      pc.max_devices = config_.prune.max_devices;
      pc.scheme = config_.prune.scheme;
      pc.weights = config_.prune.weights;
      pc.norm_topk_prob = config_.norm_topk_prob || config_.score_function == ScoreFunction::kSigmoid;
      prune_stats_ = prune_routing(ids_, weights_, probs_, num_tokens, expert_to_device_, config_.prune.similarity,
                                   pc, prune_workspace_);
      // kKeep: slot j keeps the weight (so the score) of the expert originally in slot j;
      // kRecompute: each weight is the new expert's own p.
      if (config_.prune.weights == PruneWeights::kRecompute) weight_source_ = ids_;
    }
  });
  timings_.forward_router = now_seconds() - t0;
  run_forward(x, y);
}

void MoeLayer::forward_with_routing(std::span<const float> x, std::int64_t num_tokens,
                                    std::span<const std::int32_t> topk_ids, std::span<const float> topk_weights,
                                    std::span<float> y) {
  const int E = config_.num_experts, H = config_.hidden_size, k = config_.top_k;
  agree_on_errors(comm_, [&] {
    OCCULT_CHECK(num_tokens >= 0, "MoE layer forward: {} tokens", num_tokens);
    OCCULT_CHECK(x.size() == static_cast<std::size_t>(num_tokens) * H,
                 "MoE layer forward: hidden states hold {} floats, expected T*H = {}*{}", x.size(), num_tokens, H);
    OCCULT_CHECK(y.size() == x.size(), "MoE layer forward: output holds {} floats, expected {}", y.size(), x.size());
    OCCULT_CHECK(topk_ids.size() == static_cast<std::size_t>(num_tokens) * k && topk_weights.size() == topk_ids.size(),
                 "MoE layer forward: imposed routing holds {} ids and {} weights, expected T*k = {}*{}",
                 topk_ids.size(), topk_weights.size(), num_tokens, k);
    for (std::int64_t t = 0; t < num_tokens; ++t) {
      for (int s = 0; s < k; ++s) {
        const std::int32_t id = topk_ids[t * k + s];
        OCCULT_CHECK(id >= 0 && id < E, "MoE layer forward: token {} slot {} selects expert {}, outside [0, E={})", t,
                     s, id, E);
        for (int r = 0; r < s; ++r) {
          OCCULT_CHECK(topk_ids[t * k + r] != id, "MoE layer forward: token {} selects expert {} twice", t, id);
        }
      }
    }
  });
  num_tokens_ = num_tokens;
  routing_imposed_ = true;
  x_.assign(x.begin(), x.end());
  probs_.clear();
  ids_.assign(topk_ids.begin(), topk_ids.end());
  weights_.assign(topk_weights.begin(), topk_weights.end());
  weight_source_ = ids_;
  prune_stats_ = PruneStats{};
  timings_.forward_router = 0;
  run_forward(x, y);
}

void MoeLayer::run_forward(std::span<const float> x, std::span<float> y) {
  const int H = config_.hidden_size, D = comm_.size();
  MoeLayerBuffers& b = *buffers_;
  double t0 = now_seconds();
  // Routing is validated (or produced by our own gating) on this rank; plan building cannot
  // fail on other ranks' data, so no further agreement is needed before the exchanges.
  plan_ = build_dispatch_plan(config_.dispatch, ids_, weights_, num_tokens_, config_.top_k, expert_to_device_, D,
                              config_.capacity_factor);
  const std::vector<std::int64_t> recv_rows = comm_.all_to_all_counts(plan_.send_row_counts);
  const std::vector<std::int64_t> recv_assign = comm_.all_to_all_counts(plan_.send_assignment_counts);
  std::int64_t total_assign = 0;
  for (std::int64_t c : recv_assign) total_assign += c;
  std::vector<Assignment> received(total_assign);
  all_to_all_rows<Assignment>(comm_, kExchangeMetadata, plan_.assignments, plan_.send_assignment_counts, received,
                              recv_assign, 1);
  receive_ = build_receive_plan(recv_rows, recv_assign, received, static_cast<int>(local_experts_.size()));

  // Dispatch: gather each send row's token (one copy per destination row, never k per token
  // for occult) and exchange.
  b.send_rows.resize(plan_.num_send_rows() * H);
  for (std::int64_t r = 0; r < plan_.num_send_rows(); ++r) {
    std::memcpy(b.send_rows.data() + r * H, x.data() + static_cast<std::int64_t>(plan_.row_token[r]) * H,
                sizeof(float) * H);
  }
  x_recv_.resize(receive_.num_rows() * H);
  all_to_all_rows<float>(comm_, kExchangeDispatch, b.send_rows, plan_.send_row_counts, x_recv_,
                         receive_.recv_row_counts, H);
  double t1 = now_seconds();
  timings_.forward_dispatch = t1 - t0;

  // Expert compute with stage-1 reduction.
  const std::size_t A = receive_.num_assignments(), F = config_.ffn_size;
  act_gate_.resize(A * F);
  act_up_.resize(A * F);
  b.expert_out.resize(receive_.num_rows() * H);
  expert_forward(receive_, expert_view(), x_recv_, b.expert_out, act_gate_, act_up_, b.expert);
  double t2 = now_seconds();
  timings_.forward_experts = t2 - t1;

  // Combine and stage-2 reduction at home.
  b.back_rows.resize(plan_.num_send_rows() * H);
  all_to_all_rows<float>(comm_, kExchangeCombine, b.expert_out, receive_.recv_row_counts, b.back_rows,
                         plan_.send_row_counts, H);
  reduce_rows_home(plan_, b.back_rows, H, y);
  timings_.forward_combine = now_seconds() - t2;
}

void MoeLayer::backward(std::span<const float> dy, std::span<const float> d_router_probs, std::span<float> dx) {
  const int E = config_.num_experts, H = config_.hidden_size, k = config_.top_k;
  const std::int64_t T = num_tokens_;
  agree_on_errors(comm_, [&] {
    OCCULT_CHECK(config_.with_grads, "MoE layer backward: the layer was built for inference (no gradients)");
    OCCULT_CHECK(dy.size() == static_cast<std::size_t>(T) * H,
                 "MoE layer backward: output gradient holds {} floats, expected T*H = {}*{} (T of the last forward)",
                 dy.size(), T, H);
    OCCULT_CHECK(dx.size() == dy.size(), "MoE layer backward: input gradient holds {} floats, expected {}", dx.size(),
                 dy.size());
    OCCULT_CHECK(d_router_probs.empty() || d_router_probs.size() == static_cast<std::size_t>(T) * E,
                 "MoE layer backward: router-probability gradient holds {} floats, expected 0 or T*E = {}*{}",
                 d_router_probs.size(), T, E);
    OCCULT_CHECK(d_router_probs.empty() || !routing_imposed_,
                 "MoE layer backward: a router-probability gradient was given but the routing was imposed");
  });
  MoeLayerBuffers& b = *buffers_;
  double t0 = now_seconds();
  // Backward dispatch: the output gradient of each send row's token, same plan as dispatch.
  b.send_rows.resize(plan_.num_send_rows() * H);
  for (std::int64_t r = 0; r < plan_.num_send_rows(); ++r) {
    std::memcpy(b.send_rows.data() + r * H, dy.data() + static_cast<std::int64_t>(plan_.row_token[r]) * H,
                sizeof(float) * H);
  }
  std::vector<float> dy_recv(receive_.num_rows() * H);
  all_to_all_rows<float>(comm_, kExchangeBackwardDispatch, b.send_rows, plan_.send_row_counts, dy_recv,
                         receive_.recv_row_counts, H);
  double t1 = now_seconds();
  timings_.backward_dispatch = t1 - t0;

  b.expert_out.resize(receive_.num_rows() * H);  // dx rows, on the expert side
  b.d_weight_sorted.resize(receive_.num_assignments());
  const ExpertWeightsView view = expert_view();
  ExpertGradsView grads{d_w1_, d_w3_, d_w2_};
  expert_backward(receive_, view, x_recv_, dy_recv, act_gate_, act_up_, b.expert_out, b.d_weight_sorted, grads,
                  b.expert);
  double t2 = now_seconds();
  timings_.backward_experts = t2 - t1;

  // Backward combine: input-gradient rows home (occult: already summed over the device's
  // experts), and the gate-weight gradients in the order the sender listed its assignments.
  b.back_rows.resize(plan_.num_send_rows() * H);
  all_to_all_rows<float>(comm_, kExchangeBackwardCombine, b.expert_out, receive_.recv_row_counts, b.back_rows,
                         plan_.send_row_counts, H);
  b.d_weight_arrival.resize(receive_.num_assignments());
  for (std::size_t i = 0; i < receive_.sorted_to_arrival.size(); ++i) {
    b.d_weight_arrival[receive_.sorted_to_arrival[i]] = b.d_weight_sorted[i];
  }
  b.d_weight_send.resize(plan_.num_assignments());
  all_to_all_rows<float>(comm_, kExchangeMetadata, b.d_weight_arrival, receive_.recv_assignment_counts,
                         b.d_weight_send, plan_.send_assignment_counts, 1);
  reduce_rows_home(plan_, b.back_rows, H, dx);
  double t3 = now_seconds();
  timings_.backward_combine = t3 - t2;

  if (!routing_imposed_ && T > 0) {
    // dg per (token, slot); dropped slots have none.
    std::vector<float> dg(T * k, 0.0f);
    for (std::int64_t a = 0; a < plan_.num_assignments(); ++a) dg[plan_.assignment_slot[a]] = b.d_weight_send[a];
    const bool normalise = config_.norm_topk_prob || config_.score_function == ScoreFunction::kSigmoid;
    std::vector<float> dlogits(T * E);
    std::vector<double> dp(E);
    for (std::int64_t t = 0; t < T; ++t) {
      const float* p = probs_.data() + t * E;
      for (int e = 0; e < E; ++e) dp[e] = d_router_probs.empty() ? 0.0 : d_router_probs[t * E + e];
      const std::int32_t* src = weight_source_.data() + t * k;
      if (normalise) {
        // g_j = p_src(j) / Z: dL/dp_src(j) = (dg_j - sum_i dg_i g_i) / Z.
        double z = 0, gdot = 0;
        for (int j = 0; j < k; ++j) z += p[src[j]];
        for (int j = 0; j < k; ++j) gdot += static_cast<double>(dg[t * k + j]) * p[src[j]] / z;
        for (int j = 0; j < k; ++j) dp[src[j]] += (dg[t * k + j] - gdot) / z;
      } else {
        for (int j = 0; j < k; ++j) dp[src[j]] += dg[t * k + j];
      }
      float* dl = dlogits.data() + t * E;
      if (config_.score_function == ScoreFunction::kSoftmax) {
        double dot = 0;
        for (int e = 0; e < E; ++e) dot += dp[e] * p[e];
        for (int e = 0; e < E; ++e) dl[e] = static_cast<float>(p[e] * (dp[e] - dot));
      } else {
        for (int e = 0; e < E; ++e) dl[e] = static_cast<float>(dp[e] * p[e] * (1.0 - p[e]));
      }
    }
    // d_router [E, H] += dlogits^T [E, T] * x [T, H]; dx [T, H] += dlogits [T, E] * W_r [E, H].
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, E, H, static_cast<int>(T), 1.0f, dlogits.data(), E,
                x_.data(), H, 1.0f, d_router_.data(), H);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(T), H, E, 1.0f, dlogits.data(), E,
                router_.data(), H, 1.0f, dx.data(), H);
  }
  timings_.backward_router = now_seconds() - t3;
}

}  // namespace occult
