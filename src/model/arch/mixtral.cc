// Mixtral (MixtralForCausalLM): `num_local_experts` SwiGLU experts of `intermediate_size` under
// `block_sparse_moe` (w1 = gate, w3 = up, w2 = down), softmax then top-k then renormalise, GQA.
#include "model/arch/families.h"

namespace occult {

namespace {

void read(ConfigReader& r, ModelConfig& c) {
  read_routed_experts(r, c, "num_local_experts", "intermediate_size");
  c.norm_topk_prob = true;
  reject_sliding_window(r, true);
  // Jitter noise perturbs the router only while training in Hugging Face's implementation.
  r.ignore({"router_jitter_noise"});
}

void write(const ModelConfig& c, nlohmann::json& j) {
  write_routed_experts(c, j, "num_local_experts", "intermediate_size");
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
