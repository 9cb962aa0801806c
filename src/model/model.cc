#include "occult/model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "model/moe_block.h"
#include "model/rng.h"
#include "occult/comm/communicator.h"
#include "occult/core/error.h"
#include "occult/model/ops.h"

namespace occult {

Dispatch parse_dispatch(const std::string& name) {
  if (name == "standard") return Dispatch::kStandard;
  if (name == "occult") return Dispatch::kOccult;
  OCCULT_FAIL("--dispatch must be \"standard\" or \"occult\", got \"{}\"", name);
}

const char* dispatch_name(Dispatch dispatch) {
  return dispatch == Dispatch::kStandard ? "standard" : "occult";
}

namespace {

// Index of one layer's dense tensors inside tensors_ (built in build_tensors order).
struct LayerSlots {
  int ln1, q, k, v, o, ln2, router, shared_gate = -1, shared_up = -1, shared_down = -1;
};

}  // namespace

struct MoeTransformer::Impl {
  int embed = 0, final_norm = 0, lm_head = -1;
  std::vector<LayerSlots> layers;
  std::vector<std::unique_ptr<MoeBlock>> moe;

  // Activation arena (sized from B, T) and its views. Shapes in comments; N = B*T.
  std::int64_t B = -1;
  int T = -1;
  std::vector<float> acts;
  float* resid;      // [L+1, N, H] residual stream at each layer's input (resid[L] = final)
  float* ln1;        // [L, N, H]
  float* rstd1;      // [L, N]
  float* q;          // [L, N, H] after RoPE
  float* k;          // [L, N, H] after RoPE
  float* v;          // [L, N, H]
  float* att;        // [L, B, NH, T, T]
  float* atty;       // [L, N, H] attention output before o_proj
  float* resid_mid;  // [L, N, H] after the attention residual
  float* ln2;        // [L, N, H] MoE input
  float* rstd2;      // [L, N]
  float* sh1;        // [L, N, S] shared-expert gate_proj output
  float* sh3;        // [L, N, S] shared-expert up_proj output
  float* shh;        // [L, N, S] silu(sh1) * sh3
  float* lnf;        // [N, H]
  float* rstdf;      // [N]
  float* logits;     // [N, V]
  float* probs;      // [N, V]
  // Backward scratch.
  float* tmp;        // [N, H]
  float* tmp2;       // [N, H]
  float* dresid;     // [N, H]
  float* dq;         // [N, H]
  float* dk;         // [N, H]
  float* dv;         // [N, H]
  float* datt;       // [T, T]
  float* dsh1;       // [N, S]
  float* dsh3;       // [N, S]
  float* dshh;       // [N, S]
  float* dlogits;    // [N, V]
  float* dprobs;     // [N, E] aux-loss gradient on router probabilities
  std::vector<std::int32_t> tokens, targets;  // [N]

