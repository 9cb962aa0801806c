#include "occult/model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "model/layers/blocks.h"
#include "model/moe_block.h"
#include "occult/core/rng.h"
#include "occult/core/safetensors.h"
#include "occult/comm/communicator.h"
#include "occult/core/error.h"
#include "occult/model/arch.h"
#include "occult/model/memory.h"
#include "occult/model/ops.h"

namespace occult {

Dispatch parse_dispatch(const std::string& name) { return parse_dispatch_kind(name, "--dispatch"); }

const char* dispatch_name(Dispatch dispatch) { return dispatch_kind_name(dispatch).data(); }

namespace {

// Index of one layer's dense tensors inside tensors_ (build_tensors order); -1 where the layer
// has no such tensor.
struct LayerSlots {
  int ln1 = -1, q = -1, k = -1, v = -1, o = -1, q_bias = -1, k_bias = -1, v_bias = -1, o_bias = -1;
  int q_norm = -1, k_norm = -1, ln2 = -1, router = -1;
  int mlp_gate = -1, mlp_up = -1, mlp_down = -1, shared_gate = -1, router_bias = -1;
  int q_a = -1, q_b = -1, q_a_norm = -1, kv_a = -1, kv_b = -1, kv_a_norm = -1;  // MLA
};

// One layer's saved activations, views into the activation arena. N = B*T, QD = NH*hd,
// KD = NKV*hd, F = the layer's dense SwiGLU width (dense MLP or shared expert; 0 when none).
struct LayerActs {
  float* ln1;     // [N, H]
  float* rstd1;   // [N]
  float* q_pre;   // [N, QD] before QK-norm
  float* k_pre;   // [N, KD]
  float* q_rstd;  // [N * NH]
  float* k_rstd;  // [N * NKV]
  float* q;       // [N, QD] after QK-norm and RoPE
  float* k;       // [N, KD]
  float* v;       // [N, KD]
  float* att;     // [B, NH, T, T]
  float* atty;    // [N, QD] attention output before o_proj
  float* mid;     // [N, H] after the attention residual
  float* ln2;     // [N, H] MLP / MoE input
  float* rstd2;   // [N]
  float* h1;      // [N, F]
  float* h3;      // [N, F]
  float* hh;      // [N, F]
  float* y;       // [N, H] gated shared expert output before its gate
  float* sig;     // [N] its sigmoid gate
  // Multi-head latent attention, training only: the latent rows [N, KL+R] and what
  // mla_project keeps for mla_backward.
  float* mla_latent;
  MlaSaved mla;
};

}  // namespace

struct MoeTransformer::Impl {
  int embed = 0, final_norm = 0, lm_head = -1;
  std::vector<LayerSlots> layers;
  std::vector<int> moe_of_layer;  // [L] MoE ordinal of each layer, -1 for a dense layer
  std::vector<int> mlp_width;     // [L] width of the layer's dense SwiGLU branch (0 = none)
  std::vector<std::unique_ptr<MoeBlock>> moe;  // [Lm] by MoE ordinal

  // Activation arena (sized from B, T) and its views.
  std::int64_t B = -1;
  int T = -1;
  std::vector<float> acts;
  float* resid;  // [L+1, N, H] residual stream at each layer's input (resid[L] = final)
  std::vector<LayerActs> la;
  float* lnf;      // [N, H]
  float* rstdf;    // [N]
  float* logits;   // [N, V]
  float* probs;    // [N, V]
  // Backward scratch.
  float* tmp;      // [N, H]
  float* tmp2;     // [N, H]
  float* dresid;   // [N, H]
  float* datty;    // [N, QD]
  float* dq;       // [N, QD]
  float* dk;       // [N, KD]
  float* dv;       // [N, KD]
  float* dq_pre;   // [N, QD]
  float* dk_pre;   // [N, KD]
  float* datt;     // [T, T]
  float* dh1;      // [N, Fmax]
  float* dh3;      // [N, Fmax]
  float* dhh;      // [N, Fmax]
  float* dlogits;  // [N, V]
  float* dprobs;   // [N, E] aux-loss gradient on router probabilities
  std::vector<std::int32_t> tokens, targets;  // [N]
  // MLA only: scratch of the projections, the latent rows [N, KL+R] and each row's position.
  std::vector<float> mla_scratch, mla_latent;
  std::vector<int> positions;

