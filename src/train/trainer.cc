#include "occult/train/trainer.h"

#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "occult/comm/communicator.h"
#include "occult/core/error.h"
#include "occult/core/progress.h"
#include "occult/model/checkpoint.h"
#include "occult/text/token_source.h"
#include "occult/train/data.h"
#include "occult/placement/placement.h"

namespace occult {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string human_bytes(double bytes) {
  if (bytes >= 1e9) return fmt::format("{:.2f} GB", bytes / 1e9);
  if (bytes >= 1e6) return fmt::format("{:.2f} MB", bytes / 1e6);
  if (bytes >= 1e3) return fmt::format("{:.1f} kB", bytes / 1e3);
  return fmt::format("{:.0f} B", bytes);
}

// Placement file -> per-layer expert_to_device, checked against the model and the ranks.
void apply_placement(const TrainOptions& o, int ranks, ParallelOptions& parallel) {
  if (o.placement_path.empty()) return;
  const Placement p = load_placement(o.placement_path);
  OCCULT_CHECK(p.num_experts == o.config.num_experts,
               "placement {} is for {} experts but the model config {} has num_experts = {}", o.placement_path,
               p.num_experts, o.config_source, o.config.num_experts);
  OCCULT_CHECK(p.num_devices == ranks, "placement {} is for {} devices but the run has {} ranks",
               o.placement_path, p.num_devices, ranks);
  OCCULT_CHECK(static_cast<int>(p.layers.size()) == o.config.num_moe_layers(),
               "placement {} has {} layers but the model config {} has {} MoE layers", o.placement_path,
               p.layers.size(), o.config_source, o.config.num_moe_layers());
  for (int l = 0; l < o.config.num_moe_layers(); ++l) {
    const auto& layer = p.layer(l);
    parallel.expert_to_device.push_back(layer.expert_to_device);
    parallel.similarity.push_back(layer.similarity);
  }
}

double evaluate(MoeTransformer& model, const TextDataset& data, std::int64_t sequences, int seq_len) {
  const Batch b = data.val_batch(sequences, seq_len, model.comm().rank(), model.comm().size());
  return model.forward(b.tokens, b.targets, b.sequences, seq_len).cross_entropy;
}

}  // namespace

