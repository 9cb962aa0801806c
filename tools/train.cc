// `occult train`: train the MoE transformer under mpirun with expert parallelism.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "command_registry.h"
#include "infer_cli.h"
#include "moe_cli.h"
#include "mpi_cli.h"
#include "occult/comm/mpi_communicator.h"
#include "occult/core/error.h"
#include "occult/core/table.h"
#include "occult/model/checkpoint.h"
#include "occult/text/token_source.h"
#include "occult/train/trainer.h"

namespace occult::cli {
namespace train_command {

struct TrainFlags {
  std::string compute = "f32", gemm = "onednn";
  std::string config, data, data_ids, token_cache, dispatch = "occult", wire = "f32", overlap = "off", placement, prune_scheme = "score", save, resume, init, log;
  std::vector<std::string> train_only;
  int prune_devices = 0, steps = 100, stop_at = 0, seq_len = 0, eval_every = 0, warmup = -1, save_every = 0;
  std::int64_t batch = 0, eval_sequences = 64;
  std::uint64_t seed = 0;
  float lr = 1e-3f, weight_decay = 0.1f, grad_clip = 1.0f, min_lr_ratio = 0.1f;
  float bias_update_rate = 0.0f;
  bool json = false, no_progress = false, allow_changed_schedule = false;
};

constexpr const char* kNoSavingsAtOneRank = "n/a (1 rank: nothing leaves the process)";

// train_result_json plus "bytes_saved_vs_standard": the fraction of standard dispatch's bytes
// that this dispatch did not move, or null at one rank, where no byte leaves the process.
std::string train_json(const TrainResult& r, int ranks) {
  nlohmann::json j = nlohmann::json::parse(train_result_json(r));
  const double standard = j.at("standard_bytes_per_step").get<double>();
  if (ranks > 1 && standard > 0) {
    j["bytes_saved_vs_standard"] = 1.0 - j.at("bytes_per_step").get<double>() / standard;
  } else {
    j["bytes_saved_vs_standard"] = nullptr;
  }
  return j.dump();
}

void print_summary(const TrainResult& r, const TrainOptions& o, int ranks) {
  TextTable table({"metric", "value"});
  const auto& first = r.steps.front();
  const auto& last = r.steps.back();
  double bytes = 0, standard = 0, replicas = 0, max_ct = 0;
  for (const auto& s : r.steps) {
    bytes += static_cast<double>(s.bytes);
    standard += static_cast<double>(s.standard_bytes);
    replicas += s.replicas_per_token;
    max_ct = std::max(max_ct, s.max_replicas_per_token);
  }
  const double n = static_cast<double>(r.steps.size());
  table.add_row({"ranks", std::to_string(ranks)});
  table.add_row({"dispatch", dispatch_name(o.dispatch)});
  table.add_row({"parameters (total / active)", fmt::format("{} / {}", r.num_parameters, r.num_active_parameters)});
  table.add_row({"steps", fmt::format("{}..{}", first.step, last.step)});
  table.add_row({"loss (first -> last step)", fmt::format("{:.4f} -> {:.4f}", first.loss, last.loss)});
  table.add_row({"validation loss (nats/token)", fmt::format("{:.4f}", r.val_loss)});
  table.add_row({"tokens/s", fmt::format("{:.0f}", r.tokens_per_s)});
  table.add_row({"model GFLOP/s", fmt::format("{:.2f}", r.tokens_per_s * r.flops_per_token / 1e9)});
  table.add_row({"MoE exchange per step (all ranks)", human_bytes(bytes / n)});
  table.add_row({"per step standard would move", human_bytes(standard / n)});
  // One rank moves its copies in memory: the bytes above are what the exchange would carry, not
  // traffic that standard dispatch would have sent and occult saved.
  table.add_row({"bytes saved vs standard",
                 ranks > 1 ? fmt::format("{:.1f}%", standard > 0 ? 100.0 * (1.0 - bytes / standard) : 0.0)
                           : std::string(kNoSavingsAtOneRank)});
  table.add_row({"replicas per token C_T (mean / max layer)", fmt::format("{:.3f} / {:.3f}", replicas / n, max_ct)});
  table.add_row({"max/mean expert load (first -> last step)",
                 fmt::format("{:.3f} -> {:.3f}", first.max_load_ratio, last.max_load_ratio)});
  table.add_row({"train time (s)", fmt::format("{:.1f}", r.seconds)});
  fmt::print("{}", table.render());
}

void run_train(const TrainFlags& f, CLI::App& app) {
  run_on_mpi_world([&](Communicator& comm) {
    const int rank = comm.rank();
    const int ranks = comm.size();
    TrainOptions o;
    // The model: --config, or the config of the directory --init or --resume starts from (a
    // --config given too must be the same architecture: train() checks it).
    const std::string& from = !f.init.empty() ? f.init : f.resume;
    agree_on_errors(comm, [&] {
      OCCULT_CHECK(!f.config.empty() || !from.empty(),
                   "give --config FILE (a new model) or --init / --resume DIR (its config.json is used)");
      if (!f.config.empty()) check_input_file("--config", f.config);
      // Flags whose 0 or negative value would otherwise be read as "default".
      OCCULT_CHECK(app.count("--stop-at") == 0 || f.stop_at >= 1, "--stop-at must be in [1, --steps = {}], got {}",
                   f.steps, f.stop_at);
      OCCULT_CHECK(app.count("--warmup") == 0 || f.warmup >= 0, "--warmup must be >= 0, got {}", f.warmup);
      o.config = !f.config.empty() ? load_model_config(f.config) : load_checkpoint_config(from);
    });
    o.config_source = !f.config.empty() ? f.config : from + "/config.json";
    o.data_path = f.data;
    o.data_ids_path = f.data_ids;
    o.text_model_dir = from;
    o.token_cache_dir = app.count("--token-cache") > 0 ? f.token_cache : default_token_cache_dir();
    o.dispatch = parse_dispatch(f.dispatch);
    agree_on_errors(comm, [&] {
      o.wire = parse_wire_format(f.wire, "--wire");
      o.overlap = parse_overlap_flag(f.overlap);
      o.gemm = resolve_gemm_options(f.compute, f.gemm);
    });
    o.placement_path = f.placement;
    o.prune_devices = f.prune_devices;
    o.prune_scheme = f.prune_scheme;
    o.steps = f.steps;
    o.stop_at = f.stop_at;
    if (app.count("--batch") > 0) o.batch = f.batch;
    if (app.count("--seq-len") > 0) o.seq_len = f.seq_len;
    if (app.count("--seed") > 0) o.seed = f.seed;
    o.adamw.lr = f.lr;
    o.adamw.weight_decay = f.weight_decay;
    o.adamw.grad_clip = f.grad_clip;
    o.bias_update_rate = f.bias_update_rate;
    o.adamw.min_lr_ratio = f.min_lr_ratio;
    o.adamw.warmup_steps = f.warmup >= 0 ? f.warmup : std::min(100, f.steps / 10);
    o.eval_every = f.eval_every;
    o.eval_sequences = f.eval_sequences;
    o.save_dir = f.save;
    o.save_every = f.save_every;
    o.allow_changed_schedule = f.allow_changed_schedule;
    o.resume_dir = f.resume;
    o.init_dir = f.init;
    o.train_only = f.train_only;
    o.log_path = f.log;
    o.progress = !f.json && !f.no_progress;
    const TrainResult result = train(o, comm);
    if (rank == 0) {
      if (f.json) {
        fmt::print("{}\n", train_json(result, ranks));
      } else {
        print_summary(result, o, ranks);
      }
    }
  });
}

void setup(CLI::App& root) {
  auto flags = std::make_shared<TrainFlags>();
  CLI::App* cmd = root.add_subcommand(
      "train",
      "Train the MoE transformer on a text file (run under mpirun: dense parts data-parallel, experts\n"
      "expert-parallel by the placement). Prints a progress bar and a summary; --json prints\n"
      "{steps, loss[], val_loss, tokens_per_s, bytes_per_step, standard_bytes_per_step, replicas_per_token,\n"
      "bytes_saved_vs_standard} (a fraction; null at 1 rank, where nothing leaves the process).");
  cmd->add_option("--config", flags->config,
                  "model config.json (Hugging Face keys); default: the config of --init / --resume");
  auto* data = cmd->add_option("--data", flags->data,
                               "text corpus, last 10% is validation; read with the --init/--resume model's "
                               "tokenizer.json when it has one, else bytes are tokens");
  cmd->add_option("--data-ids", flags->data_ids,
                  "token ids instead of --data (safetensors input_ids, a JSON list or integers)")
      ->excludes(data);
  cmd->add_option("--token-cache", flags->token_cache,
                  "directory caching tokenized corpora (default $OCCULT_CACHE_DIR/tokens or ~/.cache/occult/tokens; "
                  "\"\" = off)");
  cmd->add_option("--dispatch", flags->dispatch, "standard | occult")->capture_default_str();
  cmd->add_option("--wire", flags->wire, "MoE exchange payloads: f32 | bf16 | f16 | fp8 (fp8: E4M3 forward dispatch, BF16 elsewhere; sums stay F32)")
      ->capture_default_str();
  cmd->add_option("--overlap", flags->overlap, "overlap the MoE forward's and backward's exchanges with expert compute: on | off")
      ->capture_default_str();
  add_compute_flags(cmd, flags->compute, flags->gemm);
  cmd->add_option("--placement", flags->placement, "placement JSON (occult place); default contiguous");
  cmd->add_option("--prune-devices", flags->prune_devices, "collaboration pruning budget M (0 = off)")
      ->capture_default_str();
  cmd->add_option("--prune-scheme", flags->prune_scheme, "score | similarity | device-limited")
      ->capture_default_str();
  cmd->add_option("--steps", flags->steps, "length of the run and of the lr schedule")->capture_default_str();
  cmd->add_option("--stop-at", flags->stop_at, "stop (and save) after this step; the schedule still spans --steps");
  cmd->add_option("--batch", flags->batch, "global sequences per step, split over ranks (default 8)");
  cmd->add_option("--seq-len", flags->seq_len, "tokens per sequence (default min(128, max_position_embeddings))");
  cmd->add_option("--lr", flags->lr, "peak learning rate")->capture_default_str();
  cmd->add_option("--warmup", flags->warmup, "warm-up steps (default min(100, steps/10))");
  cmd->add_option("--min-lr-ratio", flags->min_lr_ratio, "cosine floor as a fraction of --lr")->capture_default_str();
  cmd->add_option("--weight-decay", flags->weight_decay, "AdamW decoupled weight decay")->capture_default_str();
  cmd->add_option("--grad-clip", flags->grad_clip, "global gradient-norm clip (0 = off)")->capture_default_str();
  cmd->add_option("--bias-update-rate", flags->bias_update_rate,
                  "auxiliary-loss-free balancing: after each step every MoE layer's selection bias moves by this "
                  "rate towards the under-loaded experts (needs a router with a bias: topk_method noaux_tc; 0 = off)")
      ->capture_default_str();
  cmd->add_option("--eval-every", flags->eval_every, "validate every N steps (0 = at the end only)");
  cmd->add_option("--eval-sequences", flags->eval_sequences, "validation windows per evaluation")
      ->capture_default_str();
  cmd->add_option("--save", flags->save,
                  "checkpoint directory (written at the end and at every evaluation, as a unit: the previous "
                  "checkpoint is replaced only once the new one is complete)");
  cmd->add_option("--save-every", flags->save_every, "also save the checkpoint every N steps (0 = off)");
  cmd->add_flag("--allow-changed-schedule", flags->allow_changed_schedule,
                "let --resume continue with other --steps, learning-rate options, data or config than the saved run");
  cmd->add_option("--resume", flags->resume, "continue the run saved in this checkpoint directory exactly");
  cmd->add_option("--init", flags->init,
                  "fine-tune: start from this model directory's weights (Hugging Face or occult) with a fresh "
                  "optimizer");
  cmd->add_option("--train-only", flags->train_only,
                  "train only these groups (comma-separated): experts, router, shared, attention, norms, embeddings")
      ->delimiter(',');
  cmd->add_option("--seed", flags->seed, "seed of the initialisation and of the batches (default 1234)");
  cmd->add_option("--log", flags->log, "JSONL log: one object per step and per evaluation");
  cmd->add_flag("--json", flags->json, "print the result as JSON instead of the summary table");
  cmd->add_flag("--no-progress", flags->no_progress, "do not draw the progress bar");
  cmd->callback([flags, cmd] { run_train(*flags, *cmd); });
}

OCCULT_REGISTER_COMMAND("train", setup);

}  // namespace train_command
}  // namespace occult::cli
