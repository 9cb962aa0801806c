// Qwen1.5-MoE / Qwen2-MoE (Qwen2MoeForCausalLM): q/k/v biases, one shared expert of
// `shared_expert_intermediate_size` scaled by sigmoid(shared_expert_gate(x)), dense layers of
// `intermediate_size` chosen by `decoder_sparse_step` and `mlp_only_layers`.
#include "model/arch/families.h"

namespace occult {

namespace {

void read(ConfigReader& r, ModelConfig& c) {
  read_routed_experts(r, c, "num_experts", "moe_intermediate_size");
  c.shared_expert_intermediate_size = r.get_int("shared_expert_intermediate_size", 0);
  c.shared_expert_gate = c.shared_expert_intermediate_size > 0;
  read_qwen_dense_layers(r, c);
  c.norm_topk_prob = r.get_bool("norm_topk_prob", false);
  // Qwen2-MoE's q/k/v projections always carry biases (no config key), o_proj never.
  c.attention_qkv_bias = true;
  c.attention_o_bias = false;
  reject_sliding_window(r, r.get_bool("use_sliding_window", false));
}

void write(const ModelConfig& c, nlohmann::json& j) {
  write_routed_experts(c, j, "num_experts", "moe_intermediate_size");
  j["shared_expert_intermediate_size"] = c.shared_expert_intermediate_size;
  write_qwen_dense_layers(c, j);
  j["norm_topk_prob"] = c.norm_topk_prob;
  j["use_sliding_window"] = false;
}

ArchNames names() {
  ArchNames n;
  n.shared_prefix = "mlp.shared_expert.";
  return n;
}

}  // namespace

const ArchSpec& qwen2_moe_arch() {
  static const ArchSpec spec{"qwen2_moe", "Qwen2MoeForCausalLM", names(), &read, &write};
  return spec;
}

}  // namespace occult
