// DeepSeek-MoE (DeepseekForCausalLM): `n_routed_experts` with a softmax router, the shared
// experts fused into one MLP of n_shared_experts * moe_intermediate_size, dense layers of
// `intermediate_size` below `first_k_dense_replace` and off the `moe_layer_freq` grid.
#include "model/arch/families.h"

namespace occult {

namespace {

void read(ConfigReader& r, ModelConfig& c) {
  const char* mla = "multi-head latent attention belongs to model_type deepseek_v2 / deepseek_v3, not deepseek";
  r.reject_unless("q_lora_rank", {}, mla);
  r.reject_unless("kv_lora_rank", {}, mla);
  read_deepseek_moe_layers(r, c);
  // MoEGate renormalises only when k > 1; with k = 1 the flag has no effect either way.
  c.norm_topk_prob = r.get_bool("norm_topk_prob", false) && c.num_experts_per_tok > 1;
  c.attention_qkv_bias = c.attention_o_bias = r.get_bool("attention_bias", false);
  c.router_aux_loss_coef = r.get_float("aux_loss_alpha", c.router_aux_loss_coef);
  // DeepSeek-MoE's gate is softmax greedy top-k; the other routers are DeepSeek-V2/V3's.
  const char* router = "model_type deepseek routes by softmax greedy top-k (the DeepSeek-V2/V3 routers are "
                       "model_type deepseek_v2 / deepseek_v3)";
  r.reject_unless("scoring_func", {"softmax"}, router);
  r.reject_unless("topk_method", {"greedy"}, router);
  r.reject_unless("routed_scaling_factor", {1, 1.0}, router);
  r.reject_unless("n_group", {1}, router);
  r.reject_unless("topk_group", {1}, router);
  c.aux_loss_per_sequence = r.get_bool("seq_aux", false);
  r.ignore({"ep_size"});  // a launch hint
}

void write(const ModelConfig& c, nlohmann::json& j) {
  write_deepseek_moe_layers(c, j);
  j["norm_topk_prob"] = c.norm_topk_prob;
  j["attention_bias"] = c.attention_qkv_bias;
  j["scoring_func"] = "softmax";
  j["aux_loss_alpha"] = json_float(c.router_aux_loss_coef);
  j["seq_aux"] = c.aux_loss_per_sequence;
}

}  // namespace

const ArchSpec& deepseek_arch() {
  static const ArchSpec spec{"deepseek", "DeepseekForCausalLM", ArchNames{}, &read, &write};
  return spec;
}

}  // namespace occult
