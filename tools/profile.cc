// `occult profile`: prefill a checkpoint over calibration text and write the routing of every MoE
// layer as a trace (top-k ids, weights, full router_probs, sequence_lengths), the input of
// `occult place`, `occult evaluate` and `occult prune`.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>

#include "command_registry.h"
#include "infer_cli.h"
#include "occult/core/table.h"
#include "occult/infer/inference.h"
#include "text_cli.h"

namespace occult::cli {
namespace profile_command {

struct ProfileFlags {
  ModelFlags model;
  TextInputFlags text{.data = {}, .input_ids = {}, .tokens = 16384};
  std::string out;
  int seq_len = 0;
  std::int64_t batch = 8;
  bool json = false, no_progress = false;
};

void run_profile(const ProfileFlags& f) {
  run_on_mpi_world([&](Communicator& comm) {
    const ModelConfig config = resolve_model_config(f.model, comm, /*allow_random=*/false);
    std::vector<std::int32_t> tokens;
    std::string unit;
    agree_on_errors(comm, [&] {
      OCCULT_CHECK(f.seq_len >= 0, "--seq-len must be >= 0 (0 = max_position_embeddings), got {}", f.seq_len);
      OCCULT_CHECK(f.batch >= 1, "--batch must be >= 1, got {}", f.batch);
      if (comm.rank() == 0) check_output_file("--out", f.out);
      tokens = read_text_input(f.text, f.model.checkpoint, config.vocab_size, &unit);
    });
    const ParallelOptions parallel =
        resolve_parallel_options(f.model, config, comm, f.model.dispatch);
    const auto model = build_model(f.model, config, parallel, comm);
    ProfileOptions o;
    o.seq_len = f.seq_len;
    o.sequences_per_batch = f.batch;
    o.model_name = f.model.checkpoint;
    o.dataset =
        std::filesystem::path(f.text.data.empty() ? f.text.input_ids : f.text.data).filename().string();
    o.progress = !f.json && !f.no_progress;
    const auto start = std::chrono::steady_clock::now();
    const Trace trace = profile_routing(*model, tokens, o);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    agree_on_errors(comm, [&] {
      if (comm.rank() == 0) save_trace(trace, f.out);
    });
    if (comm.rank() != 0) return;
    const auto file_bytes = std::filesystem::file_size(f.out);
    if (f.json) {
      const nlohmann::json j{{"out", f.out},
                             {"tokens", trace.num_tokens()},
                             {"sequences", trace.sequence_lengths.size()},
                             {"layers", trace.num_layers()},
                             {"num_experts", trace.num_experts},
                             {"top_k", trace.top_k},
                             {"seconds", seconds},
                             {"tokens_per_s", static_cast<double>(trace.num_tokens()) / seconds},
                             {"file_bytes", file_bytes}};
      fmt::print("{}\n", j.dump());
      return;
    }
    TextTable table({"metric", "value"});
    table.add_row({"trace", f.out});
    table.add_row({"tokens (sequences x length)",
                   fmt::format("{} ({} x <= {})", trace.num_tokens(), trace.sequence_lengths.size(),
                               trace.sequence_lengths.front())});
    table.add_row({"MoE layers / experts / top-k", fmt::format("{} / {} / {}", trace.num_layers(),
                                                               trace.num_experts, trace.top_k)});
    table.add_row({"ranks / dispatch", fmt::format("{} / {}", comm.size(), f.model.dispatch)});
    table.add_row({"prefill tokens/s",
                   fmt::format("{:.0f}", static_cast<double>(trace.num_tokens()) / seconds)});
    table.add_row({"file size", human_bytes(static_cast<double>(file_bytes))});
    fmt::print("{}", table.render());
  });
}

void setup(CLI::App& root) {
  auto f = std::make_shared<ProfileFlags>();
  CLI::App* cmd = root.add_subcommand("profile",
                                      "Prefill a checkpoint over calibration text (under mpirun: "
                                      "sequences spread over ranks) and write the\n"
                                      "routing of every MoE layer as a trace: top-k ids, weights, "
                                      "router_probs, sequence_lengths. Feed it to\n"
                                      "occult place / evaluate / prune.");
  add_checkpoint_flags(cmd, f->model);
  add_text_input_flags(cmd, f->text, "calibration text");
  cmd->add_option("--seq-len", f->seq_len, "tokens per sequence (default max_position_embeddings)");
  cmd->add_option("--batch", f->batch, "sequences per prefill per rank")->capture_default_str();
  cmd->add_option("--out", f->out, "output trace (.safetensors)")->required();
  cmd->add_option("--dispatch", f->model.dispatch, "standard | occult")->capture_default_str();
  cmd->add_option("--placement", f->model.placement, "placement JSON; default contiguous");
  cmd->add_flag("--json", f->json, "print {out, tokens, sequences, layers, ...} as JSON");
  cmd->add_flag("--no-progress", f->no_progress, "do not draw the progress bar");
  cmd->callback([f] { run_profile(*f); });
}

OCCULT_REGISTER_COMMAND("profile", setup);

}  // namespace profile_command
}  // namespace occult::cli