TrainResult train(const TrainOptions& options, Communicator& comm) {
  const int rank = comm.rank(), ranks = comm.size();
  TrainOptions o = options;
  nlohmann::json resume_state;
  for (const auto& [flag, dir] : {std::pair{"--resume", o.resume_dir}, std::pair{"--init", o.init_dir}}) {
    if (dir.empty()) continue;
    // The checkpoint's config must be the model's (for --resume its seed and batch shape continue the run).
    agree_on_errors(comm, [&] {
      const ModelConfig saved = load_checkpoint_config(dir);
      OCCULT_CHECK(same_architecture(saved, o.config),
                   "{} {}: the checkpoint was trained with another model config than {}: {}", flag, dir,
                   o.config_source, describe_config_difference(saved, o.config));
    });
  }
  ParallelOptions parallel;
  parallel.dispatch = o.dispatch;
  parallel.prune_devices = o.prune_devices;
  parallel.prune_scheme = o.prune_scheme;
  parallel.wire = o.wire;
  agree_on_errors(comm, [&] {
    OCCULT_CHECK(o.steps >= 1, "--steps must be >= 1, got {}", o.steps);
    OCCULT_CHECK(o.stop_at >= 0 && o.stop_at <= o.steps, "--stop-at must be in [0, --steps = {}], got {}", o.steps,
                 o.stop_at);
    OCCULT_CHECK(o.init_dir.empty() || o.resume_dir.empty(),
                 "--init and --resume exclude each other: --init starts a new run from a checkpoint's weights, "
                 "--resume continues one");
    OCCULT_CHECK(o.prune_devices >= 0 && o.prune_devices <= ranks,
                 "--prune-devices must be in [0, {} ranks], got {}", ranks, o.prune_devices);
    apply_placement(o, ranks, parallel);
  });
  const TextDataset data = [&] {
    std::optional<TextDataset> d;
    agree_on_errors(comm, [&] {
      OCCULT_CHECK(o.data_path.empty() != o.data_ids_path.empty(), "give --data TEXT or --data-ids FILE (one)");
      if (!o.data_ids_path.empty()) {
        std::vector<std::int32_t> ids = read_token_ids(o.data_ids_path);
        for (std::size_t i = 0; i < ids.size(); ++i) {
          OCCULT_CHECK(ids[i] < o.config.vocab_size, "{}: token {} is id {}, outside the vocabulary [0, {})",
                       o.data_ids_path, i, ids[i], o.config.vocab_size);
        }
        d.emplace(std::move(ids), o.data_ids_path);
        return;
      }
      const TextCodec codec = TextCodec::for_model(o.text_model_dir, o.config.vocab_size);
      if (codec.is_bytes()) {
        d.emplace(o.data_path);
      } else {
        d.emplace(tokenize_file(o.data_path, codec, o.token_cache_dir), o.data_path);
      }
    });
    return std::move(*d);
  }();

  MoeTransformer model(o.config, comm, parallel);
  AdamWOptions adamw = o.adamw;
  adamw.total_steps = o.steps;
  std::vector<bool> trainable;
  agree_on_errors(comm, [&] { trainable = trainable_tensors(model, o.train_only); });
  AdamW optimizer(model, adamw, o.train_only.empty() ? std::vector<bool>{} : trainable);

  std::uint64_t seed = o.seed.value_or(1234);
  std::int64_t batch = o.batch.value_or(8);
  int seq_len = o.seq_len.value_or(std::min(128, o.config.max_position_embeddings));
  int first_step = 1;
  if (!o.resume_dir.empty()) {
    resume_state = load_checkpoint(o.resume_dir, model, &optimizer);
    agree_on_errors(comm, [&] {
      OCCULT_CHECK(resume_state.contains("step") && resume_state.contains("seed") && resume_state.contains("batch") &&
                       resume_state.contains("seq_len"),
                   "--resume {}: trainer_state.json lacks step/seed/batch/seq_len", o.resume_dir);
      const auto saved_seed = resume_state.at("seed").get<std::uint64_t>();
      const auto saved_batch = resume_state.at("batch").get<std::int64_t>();
      const auto saved_seq = resume_state.at("seq_len").get<int>();
      OCCULT_CHECK(!o.seed || *o.seed == saved_seed, "--seed {} differs from the resumed run's seed {}", *o.seed,
                   saved_seed);
      OCCULT_CHECK(!o.batch || *o.batch == saved_batch, "--batch {} differs from the resumed run's batch {}",
                   *o.batch, saved_batch);
      OCCULT_CHECK(!o.seq_len || *o.seq_len == saved_seq, "--seq-len {} differs from the resumed run's {}",
                   *o.seq_len, saved_seq);
      seed = saved_seed;
      batch = saved_batch;
      seq_len = saved_seq;
      first_step = resume_state.at("step").get<int>() + 1;
      OCCULT_CHECK(first_step == optimizer.step_count() + 1, "--resume {}: trainer state step {} != optimizer step {}",
                   o.resume_dir, first_step - 1, optimizer.step_count());
    });
  } else if (!o.init_dir.empty()) {
    load_checkpoint(o.init_dir, model, nullptr);
  } else {
    model.init_weights(seed);
  }
  agree_on_errors(comm, [&] {
    OCCULT_CHECK(batch >= 1, "--batch must be >= 1, got {}", batch);
    OCCULT_CHECK(seq_len >= 1 && seq_len <= o.config.max_position_embeddings,
                 "--seq-len must be in [1, max_position_embeddings = {}], got {}", o.config.max_position_embeddings,
                 seq_len);
  });
  const int last_step = o.stop_at > 0 ? o.stop_at : o.steps;

  std::FILE* log = nullptr;
  agree_on_errors(comm, [&] {
    if (rank == 0 && !o.log_path.empty()) {
      log = std::fopen(o.log_path.c_str(), first_step > 1 ? "a" : "w");
      OCCULT_CHECK(log != nullptr, "cannot open --log {} for writing", o.log_path);
    }
  });
  auto write_log = [&](const nlohmann::json& j) {
    if (log != nullptr) {
      std::fputs((j.dump() + "\n").c_str(), log);
      std::fflush(log);
    }
  };

  TrainResult result;
  result.first_step = first_step;
  result.num_parameters = model.num_parameters();
  result.num_active_parameters = model.num_active_parameters();
  // 6 FLOPs per active matmul weight per token (forward 2, backward 4), plus attention's QK^T
  // and AV over the full T x T (the sgemm computes the masked half too): 12 L H T (PaLM).
  result.flops_per_token = 6.0 * static_cast<double>(result.num_active_parameters) +
                           12.0 * o.config.num_hidden_layers * o.config.hidden_size * seq_len;

  auto save = [&](int step) {
    if (o.save_dir.empty()) return;
    nlohmann::json state{{"step", step},
                         {"seed", seed},
                         {"batch", batch},
                         {"seq_len", seq_len},
                         {"data", o.data_path},
                         {"data_position", step},
                         {"steps", o.steps},
                         {"lr", o.adamw.lr},
                         {"dispatch", dispatch_name(o.dispatch)}};
    save_checkpoint(o.save_dir, model, &optimizer, state);
  };

  ProgressBar bar("train", last_step - first_step + 1, o.progress && rank == 0);
  double train_seconds = 0.0;
  std::int64_t train_tokens = 0;
  for (int step = first_step; step <= last_step; ++step) {
    const Batch b = data.train_batch(seed, step, batch, seq_len, rank, ranks);
    comm.bytes().reset();
    const auto start = Clock::now();
    const LossParts loss = model.forward(b.tokens, b.targets, b.sequences, seq_len);
    model.backward();
    const double norm = optimizer.step();
    const double seconds = seconds_since(start);
    const RoutingStats stats = model.routing_stats();
    StepRecord r;
    r.step = step;
    r.loss = loss.total;
    r.cross_entropy = loss.cross_entropy;
    r.aux = loss.aux;
    r.lr = optimizer.last_lr();
    r.grad_norm = norm;
    r.replicas_per_token = stats.replicas_per_token;
    r.max_replicas_per_token = stats.max_replicas_per_token;
    r.bytes = stats.dispatch_bytes;
    r.standard_bytes = stats.standard_bytes;
    // The slowest rank sets the pace.
    double slowest = seconds;
    comm.all_reduce_max(std::span<double>(&slowest, 1));
    r.seconds = slowest;
    r.tokens_per_s = static_cast<double>(loss.tokens) / slowest;
    train_seconds += slowest;
    train_tokens += loss.tokens;
    result.steps.push_back(r);
    write_log({{"step", step},
               {"loss", r.loss},
               {"cross_entropy", r.cross_entropy},
               {"aux_loss", r.aux},
               {"lr", r.lr},
               {"grad_norm", r.grad_norm},
               {"replicas_per_token", r.replicas_per_token},
               {"max_replicas_per_token", r.max_replicas_per_token},
               {"bytes", r.bytes},
               {"standard_bytes", r.standard_bytes},
               {"tokens_per_s", r.tokens_per_s},
               {"seconds", r.seconds}});
    bar.update(step - first_step + 1,
               fmt::format("step {} | loss {:.4f} | {:.0f} tok/s | {}/step (standard {}) | C_T {:.2f}", step, r.loss,
                           r.tokens_per_s, human_bytes(static_cast<double>(r.bytes)),
                           human_bytes(static_cast<double>(r.standard_bytes)), r.replicas_per_token));
    const bool eval_now = (o.eval_every > 0 && step % o.eval_every == 0) || step == last_step;
    if (eval_now) {
      const double val = evaluate(model, data, o.eval_sequences, seq_len);
      result.evals.emplace_back(step, val);
      result.val_loss = val;
      write_log({{"step", step}, {"val_loss", val}});
      if (step != last_step) save(step);
    }
  }
  save(last_step);
  bar.finish(fmt::format("val loss {:.4f}", result.val_loss));
  if (log != nullptr) std::fclose(log);
  result.seconds = train_seconds;
  result.tokens_per_s = train_seconds > 0 ? static_cast<double>(train_tokens) / train_seconds : 0.0;
  return result;
}

std::string train_result_json(const TrainResult& r) {
  nlohmann::json loss = nlohmann::json::array();
  double bytes = 0.0, standard = 0.0, replicas = 0.0;
  for (const auto& s : r.steps) {
    loss.push_back(s.loss);
    bytes += static_cast<double>(s.bytes);
    standard += static_cast<double>(s.standard_bytes);
    replicas += s.replicas_per_token;
  }
  const double n = r.steps.empty() ? 1.0 : static_cast<double>(r.steps.size());
  nlohmann::json j{{"steps", r.steps.size()},
                   {"loss", loss},
                   {"val_loss", r.val_loss},
                   {"tokens_per_s", r.tokens_per_s},
                   {"bytes_per_step", bytes / n},
                   {"standard_bytes_per_step", standard / n},
                   {"replicas_per_token", replicas / n}};
  return j.dump();
}

}  // namespace occult
