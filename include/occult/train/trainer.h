// The training loop behind `occult train`: data-parallel dense parts, expert-parallel experts,
// AdamW with warm-up + cosine, evaluation, JSONL log, checkpoints and exact resume.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "occult/model/config.h"
#include "occult/model/model.h"
#include "occult/model/optimizer.h"

namespace occult {

class Communicator;

// Everything `occult train` takes. Seeds and batch shapes are optional so that a resumed run
// inherits the checkpoint's (and a conflicting explicit value is an error).
struct TrainOptions {
  ModelConfig config;
  std::string config_source;            // path, for messages
  std::string data_path;                // text corpus, read through text_model_dir's tokenizer (or bytes)
  std::string data_ids_path;            // or: token ids (read_token_ids formats) instead of text
  std::string text_model_dir;           // model directory whose tokenizer.json reads data_path
  std::string token_cache_dir;          // where tokenized corpora are cached (empty = no cache)
  Dispatch dispatch = Dispatch::kOccult;
  std::string placement_path;           // occult-placement/1 JSON; empty = contiguous
  int prune_devices = 0;                // 0 = no pruning
  std::string prune_scheme = "score";
  WireFormat wire = WireFormat::kF32;   // MoE exchange payloads (--wire)
  bool overlap = false;                 // MoE forward exchanges overlapped with experts (--overlap)
  GemmOptions gemm;                     // GEMM library and precision (--gemm, --compute)
  int steps = 100;                      // last step of the schedule
  int stop_at = 0;                      // stop after this step (0 = steps); the schedule is unchanged
  std::optional<std::int64_t> batch;    // global sequences per step (default 8)
  std::optional<int> seq_len;           // tokens per sequence (default min(128, max_position_embeddings))
  std::optional<std::uint64_t> seed;    // default 1234
  AdamWOptions adamw;                   // lr, warm-up, decay...; total_steps is set from steps
  // Auxiliary-loss-free balancing (DeepSeek-V3): after each optimizer step every MoE layer's
  // selection bias moves by this rate towards its under-loaded experts (update_selection_bias on
  // the step's global top-k loads). 0 = off; > 0 needs a router with a selection bias.
  float bias_update_rate = 0.0f;
  int eval_every = 0;                   // 0 = only at the end
  std::int64_t eval_sequences = 64;     // validation windows per evaluation
  std::string save_dir;                 // checkpoint at the end (and at every eval when set)
  int save_every = 0;                   // also save every N steps (0 = off)
  bool allow_changed_schedule = false;  // let --resume change steps, data, lr schedule or config
  std::string resume_dir;               // continue this checkpoint's run exactly
  std::string init_dir;                 // fine-tune: start from this checkpoint's weights, fresh optimizer
  std::vector<std::string> train_only;  // tensor groups to train (trainable_tensors); empty = all
  std::string log_path;                 // JSONL, one object per step and per evaluation
  bool progress = true;                 // progress bar on rank 0
};

// One training step's record (global numbers; identical on every rank).
struct StepRecord {
  int step = 0;
  double loss = 0.0;            // cross-entropy + aux
  double cross_entropy = 0.0;
  double aux = 0.0;
  double lr = 0.0;
  double grad_norm = 0.0;
  double replicas_per_token = 0.0;      // C_T averaged over layers
  double max_replicas_per_token = 0.0;  // max over layers (<= M when pruning)
  double max_load_ratio = 0.0;          // max over MoE layers of (max expert load / mean expert load)
  std::vector<std::int64_t> expert_loads;  // [MoE layers * E] global top-k assignments of the step
  std::int64_t bytes = 0;               // hidden-state bytes of the 4 exchanges, all ranks
  std::int64_t standard_bytes = 0;      // what standard dispatch moves for the same routing
  double seconds = 0.0;
  double tokens_per_s = 0.0;
};

// What a run produced.
struct TrainResult {
  int first_step = 1;
  std::vector<StepRecord> steps;
  std::vector<std::pair<int, double>> evals;  // (step, validation cross-entropy)
  double val_loss = 0.0;                      // last evaluation
  double tokens_per_s = 0.0;                  // training tokens / training seconds
  double seconds = 0.0;
  std::int64_t num_parameters = 0;
  std::int64_t num_active_parameters = 0;
  double flops_per_token = 0.0;               // 6 * active matmul parameters + attention
  std::vector<std::vector<float>> selection_bias;  // per MoE layer, this rank's router selection bias
                                                   // after the last step (empty without one)
};

// Collective. Runs the training described by `options` on `comm`'s ranks; throws occult::Error
// on every rank for bad input (config, placement, corpus, checkpoint, an option out of range, an
// unwritable --save or --log, a --resume whose run differs from these options) before the first
// step, and when training diverges (a non-finite loss or gradient: the step, the learning rate and
// the first tensor holding a non-finite value are named).
TrainResult train(const TrainOptions& options, Communicator& comm);

// The `--json` document of `occult train`: steps, loss[], max_load_ratio[], val_loss, tokens_per_s,
// bytes_per_step, standard_bytes_per_step, replicas_per_token.
std::string train_result_json(const TrainResult& result);

}  // namespace occult
