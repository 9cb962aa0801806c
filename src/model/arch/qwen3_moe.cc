// Qwen3-MoE (Qwen3MoeForCausalLM): GQA, an explicit `head_dim`, per-head RMSNorm of q and k,
// no shared expert, dense layers by `decoder_sparse_step` / `mlp_only_layers`.
#include "model/arch/families.h"

namespace occult {

namespace {

void read(ConfigReader& r, ModelConfig& c) {
  read_routed_experts(r, c, "num_experts", "moe_intermediate_size");
  read_qwen_dense_layers(r, c);
  c.norm_topk_prob = r.get_bool("norm_topk_prob", false);
  c.attention_qkv_bias = c.attention_o_bias = r.get_bool("attention_bias", false);
  c.qk_norm = QkNorm::kPerHead;
  reject_sliding_window(r, r.get_bool("use_sliding_window", false));
}

void write(const ModelConfig& c, nlohmann::json& j) {
  write_routed_experts(c, j, "num_experts", "moe_intermediate_size");
  write_qwen_dense_layers(c, j);
  j["norm_topk_prob"] = c.norm_topk_prob;
  j["attention_bias"] = c.attention_qkv_bias;
  j["use_sliding_window"] = false;
}

}  // namespace

const ArchSpec& qwen3_moe_arch() {
  static const ArchSpec spec{"qwen3_moe", "Qwen3MoeForCausalLM", ArchNames{}, &read, &write};
  return spec;
}

}  // namespace occult
