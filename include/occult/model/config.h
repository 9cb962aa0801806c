// The MoE transformer's configuration, read from a Hugging Face style config.json
// (OLMoE / Qwen-MoE / DeepSeek-MoE key names) and validated with errors naming the key.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace occult {

// Architecture hyper-parameters of a decoder-only MoE transformer. Every layer has an MoE block.
struct ModelConfig {
  int vocab_size = 256;                  // V: byte-level by default
  int hidden_size = 0;                   // H (C in the op signatures)
  int num_hidden_layers = 0;             // L
  int num_attention_heads = 0;           // NH; head size = H / NH (must be even for RoPE)
  int num_experts = 0;                   // E
  int num_experts_per_tok = 0;           // k
  int moe_intermediate_size = 0;         // F: each routed expert's SwiGLU width
  int n_shared_experts = 0;              // shared experts, fused into one dense SwiGLU of width n*F
  bool norm_topk_prob = false;           // g_i = p_i / sum_{j in S} p_j when set
  float router_aux_loss_coef = 0.01f;    // weight of the Switch load-balancing loss
  float rope_theta = 10000.0f;           // RoPE base
  int max_position_embeddings = 0;       // longest sequence the model accepts
  bool tie_word_embeddings = false;      // LM head shares model.embed_tokens.weight
  float rms_norm_eps = 1e-5f;            // RMSNorm epsilon
  float initializer_range = 0.02f;       // std of the normal initialisation

  // Head size H / NH.
  int head_dim() const { return hidden_size / num_attention_heads; }
  // Width of the fused shared-expert SwiGLU (0 when there are none).
  int shared_intermediate_size() const { return n_shared_experts * moe_intermediate_size; }
};

// Parses and validates a config object; `source` (a path) names it in errors, and every error
// names the offending key and what was expected.
ModelConfig parse_model_config(const nlohmann::json& json, const std::string& source);
// Reads `path` (config.json) and parses it; throws naming the path when it cannot be read.
ModelConfig load_model_config(const std::string& path);
// The config as Hugging Face style JSON (what checkpoints store as config.json).
nlohmann::json model_config_to_json(const ModelConfig& config);
// Throws unless every field is in range and the fields are consistent with each other.
void validate_model_config(const ModelConfig& config, const std::string& source);
// True when two configs describe the same architecture (checkpoint compatibility).
bool same_architecture(const ModelConfig& a, const ModelConfig& b);

}  // namespace occult
