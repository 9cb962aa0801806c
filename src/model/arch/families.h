// The architecture families of src/model/arch/, one file each (registry.cc lists them).
#pragma once

#include "occult/model/arch.h"

namespace occult {

// Keys every family shares (shapes, RoPE, norms, embeddings, token ids) read into `config`,
// and the keys every Hugging Face config carries that do not change the arithmetic.
void read_common_keys(ConfigReader& reader, ModelConfig& config);
// The routed experts: E under `experts_key`, k under "num_experts_per_tok" and F under
// `ffn_key`, all required; and the same keys written back.
void read_routed_experts(ConfigReader& reader, ModelConfig& config, const char* experts_key, const char* ffn_key);
void write_routed_experts(const ModelConfig& config, nlohmann::json& json, const char* experts_key,
                          const char* ffn_key);
// The DeepSeek families' MoE layer layout: routed experts ("n_routed_experts",
// "moe_intermediate_size"), "n_shared_experts" fused into one MLP, dense layers of
// "intermediate_size" below "first_k_dense_replace" and off the "moe_layer_freq" grid (read and
// written back).
void read_deepseek_moe_layers(ConfigReader& reader, ModelConfig& config);
void write_deepseek_moe_layers(const ModelConfig& config, nlohmann::json& json);
// The Qwen families' dense layers: "intermediate_size", "decoder_sparse_step", "mlp_only_layers"
// (read and written back).
void read_qwen_dense_layers(ConfigReader& reader, ModelConfig& config);
void write_qwen_dense_layers(const ModelConfig& config, nlohmann::json& json);
// Rejects a sliding window that is in use: `enabled` is the family's switch (or true when the
// window applies whenever it is set).
void reject_sliding_window(ConfigReader& reader, bool enabled);

// DeepSeek's group-limited routing: "n_group" and "topk_group" (both required when `required`,
// else 1 when absent), checked against the E routed experts (read under `experts_key`, named in
// errors) and num_experts_per_tok.
void read_expert_groups(ConfigReader& reader, ModelConfig& config, const char* experts_key, bool required);
// "routed_scaling_factor" (1 when absent), finite and > 0.
float read_routed_scaling(ConfigReader& reader);

const ArchSpec& occult_moe_arch();
const ArchSpec& olmoe_arch();
const ArchSpec& qwen2_moe_arch();
const ArchSpec& qwen3_moe_arch();
const ArchSpec& deepseek_arch();
const ArchSpec& mixtral_arch();
const ArchSpec& deepseek_v2_arch();
const ArchSpec& deepseek_v3_arch();

}  // namespace occult