  // Global statistics of the last forward.
  LossParts loss;
  std::vector<double> expert_fraction;  // [Lm, E] f_e: share of the global top-k assignments
  // Sequence-wise loss (seq_aux): E/(T k) times each local sequence's top-k count [Lm, B, E],
  // and the number of sequences over all ranks.
  std::vector<double> sequence_fraction;
  double sequences_global = 0.0;
  bool forward_done = false;
  bool backward_done = false;
};

MoeTransformer::MoeTransformer(const ModelConfig& config, Communicator& comm, const ParallelOptions& options,
                               bool local_reference)
    : config_(config), comm_(comm), options_(options), impl_(std::make_unique<Impl>()) {
  validate_model_config(config_, "model config");
  // Refuse, on every rank with one message, a model this host cannot hold before allocating it.
  int most_held = 0;  // with replicas: the most experts a rank holds in one layer
  for (const auto& layer : options_.device_experts) {
    if (comm_.rank() < static_cast<int>(layer.size())) most_held = std::max(most_held, static_cast<int>(layer[comm_.rank()].size()));
  }
  std::vector<std::int64_t> most = {most_held};
  comm_.all_reduce_max(std::span<std::int64_t>(most));
  check_model_fits_memory(config_, comm_, options_.training, options_.weight_dtype, static_cast<int>(most[0]));
  const int L = config_.num_hidden_layers, Lm = config_.num_moe_layers(), E = config_.num_experts,
            D = comm_.size();
  if (options_.expert_to_device.empty()) {
    expert_to_device_.assign(Lm, std::vector<int>(E));
    for (int l = 0; l < Lm; ++l) {
      for (int e = 0; e < E; ++e) expert_to_device_[l][e] = static_cast<int>(static_cast<std::int64_t>(e) * D / E);
    }
  } else {
    OCCULT_CHECK(static_cast<int>(options_.expert_to_device.size()) == Lm,
                 "the placement has {} layers but the model has {} MoE layers", options_.expert_to_device.size(),
                 Lm);
    expert_to_device_ = options_.expert_to_device;
    for (int l = 0; l < Lm; ++l) {
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
  OCCULT_CHECK(options_.weight_dtype == WeightDType::kF32 || (!options_.training && !local_reference),
               "BF16-resident weights are for inference with the expert-parallel layer (training keeps F32 "
               "weights and gradients)");
  check_compute_dtype_supported(options_.gemm.compute, "the model");
  impl_->moe.resize(Lm);
  impl_->moe_of_layer.assign(L, -1);
  impl_->mlp_width.assign(L, 0);
  for (int l = 0; l < L; ++l) {
    const int m = config_.moe_index(l);
    impl_->moe_of_layer[l] = m;
    impl_->mlp_width[l] = m >= 0 ? config_.shared_intermediate_size() : config_.intermediate_size;
    if (m < 0) continue;
    impl_->moe[m] = local_reference ? make_local_moe_block(config_)
                                    : make_moe_block(config_, comm_, options_, m, expert_to_device_[m],
                                                     options_.device_experts.empty()
                                                         ? std::vector<std::vector<int>>{}
                                                         : options_.device_experts[m]);
  }
  build_tensors();
}

MoeTransformer::~MoeTransformer() = default;

void MoeTransformer::build_tensors() {
  const ModelConfig& c = config_;
  const int V = c.vocab_size, H = c.hidden_size, L = c.num_hidden_layers, E = c.num_experts,
            F = c.moe_intermediate_size, QD = c.q_dim(), KD = c.kv_dim(), hd = c.head_dim();
  std::int64_t dense_size = 0, bf16_size = 0;
  const bool bf16 = options_.weight_dtype == WeightDType::kBF16;
  std::vector<char> in_bf16;  // per dense tensor: held in the BF16 arena
  // `matrix`: a large projection (embedding, LM head, attention, dense MLP / shared expert),
  // held in BF16 when the model is; vectors, the router and the shared-expert gate stay F32.
  auto add_tensor = [&](std::string name, std::vector<std::int64_t> shape, int layer, bool decay, bool matrix) {
    ParamTensor t;
    t.name = std::move(name);
    t.numel = std::accumulate(shape.begin(), shape.end(), std::int64_t{1}, std::multiplies<>());
    t.shape = std::move(shape);
    std::int64_t& size = bf16 && matrix ? bf16_size : dense_size;
    t.offset = size;
    t.layer = layer;
    t.decay = decay;
    size += t.numel;
    in_bf16.push_back(bf16 && matrix);
    tensors_.push_back(std::move(t));
    return static_cast<int>(tensors_.size()) - 1;
  };
  auto add = [&](std::string name, std::vector<std::int64_t> shape, int layer, bool decay) {
    return add_tensor(std::move(name), std::move(shape), layer, decay, false);
  };
  auto add_matrix = [&](std::string name, std::vector<std::int64_t> shape, int layer) {
    return add_tensor(std::move(name), std::move(shape), layer, true, true);
  };
  impl_->embed = add_matrix("model.embed_tokens.weight", {V, H}, -1);
  impl_->layers.resize(L);
  for (int l = 0; l < L; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    const std::string a = p + "self_attn.";
    auto& s = impl_->layers[l];
    s.ln1 = add(p + "input_layernorm.weight", {H}, l, false);
    if (c.mla()) {
      const std::int64_t NH = c.num_attention_heads, QL = c.q_lora_rank, KL = c.kv_lora_rank;
      if (QL > 0) {
        s.q_a = add_matrix(a + "q_a_proj.weight", {QL, H}, l);
        s.q_a_norm = add(a + "q_a_layernorm.weight", {QL}, l, false);
        s.q_b = add_matrix(a + "q_b_proj.weight", {NH * c.qk_head_dim(), QL}, l);
      } else {
        s.q = add_matrix(a + "q_proj.weight", {NH * c.qk_head_dim(), H}, l);
      }
      s.kv_a = add_matrix(a + "kv_a_proj_with_mqa.weight", {KL + c.qk_rope_head_dim, H}, l);
      s.kv_a_norm = add(a + "kv_a_layernorm.weight", {KL}, l, false);
      s.kv_b = add_matrix(a + "kv_b_proj.weight", {NH * (c.qk_nope_head_dim + c.v_head_dim), KL}, l);
      s.o = add_matrix(a + "o_proj.weight", {H, c.attention_out_dim()}, l);
    } else {
      s.q = add_matrix(a + "q_proj.weight", {QD, H}, l);
      s.k = add_matrix(a + "k_proj.weight", {KD, H}, l);
      s.v = add_matrix(a + "v_proj.weight", {KD, H}, l);
      if (c.attention_qkv_bias) {
        s.q_bias = add(a + "q_proj.bias", {QD}, l, false);
        s.k_bias = add(a + "k_proj.bias", {KD}, l, false);
        s.v_bias = add(a + "v_proj.bias", {KD}, l, false);
      }
      s.o = add_matrix(a + "o_proj.weight", {H, QD}, l);
    }
    if (c.attention_o_bias) s.o_bias = add(a + "o_proj.bias", {H}, l, false);
    if (c.qk_norm == QkNorm::kFull) {
      s.q_norm = add(a + "q_norm.weight", {QD}, l, false);
      s.k_norm = add(a + "k_norm.weight", {KD}, l, false);
    } else if (c.qk_norm == QkNorm::kPerHead) {
      s.q_norm = add(a + "q_norm.weight", {hd}, l, false);
      s.k_norm = add(a + "k_norm.weight", {hd}, l, false);
    }
    s.ln2 = add(p + "post_attention_layernorm.weight", {H}, l, false);
    const std::int64_t W = impl_->mlp_width[l];
    if (impl_->moe_of_layer[l] >= 0) {
      s.router = add(router_tensor_name(c, l), {E, H}, l, true);
      if (c.router_selection_bias) {
        s.router_bias = add(router_bias_tensor_name(c, l), {E}, l, false);
        tensors_[s.router_bias].optimized = false;
      }
      if (W > 0) {
        s.mlp_gate = add_matrix(shared_tensor_name(c, l, 0), {W, H}, l);
        s.mlp_up = add_matrix(shared_tensor_name(c, l, 1), {W, H}, l);
        s.mlp_down = add_matrix(shared_tensor_name(c, l, 2), {H, W}, l);
        if (c.shared_expert_gate) s.shared_gate = add(shared_gate_tensor_name(c, l), {1, H}, l, true);
      }
    } else {
      s.mlp_gate = add_matrix(dense_mlp_tensor_name(c, l, 0), {W, H}, l);
      s.mlp_up = add_matrix(dense_mlp_tensor_name(c, l, 1), {W, H}, l);
      s.mlp_down = add_matrix(dense_mlp_tensor_name(c, l, 2), {H, W}, l);
    }
  }
  impl_->final_norm = add("model.norm.weight", {H}, -1, false);
  if (!c.tie_word_embeddings) impl_->lm_head = add_matrix("lm_head.weight", {V, H}, -1);

  dense_params_.assign(dense_size, 0.0f);
  dense_bf16_.assign(bf16_size, 0);
  if (options_.training) dense_grads_.assign(dense_size, 0.0f);
  for (std::size_t i = 0; i < tensors_.size(); ++i) {
    auto& t = tensors_[i];
    if (in_bf16[i]) {
      t.value_bf16 = std::span<std::uint16_t>(dense_bf16_).subspan(t.offset, t.numel);
      continue;
    }
    t.value = std::span<float>(dense_params_).subspan(t.offset, t.numel);
    if (options_.training) t.grad = std::span<float>(dense_grads_).subspan(t.offset, t.numel);
  }
  // This rank's experts, in the order of the checkpoint: layer, expert, gate/up/down.
  for (int l = 0; l < L; ++l) {
    const int m = impl_->moe_of_layer[l];
    if (m < 0) continue;
    for (int e : impl_->moe[m]->local_experts()) {
      for (int kind = 0; kind < 3; ++kind) {
        ParamTensor t;
        t.name = expert_tensor_name(c, l, e, kind);
        t.shape = kind < 2 ? std::vector<std::int64_t>{F, H} : std::vector<std::int64_t>{H, F};
        t.numel = static_cast<std::int64_t>(F) * H;
        if (bf16) {
          t.value_bf16 = impl_->moe[m]->expert_weight_bf16(e, kind);
        } else {
          t.value = impl_->moe[m]->expert_weight(e, kind);
        }
        if (options_.training) t.grad = impl_->moe[m]->expert_grad(e, kind);
        OCCULT_CHECK(static_cast<std::int64_t>(t.value.size() + t.value_bf16.size()) == t.numel &&
                         t.grad.size() == (options_.training ? t.value.size() : 0),
                     "MoE layer {} returned {} elements for {}, expected {}", l, t.value.size() + t.value_bf16.size(),
                     t.name, t.numel);
        t.expert = true;
        t.primary = expert_to_device_[m][e] == comm_.rank();
        t.layer = l;
        t.expert_id = e;
        t.expert_kind = kind;
        t.decay = true;
        tensors_.push_back(std::move(t));
      }
    }
  }
}

namespace {

// The pointers of one layer's slots into the arenas: `at` maps a vector slot, `matrix_at` a
// matrix slot (both give null for -1).
template <typename P, typename M, typename At, typename MatrixAt>
LayerParams<P, M> layer_params(const LayerSlots& s, At at, MatrixAt matrix_at) {
  LayerParams<P, M> w;
  w.ln1 = at(s.ln1);
  w.q = matrix_at(s.q);
  w.k = matrix_at(s.k);
  w.v = matrix_at(s.v);
  w.o = matrix_at(s.o);
  w.q_bias = at(s.q_bias);
  w.k_bias = at(s.k_bias);
  w.v_bias = at(s.v_bias);
  w.o_bias = at(s.o_bias);
  w.q_norm = at(s.q_norm);
  w.k_norm = at(s.k_norm);
  w.ln2 = at(s.ln2);
  w.router = at(s.router);
  w.mlp_gate = matrix_at(s.mlp_gate);
  w.mlp_up = matrix_at(s.mlp_up);
  w.mlp_down = matrix_at(s.mlp_down);
  w.shared_gate = at(s.shared_gate);
  w.router_bias = at(s.router_bias);
  w.q_a = matrix_at(s.q_a);
  w.q_b = matrix_at(s.q_b);
  w.q_a_norm = at(s.q_a_norm);
  w.kv_a = matrix_at(s.kv_a);
  w.kv_b = matrix_at(s.kv_b);
  w.kv_a_norm = at(s.kv_a_norm);
  return w;
}

}  // namespace

LayerWeights MoeTransformer::layer_weights(int layer) const {
  OCCULT_CHECK(layer >= 0 && layer < config_.num_hidden_layers, "layer {} is outside [0, num_hidden_layers = {})",
               layer, config_.num_hidden_layers);
  auto at = [&](int slot) -> const float* { return slot >= 0 ? dense_params_.data() + tensors_[slot].offset : nullptr; };
  auto matrix_at = [&](int slot) { return slot >= 0 ? weight_at(slot) : WeightRef(); };
  return layer_params<const float*, WeightRef>(impl_->layers[layer], at, matrix_at);
}

LayerGrads MoeTransformer::layer_grads(int layer) {
  auto at = [&](int slot) -> float* { return slot >= 0 ? dense_grads_.data() + tensors_[slot].offset : nullptr; };
  return layer_params<float*, float*>(impl_->layers[layer], at, at);
}

WeightRef MoeTransformer::weight_at(std::size_t slot) const {
  const ParamTensor& t = tensors_[slot];
  if (!t.value_bf16.empty()) return WeightRef::bf16(t.value_bf16.data());
  return WeightRef(t.value.data());
}

WeightRef MoeTransformer::weight(const std::string& name) const {
  const ParamTensor* t = find(name);
  OCCULT_CHECK(t != nullptr, "tensor {} is not held by rank {}", name, comm_.rank());
  return weight_at(static_cast<std::size_t>(t - tensors_.data()));
}

int MoeTransformer::mlp_width(int layer) const { return impl_->mlp_width.at(static_cast<std::size_t>(layer)); }

int MoeTransformer::moe_index(int layer) const { return impl_->moe_of_layer.at(static_cast<std::size_t>(layer)); }

const ParamTensor* MoeTransformer::find(const std::string& name) const {
  for (const auto& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

std::span<float> MoeTransformer::param(const std::string& name) {
  const ParamTensor* t = find(name);
  OCCULT_CHECK(t != nullptr, "tensor {} is not held by rank {}", name, comm_.rank());
  OCCULT_CHECK(t->value_bf16.empty(), "tensor {} is held in BF16 for inference; it has no F32 values", name);
  return t->value;
}

std::span<float> MoeTransformer::grad(const std::string& name) {
  const ParamTensor* t = find(name);
  OCCULT_CHECK(t != nullptr, "tensor {} is not held by rank {}", name, comm_.rank());
  return t->grad;
}

std::int64_t MoeTransformer::num_parameters() const {
  const std::int64_t expert = 3ll * config_.moe_intermediate_size * config_.hidden_size;
  return static_cast<std::int64_t>(dense_params_.size() + dense_bf16_.size()) +
         static_cast<std::int64_t>(config_.num_moe_layers()) * config_.num_experts * expert;
}

std::int64_t MoeTransformer::num_active_parameters() const {
  const std::int64_t expert = 3ll * config_.moe_intermediate_size * config_.hidden_size;
  // The embedding is a lookup, not a matmul; it is counted only when tied (as the LM head).
  std::int64_t active = static_cast<std::int64_t>(dense_params_.size() + dense_bf16_.size());
  if (!config_.tie_word_embeddings) active -= static_cast<std::int64_t>(config_.vocab_size) * config_.hidden_size;
  return active + static_cast<std::int64_t>(config_.num_moe_layers()) * config_.num_experts_per_tok * expert;
}

void MoeTransformer::init_weights(std::uint64_t seed) {
  const float std = config_.initializer_range;
  // GPT-2's scaling of the projections that write into the residual stream.
  const float out_std = std / std::sqrt(2.0f * config_.num_hidden_layers);
  for (const auto& t : tensors_) {
    float* data = t.value.data();
    if (t.shape.size() == 1) {
      // Biases start at 0, RMSNorm gains at 1.
      const bool bias = t.name.ends_with(".bias") || t.name.ends_with(".e_score_correction_bias");
      std::fill(data, data + t.numel, bias ? 0.0f : 1.0f);
      continue;
    }
    const bool out_proj = t.name.ends_with("o_proj.weight") || t.name.ends_with("down_proj.weight") ||
                          (t.expert && t.expert_kind == 2);
    // The stream depends only on the seed and the tensor's name, never on the rank count.
    SplitMix64 rng(seed ^ fnv1a64(t.name));
    const float s = out_proj ? out_std : std;
    if (!t.value_bf16.empty()) {
      // A BF16-resident matrix holds the F32 stream rounded, as a BF16 checkpoint of it would.
      for (std::int64_t i = 0; i < t.numel; ++i) t.value_bf16[i] = float_to_bf16(s * static_cast<float>(rng.normal()));
      continue;
    }
    for (std::int64_t i = 0; i < t.numel; ++i) data[i] = s * static_cast<float>(rng.normal());
  }
}

void MoeTransformer::allocate_activations(std::int64_t B, int T) {
  if (impl_->B == B && impl_->T == T) return;
  layout_activations(B, T, true);
}

std::int64_t MoeTransformer::activation_bytes(std::int64_t B, int T) {
  return layout_activations(B, T, false) * static_cast<std::int64_t>(sizeof(float));
}

std::int64_t MoeTransformer::layout_activations(std::int64_t B, int T, bool assign) {
  auto& m = *impl_;
  const ModelConfig& c = config_;
  const std::int64_t L = c.num_hidden_layers, H = c.hidden_size, V = c.vocab_size, NH = c.num_attention_heads,
                     NKV = c.kv_heads(), QD = c.q_dim(), KD = c.kv_dim(), E = c.num_experts;
  const std::int64_t N = B * T;
  std::int64_t Fmax = 0;
  for (int w : m.mlp_width) Fmax = std::max<std::int64_t>(Fmax, w);
  struct Slot {
    float** ptr;
    std::int64_t size;
  };
  std::vector<Slot> slots = {
      {&m.resid, (L + 1) * N * H}, {&m.lnf, N * H},     {&m.rstdf, N},       {&m.logits, N * V},
      {&m.probs, N * V},           {&m.tmp, N * H},     {&m.tmp2, N * H},    {&m.dresid, N * H},
      {&m.datty, N * QD},          {&m.dq, N * QD},     {&m.dk, N * KD},     {&m.dv, N * KD},
      {&m.dq_pre, N * QD},         {&m.dk_pre, N * KD}, {&m.datt, static_cast<std::int64_t>(T) * T},
      {&m.dh1, N * Fmax},          {&m.dh3, N * Fmax},  {&m.dhh, N * Fmax},  {&m.dlogits, N * V},
      {&m.dprobs, N * E},
  };
  // A dry run must not disturb the views of the arena in use.
  std::vector<LayerActs> dry_run_views;
  std::vector<LayerActs>& views = assign ? m.la : dry_run_views;
  views.assign(static_cast<std::size_t>(L), LayerActs{});
  for (std::int64_t l = 0; l < L; ++l) {
    LayerActs& a = views[l];
    const std::int64_t F = m.mlp_width[l];
    const bool gated = F > 0 && m.moe_of_layer[l] >= 0 && c.shared_expert_gate;
    // Latent-attention intermediates are kept only when there will be a backward.
    const bool mla_saved = c.mla() && options_.training;
    const std::int64_t QL = mla_saved ? c.q_lora_rank : 0, KL = mla_saved ? c.kv_lora_rank : 0;
    const Slot layer_slots[] = {
        {&a.ln1, N * H},     {&a.rstd1, N},       {&a.q_pre, N * QD},  {&a.k_pre, N * KD},
        {&a.q_rstd, N * NH}, {&a.k_rstd, N * NKV}, {&a.q, N * QD},     {&a.k, N * KD},
        {&a.v, N * KD},      {&a.att, B * NH * T * T}, {&a.atty, N * QD}, {&a.mid, N * H},
        {&a.ln2, N * H},     {&a.rstd2, N},       {&a.h1, N * F},      {&a.h3, N * F},
        {&a.hh, N * F},      {&a.y, gated ? N * H : 0}, {&a.sig, gated ? N : 0},
        {&a.mla_latent, mla_saved ? N * mla_latent_width(c) : 0},
        {&a.mla.q_latent, N * QL}, {&a.mla.q_latent_norm, N * QL}, {&a.mla.q_rstd, QL > 0 ? N : 0},
        {&a.mla.kv_latent, N * KL}, {&a.mla.kv_rstd, mla_saved ? N : 0},
    };
    slots.insert(slots.end(), std::begin(layer_slots), std::end(layer_slots));
  }
  std::int64_t total = 0;
  for (const auto& s : slots) total += s.size;
  if (!assign) return total;
  m.acts.assign(static_cast<std::size_t>(total), 0.0f);
  std::int64_t offset = 0;
  for (const auto& s : slots) {
    *s.ptr = m.acts.data() + offset;
    offset += s.size;
  }
  m.B = B;
  m.T = T;
  return total;
}

LossParts MoeTransformer::forward(std::span<const std::int32_t> tokens, std::span<const std::int32_t> targets,
                                  std::int64_t B, int T) {
  const GemmOptionsScope gemm_scope(options_.gemm);
  auto& m = *impl_;
  const ModelConfig& c = config_;
  const int L = c.num_hidden_layers, Lm = c.num_moe_layers(), H = c.hidden_size, V = c.vocab_size,
            NH = c.num_attention_heads, NKV = c.kv_heads(), hd = c.head_dim(), E = c.num_experts,
            K = c.num_experts_per_tok;
  // Every rank checks its own batch, then all agree, so bad input fails everywhere.
  agree_on_errors(comm_, [&] {
    OCCULT_CHECK(B >= 0 && T >= 1, "batch shape B={} T={} is invalid", B, T);
    OCCULT_CHECK(T <= c.max_position_embeddings,
                 "sequence length {} exceeds the config's max_position_embeddings = {}", T,
                 c.max_position_embeddings);
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

  gather_rows(m.resid, weight_at(m.embed), m.tokens.data(), N, H);
  // Statistics all-reduced once after the forward: ce_sum, tokens, counts[Lm,E], prob sums[Lm,E],
  // then the sequence-wise loss sums [Lm] and the sequence count.
  const std::size_t seq_stats = 2 + 2 * static_cast<std::size_t>(Lm) * E;
  std::vector<double> stats(seq_stats + Lm + 1, 0.0);
  stats[seq_stats + Lm] = static_cast<double>(B);
  const bool per_sequence = c.aux_loss_per_sequence;
  if (per_sequence) m.sequence_fraction.assign(static_cast<std::size_t>(Lm) * B * E, 0.0);
  std::vector<double> seq_counts(per_sequence ? E : 0), seq_psums(per_sequence ? E : 0);
  for (int l = 0; l < L; ++l) {
    const LayerWeights w = layer_weights(l);
    const LayerActs& a = m.la[l];
    const float* x = m.resid + l * N * H;
    float* out = m.resid + (l + 1) * N * H;
    rmsnorm_forward(a.ln1, a.rstd1, x, w.ln1, N, H, c.rms_norm_eps);
    if (c.mla()) {
      m.mla_scratch.resize(static_cast<std::size_t>(mla_scratch_floats(c, N)));
      m.positions.resize(static_cast<std::size_t>(N));
      for (std::int64_t n = 0; n < N; ++n) m.positions[n] = static_cast<int>(n % T);
      // A training model keeps each layer's latent rows for backward; inference shares one buffer.
      float* latent = a.mla_latent;
      if (!options_.training) {
        m.mla_latent.resize(static_cast<std::size_t>(N * mla_latent_width(c)));
        latent = m.mla_latent.data();
      }
      // (The arena gives empty slots a position too: an inference model passes no saved pointers.)
      mla_project(c, w, a.ln1, N, m.positions.data(), a.q, latent, m.mla_scratch.data(),
                  options_.training ? a.mla : MlaSaved{});
      mla_expand(c, w, latent, N, a.k, a.v, m.mla_scratch.data());
      attention_forward(a.atty, a.att, a.q, a.k, a.v, B, T, NH, NKV, hd);
      // o_proj reads NH*v_head_dim values per row; backward pads the gradient again.
      mla_compact_heads(c, a.atty, N);
    } else {
      qkv_forward(c, w, a.ln1, N, a.q, a.k, a.v, {a.q_pre, a.k_pre, a.q_rstd, a.k_rstd});
      rope_forward(a.q, B, T, NH, hd, c.rope_theta);
      rope_forward(a.k, B, T, NKV, hd, c.rope_theta);
      attention_forward(a.atty, a.att, a.q, a.k, a.v, B, T, NH, NKV, hd);
    }
    output_projection_forward(c, w, a.atty, N, m.tmp);
    residual_forward(a.mid, x, m.tmp, N * H);
    rmsnorm_forward(a.ln2, a.rstd2, a.mid, w.ln2, N, H, c.rms_norm_eps);
    std::copy(a.mid, a.mid + N * H, out);
    const int mi = m.moe_of_layer[l];
    if (mi >= 0) {
      m.moe[mi]->forward(w.router, w.router_bias, a.ln2, N, m.tmp);
      residual_forward(out, out, m.tmp, N * H);
    }
    if (m.mlp_width[l] > 0) {
      mlp_forward(w, a.ln2, N, H, m.mlp_width[l], out, {a.h1, a.h3, a.hh, a.y, a.sig}, m.tmp);
    }
    if (mi < 0) continue;
    // Load-balancing statistics of this layer's routing.
    const float* probs = m.moe[mi]->router_probs();
    const std::int32_t* ids = m.moe[mi]->topk_ids();
    double* counts = stats.data() + 2 + static_cast<std::size_t>(mi) * E;
    double* psums = stats.data() + 2 + static_cast<std::size_t>(Lm) * E + static_cast<std::size_t>(mi) * E;
    for (std::int64_t t = 0; t < N; ++t) {
      for (int j = 0; j < K; ++j) counts[ids[t * K + j]] += 1.0;
      for (int e = 0; e < E; ++e) psums[e] += probs[t * E + e];
    }
    if (!per_sequence) continue;
    // Sequence b: sum_e f_be P_be with f_be = E/(T k) * its top-k count, P_be its mean probability.
    for (std::int64_t b = 0; b < B; ++b) {
      std::fill(seq_counts.begin(), seq_counts.end(), 0.0);
      std::fill(seq_psums.begin(), seq_psums.end(), 0.0);
      for (std::int64_t t = b * T; t < (b + 1) * T; ++t) {
        for (int j = 0; j < K; ++j) seq_counts[ids[t * K + j]] += 1.0;
        for (int e = 0; e < E; ++e) seq_psums[e] += probs[t * E + e];
      }
      double* f = m.sequence_fraction.data() + (static_cast<std::size_t>(mi) * B + b) * E;
      for (int e = 0; e < E; ++e) {
        f[e] = E * seq_counts[e] / (static_cast<double>(T) * K);
        stats[seq_stats + mi] += f[e] * seq_psums[e] / T;
      }
    }
  }
  rmsnorm_forward(m.lnf, m.rstdf, m.resid + L * N * H, W(m.final_norm), N, H, c.rms_norm_eps);
  linear_forward(m.logits, m.lnf, weight_at(m.lm_head >= 0 ? m.lm_head : m.embed), N, H, V);
  stats[0] = N > 0 ? crossentropy_forward(m.probs, m.logits, m.targets.data(), N, V) : 0.0;
  stats[1] = static_cast<double>(N);
  comm_.set_activity("loss reduction");
  comm_.all_reduce_sum(std::span<double>(stats));

  const double n_global = stats[1];
  OCCULT_CHECK(n_global > 0, "the global batch has no tokens");
  m.expert_fraction.assign(static_cast<std::size_t>(Lm) * E, 0.0);
  double aux = 0.0;
  for (int l = 0; l < Lm; ++l) {
    double layer_aux = 0.0;
    for (int e = 0; e < E; ++e) {
      const double f = stats[2 + static_cast<std::size_t>(l) * E + e] / (n_global * K);
      const double p = stats[2 + static_cast<std::size_t>(Lm) * E + static_cast<std::size_t>(l) * E + e] / n_global;
      m.expert_fraction[static_cast<std::size_t>(l) * E + e] = f;
      layer_aux += f * p;
    }
    aux += E * layer_aux;
  }
  if (per_sequence) {
    m.sequences_global = stats[seq_stats + Lm];
    aux = 0.0;
    for (int l = 0; l < Lm; ++l) aux += stats[seq_stats + l] / m.sequences_global;
  }
  m.loss.cross_entropy = stats[0] / n_global;
  m.loss.aux = c.router_aux_loss_coef * aux / Lm;
  m.loss.total = m.loss.cross_entropy + m.loss.aux;
  m.loss.tokens = static_cast<std::int64_t>(n_global);
  m.forward_done = true;
  m.backward_done = false;
  return m.loss;
}

void MoeTransformer::backward() {
  const GemmOptionsScope gemm_scope(options_.gemm);
  auto& m = *impl_;
  OCCULT_CHECK(m.forward_done, "backward() needs a forward() first");
  OCCULT_CHECK(options_.training, "backward() on a model built for inference (ParallelOptions::training = false)");
  const ModelConfig& c = config_;
  const int L = c.num_hidden_layers, Lm = c.num_moe_layers(), H = c.hidden_size, V = c.vocab_size,
            NH = c.num_attention_heads, NKV = c.kv_heads(), hd = c.head_dim(), E = c.num_experts;
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
  matmul_backward(m.tmp, dW(head), m.dlogits, m.lnf, weight_at(head).f32("the LM head"), N, H, V);
  std::fill(m.dresid, m.dresid + N * H, 0.0f);
  rmsnorm_backward(m.dresid, dW(m.final_norm), m.tmp, m.resid + L * N * H, W(m.final_norm), m.rstdf, N, H);

  for (int l = L - 1; l >= 0; --l) {
    const LayerWeights w = layer_weights(l);
    const LayerGrads g = layer_grads(l);
    const LayerActs& a = m.la[l];
    const float* x = m.resid + l * N * H;
    // resid[l+1] = mid + moe(ln2) + mlp(ln2): dln2 collects both branches.
    float* dln2 = m.tmp;
    std::fill(dln2, dln2 + N * H, 0.0f);
    if (m.mlp_width[l] > 0) {
      mlp_backward(w, g, a.ln2, N, H, m.mlp_width[l], m.dresid, {a.h1, a.h3, a.hh, a.y, a.sig}, dln2, m.dh1,
                   m.dh3, m.dhh, m.tmp2);
    }
    const int mi = m.moe_of_layer[l];
    if (mi >= 0) {
      if (c.aux_loss_per_sequence) {
        // coef/Lm * mean over all ranks' sequences of sum_e f_be P_be: d/dp[t,e] = coef/Lm / B_g * f_be / T.
        const double scale = c.router_aux_loss_coef / Lm / m.sequences_global / T;
        for (std::int64_t b = 0; b < B; ++b) {
          const double* f = m.sequence_fraction.data() + (static_cast<std::size_t>(mi) * B + b) * E;
          for (std::int64_t t = b * T; t < (b + 1) * T; ++t) {
            for (int e = 0; e < E; ++e) m.dprobs[t * E + e] = static_cast<float>(scale * f[e]);
          }
        }
      } else {
        // Aux loss coef/Lm * E * sum_e f_e P_e with P_e = mean_t p[t,e]: d/dp[t,e] = coef/Lm * E * f_e / N.
        const double scale = c.router_aux_loss_coef / Lm * E / n_global;
        for (int e = 0; e < E; ++e) {
          const float ge = static_cast<float>(scale * m.expert_fraction[static_cast<std::size_t>(mi) * E + e]);
          for (std::int64_t t = 0; t < N; ++t) m.dprobs[t * E + e] = ge;
        }
      }
      m.moe[mi]->backward(m.dresid, m.dprobs, dln2, g.router);
    }
    rmsnorm_backward(m.dresid, g.ln2, dln2, a.mid, w.ln2, a.rstd2, N, H);
    // mid = x + o_proj(atty).
    std::fill(m.datty, m.datty + N * c.q_dim(), 0.0f);
    output_projection_backward(c, w, g, a.atty, N, m.dresid, m.datty);
    if (c.mla()) {
      mla_pad_heads(c, m.datty, N);
      attention_backward(m.dq, m.dk, m.dv, m.datt, m.datty, a.att, a.q, a.k, a.v, B, T, NH, NKV, hd);
      float* dln1 = m.tmp;
      std::fill(dln1, dln1 + N * H, 0.0f);
      m.mla_scratch.resize(static_cast<std::size_t>(
          std::max(mla_scratch_floats(c, N), mla_backward_scratch_floats(c, N))));
      mla_backward(c, w, g, a.ln1, N, m.positions.data(), m.dq, m.dk, m.dv, a.mla_latent, a.mla, dln1,
                   m.mla_scratch.data());
      rmsnorm_backward(m.dresid, g.ln1, dln1, x, w.ln1, a.rstd1, N, H);
      continue;
    }
    attention_backward(m.dq, m.dk, m.dv, m.datt, m.datty, a.att, a.q, a.k, a.v, B, T, NH, NKV, hd);
    rope_backward(m.dq, B, T, NH, hd, c.rope_theta);
    rope_backward(m.dk, B, T, NKV, hd, c.rope_theta);
    float* dln1 = m.tmp;
    std::fill(dln1, dln1 + N * H, 0.0f);
    qkv_backward(c, w, g, a.ln1, N, m.dq, m.dk, m.dv, {a.q_pre, a.k_pre, a.q_rstd, a.k_rstd}, dln1, m.dq_pre,
                 m.dk_pre);
    rmsnorm_backward(m.dresid, g.ln1, dln1, x, w.ln1, a.rstd1, N, H);
  }
  embedding_backward(dW(m.embed), m.dresid, m.tokens.data(), N, H);
  // Dense parameters are data-parallel: sum their gradients over ranks (router included).
  comm_.set_activity("dense gradient all-reduce");
  comm_.all_reduce_sum(std::span<float>(dense_grads_));
  m.backward_done = true;
}

RoutingStats MoeTransformer::routing_stats() {
  auto& m = *impl_;
  OCCULT_CHECK(m.forward_done, "routing_stats() needs a forward() first");
  const int Lm = config_.num_moe_layers(), K = config_.num_experts_per_tok, D = comm_.size();
  const std::int64_t N = m.B * m.T;
  // Per MoE layer: sum over local tokens of distinct devices.
  std::vector<double> sums(Lm, 0.0);
  std::vector<char> seen(D);
  for (int l = 0; l < Lm; ++l) {
    if (!options_.device_experts.empty()) {
      // Replicas: the holders each token's slots actually went to.
      sums[l] = static_cast<double>(m.moe[l]->token_device_pairs());
      continue;
    }
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
  for (int l = 0; l < Lm; ++l) {
    const double ct = sums[l] / static_cast<double>(m.loss.tokens);
    r.replicas_per_token += ct / Lm;
    r.max_replicas_per_token = std::max(r.max_replicas_per_token, ct);
  }
  const auto totals = sum_over_ranks(comm_);
  // The replicas' gradient exchange is part of what replication costs a training step.
  for (const char* name : {kExchangeDispatch, kExchangeCombine, kExchangeBackwardDispatch, kExchangeBackwardCombine,
                           kExchangeReplicaGradients}) {
    auto it = totals.find(name);
    if (it != totals.end()) r.dispatch_bytes += it->second.total_bytes();
  }
  // One row per (token, expert) on each exchange: the forward dispatch in its own format (fp8),
  // combine and the backward pair in the other.
  const std::int64_t H = config_.hidden_size;
  const std::int64_t row_bytes = wire_row_bytes(exchange_wire(options_.wire, true), H) +
                                 (m.backward_done ? 3 : 1) * wire_row_bytes(exchange_wire(options_.wire, false), H);
  r.standard_bytes = m.loss.tokens * K * row_bytes * Lm;
  return r;
}

std::vector<std::int64_t> MoeTransformer::expert_loads() {
  auto& m = *impl_;
  OCCULT_CHECK(m.forward_done, "expert_loads() needs a forward() first");
  const int Lm = config_.num_moe_layers(), K = config_.num_experts_per_tok, E = config_.num_experts;
  const std::int64_t N = m.B * m.T;
  std::vector<std::int64_t> loads(static_cast<std::size_t>(Lm) * E, 0);
  for (int l = 0; l < Lm; ++l) {
    const std::int32_t* ids = m.moe[l]->topk_ids();
    for (std::int64_t i = 0; i < N * K; ++i) {
      if (ids[i] >= 0 && ids[i] < E) ++loads[static_cast<std::size_t>(l) * E + ids[i]];
    }
  }
  comm_.all_reduce_sum(std::span<std::int64_t>(loads));
  return loads;
}

MoeBlock& MoeTransformer::moe_block(int moe_layer) {
  OCCULT_CHECK(moe_layer >= 0 && moe_layer < config_.num_moe_layers(),
               "MoE layer {} is outside [0, {}): the model has {} MoE layers", moe_layer, config_.num_moe_layers(),
               config_.num_moe_layers());
  return *impl_->moe[moe_layer];
}

std::span<const float> MoeTransformer::logits() const {
  const auto& m = *impl_;
  return {m.logits, static_cast<std::size_t>(m.B * m.T * config_.vocab_size)};
}

}  // namespace occult
