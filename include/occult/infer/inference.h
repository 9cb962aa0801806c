// Inference on the MoE transformer with expert parallelism: a per-sequence KV cache
// sized up front, batched prefill of variable-length prompts, batched decode steps, and on top
// of them generation (greedy / temperature + top-p) and routing profiles in the trace format.
//
// Parallelism is the model's: attention and every dense part are data-parallel (each rank
// runs its own sequences against its own KV cache), the experts are expert-parallel by the
// model's placement and dispatch (standard or occult, optional pruning). prefill() and
// decode() are collective: every rank calls them the same number of times, in the same order,
// even a rank that has no sequence left (it passes none and still serves its experts).
//
// Reference twin: MoeTransformer::forward over the whole sequence. The cached path reproduces
// its logits at every position (tests/infer check a relative error below 1e-5).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "occult/model/config.h"
#include "occult/linalg/linear.h"
#include "occult/model/model.h"
#include "occult/infer/sampling.h"
#include "occult/routing/trace.h"

namespace occult {

// Default KV-cache budget per rank: far below the 2-core VM's memory, far above any test.
inline constexpr std::int64_t kDefaultKvMemoryLimitBytes = std::int64_t{8} << 30;

// How much KV cache one rank holds.
struct InferenceOptions {
  std::int64_t max_sequences = 1;  // KV-cache slots on this rank (its share of the batch)
  int max_length = 0;  // positions per slot, prompt + generated; 0 = max_position_embeddings
  std::int64_t memory_limit_bytes = kDefaultKvMemoryLimitBytes;  // KV-cache budget of this rank
  // Prefill attention: prompts longer than this many tokens are processed in blocks of this many
  // query rows, so the score scratch is O(block x len) instead of the whole-prompt kernel's
  // O(NH x len^2) (4 GiB for one 16k-token prompt with 4 heads). 0 = kDefaultAttentionBlockRows.
  int attention_block_rows = 0;
  // Multi-head latent attention decode: attend in latent space with kv_b folded into the query
  // and the output (the default; no per-step expansion of the cache), or expand every cached
  // latent into keys and values each step (the reference form, O(len) kv_b products per step).
  bool mla_absorbed_decode = true;
};

// Query rows per prefill attention block when InferenceOptions::attention_block_rows is 0.
inline constexpr int kDefaultAttentionBlockRows = 1024;

// Bytes of a KV cache of `sequences` slots x `max_length` positions: 2 (K, V) * L * NKV*hd floats
// each; under multi-head latent attention, L * (kv_lora_rank + qk_rope_head_dim) floats each
// (the latent and the rotated shared key part; decode attends over it in latent space).
std::int64_t kv_cache_bytes(const ModelConfig& config, std::int64_t sequences, int max_length);

// One rank's KV-cache inference engine over a model it does not own (the model must outlive it).
class InferenceEngine {
 public:
  // Collective. Allocates the KV cache; throws on every rank when max_length is outside
  // [1, max_position_embeddings], max_sequences < 0, or the cache exceeds memory_limit_bytes.
  InferenceEngine(MoeTransformer& model, const InferenceOptions& options);
  ~InferenceEngine();

  const InferenceOptions& options() const { return options_; }
  MoeTransformer& model() { return model_; }
  // Bytes this rank's KV cache occupies.
  std::int64_t cache_bytes() const {
    return kv_cache_bytes(model_.config(), options_.max_sequences, options_.max_length);
  }

  // Collective. Forgets every cached sequence, then runs this rank's prompts (possibly none;
  // at most max_sequences, each 1..max_length ids in [0, V)) at positions 0..len-1 in one
  // batched pass; prompt i occupies slot i. Returns the logits [n, V] of each prompt's last
  // token (valid until the next call). Bad input on any rank throws on every rank.
  std::span<const float> prefill(const std::vector<std::vector<std::int32_t>>& prompts);

  // Collective. Appends tokens[i] to the sequence in slot slots[i] (distinct, prefilled slots
  // with room left) and returns the logits [n, V] of the new tokens. n may be 0.
  std::span<const float> decode(std::span<const int> slots, std::span<const std::int32_t> tokens);

  // Number of sequences of the last prefill, and the tokens cached in `slot`.
  int num_sequences() const { return static_cast<int>(lengths_.size()); }
  int length(int slot) const { return lengths_.at(static_cast<std::size_t>(slot)); }
  // Tokens (this rank's rows) of the last prefill or decode.
  std::int64_t last_num_tokens() const { return rows_; }

  // The routing of MoE layer `layer` (an ordinal among MoE layers) for this rank's tokens of the last prefill/decode, in row
  // order (prompts concatenated): top-k ids, router_probs and the gate weights recomputed from
  // them by DESIGN.md's rule (p_i, or normalised over the k with norm_topk_prob or sigmoid
  // scores, times routed_scaling_factor). Those weights
  // are the model's own only when it runs without collaboration pruning.
  LayerRouting routing(int layer);

