// Qwen3-MoE (Qwen3MoeForCausalLM): GQA, an explicit `head_dim`, per-head RMSNorm of q and k,
// no shared expert, dense layers by `decoder_sparse_step` / `mlp_only_layers`.
#include "model/arch/families.h"

namespace occult {

namespace {

void read(ConfigReader& r, ModelConfig& c) {
  for (const char* key : {"num_experts", "num_experts_per_tok", "moe_intermediate_size"}) r.require(key);
  c.num_experts = r.get_int("num_experts", 0);
  c.num_experts_per_tok = r.get_int("num_experts_per_tok", 0);
  c.moe_intermediate_size = r.get_int("moe_intermediate_size", 0);
  c.intermediate_size = r.get_int("intermediate_size", 0);
  c.decoder_sparse_step = r.get_int("decoder_sparse_step", 1);
  c.mlp_only_layers = r.get_int_list("mlp_only_layers");
  c.norm_topk_prob = r.get_bool("norm_topk_prob", false);
  c.attention_qkv_bias = c.attention_o_bias = r.get_bool("attention_bias", false);
  c.qk_norm = QkNorm::kPerHead;
  reject_sliding_window(r, r.get_bool("use_sliding_window", false));
}

void write(const ModelConfig& c, nlohmann::json& j) {
  j["num_experts"] = c.num_experts;
  j["num_experts_per_tok"] = c.num_experts_per_tok;
  j["moe_intermediate_size"] = c.moe_intermediate_size;
  j["intermediate_size"] = c.intermediate_size;
  j["decoder_sparse_step"] = c.decoder_sparse_step;
  j["mlp_only_layers"] = c.mlp_only_layers;
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
