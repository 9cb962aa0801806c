#include "hf/hf_fixture_writer.h"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "hf/hf_reference.h"
#include "occult/core/error.h"
#include "occult/core/safetensors.h"

namespace occult::hf {
namespace {

// Tiny shapes shared by every architecture: big enough for GQA, several experts and distinct
// heads, small enough that the reference runs in milliseconds.
constexpr int kVocab = 96;
constexpr int kHidden = 32;
constexpr int kLayers = 3;
constexpr int kHeads = 4;
constexpr int kExperts = 8;
constexpr int kExpertFfn = 16;
constexpr int kDenseFfn = 48;
constexpr int kMaxPositions = 64;

// Standard deviations of the random weights. Projections near 0.3 keep activations O(1) so
// logits are far from flat; the router is larger so the top-k choices have clear gaps and a
// float implementation cannot pick a different expert than the double reference.
constexpr float kEmbedStd = 0.5f;
constexpr float kProjStd = 0.3f;
constexpr float kBiasStd = 0.2f;
constexpr float kRouterStd = 0.6f;
constexpr float kNormNoise = 0.1f;

std::string torch_dtype(const std::string& dtype) {
  if (dtype == "f32") return "float32";
  if (dtype == "bf16") return "bfloat16";
  if (dtype == "f16") return "float16";
  OCCULT_FAIL("--dtype must be f32, bf16 or f16, got \"{}\"", dtype);
}

void common_keys(nlohmann::ordered_json& c, const FixtureOptions& o, const char* arch_class,
                 const char* model_type) {
  c["architectures"] = {arch_class};
  c["model_type"] = model_type;
  c["vocab_size"] = kVocab;
  c["hidden_size"] = kHidden;
  c["num_hidden_layers"] = kLayers;
  c["num_attention_heads"] = kHeads;
  c["hidden_act"] = "silu";
  c["max_position_embeddings"] = kMaxPositions;
  c["initializer_range"] = 0.02;
  c["rms_norm_eps"] = 1e-6;
  c["use_cache"] = true;
  c["attention_dropout"] = 0.0;
  c["bos_token_id"] = 1;
  c["eos_token_id"] = 2;
  c["torch_dtype"] = torch_dtype(o.dtype);
  c["transformers_version"] = "4.51.0";
}

}  // namespace

nlohmann::ordered_json fixture_config(const FixtureOptions& o) {
  OCCULT_CHECK(o.variant == "default" || o.variant == "alt",
               "--variant must be default or alt, got \"{}\"", o.variant);
  const bool alt = o.variant == "alt";
  nlohmann::ordered_json c;
  if (o.arch == "olmoe") {
    // All layers sparse; whole-projection QK-norm. alt: GQA (k_norm narrower than q_norm) and
    // renormalised top-k.
    common_keys(c, o, "OlmoeForCausalLM", "olmoe");
    c["num_key_value_heads"] = alt ? 2 : kHeads;
    c["intermediate_size"] = kExpertFfn;
    c["num_experts"] = kExperts;
    c["num_experts_per_tok"] = 3;
    c["norm_topk_prob"] = alt;
    c["rope_theta"] = 10000.0;
    c["rope_scaling"] = nullptr;
    c["attention_bias"] = false;
    c["clip_qkv"] = nullptr;
    c["output_router_logits"] = false;
    c["router_aux_loss_coef"] = 0.01;
    c["pad_token_id"] = 0;
    c["tie_word_embeddings"] = o.tied.value_or(false);
  } else if (o.arch == "qwen2_moe") {
    // q/k/v biases, gated shared expert. default: layer 1 dense via mlp_only_layers;
    // alt: decoder_sparse_step 2 (only layer 1 sparse) and renormalised top-k.
    common_keys(c, o, "Qwen2MoeForCausalLM", "qwen2_moe");
    c["num_key_value_heads"] = kHeads;
    c["intermediate_size"] = kDenseFfn;
    c["moe_intermediate_size"] = kExpertFfn;
    c["shared_expert_intermediate_size"] = 24;
    c["num_experts"] = kExperts;
    c["num_experts_per_tok"] = 2;
    c["norm_topk_prob"] = alt;
    c["decoder_sparse_step"] = alt ? 2 : 1;
    c["mlp_only_layers"] = alt ? std::vector<int>{} : std::vector<int>{1};
    c["rope_theta"] = 1000000.0;
    c["use_sliding_window"] = false;
    c["sliding_window"] = 4096;
    c["max_window_layers"] = kLayers;
    c["output_router_logits"] = false;
    c["router_aux_loss_coef"] = 0.001;
    c["tie_word_embeddings"] = o.tied.value_or(false);
  } else if (o.arch == "deepseek") {
    // first_k_dense_replace 1, two fused shared experts, GQA. default: layers 1 and 2 sparse;
    // alt: moe_layer_freq 2 (only layer 2 sparse) and renormalised top-k.
    common_keys(c, o, "DeepseekForCausalLM", "deepseek");
    c["auto_map"] = {{"AutoConfig", "configuration_deepseek.DeepseekConfig"},
                     {"AutoModel", "modeling_deepseek.DeepseekModel"},
                     {"AutoModelForCausalLM", "modeling_deepseek.DeepseekForCausalLM"}};
    c["num_key_value_heads"] = 2;
    c["intermediate_size"] = kDenseFfn;
    c["moe_intermediate_size"] = kExpertFfn;
    c["n_routed_experts"] = kExperts;
    c["n_shared_experts"] = 2;
    c["num_experts_per_tok"] = 3;
    c["first_k_dense_replace"] = 1;
    c["moe_layer_freq"] = alt ? 2 : 1;
    c["norm_topk_prob"] = alt;
    c["scoring_func"] = "softmax";
    c["aux_loss_alpha"] = 0.001;
    c["seq_aux"] = true;
    c["attention_bias"] = false;
    c["pretraining_tp"] = 1;
    c["rope_theta"] = 10000.0;
    c["rope_scaling"] = nullptr;
    c["tie_word_embeddings"] = o.tied.value_or(false);
  } else if (o.arch == "deepseek_v2") {
    // Multi-head latent attention without q_lora_rank (DeepSeek-V2-Lite style), softmax router,
    // two fused shared experts, first layer dense. default: group_limited_greedy (4 groups of
    // 2, 2 kept), weights not renormalised so routed_scaling_factor applies; alt: q_lora_rank,
    // greedy top-k, renormalised (the scaling factor then does not apply), moe_layer_freq 2.
    common_keys(c, o, "DeepseekV2ForCausalLM", "deepseek_v2");
    c["auto_map"] = {{"AutoConfig", "configuration_deepseek.DeepseekV2Config"},
                     {"AutoModelForCausalLM", "modeling_deepseek.DeepseekV2ForCausalLM"}};
    c["num_key_value_heads"] = kHeads;
    c["q_lora_rank"] = alt ? nlohmann::ordered_json(12) : nlohmann::ordered_json(nullptr);
    c["kv_lora_rank"] = 16;
    c["qk_nope_head_dim"] = 8;
    c["qk_rope_head_dim"] = 4;
    c["v_head_dim"] = 8;
    c["intermediate_size"] = kDenseFfn;
    c["moe_intermediate_size"] = kExpertFfn;
    c["n_routed_experts"] = kExperts;
    c["n_shared_experts"] = 2;
    c["num_experts_per_tok"] = 3;
    c["first_k_dense_replace"] = 1;
    c["moe_layer_freq"] = alt ? 2 : 1;
    c["norm_topk_prob"] = alt;
    c["scoring_func"] = "softmax";
    c["topk_method"] = alt ? "greedy" : "group_limited_greedy";
    c["n_group"] = alt ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(4);
    c["topk_group"] = alt ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(2);
    c["routed_scaling_factor"] = alt ? 2.0 : 1.5;
    c["aux_loss_alpha"] = 0.001;
    c["seq_aux"] = true;
    c["ep_size"] = 1;
    c["attention_bias"] = false;
    c["pretraining_tp"] = 1;
    c["rope_theta"] = 10000.0;
    // default: DeepSeek-V2-Lite's YaRN (cos/sin magnitude 1, softmax scale times mscale^2);
    // alt: plain RoPE.
    c["rope_scaling"] = alt ? nlohmann::ordered_json(nullptr)
                            : nlohmann::ordered_json{{"beta_fast", 32}, {"beta_slow", 1}, {"factor", 40},
                                                     {"mscale", 0.707}, {"mscale_all_dim", 0.707},
                                                     {"original_max_position_embeddings", 4096}, {"type", "yarn"}};
    c["tie_word_embeddings"] = o.tied.value_or(false);
  } else if (o.arch == "deepseek_v3") {
    // MLA with q_lora_rank and v_head_dim (12) above qk_nope + qk_rope (8), sigmoid router with
    // e_score_correction_bias, noaux_tc over 4 groups of 2 (2 kept), normalised weights times
    // routed_scaling_factor 2.5, one shared expert, first layer dense. alt: no q_lora_rank,
    // v_head_dim below the query head, 2 groups of 4 (1 kept), no shared expert.
    common_keys(c, o, "DeepseekV3ForCausalLM", "deepseek_v3");
    c["auto_map"] = {{"AutoConfig", "configuration_deepseek.DeepseekV3Config"},
                     {"AutoModelForCausalLM", "modeling_deepseek.DeepseekV3ForCausalLM"}};
    c["num_key_value_heads"] = kHeads;
    c["q_lora_rank"] = alt ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(12);
    c["kv_lora_rank"] = 16;
    c["qk_nope_head_dim"] = alt ? 8 : 4;
    c["qk_rope_head_dim"] = 4;
    c["v_head_dim"] = alt ? 6 : 12;
    c["intermediate_size"] = kDenseFfn;
    c["moe_intermediate_size"] = kExpertFfn;
    c["n_routed_experts"] = kExperts;
    c["n_shared_experts"] = alt ? 0 : 1;
    c["num_experts_per_tok"] = 3;
    c["first_k_dense_replace"] = 1;
    c["moe_layer_freq"] = 1;
    c["norm_topk_prob"] = true;
    c["scoring_func"] = "sigmoid";
    c["topk_method"] = "noaux_tc";
    c["n_group"] = alt ? 2 : 4;
    c["topk_group"] = alt ? 1 : 2;
    c["routed_scaling_factor"] = 2.5;
    c["num_nextn_predict_layers"] = 1;
    c["aux_loss_alpha"] = 0.001;
    c["seq_aux"] = true;
    c["ep_size"] = 1;
    c["attention_bias"] = false;
    c["rope_theta"] = 10000.0;
    // default: YaRN named by "rope_type", with mscale != mscale_all_dim so cos and sin are
    // scaled too; alt: plain RoPE.
    c["rope_scaling"] = alt ? nlohmann::ordered_json(nullptr)
                            : nlohmann::ordered_json{{"rope_type", "yarn"}, {"factor", 40}, {"beta_fast", 32},
                                                     {"beta_slow", 1}, {"mscale", 1.0}, {"mscale_all_dim", 0.8},
                                                     {"original_max_position_embeddings", 4096}};
    c["tie_word_embeddings"] = o.tied.value_or(false);
  } else if (o.arch == "qwen3_moe") {
    // GQA, head_dim 16 != hidden/heads 8, per-head QK-norm. default: layer 0 dense via
    // mlp_only_layers, renormalised top-k; alt: all layers sparse, no renormalisation, tied.
    common_keys(c, o, "Qwen3MoeForCausalLM", "qwen3_moe");
    c["num_key_value_heads"] = 2;
    c["head_dim"] = 16;
    c["intermediate_size"] = kDenseFfn;
    c["moe_intermediate_size"] = kExpertFfn;
    c["num_experts"] = kExperts;
    c["num_experts_per_tok"] = 2;
    c["norm_topk_prob"] = !alt;
    c["decoder_sparse_step"] = 1;
    c["mlp_only_layers"] = alt ? std::vector<int>{} : std::vector<int>{0};
    c["rope_theta"] = 1000000.0;
    c["rope_scaling"] = nullptr;
    c["attention_bias"] = false;
    c["use_sliding_window"] = false;
    c["sliding_window"] = nullptr;
    c["max_window_layers"] = kLayers;
    c["output_router_logits"] = false;
    c["router_aux_loss_coef"] = 0.001;
    c["tie_word_embeddings"] = o.tied.value_or(alt);
  } else if (o.arch == "mixtral") {
    // GQA, always-renormalised top-k. alt: top-3 and tied embeddings.
    common_keys(c, o, "MixtralForCausalLM", "mixtral");
    c["num_key_value_heads"] = 2;
    c["intermediate_size"] = kExpertFfn;
    c["num_local_experts"] = kExperts;
    c["num_experts_per_tok"] = alt ? 3 : 2;
    c["rope_theta"] = 1000000.0;
    c["sliding_window"] = nullptr;
    c["output_router_logits"] = false;
    c["router_aux_loss_coef"] = 0.02;
    c["router_jitter_noise"] = 0.0;
    c["tie_word_embeddings"] = o.tied.value_or(alt);
  } else {
    OCCULT_FAIL("--arch must be olmoe, qwen2_moe, deepseek, deepseek_v2, deepseek_v3, qwen3_moe or mixtral, got "
                "\"{}\"",
                o.arch);
  }
  return c;
}

namespace {

// One named tensor of random values, in float before the stored-dtype conversion.
struct Pending {
  std::string name;
  std::vector<std::int64_t> shape;
  std::vector<float> values;
};

class TensorMaker {
 public:
  explicit TensorMaker(std::uint64_t seed) : rng_(seed) {}

