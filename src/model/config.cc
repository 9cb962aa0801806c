#include "occult/model/config.h"

#include <fstream>
#include <sstream>

#include "occult/core/error.h"

namespace occult {

namespace {

// Keys every config must give: there is no sensible default for the model's shape.
constexpr const char* kRequiredKeys[] = {"hidden_size",         "num_hidden_layers",
                                         "num_attention_heads", "num_experts",
                                         "num_experts_per_tok", "moe_intermediate_size",
                                         "max_position_embeddings"};

int get_int(const nlohmann::json& json, const char* key, int fallback, const std::string& source) {
  if (!json.contains(key)) return fallback;
  const auto& v = json.at(key);
  OCCULT_CHECK(v.is_number_integer(), "{}: config key \"{}\" must be an integer, got {}", source, key,
               v.dump());
  const auto value = v.get<std::int64_t>();
  OCCULT_CHECK(value >= -(1ll << 31) && value < (1ll << 31), "{}: config key \"{}\" = {} is out of range",
               source, key, value);
  return static_cast<int>(value);
}

float get_float(const nlohmann::json& json, const char* key, float fallback, const std::string& source) {
  if (!json.contains(key)) return fallback;
  const auto& v = json.at(key);
  OCCULT_CHECK(v.is_number(), "{}: config key \"{}\" must be a number, got {}", source, key, v.dump());
  return v.get<float>();
}

bool get_bool(const nlohmann::json& json, const char* key, bool fallback, const std::string& source) {
  if (!json.contains(key)) return fallback;
  const auto& v = json.at(key);
  OCCULT_CHECK(v.is_boolean(), "{}: config key \"{}\" must be true or false, got {}", source, key,
               v.dump());
  return v.get<bool>();
}

}  // namespace

ModelConfig parse_model_config(const nlohmann::json& json, const std::string& source) {
  OCCULT_CHECK(json.is_object(), "{}: a model config must be a JSON object", source);
  for (const char* key : kRequiredKeys) {
    OCCULT_CHECK(json.contains(key), "{}: config key \"{}\" is missing", source, key);
  }
  ModelConfig c;
  c.vocab_size = get_int(json, "vocab_size", c.vocab_size, source);
  c.hidden_size = get_int(json, "hidden_size", 0, source);
  c.num_hidden_layers = get_int(json, "num_hidden_layers", 0, source);
  c.num_attention_heads = get_int(json, "num_attention_heads", 0, source);
  c.num_experts = get_int(json, "num_experts", 0, source);
  c.num_experts_per_tok = get_int(json, "num_experts_per_tok", 0, source);
  c.moe_intermediate_size = get_int(json, "moe_intermediate_size", 0, source);
  c.n_shared_experts = get_int(json, "n_shared_experts", 0, source);
  c.norm_topk_prob = get_bool(json, "norm_topk_prob", c.norm_topk_prob, source);
  c.router_aux_loss_coef = get_float(json, "router_aux_loss_coef", c.router_aux_loss_coef, source);
  c.rope_theta = get_float(json, "rope_theta", c.rope_theta, source);
  c.max_position_embeddings = get_int(json, "max_position_embeddings", 0, source);
  c.tie_word_embeddings = get_bool(json, "tie_word_embeddings", c.tie_word_embeddings, source);
  c.rms_norm_eps = get_float(json, "rms_norm_eps", c.rms_norm_eps, source);
  c.initializer_range = get_float(json, "initializer_range", c.initializer_range, source);
  // Keys of other MoE families that would change the math silently if ignored.
  if (json.contains("num_key_value_heads")) {
    OCCULT_CHECK(get_int(json, "num_key_value_heads", 0, source) == c.num_attention_heads,
                 "{}: config key \"num_key_value_heads\" must equal num_attention_heads ({}): grouped-"
                 "query attention is not supported",
                 source, c.num_attention_heads);
  }
  if (json.contains("hidden_act")) {
    OCCULT_CHECK(json.at("hidden_act") == "silu", "{}: config key \"hidden_act\" must be \"silu\", got {}",
                 source, json.at("hidden_act").dump());
  }
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
  OCCULT_CHECK(c.hidden_size % c.num_attention_heads == 0,
               "{}: config key \"hidden_size\" ({}) must be divisible by \"num_attention_heads\" ({})",
               source, c.hidden_size, c.num_attention_heads);
  OCCULT_CHECK(c.head_dim() % 2 == 0,
               "{}: head size hidden_size/num_attention_heads = {} must be even for RoPE", source,
               c.head_dim());
  OCCULT_CHECK(c.rope_theta > 1.0f, "{}: config key \"rope_theta\" must be > 1, got {}", source,
               c.rope_theta);
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
  return nlohmann::json{{"model_type", "occult_moe"},
                        {"architectures", {"OccultMoeForCausalLM"}},
                        {"vocab_size", c.vocab_size},
                        {"hidden_size", c.hidden_size},
                        {"num_hidden_layers", c.num_hidden_layers},
                        {"num_attention_heads", c.num_attention_heads},
                        {"num_key_value_heads", c.num_attention_heads},
                        {"num_experts", c.num_experts},
                        {"num_experts_per_tok", c.num_experts_per_tok},
                        {"moe_intermediate_size", c.moe_intermediate_size},
                        {"n_shared_experts", c.n_shared_experts},
                        {"norm_topk_prob", c.norm_topk_prob},
                        {"router_aux_loss_coef", c.router_aux_loss_coef},
                        {"rope_theta", c.rope_theta},
                        {"max_position_embeddings", c.max_position_embeddings},
                        {"tie_word_embeddings", c.tie_word_embeddings},
                        {"rms_norm_eps", c.rms_norm_eps},
                        {"initializer_range", c.initializer_range},
                        {"hidden_act", "silu"}};
}

bool same_architecture(const ModelConfig& a, const ModelConfig& b) {
  return a.vocab_size == b.vocab_size && a.hidden_size == b.hidden_size &&
         a.num_hidden_layers == b.num_hidden_layers && a.num_attention_heads == b.num_attention_heads &&
         a.num_experts == b.num_experts && a.num_experts_per_tok == b.num_experts_per_tok &&
         a.moe_intermediate_size == b.moe_intermediate_size && a.n_shared_experts == b.n_shared_experts &&
         a.norm_topk_prob == b.norm_topk_prob && a.tie_word_embeddings == b.tie_word_embeddings &&
         a.rope_theta == b.rope_theta && a.rms_norm_eps == b.rms_norm_eps;
}

}  // namespace occult
