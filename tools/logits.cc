// `occult logits`: the full causal-LM logits of a model directory on given token ids, under
// mpirun with expert parallelism. This is how a user checks occult against another
// implementation of the same checkpoint (Hugging Face transformers, say): same ids in, same
// logits out, whatever the rank count, dispatch or placement.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <memory>

#include "command_registry.h"
#include "infer_cli.h"
#include "occult/core/safetensors.h"
#include "occult/text/bytes.h"

namespace occult::cli {
namespace logits_command {

struct LogitsFlags {
  ModelFlags model;
  std::string input_ids, out;
};

// input_ids [B, T] (any integer dtype) of `path`, checked against the vocabulary and context.
std::vector<std::int32_t> read_input_ids(const std::string& path, const ModelConfig& config,
                                         std::int64_t& B, int& T) {
  const SafetensorsReader file = SafetensorsReader::open(path);
  const TensorInfo& info = file.at("input_ids");
  OCCULT_CHECK(info.shape.size() == 2 && info.shape[0] >= 1 && info.shape[1] >= 1,
               "{}: tensor 'input_ids' must be [batch, seq] with both >= 1, got {} dimensions",
               path, info.shape.size());
  OCCULT_CHECK(
      info.shape[1] <= config.max_position_embeddings,
      "{}: input_ids has {} positions per row, above the model's max_position_embeddings = {}",
      path, info.shape[1], config.max_position_embeddings);
  B = info.shape[0];
  T = static_cast<int>(info.shape[1]);
  const std::vector<std::int64_t> ids = file.read_i64("input_ids");
  std::vector<std::int32_t> out(ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    OCCULT_CHECK(ids[i] >= 0 && ids[i] < config.vocab_size,
                 "{}: input_ids[{}, {}] = {} is outside the vocabulary [0, {})", path, i / T, i % T,
                 ids[i], config.vocab_size);
    out[i] = static_cast<std::int32_t>(ids[i]);
  }
  return out;
}

void run_logits(const LogitsFlags& f) {
  run_on_mpi_world([&](Communicator& comm) {
    const ModelConfig config = resolve_model_config(f.model, comm, /*allow_random=*/false);
    std::int64_t B = 0;
    int T = 0;
    std::vector<std::int32_t> ids;
    agree_on_errors(comm, [&] { ids = read_input_ids(f.input_ids, config, B, T); });
    const ParallelOptions parallel =
        resolve_parallel_options(f.model, config, comm, f.model.dispatch);
    const auto model = build_model(f.model, config, parallel, comm);

    // Rows are split over ranks as data-parallel sequences; the experts serve every rank.
    const Share share = rank_share(B, comm.rank(), comm.size());
    const std::int64_t local = share.end - share.begin;
    const std::span<const std::int32_t> rows(ids.data() + share.begin * T,
                                             static_cast<std::size_t>(local * T));
    // Targets are the next ids (the last position predicts itself): only the loss reads them.
    std::vector<std::int32_t> targets(rows.begin(), rows.end());
    for (std::int64_t b = 0; b < local; ++b) {
      for (int t = 0; t + 1 < T; ++t) targets[b * T + t] = rows[b * T + t + 1];
    }
    model->forward(rows, targets, local, T);
    const std::int64_t V = config.vocab_size;
    const std::vector<float> logits =
        gather_rows_to_root<float>(comm, model->logits(), local * T, static_cast<int>(V));
    agree_on_errors(comm, [&] {
      if (comm.rank() != 0) return;
      SafetensorsWriter w;
      w.set_metadata("model", f.model.checkpoint);
      w.set_metadata("dispatch", f.model.dispatch);
      w.add_f32("logits", {B, T, V}, logits);
      w.write(f.out);
      fmt::print("logits [{}, {}, {}] -> {} ({} ranks, {} dispatch)\n", B, T, V, f.out, comm.size(),
                 f.model.dispatch);
    });
  });
}

void setup(CLI::App& root) {
  auto f = std::make_shared<LogitsFlags>();
  CLI::App* cmd = root.add_subcommand(
      "logits",
      "Full causal-LM logits of a model directory on token ids (collective under mpirun)");
  add_checkpoint_flags(cmd, f->model);
  cmd->add_option("--input-ids", f->input_ids,
                  "safetensors file with input_ids [batch, seq] (I32 or I64)")
      ->required();
  cmd->add_option("--out", f->out,
                  "safetensors file to write: logits F32 [batch, seq, vocab] (rank 0)")
      ->required();
  add_routing_flags(cmd, f->model);
  cmd->callback([f] { run_logits(*f); });
}

OCCULT_REGISTER_COMMAND("logits", setup);

}  // namespace logits_command
}  // namespace occult::cli
