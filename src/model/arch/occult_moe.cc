// occult's own byte-level MoE transformer: OLMoE/Qwen-MoE tensor names, DeepSeek-style fused
// shared experts ("n_shared_experts"), optional GQA, and DeepSeek's routers under their
// Hugging Face keys ("scoring_func" softmax | sigmoid; "topk_method" greedy |
// group_limited_greedy | noaux_tc with "n_group" / "topk_group"; "routed_scaling_factor"; "seq_aux"), so
// that group-limited routing and the selection bias of noaux_tc can be trained without
// multi-head latent attention. Strict: an unknown key is an error.
#include <string>

#include "model/arch/families.h"
#include "occult/core/error.h"

namespace occult {

namespace {

void read_router(ConfigReader& r, ModelConfig& c) {
  const std::string scoring = r.get_string("scoring_func", "softmax");
  OCCULT_CHECK(scoring == "softmax" || scoring == "sigmoid",
               "{}: config key \"scoring_func\" = \"{}\" is not supported (softmax or sigmoid)", r.source(), scoring);
  c.score_function = scoring == "sigmoid" ? ScoreFunction::kSigmoid : ScoreFunction::kSoftmax;
  const std::string method = r.get_string("topk_method", "greedy");
  if (method == "greedy") {
    r.reject_unless("n_group", {1}, "topk_method greedy looks at no groups (use group_limited_greedy or noaux_tc)");
    r.reject_unless("topk_group", {1}, "topk_method greedy looks at no groups (use group_limited_greedy or noaux_tc)");
  } else if (method == "group_limited_greedy") {
    read_expert_groups(r, c, "num_experts", /*required=*/false);
    c.group_score = GroupScore::kMax;
  } else if (method == "noaux_tc") {
    read_expert_groups(r, c, "num_experts", /*required=*/false);
    c.group_score = GroupScore::kTopTwoSum;
    c.router_selection_bias = true;  // mlp.gate.e_score_correction_bias, zeros at initialisation
    OCCULT_CHECK(c.n_group == 1 || c.num_experts / c.n_group >= 2,
                 "{}: config key \"n_group\" = {} leaves groups of 1 expert: noaux_tc scores a group by its two best",
                 r.source(), c.n_group);
  } else {
    OCCULT_FAIL("{}: config key \"topk_method\" = \"{}\" is not supported (greedy, group_limited_greedy or noaux_tc)",
                r.source(), method);
  }
  c.routed_scaling_factor = read_routed_scaling(r);
  c.aux_loss_per_sequence = r.get_bool("seq_aux", false);
}

void read(ConfigReader& r, ModelConfig& c) {
  read_routed_experts(r, c, "num_experts", "moe_intermediate_size");
  c.n_shared_experts = r.get_int("n_shared_experts", 0);
  c.norm_topk_prob = r.get_bool("norm_topk_prob", false);
  read_router(r, c);
}

void write(const ModelConfig& c, nlohmann::json& j) {
  write_routed_experts(c, j, "num_experts", "moe_intermediate_size");
  j["n_shared_experts"] = c.n_shared_experts;
  j["norm_topk_prob"] = c.norm_topk_prob;
  // The router keys are written only when they differ from plain softmax top-k, so the configs
  // of plain models stay as they were.
  if (c.score_function == ScoreFunction::kSigmoid) j["scoring_func"] = "sigmoid";
  if (c.router_selection_bias) {
    j["topk_method"] = "noaux_tc";
  } else if (c.n_group > 1) {
    j["topk_method"] = "group_limited_greedy";
  }
  if (c.n_group > 1) {
    j["n_group"] = c.n_group;
    j["topk_group"] = c.topk_group;
  }
  if (c.routed_scaling_factor != 1.0f) j["routed_scaling_factor"] = json_float(c.routed_scaling_factor);
  if (c.aux_loss_per_sequence) j["seq_aux"] = true;
}

}  // namespace

const ArchSpec& occult_moe_arch() {
  static const ArchSpec spec{"occult_moe", "OccultMoeForCausalLM", ArchNames{}, &read, &write, /*strict=*/true};
  return spec;
}

}  // namespace occult
