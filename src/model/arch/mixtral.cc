// Mixtral (MixtralForCausalLM): `num_local_experts` SwiGLU experts of `intermediate_size` under
// `block_sparse_moe` (w1 = gate, w3 = up, w2 = down), softmax then top-k then renormalise, GQA.
#include "model/arch/families.h"

namespace occult {

namespace {

void read(ConfigReader& r, ModelConfig& c) {
  for (const char* key : {"num_local_experts", "num_experts_per_tok", "intermediate_size"}) r.require(key);
  c.num_experts = r.get_int("num_local_experts", 0);
  c.num_experts_per_tok = r.get_int("num_experts_per_tok", 0);
  c.moe_intermediate_size = r.get_int("intermediate_size", 0);
  c.norm_topk_prob = true;
  reject_sliding_window(r, true);
  // Jitter noise perturbs the router only while training in Hugging Face's implementation.
  r.ignore({"router_jitter_noise"});
}

void write(const ModelConfig& c, nlohmann::json& j) {
  j["num_local_experts"] = c.num_experts;
  j["num_experts_per_tok"] = c.num_experts_per_tok;
  j["intermediate_size"] = c.moe_intermediate_size;
  j["sliding_window"] = nullptr;
}

ArchNames names() {
  ArchNames n;
  n.moe_prefix = "block_sparse_moe.";
  n.expert_kinds[0] = "w1";
  n.expert_kinds[1] = "w3";
  n.expert_kinds[2] = "w2";
  n.shared_prefix = "";
  n.shared_gate = "";
  return n;
}

}  // namespace

const ArchSpec& mixtral_arch() {
  static const ArchSpec spec{"mixtral", "MixtralForCausalLM", names(), &read, &write};
  return spec;
}

}  // namespace occult