 private:
  // Runs rows_ tokens through every layer; prefill when `segments_` is set, else decode rows.
  void forward_rows(bool prefill);
  // Multi-head latent attention of layer `layer` for the current rows: ln_ -> atty_ [N, NH*v],
  // appending the rows' latents to the cache.
  void mla_attention(int layer, bool prefill);

  MoeTransformer& model_;
  InferenceOptions options_;
  // The model's dense weights, looked up once (the dense arena never moves).
  std::vector<LayerWeights> layer_weights_;
  WeightRef embed_, lm_head_;
  const float* final_norm_ = nullptr;
  std::vector<float> k_cache_, v_cache_;  // [L, S, T, NKV*hd] each (S slots, T = max_length);
                                          // MLA: k_cache_ [L, S, T, KL+R] latents, v_cache_ empty
  std::vector<float> mla_scratch_, mla_k_, mla_v_;  // MLA: projections; one slot's expanded K, V
  std::vector<const float*> mla_rows_;              // MLA absorbed decode: each row's cached latents
  std::vector<int> mla_lengths_;                    // and their count
  std::vector<int> lengths_;              // [num_sequences] tokens cached per slot

  // The rows of the current call. N = rows_.
  std::int64_t rows_ = 0;
  std::vector<std::int32_t> tokens_;     // [N]
  std::vector<int> row_slot_, row_pos_;  // [N] slot and position of each row
  struct Segment {
    int slot = 0;
    std::int64_t first_row = 0;
    int length = 0;
  };
  std::vector<Segment> segments_;       // prefill: one per prompt
  std::vector<std::int64_t> out_rows_;  // rows whose logits are returned
  // Activations of the rows ([N, H], [N, NH*hd], [N, NKV*hd], [N, F], [n, V]) and scratch.
  std::vector<float> x_, ln_, q_, k_, v_, q_pre_, k_pre_, q_rstd_, k_rstd_, atty_, tmp_, h1_, h3_, hh_, y_,
      sig_, rstd_, att_, lnf_, logits_;
};

// Options of generate().
struct GenerateOptions {
  int max_new_tokens = 64;  // tokens generated per prompt (the first comes from the prefill)
  SamplingOptions sampling;
  std::int64_t memory_limit_bytes = kDefaultKvMemoryLimitBytes;  // KV-cache budget per rank
  // A prompt stops once it generates one of these ids (kept as its last token), e.g. the
  // config's eos_token_id; empty: every prompt runs max_new_tokens.
  std::vector<std::int32_t> stop_tokens;
};

// What generate() produced; identical on every rank.
struct GenerateResult {
  std::vector<std::vector<std::int32_t>> tokens;  // per prompt, the generated ids (a stop id last)
  double prefill_seconds = 0.0;                   // slowest rank
  double decode_seconds = 0.0;                    // all decode steps, slowest rank per step
  int decode_steps = 0;                           // decode steps run (fewer once all stopped)
  std::int64_t prompt_tokens = 0;                 // over all prompts
  std::int64_t generated_tokens = 0;              // over all prompts
  std::int64_t exchange_bytes = 0;                // MoE dispatch + combine bytes, all ranks
};

// Collective. Every rank passes the same prompts; prompt i runs on the rank whose rank_share
// (data.h) holds it, and its token of step j is drawn with sample_token(..., i, j), so the
// result depends neither on the rank count nor on the dispatch. `on_step(j, tokens)`, when
// set, is called on every rank after step j with the new token of every prompt (streaming; -1
// for a prompt that stopped before step j). Generation ends early when every prompt stopped.
// Throws on every rank for an empty prompt list or prompt, max_new_tokens < 1, ids outside
// the vocabulary, or a prompt whose len + max_new_tokens - 1 positions exceed the context.
GenerateResult generate(
    MoeTransformer& model, const std::vector<std::vector<std::int32_t>>& prompts,
    const GenerateOptions& options,
    const std::function<void(int step, std::span<const std::int32_t> tokens)>& on_step = {});

// Options of profile_routing().
struct ProfileOptions {
  int seq_len = 0;  // tokens per calibration sequence; 0 = max_position_embeddings
  std::int64_t sequences_per_batch = 8;  // sequences one prefill runs per rank
  std::string model_name;                // trace metadata "model"
  std::string dataset;                   // trace metadata "dataset"
  bool progress = false;                 // progress bar on rank 0
};

// Collective. Cuts `tokens` (the same on every rank) into consecutive sequences of seq_len
// (the last may be shorter), spreads them over ranks with rank_share, prefills them and
// returns on rank 0 the routing of every MoE layer (top-k ids, weights, full router_probs,
// sequence_lengths, metadata) in token order; other ranks get an empty trace. The model must
// run without pruning (the trace records its own routing). Throws on every rank for bad input.
Trace profile_routing(MoeTransformer& model, std::span<const std::int32_t> tokens,
                      const ProfileOptions& options);

}  // namespace occult
