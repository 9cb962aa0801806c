// Keys every family shares.
#include <cmath>

#include "model/arch/families.h"
#include "occult/core/error.h"

namespace occult {

namespace {

// "rope_scaling": absent, null or of type "default" is plain RoPE; "yarn" fills RopeScaling
// (validate_model_config checks the values and that the family implements it); any other type
// is refused naming it. Keys inside the object are strict: an unknown one is an error.
void read_rope_scaling(ConfigReader& r, ModelConfig& c) {
  if (!r.has("rope_scaling")) return;
  ConfigReader s = r.object("rope_scaling");
  // Older configs name the kind "type", newer ones "rope_type"; either, or both agreeing.
  const std::string type = s.get_string("type", ""), rope_type = s.get_string("rope_type", "");
  OCCULT_CHECK(type.empty() || rope_type.empty() || type == rope_type,
               "{}: config key \"rope_scaling\" has \"type\" = \"{}\" and \"rope_type\" = \"{}\", which disagree",
               r.source(), type, rope_type);
  const std::string kind = type.empty() ? rope_type : type;
  OCCULT_CHECK(!kind.empty(), "{}: config key \"rope_scaling\" names no \"type\" (or \"rope_type\")", r.source());
  if (kind == "default") {
    s.finish(/*strict=*/true);
    return;
  }
  OCCULT_CHECK(kind == "yarn",
               "{}: config key \"rope_scaling\" of type \"{}\" is not supported: only YaRN (\"yarn\", as in the "
               "DeepSeek-V2/V3 checkpoints) is implemented",
               r.source(), kind);
  s.require("factor");
  RopeScaling& y = c.rope_scaling;
  y.yarn = true;
  y.factor = s.get_float("factor", 1.0f);
  y.original_max_position_embeddings = s.get_int("original_max_position_embeddings", c.max_position_embeddings);
  y.beta_fast = s.get_float("beta_fast", y.beta_fast);
  y.beta_slow = s.get_float("beta_slow", y.beta_slow);
  y.mscale = s.get_float("mscale", y.mscale);
  y.mscale_all_dim = s.get_float("mscale_all_dim", y.mscale_all_dim);
  // transformers' own YaRN options; DeepSeek's code has neither, so a value here would mean
  // arithmetic this reader does not do.
  s.reject_unless("attention_factor", {}, "the YaRN magnitude comes from mscale and mscale_all_dim");
  s.reject_unless("truncate", {true}, "the YaRN ramp ends are whole pair indices");
  s.finish(/*strict=*/true);
}

}  // namespace

void read_common_keys(ConfigReader& r, ModelConfig& c) {
  for (const char* key : {"hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings"}) {
    r.require(key);
  }
  c.vocab_size = r.get_int("vocab_size", c.vocab_size);
  c.hidden_size = r.get_int("hidden_size", 0);
  c.num_hidden_layers = r.get_int("num_hidden_layers", 0);
  c.num_attention_heads = r.get_int("num_attention_heads", 0);
  c.num_key_value_heads = r.get_int("num_key_value_heads", 0);
  c.explicit_head_dim = r.get_int("head_dim", 0);
  c.max_position_embeddings = r.get_int("max_position_embeddings", 0);
  c.rope_theta = r.get_float("rope_theta", c.rope_theta);
  c.rms_norm_eps = r.get_float("rms_norm_eps", c.rms_norm_eps);
  c.tie_word_embeddings = r.get_bool("tie_word_embeddings", c.tie_word_embeddings);
  c.initializer_range = r.get_float("initializer_range", c.initializer_range);
  c.router_aux_loss_coef = r.get_float("router_aux_loss_coef", c.router_aux_loss_coef);
  c.eos_token_ids = r.get_int_list("eos_token_id");
  c.bos_token_id = r.has("bos_token_id") ? r.get_int("bos_token_id", -1) : -1;
  r.reject_unless("hidden_act", {"silu"}, "the experts and MLPs are SwiGLU (silu)");
  read_rope_scaling(r, c);
  r.reject_unless("quantization_config", {}, "quantised checkpoints are not supported; give BF16, F16 or F32 weights");
  r.reject_unless("pretraining_tp", {1}, "tensor-parallel pretraining slices (pretraining_tp > 1) change the "
                                         "rounding of the projections");
  // Present in real configs, irrelevant to the forward pass: bookkeeping, training-time dropout
  // (occult trains without dropout), generation defaults, the padding id, loader hints.
  r.ignore({"model_type", "architectures", "torch_dtype", "transformers_version", "use_cache", "attention_dropout",
            "pad_token_id", "output_router_logits", "auto_map", "_name_or_path", "tokenizer_class",
            "return_dict", "output_hidden_states", "output_attentions", "torchscript", "use_return_dict",
            "dtype", "bos_token_id", "eos_token_id", "hidden_dropout", "attention_probs_dropout_prob"});
}

void read_routed_experts(ConfigReader& r, ModelConfig& c, const char* experts_key, const char* ffn_key) {
  for (const char* key : {experts_key, "num_experts_per_tok", ffn_key}) r.require(key);
  c.num_experts = r.get_int(experts_key, 0);
  c.num_experts_per_tok = r.get_int("num_experts_per_tok", 0);
  c.moe_intermediate_size = r.get_int(ffn_key, 0);
}

void write_routed_experts(const ModelConfig& c, nlohmann::json& j, const char* experts_key, const char* ffn_key) {
  j[experts_key] = c.num_experts;
  j["num_experts_per_tok"] = c.num_experts_per_tok;
  j[ffn_key] = c.moe_intermediate_size;
}

void read_qwen_dense_layers(ConfigReader& r, ModelConfig& c) {
  c.intermediate_size = r.get_int("intermediate_size", 0);
  c.decoder_sparse_step = r.get_int("decoder_sparse_step", 1);
  c.mlp_only_layers = r.get_int_list("mlp_only_layers");
}

void write_qwen_dense_layers(const ModelConfig& c, nlohmann::json& j) {
  j["intermediate_size"] = c.intermediate_size;
  j["decoder_sparse_step"] = c.decoder_sparse_step;
  j["mlp_only_layers"] = c.mlp_only_layers;
}

void reject_sliding_window(ConfigReader& r, bool enabled) {
  if (enabled) {
    r.reject_unless("sliding_window", {}, "sliding-window attention is not implemented (full causal attention only)");
  } else {
    r.ignore({"sliding_window", "max_window_layers"});
  }
}

void read_expert_groups(ConfigReader& r, ModelConfig& c, const char* experts_key, bool required) {
  if (required) {
    r.require("n_group");
    r.require("topk_group");
  }
  c.n_group = r.get_int("n_group", 1);
  c.topk_group = r.get_int("topk_group", 1);
  OCCULT_CHECK(c.n_group >= 1 && c.num_experts % c.n_group == 0,
               "{}: config key \"n_group\" = {} must be >= 1 and divide {} = {}", r.source(), c.n_group,
               experts_key, c.num_experts);
  OCCULT_CHECK(c.topk_group >= 1 && c.topk_group <= c.n_group,
               "{}: config key \"topk_group\" = {} must be in [1, n_group = {}]", r.source(), c.topk_group, c.n_group);
  OCCULT_CHECK(c.topk_group * (c.num_experts / c.n_group) >= c.num_experts_per_tok,
               "{}: config key \"topk_group\" = {} keeps {} experts per token, fewer than num_experts_per_tok = {}",
               r.source(), c.topk_group, c.topk_group * (c.num_experts / c.n_group), c.num_experts_per_tok);
}

float read_routed_scaling(ConfigReader& r) {
  const float s = r.get_float("routed_scaling_factor", 1.0f);
  OCCULT_CHECK(std::isfinite(s) && s > 0.0f, "{}: config key \"routed_scaling_factor\" must be > 0, got {}",
               r.source(), s);
  return s;
}

void read_deepseek_moe_layers(ConfigReader& r, ModelConfig& c) {
  read_routed_experts(r, c, "n_routed_experts", "moe_intermediate_size");
  c.n_shared_experts = r.get_int("n_shared_experts", 0);
  c.intermediate_size = r.get_int("intermediate_size", 0);
  c.first_k_dense_replace = r.get_int("first_k_dense_replace", 0);
  c.moe_layer_freq = r.get_int("moe_layer_freq", 1);
}

void write_deepseek_moe_layers(const ModelConfig& c, nlohmann::json& j) {
  write_routed_experts(c, j, "n_routed_experts", "moe_intermediate_size");
  j["n_shared_experts"] = c.n_shared_experts;
  j["intermediate_size"] = c.intermediate_size;
  j["first_k_dense_replace"] = c.first_k_dense_replace;
  j["moe_layer_freq"] = c.moe_layer_freq;
}

}  // namespace occult
