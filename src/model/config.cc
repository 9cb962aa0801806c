#include "occult/model/config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "model/arch/families.h"
#include "occult/core/error.h"
#include "occult/model/arch.h"

namespace occult {

bool ModelConfig::is_moe_layer(int l) const {
  if (num_experts <= 0) return false;
  for (int dense : mlp_only_layers) {
    if (dense == l) return false;
  }
  return l >= first_k_dense_replace && (l + 1) % decoder_sparse_step == 0 && l % moe_layer_freq == 0;
}

int ModelConfig::num_moe_layers() const {
  int n = 0;
  for (int l = 0; l < num_hidden_layers; ++l) n += is_moe_layer(l) ? 1 : 0;
  return n;
}

int ModelConfig::moe_index(int l) const {
  if (!is_moe_layer(l)) return -1;
  int m = 0;
  for (int i = 0; i < l; ++i) m += is_moe_layer(i) ? 1 : 0;
  return m;
}

int ModelConfig::moe_layer(int m) const {
  for (int l = 0, seen = 0; l < num_hidden_layers; ++l) {
    if (is_moe_layer(l) && seen++ == m) return l;
  }
  OCCULT_FAIL("MoE layer {} is outside [0, {}): the model has {} MoE layers", m, num_moe_layers(), num_moe_layers());
}

ModelConfig parse_model_config(const nlohmann::json& json, const std::string& source) {
  ConfigReader reader(json, source);
  ModelConfig c;
  c.model_type = reader.get_string("model_type", c.model_type);
  const ArchSpec& spec = [&]() -> const ArchSpec& {
    try {
      return arch_spec(c.model_type);
    } catch (const Error& e) {
      OCCULT_FAIL("{}: config key \"model_type\": {}", source, e.message());
    }
  }();
  read_common_keys(reader, c);
  spec.read(reader, c);
  reader.finish(spec.strict);
  validate_model_config(c, source);
  return c;
}

void validate_model_config(const ModelConfig& c, const std::string& source) {
  auto positive = [&](int value, const char* key) {
    OCCULT_CHECK(value >= 1, "{}: config key \"{}\" must be >= 1, got {}", source, key, value);
  };
  positive(c.vocab_size, "vocab_size");
  positive(c.hidden_size, "hidden_size");
  positive(c.num_hidden_layers, "num_hidden_layers");
  positive(c.num_attention_heads, "num_attention_heads");
  positive(c.num_experts, "num_experts");
  positive(c.num_experts_per_tok, "num_experts_per_tok");
  positive(c.moe_intermediate_size, "moe_intermediate_size");
  positive(c.max_position_embeddings, "max_position_embeddings");
  OCCULT_CHECK(c.n_shared_experts >= 0, "{}: config key \"n_shared_experts\" must be >= 0, got {}", source,
               c.n_shared_experts);
  OCCULT_CHECK(c.num_experts_per_tok <= c.num_experts,
               "{}: config key \"num_experts_per_tok\" ({}) must not exceed \"num_experts\" ({})", source,
               c.num_experts_per_tok, c.num_experts);
  if (c.mla()) {
    for (auto [value, key] : {std::pair{c.qk_nope_head_dim, "qk_nope_head_dim"}, {c.qk_rope_head_dim, "qk_rope_head_dim"},
                              {c.v_head_dim, "v_head_dim"}}) {
      positive(value, key);
    }
    OCCULT_CHECK(c.q_lora_rank >= 0, "{}: config key \"q_lora_rank\" must be null or >= 1, got {}", source,
                 c.q_lora_rank);
    OCCULT_CHECK(c.qk_rope_head_dim % 2 == 0, "{}: config key \"qk_rope_head_dim\" = {} must be even for RoPE",
                 source, c.qk_rope_head_dim);
  }
  try {
    validate_gating_config(c.gating());
  } catch (const Error& e) {
    OCCULT_FAIL("{}: the router of config keys n_group, topk_group, num_experts_per_tok and routed_scaling_factor "
                "is invalid: {}",
                source, e.message());
  }
  OCCULT_CHECK(c.mla() || c.explicit_head_dim > 0 || c.hidden_size % c.num_attention_heads == 0,
               "{}: config key \"hidden_size\" ({}) must be divisible by \"num_attention_heads\" ({})",
               source, c.hidden_size, c.num_attention_heads);
  OCCULT_CHECK(c.explicit_head_dim >= 0, "{}: config key \"head_dim\" must be >= 1, got {}", source,
               c.explicit_head_dim);
  OCCULT_CHECK(c.mla() || c.head_dim() % 2 == 0, "{}: head size {} = {} must be even for RoPE", source,
               c.explicit_head_dim > 0 ? "head_dim" : "hidden_size/num_attention_heads", c.head_dim());
  OCCULT_CHECK(c.num_key_value_heads >= 0 && c.num_attention_heads % c.kv_heads() == 0,
               "{}: config key \"num_key_value_heads\" ({}) must divide \"num_attention_heads\" ({})", source,
               c.num_key_value_heads, c.num_attention_heads);
  OCCULT_CHECK(c.decoder_sparse_step >= 1, "{}: config key \"decoder_sparse_step\" must be >= 1, got {}", source,
               c.decoder_sparse_step);
  OCCULT_CHECK(c.moe_layer_freq >= 1, "{}: config key \"moe_layer_freq\" must be >= 1, got {}", source,
               c.moe_layer_freq);
  OCCULT_CHECK(c.first_k_dense_replace >= 0, "{}: config key \"first_k_dense_replace\" must be >= 0, got {}",
               source, c.first_k_dense_replace);
  for (int l : c.mlp_only_layers) {
    OCCULT_CHECK(l >= 0 && l < c.num_hidden_layers,
                 "{}: config key \"mlp_only_layers\" names layer {}, outside [0, num_hidden_layers = {})", source, l,
                 c.num_hidden_layers);
  }
  OCCULT_CHECK(c.shared_expert_intermediate_size >= 0,
               "{}: config key \"shared_expert_intermediate_size\" must be >= 0, got {}", source,
               c.shared_expert_intermediate_size);
  OCCULT_CHECK(c.num_moe_layers() >= 1, "{}: no layer has an MoE block (check {}): occult runs MoE models", source,
               "mlp_only_layers, decoder_sparse_step, first_k_dense_replace, moe_layer_freq");
  if (c.num_moe_layers() < c.num_hidden_layers) {
    OCCULT_CHECK(c.intermediate_size >= 1,
                 "{}: config key \"intermediate_size\" must be >= 1: layer {} has a dense MLP of that width", source,
                 [&] {
                   int l = 0;
                   while (c.is_moe_layer(l)) ++l;
                   return l;
                 }());
  }
  OCCULT_CHECK(c.rope_theta > 1.0f, "{}: config key \"rope_theta\" must be > 1, got {}", source,
               c.rope_theta);
  if (c.rope_scaling.yarn) {
    const RopeScaling& y = c.rope_scaling;
    OCCULT_CHECK(c.mla(),
                 "{}: config key \"rope_scaling\" of type \"yarn\" is implemented for the latent-attention families "
                 "(deepseek_v2, deepseek_v3) only, not for model_type \"{}\"",
                 source, c.model_type);
    OCCULT_CHECK(std::isfinite(y.factor) && y.factor >= 1.0f,
                 "{}: config key \"rope_scaling\" \"factor\" must be >= 1, got {}", source, y.factor);
    OCCULT_CHECK(y.original_max_position_embeddings >= 1,
                 "{}: config key \"rope_scaling\" \"original_max_position_embeddings\" must be >= 1, got {}", source,
                 y.original_max_position_embeddings);
    OCCULT_CHECK(std::isfinite(y.beta_fast) && std::isfinite(y.beta_slow) && y.beta_slow > 0.0f &&
                     y.beta_fast > y.beta_slow,
                 "{}: config key \"rope_scaling\" needs beta_fast > beta_slow > 0, got beta_fast {} and beta_slow {}",
                 source, y.beta_fast, y.beta_slow);
    OCCULT_CHECK(std::isfinite(y.mscale) && std::isfinite(y.mscale_all_dim) && y.mscale >= 0.0f &&
                     y.mscale_all_dim >= 0.0f,
                 "{}: config key \"rope_scaling\" \"mscale\" and \"mscale_all_dim\" must be finite and >= 0, got {} "
                 "and {}",
                 source, y.mscale, y.mscale_all_dim);
  }
  OCCULT_CHECK(c.router_aux_loss_coef >= 0.0f,
               "{}: config key \"router_aux_loss_coef\" must be >= 0, got {}", source,
               c.router_aux_loss_coef);
  OCCULT_CHECK(c.rms_norm_eps > 0.0f, "{}: config key \"rms_norm_eps\" must be > 0, got {}", source,
               c.rms_norm_eps);
  OCCULT_CHECK(c.initializer_range > 0.0f, "{}: config key \"initializer_range\" must be > 0, got {}",
               source, c.initializer_range);
}

ModelConfig load_model_config(const std::string& path) {
  std::ifstream in(path);
  OCCULT_CHECK(in.good(), "cannot read model config {}: no such file or not readable", path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(buffer.str());
  } catch (const nlohmann::json::parse_error& e) {
    OCCULT_FAIL("{}: not valid JSON ({})", path, e.what());
  }
  return parse_model_config(json, path);
}

nlohmann::json model_config_to_json(const ModelConfig& c) {
  const ArchSpec& spec = arch_spec(c.model_type);
  nlohmann::json j{{"model_type", c.model_type},
                   {"architectures", {spec.architecture}},
                   {"vocab_size", c.vocab_size},
                   {"hidden_size", c.hidden_size},
                   {"num_hidden_layers", c.num_hidden_layers},
                   {"num_attention_heads", c.num_attention_heads},
                   {"num_key_value_heads", c.kv_heads()},
                   {"router_aux_loss_coef", json_float(c.router_aux_loss_coef)},
                   {"rope_theta", json_float(c.rope_theta)},
                   {"max_position_embeddings", c.max_position_embeddings},
                   {"tie_word_embeddings", c.tie_word_embeddings},
                   {"rms_norm_eps", json_float(c.rms_norm_eps)},
                   {"initializer_range", json_float(c.initializer_range)},
                   {"hidden_act", "silu"}};
  if (c.explicit_head_dim > 0) j["head_dim"] = c.explicit_head_dim;
  if (c.rope_scaling.yarn) {
    const RopeScaling& y = c.rope_scaling;
    j["rope_scaling"] = {{"type", "yarn"},
                         {"factor", json_float(y.factor)},
                         {"original_max_position_embeddings", y.original_max_position_embeddings},
                         {"beta_fast", json_float(y.beta_fast)},
                         {"beta_slow", json_float(y.beta_slow)},
                         {"mscale", json_float(y.mscale)},
                         {"mscale_all_dim", json_float(y.mscale_all_dim)}};
  }
  if (!c.eos_token_ids.empty()) {
    j["eos_token_id"] = c.eos_token_ids.size() == 1 ? nlohmann::json(c.eos_token_ids[0]) : nlohmann::json(c.eos_token_ids);
  }
  if (c.bos_token_id >= 0) j["bos_token_id"] = c.bos_token_id;
  spec.write(c, j);
  return j;
}

bool same_architecture(const ModelConfig& a, const ModelConfig& b) {
  return a.model_type == b.model_type && a.kv_heads() == b.kv_heads() &&
         a.head_dim() == b.head_dim() && a.shared_intermediate_size() == b.shared_intermediate_size() &&
         a.shared_expert_gate == b.shared_expert_gate && a.intermediate_size == b.intermediate_size &&
         a.attention_qkv_bias == b.attention_qkv_bias && a.attention_o_bias == b.attention_o_bias &&
         a.qk_norm == b.qk_norm && [&] {
           for (int l = 0; l < a.num_hidden_layers; ++l) {
             if (a.is_moe_layer(l) != b.is_moe_layer(l)) return false;
           }
           return true;
         }() &&
         a.vocab_size == b.vocab_size && a.hidden_size == b.hidden_size &&
         a.num_hidden_layers == b.num_hidden_layers && a.num_attention_heads == b.num_attention_heads &&
         a.num_experts == b.num_experts && a.num_experts_per_tok == b.num_experts_per_tok &&
         a.moe_intermediate_size == b.moe_intermediate_size && a.n_shared_experts == b.n_shared_experts &&
         a.norm_topk_prob == b.norm_topk_prob && a.tie_word_embeddings == b.tie_word_embeddings &&
         a.rope_theta == b.rope_theta && a.rope_scaling == b.rope_scaling && a.rms_norm_eps == b.rms_norm_eps &&
         a.score_function == b.score_function && a.n_group == b.n_group && a.topk_group == b.topk_group &&
         a.group_score == b.group_score && a.routed_scaling_factor == b.routed_scaling_factor &&
         a.router_selection_bias == b.router_selection_bias && a.q_lora_rank == b.q_lora_rank &&
         a.kv_lora_rank == b.kv_lora_rank && a.qk_nope_head_dim == b.qk_nope_head_dim &&
         a.qk_rope_head_dim == b.qk_rope_head_dim && a.v_head_dim == b.v_head_dim;
}

}  // namespace occult
