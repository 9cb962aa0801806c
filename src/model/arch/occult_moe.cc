// occult's own byte-level MoE transformer: OLMoE/Qwen-MoE tensor names, DeepSeek-style fused
// shared experts ("n_shared_experts"), optional GQA. Strict: an unknown key is an error.
#include "model/arch/families.h"

namespace occult {

namespace {

void read(ConfigReader& r, ModelConfig& c) {
  read_routed_experts(r, c, "num_experts", "moe_intermediate_size");
  c.n_shared_experts = r.get_int("n_shared_experts", 0);
  c.norm_topk_prob = r.get_bool("norm_topk_prob", false);
}

void write(const ModelConfig& c, nlohmann::json& j) {
  write_routed_experts(c, j, "num_experts", "moe_intermediate_size");
  j["n_shared_experts"] = c.n_shared_experts;
  j["norm_topk_prob"] = c.norm_topk_prob;
}

}  // namespace

const ArchSpec& occult_moe_arch() {
  static const ArchSpec spec{"occult_moe", "OccultMoeForCausalLM", ArchNames{}, &read, &write, /*strict=*/true};
  return spec;
}

}  // namespace occult
