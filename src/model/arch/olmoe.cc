// OLMoE (OlmoeForCausalLM): QK-norm over the whole q and k projections, softmax router over
// `num_experts`, expert width `intermediate_size`, no shared experts, every layer MoE.
#include "model/arch/families.h"

namespace occult {

namespace {

void read(ConfigReader& r, ModelConfig& c) {
  for (const char* key : {"num_experts", "num_experts_per_tok", "intermediate_size"}) r.require(key);
  c.num_experts = r.get_int("num_experts", 0);
  c.num_experts_per_tok = r.get_int("num_experts_per_tok", 0);
  c.moe_intermediate_size = r.get_int("intermediate_size", 0);
  c.norm_topk_prob = r.get_bool("norm_topk_prob", false);
  c.attention_qkv_bias = c.attention_o_bias = r.get_bool("attention_bias", false);
  c.qk_norm = QkNorm::kFull;
  r.reject_unless("clip_qkv", {}, "clamping q/k/v (clip_qkv) is not implemented");
}

void write(const ModelConfig& c, nlohmann::json& j) {
  j["num_experts"] = c.num_experts;
  j["num_experts_per_tok"] = c.num_experts_per_tok;
  j["intermediate_size"] = c.moe_intermediate_size;
  j["norm_topk_prob"] = c.norm_topk_prob;
  j["attention_bias"] = c.attention_qkv_bias;
  j["clip_qkv"] = nullptr;
}

}  // namespace

const ArchSpec& olmoe_arch() {
  static const ArchSpec spec{"olmoe", "OlmoeForCausalLM", ArchNames{}, &read, &write};
  return spec;
}

}  // namespace occult
