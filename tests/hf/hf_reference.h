// A naive double-precision twin of the Hugging Face causal-LM forward for the MoE architectures
// occult loads (olmoe, qwen2_moe, deepseek, deepseek_v2, deepseek_v3, qwen3_moe, mixtral), written from the semantics of
// each `modeling_<arch>.py` and independent of src/model, so that it can check the production
// forward. Every op is a free function on row-major double spans; weights are HF Linear
// weights [out, in], y = W x.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace occult::hf {

// out[i] = x[i] / sqrt(mean(x^2) + eps) * weight[i]; out may alias x.
void rms_norm(std::span<double> out, std::span<const double> x, std::span<const double> weight,
              double eps);

// out[r] = sum_c w[r, c] * x[c] (+ bias[r] when bias is not empty); w is [rows, cols].
void linear(std::span<double> out, std::span<const double> x, std::span<const double> w,
            std::span<const double> bias, int rows, int cols);

// Rotates one head vector [head_dim] in place at `position` with rotate_half RoPE:
// inv_freq[i] = theta^(-2i/head_dim), the pair (i, i + head_dim/2) turned by position*inv_freq[i].
void apply_rope(std::span<double> head, int position, double theta);

// Causal softmax attention for one sequence. q [T, heads*head_dim], k and v
// [T, kv_heads*head_dim], out [T, heads*head_dim]; query head h reads kv head
// h / (heads / kv_heads); scores are scaled by 1/sqrt(head_dim).
void causal_attention(std::span<double> out, std::span<const double> q, std::span<const double> k,
                      std::span<const double> v, int seq, int heads, int kv_heads, int head_dim);

// SwiGLU MLP: out [H] = down [H,F] (silu(gate [F,H] x) * (up [F,H] x)).
void swiglu_mlp(std::span<double> out, std::span<const double> x, std::span<const double> gate,
                std::span<const double> up, std::span<const double> down, int hidden, int ffn);

// One routed choice: the expert and its mixing weight.
struct RoutedExpert {
  int expert = 0;
  double weight = 0.0;
};

// Softmax over all router logits, the k largest probabilities (ties to the lower index), in
// descending order, divided by their sum when `renormalize`.
std::vector<RoutedExpert> route_top_k(std::span<const double> router_logits, int k,
                                      bool renormalize);

// Rotates one DeepSeek rope vector [dim] in place at `position`: the pair (2i, 2i+1) turned by
// position * rates[i] and scaled by `magnitude` (Hugging Face's DeepSeek RoPE de-interleaves
// before rotate_half, which permutes q and k alike and so gives these dot products).
void apply_interleaved_rope(std::span<double> x, int position, std::span<const double> rates,
                            double magnitude = 1.0);

struct HfConfig;
// The turn per position of each of the dim/2 rope pairs: theta^(-2i/dim), or under YaRN
// (DeepseekV2YarnRotaryEmbedding) theta^(-2i/dim) blended with theta^(-2i/dim)/factor.
std::vector<double> rope_pair_rates(const HfConfig& c, int dim);

// The architecture-independent description the forward needs, parsed from config.json.
struct HfConfig {
  std::string model_type;
  int vocab_size = 0;
  int hidden_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  double rms_norm_eps = 0.0;
  double rope_theta = 0.0;
  // rope_scaling of type yarn (DeepSeek-V2/V3): the rope part's frequencies, the magnitude of
  // its rotation, and the attention softmax scale.
  bool yarn = false;
  double yarn_factor = 1.0;
  int yarn_original_context = 0;
  double yarn_beta_fast = 32.0, yarn_beta_slow = 1.0, yarn_mscale = 1.0, yarn_mscale_all_dim = 0.0;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;
  bool o_bias = false;
  int dense_ffn = 0;   // intermediate_size of the dense MLP layers
  int expert_ffn = 0;  // FFN width of one routed expert
  int num_experts = 0;
  int top_k = 0;
  bool renormalize = false;  // renormalise the top-k probabilities
  int shared_ffn = 0;        // width of the shared expert MLP, 0 when there is none
  bool shared_gate = false;  // qwen2_moe scales the shared expert by sigmoid(gate x)
  std::vector<bool> sparse;  // per layer: the MLP is the sparse MoE block
  // DeepSeek-V2/V3: multi-head latent attention and the MoEGate router.
  bool mla = false;
  int q_lora_rank = 0;  // 0: q_proj
  int kv_lora_rank = 0;
  int qk_nope_head_dim = 0;
  int qk_rope_head_dim = 0;
  int v_head_dim = 0;
  std::string scoring_func = "softmax";
  std::string topk_method = "greedy";
  int n_group = 1;
  int topk_group = 1;
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;
};

// DeepSeek's MoEGate for one token: scores (softmax or sigmoid of the logits), the selection
// scores (+ e_score_correction_bias for noaux_tc; `bias` may be empty otherwise), group
// limiting (group_limited_greedy: a group's best score; noaux_tc: the sum of its two best),
// topk_group groups kept and the others' scores set to 0, top-k (ties to the lower index), the
// weights (V2: the masked scores; V3: the unbiased scores), renormalised when norm_topk_prob and
// k > 1, and routed_scaling_factor (V2: only when not renormalised; V3: always). `gap` (may be
// null) receives the smaller of the k-th/(k+1)-th selection gap and the kept/next group gap.
std::vector<RoutedExpert> route_deepseek(std::span<const double> router_logits, std::span<const double> bias,
                                         const HfConfig& config, double* gap);

// Parses `dir`/config.json; throws occult::Error naming the key for a missing or unknown arch key.
HfConfig read_hf_config(const std::string& dir);

// One weight tensor in double.
struct Tensor {
  std::vector<std::int64_t> shape;
  std::vector<double> data;
};

// A loaded model directory: its config and every stored tensor converted to double.
struct HfModel {
  HfConfig config;
  std::map<std::string, Tensor> tensors;

  // The tensor `name`, checked to have `shape`; throws naming the tensor otherwise.
  std::span<const double> at(const std::string& name, std::vector<std::int64_t> shape) const;
  // Like at(), but an empty span when the tensor is absent.
  std::span<const double> optional(const std::string& name, std::vector<std::int64_t> shape) const;
};

// Reads config.json and model.safetensors, or every shard listed in
// model.safetensors.index.json (F32, F16 or BF16), into double.
HfModel load_hf_model(const std::string& dir);

// Routing statistics of a forward: the smallest gap between the k-th and (k+1)-th largest router
// logit seen, which bounds how safely a float implementation picks the same experts.
struct ForwardStats {
  double min_top_k_gap = INFINITY;
};

// Full causal-LM logits [batch, seq, vocab] for input_ids [batch, seq] (positions 0..seq-1 in
// every row).
std::vector<double> hf_forward(const HfModel& model, std::span<const std::int64_t> input_ids,
                               int batch, int seq, ForwardStats* stats = nullptr);

}  // namespace occult::hf
