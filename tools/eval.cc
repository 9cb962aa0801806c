// `occult eval`: validation loss (nats per token) and perplexity of a model over a whole text
// file under a given routing (dispatcher, placement, collaboration pruning), with the routing
// statistics; the evaluation step of the profile -> place -> fine-tune -> evaluate workflow.
#include "occult/train/eval.h"

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>

#include "command_registry.h"
#include "infer_cli.h"
#include "occult/core/table.h"
#include "text_cli.h"

namespace occult::cli {
namespace eval_command {

struct EvalFlags {
  ModelFlags model;
  TextInputFlags text;
  int seq_len = 0;
  std::int64_t batch = 16;
  bool json = false, no_progress = false;
};

void run_eval(const EvalFlags& f) {
  run_on_mpi_world([&](Communicator& comm) {
    const ModelConfig config = resolve_model_config(f.model, comm, /*allow_random=*/false);
    std::vector<std::int32_t> tokens;
    std::string unit;
    agree_on_errors(comm, [&] {
      OCCULT_CHECK(f.model.prune_devices == 0 || f.model.prune_scheme == "score" ||
                       f.model.prune_scheme == "similarity" ||
                       f.model.prune_scheme == "device-limited",
                   "--prune-scheme must be score, similarity or device-limited, got \"{}\"",
                   f.model.prune_scheme);
      OCCULT_CHECK(f.seq_len >= 0, "--seq-len must be >= 0 (0 = min(128, max_position_embeddings)), got {}",
                   f.seq_len);
      OCCULT_CHECK(f.batch >= 1, "--batch (windows per forward pass) must be >= 1, got {}", f.batch);
      tokens = read_text_input(f.text, f.model.checkpoint, config.vocab_size, &unit);
      OCCULT_CHECK(tokens.size() >= 2, "evaluation needs at least 2 tokens (one to predict), got {}",
                   tokens.size());
    });
    const ParallelOptions parallel =
        resolve_parallel_options(f.model, config, comm, f.model.dispatch);
    const auto model = build_model(f.model, config, parallel, comm);
    EvalOptions o;
    o.seq_len = f.seq_len;
    o.batch = f.batch;
    o.progress = !f.json && !f.no_progress;
    const EvalResult r = evaluate_text(*model, tokens, o);
    if (comm.rank() != 0) return;
    if (f.json) {
      fmt::print("{}\n", eval_result_json(r));
      return;
    }
    TextTable table({"metric", "value"});
    table.add_row({"checkpoint", f.model.checkpoint});
    table.add_row({"text", fmt::format("{} ({} {}s predicted, {} windows of <= {})",
                                       f.text.data.empty() ? f.text.input_ids : f.text.data, r.tokens,
                                       unit, r.windows, r.seq_len)});
    table.add_row({"ranks / dispatch", fmt::format("{} / {}", comm.size(), f.model.dispatch)});
    table.add_row(
        {"placement", f.model.placement.empty() ? std::string("contiguous") : f.model.placement});
    table.add_row({"pruning", f.model.prune_devices > 0
                                  ? fmt::format("M = {} devices, {} scheme", f.model.prune_devices,
                                                f.model.prune_scheme)
                                  : std::string("off")});
    table.add_row({fmt::format("loss (nats/{})", unit), fmt::format("{:.4f}", r.loss)});
    table.add_row({fmt::format("perplexity (per {})", unit), fmt::format("{:.4f}", r.perplexity)});
    table.add_row(
        {"replicas per token C_T (per layer)",
         fmt::format("{:.3f} ({:.3f})", r.replicas_per_token, fmt::join(r.layer_replicas, ", "))});
    table.add_row({"most devices one token touched", std::to_string(r.max_devices_per_token)});
    table.add_row(
        {"tokens whose routing pruning changed", fmt::format("{:.2f}%", 100.0 * r.tokens_changed)});
    table.add_row({"tokens/s (forward)", fmt::format("{:.0f}", r.tokens_per_s)});
    fmt::print("{}", table.render());
  });
}

void setup(CLI::App& root) {
  auto f = std::make_shared<EvalFlags>();
  CLI::App* cmd = root.add_subcommand(
      "eval",
      "Validation loss (nats per token; per byte for byte-level models) and perplexity of a model\n"
      "over a whole text under the given routing, plus the routing statistics (run under mpirun;\n"
      "also at 1 rank). The tokens are cut into windows of --seq-len that share their boundary\n"
      "token, so every token but the first is predicted once. --json prints {loss, perplexity,\n"
      "tokens, replicas_per_token, tokens_changed}.");
  add_checkpoint_flags(cmd, f->model);
  add_text_input_flags(cmd, f->text, "text to evaluate on");
  add_routing_flags(cmd, f->model);
  cmd->add_option("--seq-len", f->seq_len,
                  "window length (default min(128, max_position_embeddings))");
  cmd->add_option("--batch", f->batch, "windows per forward pass, over all ranks")
      ->capture_default_str();
  cmd->add_flag("--json", f->json,
                "print {loss, perplexity, tokens, replicas_per_token, tokens_changed}");
  cmd->add_flag("--no-progress", f->no_progress, "do not draw the progress bar");
  cmd->callback([f] { run_eval(*f); });
}

OCCULT_REGISTER_COMMAND("eval", setup);

}  // namespace eval_command
}  // namespace occult::cli
