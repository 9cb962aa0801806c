// Validation of a model on a whole text (`occult eval`): the cross-entropy part of the
// training loss over every byte of the text, under the model's own routing (dispatcher,
// placement, collaboration pruning), plus what that routing did (C_T, tokens pruning changed).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "occult/model/model.h"

namespace occult {

// How the text is cut into forward passes.
struct EvalOptions {
  int seq_len = 0;          // window length T (0 = min(128, max_position_embeddings))
  std::int64_t batch = 16;  // windows per forward pass, over all ranks
  bool progress = true;     // progress bar on rank 0
};

// What evaluate_text measured (global numbers; identical on every rank).
struct EvalResult {
  double loss = 0.0;                   // mean cross-entropy per predicted byte (nats per byte)
  double perplexity = 0.0;             // exp(loss)
  std::int64_t tokens = 0;             // predicted tokens: every token but the text's first
  std::int64_t windows = 0;            // forward windows (the last may be shorter than seq_len)
  int seq_len = 0;                     // T used
  double replicas_per_token = 0.0;     // C_T over all tokens and layers
  std::vector<double> layer_replicas;  // C_T of each layer
  int max_devices_per_token = 0;       // most devices any token touched in any layer
  double tokens_changed = 0.0;         // fraction of (token, layer) whose experts pruning changed
  double seconds = 0.0;                // wall time of the forward passes (slowest rank)
  double tokens_per_s = 0.0;           // tokens / seconds
};

// The window layout of a text of `num_tokens` tokens: window w reads tokens [w*T, w*T + len_w)
// and predicts tokens [w*T + 1, w*T + len_w + 1), so every token except the first is predicted
// exactly once, each with the context since its window's start; len_w = T except for the last
// window, which takes the remainder. Returns the lengths (empty when num_tokens < 2).
std::vector<int> eval_window_lengths(std::int64_t num_tokens, int seq_len);

// Collective. Runs `model` forward over all of `tokens` (the same text on every rank; ids in
// [0, vocab_size)) in the windows of eval_window_lengths, `options.batch` windows per pass split
// over the ranks as training splits a batch, and returns the token-weighted mean cross-entropy
// with the routing statistics. Throws occult::Error on every rank, naming the option, when the
// text has fewer than 2 tokens, seq_len is outside [1, max_position_embeddings] or batch < 1.
EvalResult evaluate_text(MoeTransformer& model, std::span<const std::int32_t> tokens,
                         const EvalOptions& options);

// The `--json` document of `occult eval`: exactly
// {"loss", "perplexity", "tokens", "replicas_per_token", "tokens_changed"}.
std::string eval_result_json(const EvalResult& result);

}  // namespace occult
