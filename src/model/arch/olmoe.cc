// OLMoE (OlmoeForCausalLM): QK-norm over the whole q and k projections, softmax router over
// `num_experts`, expert width `intermediate_size`, no shared experts, every layer MoE.
#include "model/arch/families.h"

namespace occult {

namespace {

void read(ConfigReader& r, ModelConfig& c) {
  read_routed_experts(r, c, "num_experts", "intermediate_size");
  c.norm_topk_prob = r.get_bool("norm_topk_prob", false);
  c.attention_qkv_bias = c.attention_o_bias = r.get_bool("attention_bias", false);
  c.qk_norm = QkNorm::kFull;
  r.reject_unless("clip_qkv", {}, "clamping q/k/v (clip_qkv) is not implemented");
}

void write(const ModelConfig& c, nlohmann::json& j) {
  write_routed_experts(c, j, "num_experts", "intermediate_size");
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
