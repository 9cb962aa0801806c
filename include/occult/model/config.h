// The MoE transformer's configuration, read from a Hugging Face config.json. The config's
// `model_type` selects the architecture family (include/occult/model/arch.h), which maps its own
// key names onto these fields; every error names the file and the key.
#pragma once

#include <nlohmann/json.hpp>

#include "occult/routing/gating.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace occult {

// Normalisation applied to the query and key projections before RoPE.
enum class QkNorm : std::uint8_t {
  kNone,     // no normalisation
  kFull,     // one RMSNorm over the whole projection (OLMoE: weights [NH*hd] and [NKV*hd])
  kPerHead,  // one RMSNorm per head (Qwen3-MoE: weights [hd], shared by every head)
};

// RoPE frequency scaling ("rope_scaling" in config.json). Only YaRN is implemented, as the
// DeepSeek-V2/V3 checkpoints use it: frequencies below the correction range are divided by
// `factor`, those above kept, a linear ramp in between; cos/sin are multiplied by
// mscale(factor, mscale) / mscale(factor, mscale_all_dim) and the attention softmax scale by
// mscale(factor, mscale_all_dim)^2 (when mscale_all_dim != 0), with mscale(s, m) =
// 0.1 m ln(s) + 1 for s > 1, else 1.
struct RopeScaling {
  bool yarn = false;                         // false: plain RoPE (no scaling)
  float factor = 1.0f;                       // context extension factor s
  int original_max_position_embeddings = 0;  // context length the frequencies were trained for
  float beta_fast = 32.0f;                   // rotations at the high-frequency end of the ramp
  float beta_slow = 1.0f;                    // rotations at the low-frequency end of the ramp
  float mscale = 1.0f;                       // cos/sin magnitude numerator
  float mscale_all_dim = 0.0f;               // cos/sin magnitude denominator and softmax scale

  bool operator==(const RopeScaling&) const = default;
};

// Architecture hyper-parameters of a decoder-only MoE transformer. Every layer has attention;
// its MLP is either an MoE block (router, top-k routed SwiGLU experts, optional shared experts)
// or a dense SwiGLU MLP (is_moe_layer decides).
struct ModelConfig {
  std::string model_type = "occult_moe";  // architecture family (arch.h); "occult_moe" is occult's own
  int vocab_size = 256;                   // V: byte-level by default
  int hidden_size = 0;                    // H (C in the op signatures)
  int num_hidden_layers = 0;              // L
  int num_attention_heads = 0;            // NH query heads
  int num_key_value_heads = 0;            // NKV key/value heads (GQA); 0 = NH
  int explicit_head_dim = 0;              // hd when set (Qwen3-MoE), else H / NH
  int num_experts = 0;                    // E routed experts per MoE layer
  int num_experts_per_tok = 0;            // k
  int moe_intermediate_size = 0;          // F: each routed expert's SwiGLU width
  int n_shared_experts = 0;               // DeepSeek style: shared experts fused into one MLP of n*F
  int shared_expert_intermediate_size = 0;  // Qwen2-MoE style: one shared expert of this width
  bool shared_expert_gate = false;        // shared output scaled by sigmoid(w . x), w [1,H]
  int intermediate_size = 0;              // width of the dense MLP layers (0 when there are none)
  std::vector<int> mlp_only_layers;       // layers with a dense MLP (Qwen-MoE)
  int decoder_sparse_step = 1;            // MoE on layer l only when (l+1) % step == 0 (Qwen-MoE)
  int first_k_dense_replace = 0;          // the first k layers are dense (DeepSeek)
  int moe_layer_freq = 1;                 // MoE on layer l only when l % freq == 0 (DeepSeek)
  bool attention_qkv_bias = false;        // q/k/v projections have biases
  bool attention_o_bias = false;          // o projection has a bias
  QkNorm qk_norm = QkNorm::kNone;         // normalisation of q and k before RoPE
  bool norm_topk_prob = false;            // g_i = p_i / sum_{j in S} p_j when set
  // The router beyond softmax top-k (GatingConfig): sigmoid scores, group-limited selection,
  // the multiplier of the routed weights, and a per-layer selection bias
  // mlp.gate.e_score_correction_bias [E] (DeepSeek-V3).
  ScoreFunction score_function = ScoreFunction::kSoftmax;
  int n_group = 1;                        // expert groups (1: no group limit)
  int topk_group = 1;                     // groups kept per token
  GroupScore group_score = GroupScore::kMax;
  float routed_scaling_factor = 1.0f;     // multiplies every routed gate weight
  bool router_selection_bias = false;     // the router has e_score_correction_bias
  // Multi-head latent attention (DeepSeek-V2/V3), on when kv_lora_rank > 0: q from q_proj, or
  // q_a_proj -> RMSNorm -> q_b_proj when q_lora_rank > 0; kv_a_proj_with_mqa gives the latent
  // [kv_lora_rank] and a key part [qk_rope_head_dim] shared by every head; the latent is
  // normalised and expanded by kv_b_proj into per-head [qk_nope_head_dim | v_head_dim].
  int q_lora_rank = 0;
  int kv_lora_rank = 0;
  int qk_nope_head_dim = 0;
  int qk_rope_head_dim = 0;
  int v_head_dim = 0;
  float router_aux_loss_coef = 0.01f;     // weight of the Switch load-balancing loss
  bool aux_loss_per_sequence = false;     // seq_aux: that loss per sequence, then averaged (DeepSeek)
  float rope_theta = 10000.0f;            // RoPE base
  RopeScaling rope_scaling;               // YaRN (DeepSeek-V2/V3) or none
  int max_position_embeddings = 0;        // longest sequence the model accepts
  bool tie_word_embeddings = false;       // LM head shares model.embed_tokens.weight
  float rms_norm_eps = 1e-5f;             // RMSNorm epsilon
  float initializer_range = 0.02f;        // std of the normal initialisation
  std::vector<int> eos_token_ids;         // generation stops at any of these (may be empty)
  int bos_token_id = -1;                  // -1 when the config names none