  Pending normal(std::string name, std::vector<std::int64_t> shape, float mean, float stddev) {
    std::int64_t n = 1;
    for (std::int64_t d : shape) n *= d;
    std::normal_distribution<float> dist(mean, stddev);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng_);
    return {std::move(name), std::move(shape), std::move(v)};
  }

 private:
  std::mt19937_64 rng_;
};

}  // namespace

void write_fixture(const FixtureOptions& o, const std::string& dir) {
  const nlohmann::ordered_json config = fixture_config(o);
  std::filesystem::create_directories(dir);
  const std::filesystem::path root(dir);
  {
    std::ofstream out(root / "config.json");
    out << config.dump(2) << "\n";
    OCCULT_CHECK(out.good(), "cannot write {}", (root / "config.json").string());
  }
  const HfConfig c = read_hf_config(dir);
  OCCULT_CHECK(o.shards >= 1 && o.shards <= c.num_layers, "--shards must lie in [1, {}], got {}",
               c.num_layers, o.shards);
  const std::int64_t h = c.hidden_size;
  const std::int64_t qw = static_cast<std::int64_t>(c.num_heads) * c.head_dim;
  const std::int64_t kw = static_cast<std::int64_t>(c.num_kv_heads) * c.head_dim;
  TensorMaker make(o.seed);

  // groups[0]: embedding; groups[1 + l]: layer l; groups[num_layers + 1]: final norm, lm_head.
  std::vector<std::vector<Pending>> groups(c.num_layers + 2);
  groups[0].push_back(make.normal("model.embed_tokens.weight", {c.vocab_size, h}, 0.0f, kEmbedStd));
  for (int l = 0; l < c.num_layers; ++l) {
    std::vector<Pending>& g = groups[1 + l];
    const std::string p = fmt::format("model.layers.{}.", l);
    auto swiglu = [&](const std::string& prefix, std::int64_t f, const char* gate, const char* up,
                      const char* down) {
      g.push_back(make.normal(prefix + gate, {f, h}, 0.0f, kProjStd));
      g.push_back(make.normal(prefix + up, {f, h}, 0.0f, kProjStd));
      g.push_back(make.normal(prefix + down, {h, f}, 0.0f, kProjStd));
    };
    g.push_back(make.normal(p + "input_layernorm.weight", {h}, 1.0f, kNormNoise));
    const std::string a = p + "self_attn.";
    if (c.mla) {
      const std::int64_t heads = c.num_heads, qk = c.qk_nope_head_dim + c.qk_rope_head_dim;
      if (c.q_lora_rank > 0) {
        g.push_back(make.normal(a + "q_a_proj.weight", {c.q_lora_rank, h}, 0.0f, kProjStd));
        g.push_back(make.normal(a + "q_a_layernorm.weight", {c.q_lora_rank}, 1.0f, kNormNoise));
        g.push_back(make.normal(a + "q_b_proj.weight", {heads * qk, c.q_lora_rank}, 0.0f, kProjStd));
      } else {
        g.push_back(make.normal(a + "q_proj.weight", {heads * qk, h}, 0.0f, kProjStd));
      }
      g.push_back(make.normal(a + "kv_a_proj_with_mqa.weight", {c.kv_lora_rank + c.qk_rope_head_dim, h}, 0.0f,
                              kProjStd));
      g.push_back(make.normal(a + "kv_a_layernorm.weight", {c.kv_lora_rank}, 1.0f, kNormNoise));
      g.push_back(make.normal(a + "kv_b_proj.weight", {heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank},
                              0.0f, kProjStd));
      g.push_back(make.normal(a + "o_proj.weight", {h, heads * c.v_head_dim}, 0.0f, kProjStd));
    } else {
      g.push_back(make.normal(a + "q_proj.weight", {qw, h}, 0.0f, kProjStd));
      g.push_back(make.normal(a + "k_proj.weight", {kw, h}, 0.0f, kProjStd));
      g.push_back(make.normal(a + "v_proj.weight", {kw, h}, 0.0f, kProjStd));
    }
    if (c.qkv_bias) {
      g.push_back(make.normal(a + "q_proj.bias", {qw}, 0.0f, kBiasStd));
      g.push_back(make.normal(a + "k_proj.bias", {kw}, 0.0f, kBiasStd));
      g.push_back(make.normal(a + "v_proj.bias", {kw}, 0.0f, kBiasStd));
    }
    if (!c.mla) g.push_back(make.normal(a + "o_proj.weight", {h, qw}, 0.0f, kProjStd));
    if (c.o_bias) g.push_back(make.normal(a + "o_proj.bias", {h}, 0.0f, kBiasStd));
    if (c.model_type == "olmoe") {
      g.push_back(make.normal(a + "q_norm.weight", {qw}, 1.0f, kNormNoise));
      g.push_back(make.normal(a + "k_norm.weight", {kw}, 1.0f, kNormNoise));
    } else if (c.model_type == "qwen3_moe") {
      g.push_back(make.normal(a + "q_norm.weight", {c.head_dim}, 1.0f, kNormNoise));
      g.push_back(make.normal(a + "k_norm.weight", {c.head_dim}, 1.0f, kNormNoise));
    }
    g.push_back(make.normal(p + "post_attention_layernorm.weight", {h}, 1.0f, kNormNoise));
    if (!c.sparse[l]) {
      swiglu(p + "mlp.", c.dense_ffn, "gate_proj.weight", "up_proj.weight", "down_proj.weight");
    } else if (c.model_type == "mixtral") {
      const std::string m = p + "block_sparse_moe.";
      g.push_back(make.normal(m + "gate.weight", {c.num_experts, h}, 0.0f, kRouterStd));
      for (int e = 0; e < c.num_experts; ++e) {
        // w1 = gate [F,H], w3 = up [F,H], w2 = down [H,F].
        swiglu(fmt::format("{}experts.{}.", m, e), c.expert_ffn, "w1.weight", "w3.weight",
               "w2.weight");
      }
    } else {
      const std::string m = p + "mlp.";
      g.push_back(make.normal(m + "gate.weight", {c.num_experts, h}, 0.0f, kRouterStd));
      if (c.topk_method == "noaux_tc") {
        // Spread enough to change some choices against the unbiased sigmoid scores; centred
        // above 0 so that biased scores stay positive and the experts of dropped groups
        // (selection score 0) are not chosen; multiples of 1/64, which every stored dtype holds
        // exactly, so a half-precision directory selects like the F32 one.
        Pending bias = make.normal(m + "gate.e_score_correction_bias", {c.num_experts}, 0.3f, 0.1f);
        for (float& b : bias.values) b = std::round(b * 64.0f) / 64.0f;
        g.push_back(std::move(bias));
      }
      for (int e = 0; e < c.num_experts; ++e) {
        swiglu(fmt::format("{}experts.{}.", m, e), c.expert_ffn, "gate_proj.weight",
               "up_proj.weight", "down_proj.weight");
      }
      if (c.model_type == "qwen2_moe") {
        swiglu(m + "shared_expert.", c.shared_ffn, "gate_proj.weight", "up_proj.weight",
               "down_proj.weight");
        g.push_back(make.normal(m + "shared_expert_gate.weight", {1, h}, 0.0f, kProjStd));
      } else if (c.shared_ffn > 0) {
        swiglu(m + "shared_experts.", c.shared_ffn, "gate_proj.weight", "up_proj.weight",
               "down_proj.weight");
      }
    }
  }
  std::vector<Pending>& last = groups[c.num_layers + 1];
  last.push_back(make.normal("model.norm.weight", {h}, 1.0f, kNormNoise));
  if (!c.tie_word_embeddings) {
    last.push_back(make.normal("lm_head.weight", {c.vocab_size, h}, 0.0f, kProjStd));
  }

  auto shard_of_group = [&](int group) {
    if (group == 0) return 0;
    if (group == c.num_layers + 1) return o.shards - 1;
    return (group - 1) * o.shards / c.num_layers;
  };
  auto file_name = [&](int shard) {
    return o.shards == 1 ? std::string("model.safetensors")
                         : fmt::format("model-{:05d}-of-{:05d}.safetensors", shard + 1, o.shards);
  };
  std::vector<SafetensorsWriter> writers(o.shards);
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  std::uint64_t total_size = 0;
  const std::size_t elem = o.dtype == "f32" ? 4 : 2;
  for (int gi = 0; gi < static_cast<int>(groups.size()); ++gi) {
    const int shard = shard_of_group(gi);
    for (const Pending& t : groups[gi]) {
      SafetensorsWriter& w = writers[shard];
      if (o.dtype == "f32") {
        w.add_f32(t.name, t.shape, t.values);
      } else if (o.dtype == "bf16") {
        w.add_bf16(t.name, t.shape, t.values);
      } else {
        w.add_f16(t.name, t.shape, t.values);
      }
      weight_map[t.name] = file_name(shard);
      total_size += t.values.size() * elem;
    }
  }
  for (int s = 0; s < o.shards; ++s) {
    writers[s].set_metadata("format", "pt");
    writers[s].write((root / file_name(s)).string());
  }
  if (o.shards > 1) {
    nlohmann::ordered_json index;
    index["metadata"] = {{"total_size", total_size}};
    index["weight_map"] = weight_map;
    std::ofstream out(root / "model.safetensors.index.json");
    out << index.dump(2) << "\n";
    OCCULT_CHECK(out.good(), "cannot write the index in {}", dir);
  }
}