  // Global statistics of the last forward.
  LossParts loss;
  std::vector<double> expert_fraction;  // [L, E] f_e: share of the global top-k assignments
  bool forward_done = false;
  bool backward_done = false;
};

MoeTransformer::MoeTransformer(const ModelConfig& config, Communicator& comm, const ParallelOptions& options,
                               bool local_reference)
    : config_(config), comm_(comm), options_(options), impl_(std::make_unique<Impl>()) {
  validate_model_config(config_, "model config");
  const int L = config_.num_hidden_layers, E = config_.num_experts, D = comm_.size();
  if (options_.expert_to_device.empty()) {
    expert_to_device_.assign(L, std::vector<int>(E));
    for (int l = 0; l < L; ++l) {
      for (int e = 0; e < E; ++e) expert_to_device_[l][e] = static_cast<int>(static_cast<std::int64_t>(e) * D / E);
    }
  } else {
    OCCULT_CHECK(static_cast<int>(options_.expert_to_device.size()) == L,
                 "the placement has {} layers but the model config has num_hidden_layers = {}",
                 options_.expert_to_device.size(), L);
    expert_to_device_ = options_.expert_to_device;
    for (int l = 0; l < L; ++l) {
      const auto& map = expert_to_device_[l];
      OCCULT_CHECK(static_cast<int>(map.size()) == E,
                   "the placement's layer {} places {} experts but the model config has num_experts = {}", l,
                   map.size(), E);
      std::vector<int> held(D, 0);
      for (int e = 0; e < E; ++e) {
        OCCULT_CHECK(map[e] >= 0 && map[e] < D,
                     "the placement puts expert {} of layer {} on device {}, but there are {} ranks", e, l,
                     map[e], D);
        ++held[map[e]];
      }
      for (int d = 0; d < D; ++d) {
        OCCULT_CHECK(held[d] == E / D || held[d] == (E + D - 1) / D,
                     "the placement's layer {} gives device {} {} experts; a balanced placement of {} "
                     "experts on {} ranks gives each {} or {}",
                     l, d, held[d], E, D, E / D, (E + D - 1) / D);
      }
    }
  }
  OCCULT_CHECK(E >= D, "num_experts = {} is smaller than the {} ranks: every rank must hold an expert", E, D);
  OCCULT_CHECK(!local_reference || D == 1, "the single-process reference MoE block runs on 1 rank, not {}", D);
  impl_->moe.resize(L);
  for (int l = 0; l < L; ++l) {
    impl_->moe[l] = local_reference ? make_local_moe_block(config_)
                                    : make_moe_block(config_, comm_, options_, l, expert_to_device_[l]);
  }
  build_tensors();
}

MoeTransformer::~MoeTransformer() = default;

void MoeTransformer::build_tensors() {
  const int V = config_.vocab_size, H = config_.hidden_size, L = config_.num_hidden_layers,
            E = config_.num_experts, F = config_.moe_intermediate_size, S = config_.shared_intermediate_size();
  std::int64_t dense_size = 0;
  auto add = [&](std::string name, std::vector<std::int64_t> shape, int layer, bool decay) {
    ParamTensor t;
    t.name = std::move(name);
    t.numel = std::accumulate(shape.begin(), shape.end(), std::int64_t{1}, std::multiplies<>());
    t.shape = std::move(shape);
    t.offset = dense_size;
    t.layer = layer;
    t.decay = decay;
    dense_size += t.numel;
    tensors_.push_back(std::move(t));
    return static_cast<int>(tensors_.size()) - 1;
  };
  impl_->embed = add("model.embed_tokens.weight", {V, H}, -1, true);
  impl_->layers.resize(L);
  for (int l = 0; l < L; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    auto& s = impl_->layers[l];
    s.ln1 = add(p + "input_layernorm.weight", {H}, l, false);
    s.q = add(p + "self_attn.q_proj.weight", {H, H}, l, true);
    s.k = add(p + "self_attn.k_proj.weight", {H, H}, l, true);
    s.v = add(p + "self_attn.v_proj.weight", {H, H}, l, true);
    s.o = add(p + "self_attn.o_proj.weight", {H, H}, l, true);
    s.ln2 = add(p + "post_attention_layernorm.weight", {H}, l, false);
    s.router = add(p + "mlp.gate.weight", {E, H}, l, true);
    if (S > 0) {
      s.shared_gate = add(p + "mlp.shared_experts.gate_proj.weight", {S, H}, l, true);
      s.shared_up = add(p + "mlp.shared_experts.up_proj.weight", {S, H}, l, true);
      s.shared_down = add(p + "mlp.shared_experts.down_proj.weight", {H, S}, l, true);
    }
  }
  impl_->final_norm = add("model.norm.weight", {H}, -1, false);
  if (!config_.tie_word_embeddings) impl_->lm_head = add("lm_head.weight", {V, H}, -1, true);

  dense_params_.assign(dense_size, 0.0f);
  dense_grads_.assign(dense_size, 0.0f);
  for (auto& t : tensors_) {
    t.value = std::span<float>(dense_params_).subspan(t.offset, t.numel);
    t.grad = std::span<float>(dense_grads_).subspan(t.offset, t.numel);
  }
  // This rank's experts, in the order of the checkpoint: layer, expert, gate/up/down.
  const char* kinds[3] = {"gate_proj", "up_proj", "down_proj"};
  for (int l = 0; l < L; ++l) {
    for (int e : impl_->moe[l]->local_experts()) {
      for (int kind = 0; kind < 3; ++kind) {
        ParamTensor t;
        t.name = fmt::format("model.layers.{}.mlp.experts.{}.{}.weight", l, e, kinds[kind]);
        t.shape = kind < 2 ? std::vector<std::int64_t>{F, H} : std::vector<std::int64_t>{H, F};
        t.numel = static_cast<std::int64_t>(F) * H;
        t.value = impl_->moe[l]->expert_weight(e, kind);
        t.grad = impl_->moe[l]->expert_grad(e, kind);
        OCCULT_CHECK(static_cast<std::int64_t>(t.value.size()) == t.numel && t.grad.size() == t.value.size(),
                     "MoE layer {} returned {} elements for {}, expected {}", l, t.value.size(), t.name, t.numel);
        t.expert = true;
        t.layer = l;
        t.expert_id = e;
        t.decay = true;
        tensors_.push_back(std::move(t));
      }
    }
  }
}

const ParamTensor* MoeTransformer::find(const std::string& name) const {
  for (const auto& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

std::span<float> MoeTransformer::param(const std::string& name) {
  const ParamTensor* t = find(name);
  OCCULT_CHECK(t != nullptr, "tensor {} is not held by rank {}", name, comm_.rank());
  return t->value;
}

std::span<float> MoeTransformer::grad(const std::string& name) {
  const ParamTensor* t = find(name);
  OCCULT_CHECK(t != nullptr, "tensor {} is not held by rank {}", name, comm_.rank());
  return t->grad;
}

std::int64_t MoeTransformer::num_parameters() const {
  const std::int64_t expert = 3ll * config_.moe_intermediate_size * config_.hidden_size;
  return static_cast<std::int64_t>(dense_params_.size()) +
         static_cast<std::int64_t>(config_.num_hidden_layers) * config_.num_experts * expert;
}

std::int64_t MoeTransformer::num_active_parameters() const {
  const std::int64_t expert = 3ll * config_.moe_intermediate_size * config_.hidden_size;
  // The embedding is a lookup, not a matmul; it is counted only when tied (as the LM head).
  std::int64_t active = static_cast<std::int64_t>(dense_params_.size());
  if (!config_.tie_word_embeddings) active -= static_cast<std::int64_t>(config_.vocab_size) * config_.hidden_size;
  return active + static_cast<std::int64_t>(config_.num_hidden_layers) * config_.num_experts_per_tok * expert;
}

void MoeTransformer::init_weights(std::uint64_t seed) {
  const float std = config_.initializer_range;
  // GPT-2's scaling of the projections that write into the residual stream.
  const float out_std = std / std::sqrt(2.0f * config_.num_hidden_layers);
  for (const auto& t : tensors_) {
    float* data = t.value.data();
    if (t.shape.size() == 1) {
      std::fill(data, data + t.numel, 1.0f);  // RMSNorm gains
      continue;
    }
    const bool out_proj = t.name.ends_with("o_proj.weight") || t.name.ends_with("down_proj.weight");
    // The stream depends only on the seed and the tensor's name, never on the rank count.
    SplitMix64 rng(seed ^ fnv1a64(t.name));
    const float s = out_proj ? out_std : std;
    for (std::int64_t i = 0; i < t.numel; ++i) data[i] = s * static_cast<float>(rng.normal());
  }
}

void MoeTransformer::allocate_activations(std::int64_t B, int T) {
  auto& m = *impl_;
  if (m.B == B && m.T == T) return;
  const std::int64_t L = config_.num_hidden_layers, H = config_.hidden_size, V = config_.vocab_size,
                     NH = config_.num_attention_heads, S = config_.shared_intermediate_size(),
                     E = config_.num_experts;
  const std::int64_t N = B * T;
  struct Slot {
    float** ptr;
    std::int64_t size;
  };
  const Slot slots[] = {
      {&m.resid, (L + 1) * N * H}, {&m.ln1, L * N * H}, {&m.rstd1, L * N},     {&m.q, L * N * H},
      {&m.k, L * N * H},           {&m.v, L * N * H},   {&m.att, L * B * NH * T * T},
      {&m.atty, L * N * H},        {&m.resid_mid, L * N * H}, {&m.ln2, L * N * H}, {&m.rstd2, L * N},
      {&m.sh1, L * N * S},         {&m.sh3, L * N * S}, {&m.shh, L * N * S},   {&m.lnf, N * H},
      {&m.rstdf, N},               {&m.logits, N * V},  {&m.probs, N * V},     {&m.tmp, N * H},
      {&m.tmp2, N * H},            {&m.dresid, N * H},  {&m.dq, N * H},        {&m.dk, N * H},
      {&m.dv, N * H},              {&m.datt, static_cast<std::int64_t>(T) * T}, {&m.dsh1, N * S},
      {&m.dsh3, N * S},            {&m.dshh, N * S},    {&m.dlogits, N * V},   {&m.dprobs, N * E},
  };
  std::int64_t total = 0;
  for (const auto& s : slots) total += s.size;
  m.acts.assign(static_cast<std::size_t>(total), 0.0f);
  std::int64_t offset = 0;
  for (const auto& s : slots) {
    *s.ptr = m.acts.data() + offset;
    offset += s.size;
  }
  m.B = B;
  m.T = T;
}

LossParts MoeTransformer::forward(std::span<const std::int32_t> tokens, std::span<const std::int32_t> targets,
                                  std::int64_t B, int T) {
  auto& m = *impl_;
  const int L = config_.num_hidden_layers, H = config_.hidden_size, V = config_.vocab_size,
            NH = config_.num_attention_heads, S = config_.shared_intermediate_size(), E = config_.num_experts,
            K = config_.num_experts_per_tok;
  // Every rank checks its own batch, then all agree, so bad input fails everywhere.
  agree_on_errors(comm_, [&] {
    OCCULT_CHECK(B >= 0 && T >= 1, "batch shape B={} T={} is invalid", B, T);
    OCCULT_CHECK(T <= config_.max_position_embeddings,
                 "sequence length {} exceeds the config's max_position_embeddings = {}", T,
                 config_.max_position_embeddings);
    OCCULT_CHECK(static_cast<std::int64_t>(tokens.size()) == B * T && static_cast<std::int64_t>(targets.size()) == B * T,
                 "tokens/targets hold {}/{} ids, expected B*T = {}", tokens.size(), targets.size(), B * T);
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      OCCULT_CHECK(tokens[i] >= 0 && tokens[i] < V && targets[i] >= 0 && targets[i] < V,
                   "token id {} / target {} at position {} is outside the vocabulary [0, {})", tokens[i],
                   targets[i], i, V);
    }
  });
  allocate_activations(B, T);
  const std::int64_t N = B * T;
  m.tokens.assign(tokens.begin(), tokens.end());
  m.targets.assign(targets.begin(), targets.end());
  const float* P = dense_params_.data();
  auto W = [&](int slot) { return P + tensors_[slot].offset; };

  embedding_forward(m.resid, m.tokens.data(), W(m.embed), N, H);
  // Statistics all-reduced once after the forward: ce_sum, tokens, counts[L,E], prob sums[L,E].
  std::vector<double> stats(2 + 2 * static_cast<std::size_t>(L) * E, 0.0);
  for (int l = 0; l < L; ++l) {
    const auto& s = m.layers[l];
    float* x = m.resid + l * N * H;
    float* ln1 = m.ln1 + l * N * H;
    float* q = m.q + l * N * H;
    float* k = m.k + l * N * H;
    float* v = m.v + l * N * H;
    float* att = m.att + l * B * NH * T * T;
    float* atty = m.atty + l * N * H;
    float* mid = m.resid_mid + l * N * H;
    float* ln2 = m.ln2 + l * N * H;
    float* out = m.resid + (l + 1) * N * H;
    rmsnorm_forward(ln1, m.rstd1 + l * N, x, W(s.ln1), N, H, config_.rms_norm_eps);
    matmul_forward(q, ln1, W(s.q), N, H, H);
    matmul_forward(k, ln1, W(s.k), N, H, H);
    matmul_forward(v, ln1, W(s.v), N, H, H);
    rope_forward(q, B, T, NH, H / NH, config_.rope_theta);
    rope_forward(k, B, T, NH, H / NH, config_.rope_theta);
    attention_forward(atty, att, q, k, v, B, T, H, NH);
    matmul_forward(m.tmp, atty, W(s.o), N, H, H);
    residual_forward(mid, x, m.tmp, N * H);
    rmsnorm_forward(ln2, m.rstd2 + l * N, mid, W(s.ln2), N, H, config_.rms_norm_eps);
    m.moe[l]->forward(W(s.router), ln2, N, m.tmp);
    residual_forward(out, mid, m.tmp, N * H);
    if (S > 0) {
      float* sh1 = m.sh1 + l * N * S;
      float* sh3 = m.sh3 + l * N * S;
      float* shh = m.shh + l * N * S;
      matmul_forward(sh1, ln2, W(s.shared_gate), N, H, S);
      matmul_forward(sh3, ln2, W(s.shared_up), N, H, S);
      swiglu_forward(shh, sh1, sh3, N, S);
      matmul_forward(m.tmp, shh, W(s.shared_down), N, S, H);
      residual_forward(out, out, m.tmp, N * H);
    }
    // Load-balancing statistics of this layer's routing.
    const float* probs = m.moe[l]->router_probs();
    const std::int32_t* ids = m.moe[l]->topk_ids();
    double* counts = stats.data() + 2 + static_cast<std::size_t>(l) * E;
    double* psums = stats.data() + 2 + static_cast<std::size_t>(L) * E + static_cast<std::size_t>(l) * E;
    for (std::int64_t t = 0; t < N; ++t) {
      for (int j = 0; j < K; ++j) counts[ids[t * K + j]] += 1.0;
      for (int e = 0; e < E; ++e) psums[e] += probs[t * E + e];
    }
  }
  rmsnorm_forward(m.lnf, m.rstdf, m.resid + L * N * H, W(m.final_norm), N, H, config_.rms_norm_eps);
  const float* head = m.lm_head >= 0 ? W(m.lm_head) : W(m.embed);
  matmul_forward(m.logits, m.lnf, head, N, H, V);
  stats[0] = N > 0 ? crossentropy_forward(m.probs, m.logits, m.targets.data(), N, V) : 0.0;
  stats[1] = static_cast<double>(N);
  comm_.all_reduce_sum(std::span<double>(stats));

  const double n_global = stats[1];
  OCCULT_CHECK(n_global > 0, "the global batch has no tokens");
  m.expert_fraction.assign(static_cast<std::size_t>(L) * E, 0.0);
  double aux = 0.0;
  for (int l = 0; l < L; ++l) {
    double layer_aux = 0.0;
    for (int e = 0; e < E; ++e) {
      const double f = stats[2 + static_cast<std::size_t>(l) * E + e] / (n_global * K);
      const double p = stats[2 + static_cast<std::size_t>(L) * E + static_cast<std::size_t>(l) * E + e] / n_global;
      m.expert_fraction[static_cast<std::size_t>(l) * E + e] = f;
      layer_aux += f * p;
    }
    aux += E * layer_aux;
  }
  m.loss.cross_entropy = stats[0] / n_global;
  m.loss.aux = config_.router_aux_loss_coef * aux / L;
  m.loss.total = m.loss.cross_entropy + m.loss.aux;
  m.loss.tokens = static_cast<std::int64_t>(n_global);
  m.forward_done = true;
  m.backward_done = false;
  return m.loss;
}

void MoeTransformer::backward() {
  auto& m = *impl_;
  OCCULT_CHECK(m.forward_done, "backward() needs a forward() first");
  const int L = config_.num_hidden_layers, H = config_.hidden_size, V = config_.vocab_size,
            NH = config_.num_attention_heads, S = config_.shared_intermediate_size(), E = config_.num_experts;
  const std::int64_t B = m.B, N = m.B * m.T;
  const int T = m.T;
  std::fill(dense_grads_.begin(), dense_grads_.end(), 0.0f);
  const float* P = dense_params_.data();
  float* G = dense_grads_.data();
  auto W = [&](int slot) { return P + tensors_[slot].offset; };
  auto dW = [&](int slot) { return G + tensors_[slot].offset; };
  const double n_global = static_cast<double>(m.loss.tokens);

  // Loss -> logits -> final norm.
  crossentropy_backward(m.dlogits, m.probs, m.targets.data(), static_cast<float>(1.0 / n_global), N, V);
  const int head = m.lm_head >= 0 ? m.lm_head : m.embed;
  std::fill(m.tmp, m.tmp + N * H, 0.0f);
  matmul_backward(m.tmp, dW(head), m.dlogits, m.lnf, W(head), N, H, V);
  std::fill(m.dresid, m.dresid + N * H, 0.0f);
  rmsnorm_backward(m.dresid, dW(m.final_norm), m.tmp, m.resid + L * N * H, W(m.final_norm), m.rstdf, N, H);

  for (int l = L - 1; l >= 0; --l) {
    const auto& s = m.layers[l];
    const float* x = m.resid + l * N * H;
    const float* ln1 = m.ln1 + l * N * H;
    const float* mid = m.resid_mid + l * N * H;
    const float* ln2 = m.ln2 + l * N * H;
    // resid[l+1] = mid + moe(ln2) + shared(ln2): dln2 collects both branches.
    float* dln2 = m.tmp;
    std::fill(dln2, dln2 + N * H, 0.0f);
    if (S > 0) {
      std::fill(m.dshh, m.dshh + N * S, 0.0f);
      matmul_backward(m.dshh, dW(s.shared_down), m.dresid, m.shh + l * N * S, W(s.shared_down), N, S, H);
      swiglu_backward(m.dsh1, m.dsh3, m.dshh, m.sh1 + l * N * S, m.sh3 + l * N * S, N, S);
      matmul_backward(dln2, dW(s.shared_gate), m.dsh1, ln2, W(s.shared_gate), N, H, S);
      matmul_backward(dln2, dW(s.shared_up), m.dsh3, ln2, W(s.shared_up), N, H, S);
    }
    // Aux loss coef/L * E * sum_e f_e P_e with P_e = mean_t p[t,e]: d/dp[t,e] = coef/L * E * f_e / N.
    const double scale = config_.router_aux_loss_coef / L * E / n_global;
    for (int e = 0; e < E; ++e) {
      const float g = static_cast<float>(scale * m.expert_fraction[static_cast<std::size_t>(l) * E + e]);
      for (std::int64_t t = 0; t < N; ++t) m.dprobs[t * E + e] = g;
    }
    m.moe[l]->backward(m.dresid, m.dprobs, dln2, dW(s.router));
    rmsnorm_backward(m.dresid, dW(s.ln2), dln2, mid, W(s.ln2), m.rstd2 + l * N, N, H);
    // mid = x + o_proj(atty).
    float* datty = m.tmp2;
    std::fill(datty, datty + N * H, 0.0f);
    matmul_backward(datty, dW(s.o), m.dresid, m.atty + l * N * H, W(s.o), N, H, H);
    attention_backward(m.dq, m.dk, m.dv, m.datt, datty, m.att + l * B * NH * T * T, m.q + l * N * H,
                       m.k + l * N * H, m.v + l * N * H, B, T, H, NH);
    rope_backward(m.dq, B, T, NH, H / NH, config_.rope_theta);
    rope_backward(m.dk, B, T, NH, H / NH, config_.rope_theta);
    float* dln1 = m.tmp;
    std::fill(dln1, dln1 + N * H, 0.0f);
    matmul_backward(dln1, dW(s.q), m.dq, ln1, W(s.q), N, H, H);
    matmul_backward(dln1, dW(s.k), m.dk, ln1, W(s.k), N, H, H);
    matmul_backward(dln1, dW(s.v), m.dv, ln1, W(s.v), N, H, H);
    rmsnorm_backward(m.dresid, dW(s.ln1), dln1, x, W(s.ln1), m.rstd1 + l * N, N, H);
  }
  embedding_backward(dW(m.embed), m.dresid, m.tokens.data(), N, H);
  // Dense parameters are data-parallel: sum their gradients over ranks (router included).
  comm_.all_reduce_sum(std::span<float>(dense_grads_));
  m.backward_done = true;
}

RoutingStats MoeTransformer::routing_stats() {
  auto& m = *impl_;
  OCCULT_CHECK(m.forward_done, "routing_stats() needs a forward() first");
  const int L = config_.num_hidden_layers, K = config_.num_experts_per_tok, D = comm_.size();
  const std::int64_t N = m.B * m.T;
  // Per layer: sum over local tokens of distinct devices.
  std::vector<double> sums(L, 0.0);
  std::vector<char> seen(D);
  for (int l = 0; l < L; ++l) {
    const std::int32_t* ids = m.moe[l]->topk_ids();
    for (std::int64_t t = 0; t < N; ++t) {
      std::fill(seen.begin(), seen.end(), 0);
      int distinct = 0;
      for (int j = 0; j < K; ++j) {
        const int d = expert_to_device_[l][ids[t * K + j]];
        if (!seen[d]) {
          seen[d] = 1;
          ++distinct;
        }
      }
      sums[l] += distinct;
    }
  }
  comm_.all_reduce_sum(std::span<double>(sums));
  RoutingStats r;
  for (int l = 0; l < L; ++l) {
    const double ct = sums[l] / static_cast<double>(m.loss.tokens);
    r.replicas_per_token += ct / L;
    r.max_replicas_per_token = std::max(r.max_replicas_per_token, ct);
  }
  const auto totals = sum_over_ranks(comm_);
  for (const char* name : {kExchangeDispatch, kExchangeCombine, kExchangeBackwardDispatch, kExchangeBackwardCombine}) {
    auto it = totals.find(name);
    if (it != totals.end()) r.dispatch_bytes += it->second.total_bytes();
  }
  const int exchanges = m.backward_done ? 4 : 2;
  r.standard_bytes = m.loss.tokens * K * static_cast<std::int64_t>(config_.hidden_size) *
                     static_cast<std::int64_t>(sizeof(float)) * L * exchanges;
  return r;
}

MoeBlock& MoeTransformer::moe_block(int layer) {
  OCCULT_CHECK(layer >= 0 && layer < config_.num_hidden_layers, "MoE layer {} is outside [0, num_hidden_layers = {})",
               layer, config_.num_hidden_layers);
  return *impl_->moe[layer];
}

std::span<const float> MoeTransformer::logits() const {
  const auto& m = *impl_;
  return {m.logits, static_cast<std::size_t>(m.B * m.T * config_.vocab_size)};
}

}  // namespace occult