  // True for multi-head latent attention.
  bool mla() const { return kv_lora_rank > 0; }
  // MLA: the size of a query/key head (nope + rope).
  int qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // Head size hd of the attention kernels. MLA runs them on heads padded with zeros to
  // max(qk_head_dim, v_head_dim), which changes no score and no output.
  int head_dim() const {
    if (mla()) return std::max(qk_head_dim(), v_head_dim);
    return explicit_head_dim > 0 ? explicit_head_dim : hidden_size / num_attention_heads;
  }
  // Key/value heads (NKV); MLA expands one latent into every head.
  int kv_heads() const {
    if (mla()) return num_attention_heads;
    return num_key_value_heads > 0 ? num_key_value_heads : num_attention_heads;
  }
  // Width of o_proj's input: NH*hd, or NH*v_head_dim under MLA.
  int attention_out_dim() const { return mla() ? num_attention_heads * v_head_dim : q_dim(); }
  // The router's gating rule (E, k and everything above).
  GatingConfig gating() const {
    GatingConfig g;
    g.num_experts = num_experts;
    g.top_k = num_experts_per_tok;
    g.score_function = score_function;
    g.norm_topk_prob = norm_topk_prob;
    g.num_groups = n_group;
    g.kept_groups = topk_group;
    g.group_score = group_score;
    g.routed_scaling_factor = routed_scaling_factor;
    return g;
  }
  // Width of the query projection NH*hd and of each key/value projection NKV*hd.
  int q_dim() const { return num_attention_heads * head_dim(); }
  int kv_dim() const { return kv_heads() * head_dim(); }
  // Width of the shared-expert SwiGLU of an MoE layer (0 when there is none).
  int shared_intermediate_size() const {
    return shared_expert_intermediate_size > 0 ? shared_expert_intermediate_size
                                               : n_shared_experts * moe_intermediate_size;
  }
  // True when layer l (0 <= l < L) has an MoE block, false for a dense MLP layer.
  bool is_moe_layer(int l) const;
  // Number of MoE layers, and the ordinal of layer l among them (-1 for a dense layer). Routing
  // traces and placements list MoE layers only, by this ordinal.
  int num_moe_layers() const;
  int moe_index(int l) const;
  // The layer of the MoE block with ordinal m (inverse of moe_index).
  int moe_layer(int m) const;
};

// Parses and validates a config object; `source` (a path) names it in errors, and every error
// names the offending key and what was expected. The model_type (absent: occult's own) picks
// the architecture family, whose key list decides what is read, what is deliberately ignored,
// what is unsupported (an error naming the key) and what looks misspelt (an error naming both).
ModelConfig parse_model_config(const nlohmann::json& json, const std::string& source);
// Reads `path` (config.json) and parses it; throws naming the path when it cannot be read.
ModelConfig load_model_config(const std::string& path);
// The config as Hugging Face JSON with the key names of its architecture family.
nlohmann::json model_config_to_json(const ModelConfig& config);
// Throws unless every field is in range and the fields are consistent with each other.
void validate_model_config(const ModelConfig& config, const std::string& source);
// True when two configs describe the same architecture (checkpoint compatibility).
bool same_architecture(const ModelConfig& a, const ModelConfig& b);

}  // namespace occult
