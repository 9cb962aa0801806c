// DeepSeek-V2 (DeepseekV2ForCausalLM) and DeepSeek-V3 (DeepseekV3ForCausalLM): multi-head latent
// attention (q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim), the
// DeepSeek-MoE layer layout (n_routed_experts, fused n_shared_experts, first_k_dense_replace,
// moe_layer_freq) and the family's routers:
//   - V2: softmax scores, topk_method greedy or group_limited_greedy (group score = its best
//     score, keep topk_group of n_group groups); weights renormalised when norm_topk_prob (and
//     k > 1), otherwise multiplied by routed_scaling_factor;
//   - V3: sigmoid scores, topk_method noaux_tc (selection on score + e_score_correction_bias,
//     group score = sum of its two best biased scores); weights normalised, then multiplied by
//     routed_scaling_factor.
#include "model/arch/families.h"
#include "occult/core/error.h"

namespace occult {

namespace {

void read_mla(ConfigReader& r, ModelConfig& c) {
  for (const char* key : {"kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"}) r.require(key);
  c.q_lora_rank = r.get_int("q_lora_rank", 0);  // absent or null: a plain q_proj (V2-Lite)
  c.kv_lora_rank = r.get_int("kv_lora_rank", 0);
  c.qk_nope_head_dim = r.get_int("qk_nope_head_dim", 0);
  c.qk_rope_head_dim = r.get_int("qk_rope_head_dim", 0);
  c.v_head_dim = r.get_int("v_head_dim", 0);
  // MLA has no key/value heads of its own: the latent expands into every query head.
  OCCULT_CHECK(c.num_key_value_heads == 0 || c.num_key_value_heads == c.num_attention_heads,
               "{}: config key \"num_key_value_heads\" = {} is not supported: multi-head latent attention expands "
               "its latent into all num_attention_heads = {} heads",
               r.source(), c.num_key_value_heads, c.num_attention_heads);
  c.num_key_value_heads = 0;
  // Written by some exporters as the rope head size; the MLA sizes above decide the heads.
  c.explicit_head_dim = 0;
  r.reject_unless("attention_bias", {false}, "biases on the MLA projections are not implemented");
  // Hugging Face's DeepSeek RoPE rotates interleaved pairs of the rope part (the default).
  r.reject_unless("rope_interleave", {true}, "only the interleaved RoPE of the DeepSeek checkpoints is implemented");
}

void read_moe_layout(ConfigReader& r, ModelConfig& c) {
  read_deepseek_moe_layers(r, c);
  c.router_aux_loss_coef = r.get_float("aux_loss_alpha", c.router_aux_loss_coef);
  c.aux_loss_per_sequence = r.get_bool("seq_aux", false);
  // ep_size is a launch hint; the multi-token-prediction layers (V3) are not part of the causal LM.
  r.ignore({"ep_size", "num_nextn_predict_layers"});
}

void read_v2(ConfigReader& r, ModelConfig& c) {
  read_mla(r, c);
  read_moe_layout(r, c);
  r.reject_unless("scoring_func", {"softmax"}, "model_type deepseek_v2 scores experts with softmax");
  const std::string method = r.get_string("topk_method", "greedy");
  OCCULT_CHECK(method == "greedy" || method == "group_limited_greedy",
               "{}: config key \"topk_method\" = \"{}\" is not supported for deepseek_v2 (greedy or "
               "group_limited_greedy)",
               r.source(), method);
  if (method == "group_limited_greedy") {
    read_expert_groups(r, c, "n_routed_experts", /*required=*/true);
    c.group_score = GroupScore::kMax;
  } else {
    r.ignore({"n_group", "topk_group"});  // greedy top-k looks at no groups
  }
  // MoEGate renormalises only when k > 1; the scaling factor applies only when it does not.
  c.norm_topk_prob = r.get_bool("norm_topk_prob", false) && c.num_experts_per_tok > 1;
  const float scale = read_routed_scaling(r);
  c.routed_scaling_factor = c.norm_topk_prob ? 1.0f : scale;
}

void read_v3(ConfigReader& r, ModelConfig& c) {
  read_mla(r, c);
  read_moe_layout(r, c);
  r.reject_unless("scoring_func", {"sigmoid"}, "model_type deepseek_v3 scores experts with sigmoid");
  r.reject_unless("topk_method", {"noaux_tc"}, "model_type deepseek_v3 selects experts with noaux_tc");
  read_expert_groups(r, c, "n_routed_experts", /*required=*/true);
  c.score_function = ScoreFunction::kSigmoid;
  c.group_score = GroupScore::kTopTwoSum;
  c.router_selection_bias = true;
  OCCULT_CHECK(c.num_experts / c.n_group >= 2,
               "{}: config key \"n_group\" = {} leaves groups of {} expert: noaux_tc scores a group by its two best",
               r.source(), c.n_group, c.num_experts / c.n_group);
  // Sigmoid weights are always normalised here; Hugging Face skips it for k = 1 or without
  // norm_topk_prob, which is refused rather than computed differently.
  OCCULT_CHECK(r.get_bool("norm_topk_prob", false),
               "{}: config key \"norm_topk_prob\" must be true for deepseek_v3 (un-normalised sigmoid gate weights "
               "are not implemented)",
               r.source());
  OCCULT_CHECK(c.num_experts_per_tok >= 2,
               "{}: config key \"num_experts_per_tok\" = 1 is not supported for deepseek_v3 (its gate weight "
               "would not be normalised)",
               r.source());
  c.norm_topk_prob = true;
  c.routed_scaling_factor = read_routed_scaling(r);
}

void write_common(const ModelConfig& c, nlohmann::json& j) {
  write_deepseek_moe_layers(c, j);
  j["norm_topk_prob"] = c.norm_topk_prob;
  j["attention_bias"] = false;
  j["aux_loss_alpha"] = json_float(c.router_aux_loss_coef);
  j["seq_aux"] = c.aux_loss_per_sequence;
  j["q_lora_rank"] = c.q_lora_rank > 0 ? nlohmann::json(c.q_lora_rank) : nlohmann::json(nullptr);
  j["kv_lora_rank"] = c.kv_lora_rank;
  j["qk_nope_head_dim"] = c.qk_nope_head_dim;
  j["qk_rope_head_dim"] = c.qk_rope_head_dim;
  j["v_head_dim"] = c.v_head_dim;
  j["n_group"] = c.n_group;
  j["topk_group"] = c.topk_group;
  j["routed_scaling_factor"] = json_float(c.routed_scaling_factor);
}

void write_v2(const ModelConfig& c, nlohmann::json& j) {
  write_common(c, j);
  j["scoring_func"] = "softmax";
  j["topk_method"] = c.n_group > 1 ? "group_limited_greedy" : "greedy";
}

void write_v3(const ModelConfig& c, nlohmann::json& j) {
  write_common(c, j);
  j["scoring_func"] = "sigmoid";
  j["topk_method"] = "noaux_tc";
}

}  // namespace

const ArchSpec& deepseek_v2_arch() {
  static const ArchSpec spec{"deepseek_v2", "DeepseekV2ForCausalLM", ArchNames{}, &read_v2, &write_v2};
  return spec;
}

const ArchSpec& deepseek_v3_arch() {
  static const ArchSpec spec{"deepseek_v3", "DeepseekV3ForCausalLM", ArchNames{}, &read_v3, &write_v3};
  return spec;
}

}  // namespace occult