void write_input_ids(const std::string& path, int batch, int seq, int vocab, std::uint64_t seed,
                     const std::string& dtype) {
  OCCULT_CHECK(batch >= 1 && seq >= 1 && vocab >= 1, "--batch, --seq and --vocab must be >= 1");
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int64_t> dist(0, vocab - 1);
  std::vector<std::int64_t> ids(static_cast<std::size_t>(batch) * seq);
  for (std::int64_t& id : ids) id = dist(rng);
  SafetensorsWriter w;
  if (dtype == "i64") {
    w.add_i64("input_ids", {batch, seq}, ids);
  } else {
    OCCULT_CHECK(dtype == "i32", "--dtype must be i32 or i64, got \"{}\"", dtype);
    std::vector<std::int32_t> narrow(ids.begin(), ids.end());
    w.add_i32("input_ids", {batch, seq}, narrow);
  }
  w.write(path);
}

nlohmann::ordered_json round_robin_placement(const std::string& model_dir, int devices) {
  const HfConfig c = read_hf_config(model_dir);
  OCCULT_CHECK(devices >= 1, "--devices must be >= 1, got {}", devices);
  nlohmann::ordered_json doc;
  doc["format"] = "occult-placement/1";
  doc["num_experts"] = c.num_experts;
  doc["num_devices"] = devices;
  doc["num_nodes"] = 1;
  doc["strategy"] = "round-robin";
  nlohmann::ordered_json layers = nlohmann::ordered_json::array();
  int ordinal = 0;
  for (int l = 0; l < c.num_layers; ++l) {
    if (!c.sparse[l]) continue;
    std::vector<int> expert_to_device(c.num_experts);
    for (int e = 0; e < c.num_experts; ++e) expert_to_device[e] = e % devices;
    layers.push_back({{"layer", ordinal++}, {"expert_to_device", expert_to_device}});
  }
  OCCULT_CHECK(!layers.empty(), "{} has no MoE layer to place", model_dir);
  doc["layers"] = std::move(layers);
  return doc;
}

}  // namespace occult::hf
