#include "occult/train/trainer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "occult/comm/communicator.h"
#include "occult/core/error.h"
#include "occult/core/table.h"
#include "occult/core/progress.h"
#include "occult/model/arch.h"
#include "occult/model/checkpoint.h"
#include "occult/model/memory.h"
#include "occult/routing/bias_balance.h"
#include "occult/text/token_source.h"
#include "occult/train/data.h"
#include "occult/placement/placement.h"

namespace occult {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Placement file -> per-layer expert_to_device, checked against the model and the ranks.
void apply_placement(const TrainOptions& o, int ranks, ParallelOptions& parallel) {
  if (o.placement_path.empty()) return;
  check_input_file("--placement", o.placement_path);
  const Placement p = load_placement(o.placement_path, ReplicaPolicy::kAllow);
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
  if (p.has_replicas()) {
    for (int l = 0; l < o.config.num_moe_layers(); ++l) parallel.device_experts.push_back(p.layer(l).device_experts);
  }
}

// Size and FNV-1a 64 checksum of the training text (or token-id file), so that --resume can tell
// other data from the data the run was saved with.
nlohmann::json data_fingerprint(const TrainOptions& o) {
  const std::string& path = o.data_ids_path.empty() ? o.data_path : o.data_ids_path;
  return {{"bytes", std::filesystem::file_size(path)}, {"fnv1a64", fmt::format("{:016x}", file_checksum(path))}};
}

// The range checks of the numeric options, each naming its flag.
void check_option_ranges(const TrainOptions& o) {
  const AdamWOptions& a = o.adamw;
  OCCULT_CHECK(o.steps >= 1, "--steps must be >= 1, got {}", o.steps);
  OCCULT_CHECK(o.stop_at >= 0 && o.stop_at <= o.steps, "--stop-at must be in [1, --steps = {}], got {}", o.steps,
               o.stop_at);
  OCCULT_CHECK(std::isfinite(a.lr) && a.lr > 0, "--lr must be a positive number, got {}", a.lr);
  OCCULT_CHECK(std::isfinite(a.min_lr_ratio) && a.min_lr_ratio >= 0 && a.min_lr_ratio <= 1,
               "--min-lr-ratio must be in [0, 1] (the cosine floor as a fraction of --lr), got {}", a.min_lr_ratio);
  OCCULT_CHECK(std::isfinite(a.weight_decay) && a.weight_decay >= 0, "--weight-decay must be >= 0, got {}",
               a.weight_decay);
  OCCULT_CHECK(a.warmup_steps >= 0 && a.warmup_steps <= o.steps, "--warmup must be in [0, --steps = {}], got {}",
               o.steps, a.warmup_steps);
  OCCULT_CHECK(std::isfinite(a.grad_clip) && a.grad_clip >= 0, "--grad-clip must be >= 0 (0 = off), got {}",
               a.grad_clip);
  OCCULT_CHECK(o.eval_every >= 0, "--eval-every must be >= 0 (0 = at the end only), got {}", o.eval_every);
  OCCULT_CHECK(o.eval_sequences >= 1, "--eval-sequences must be >= 1, got {}", o.eval_sequences);
  OCCULT_CHECK(o.save_every >= 0, "--save-every must be >= 0 (0 = off), got {}", o.save_every);
  OCCULT_CHECK(o.save_every == 0 || !o.save_dir.empty(), "--save-every needs --save DIR");
  OCCULT_CHECK(std::isfinite(o.bias_update_rate) && o.bias_update_rate >= 0,
               "--bias-update-rate must be >= 0 (0 = off), got {}", o.bias_update_rate);
  OCCULT_CHECK(o.bias_update_rate == 0 || o.config.router_selection_bias,
               "--bias-update-rate {} needs a router with a selection bias, but the model config {} has none: set "
               "config key \"topk_method\" to \"noaux_tc\" (which adds mlp.gate.e_score_correction_bias)",
               o.bias_update_rate, o.config_source);
}

// `key` of trainer_state.json as a non-negative integer; throws naming the file and the key.
std::int64_t state_count(const nlohmann::json& state, const std::string& dir, const char* key) {
  OCCULT_CHECK(state.contains(key) && state.at(key).is_number_integer() && state.at(key).get<std::int64_t>() >= 0,
               "--resume {}: trainer_state.json: \"{}\" must be a non-negative integer, got {}", dir, key,
               state.contains(key) ? state.at(key).dump() : "nothing");
  return state.at(key).get<std::int64_t>();
}

// What a resumed run would change against the saved one ("" when nothing): the schedule's length
// and shape, the data and the model config; the first difference, worded for the user.
std::string changed_run(const nlohmann::json& state, const TrainOptions& o) {
  const AdamWOptions& a = o.adamw;
  if (state.contains("steps") && state.at("steps") != o.steps) {
    return fmt::format("--steps {} differs from the saved run's {} (the learning-rate schedule would change)",
                       o.steps, state.at("steps").dump());
  }
  const std::pair<const char*, double> schedule[] = {{"lr", a.lr},
                                                     {"warmup", a.warmup_steps},
                                                     {"min_lr_ratio", a.min_lr_ratio},
                                                     {"weight_decay", a.weight_decay},
                                                     {"grad_clip", a.grad_clip},
                                                     {"bias_update_rate", o.bias_update_rate}};
  for (const auto& [key, value] : schedule) {
    if (!state.contains(key) || !state.at(key).is_number()) continue;
    const double saved = state.at(key).get<double>();
    if (static_cast<float>(saved) != static_cast<float>(value)) {
      std::string flag = std::string("--") + key;
      for (char& c : flag) c = c == '_' ? '-' : c;
      return fmt::format("{} {} differs from the saved run's {}", flag, static_cast<float>(value),
                         static_cast<float>(saved));
    }
  }
  if (state.contains("data_fingerprint") && state.at("data_fingerprint") != data_fingerprint(o)) {
    return fmt::format("the training data {} is not the data the run was saved with ({} then, {} now)",
                       o.data_ids_path.empty() ? o.data_path : o.data_ids_path,
                       state.at("data_fingerprint").dump(), data_fingerprint(o).dump());
  }
  if (state.contains("config") && state.at("config").is_object()) {
    const nlohmann::json now = model_config_to_json(o.config);
    for (const auto& [key, value] : state.at("config").items()) {
      if (!now.contains(key) || now.at(key) != value) {
        return fmt::format("the model config {} has \"{}\" = {}, the saved run had {}", o.config_source, key,
                           now.contains(key) ? now.at(key).dump() : "nothing", value.dump());
      }
    }
  }
  return "";
}

// The first tensor whose gradient (or, with `values`, whose weights) holds a non-finite number:
// "NAME (element I = V)", or "" when all are finite on this rank.
std::string first_non_finite(MoeTransformer& model, bool values) {
  for (const auto& t : model.tensors()) {
    const std::span<const float> data = values ? std::span<const float>(t.value) : std::span<const float>(t.grad);
    for (std::size_t i = 0; i < data.size(); ++i) {
      if (!std::isfinite(data[i])) return fmt::format("{} (element {} = {})", t.name, i, data[i]);
    }
  }
  return "";
}

// Max over MoE layers of (the most loaded expert's assignments / the mean over experts);
// loads is [layers * E]. 1 is perfect balance; 0 when there were no assignments.
double max_load_ratio(const std::vector<std::int64_t>& loads, int num_experts) {
  double worst = 0.0;
  for (std::size_t first = 0; first + num_experts <= loads.size(); first += num_experts) {
    std::int64_t total = 0, most = 0;
    for (int e = 0; e < num_experts; ++e) {
      total += loads[first + e];
      most = std::max(most, loads[first + e]);
    }
    if (total > 0) worst = std::max(worst, static_cast<double>(most) * num_experts / static_cast<double>(total));
  }
  return worst;
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
      ModelConfig saved;
      try {
        saved = load_checkpoint_config(dir);
      } catch (const Error& e) {
        OCCULT_FAIL("{} {}: {}", flag, dir, e.message());
      }
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
  parallel.overlap = o.overlap;
  parallel.gemm = o.gemm;
  agree_on_errors(comm, [&] {
    check_option_ranges(o);
    if (!o.save_dir.empty()) check_checkpoint_destination("--save", o.save_dir);
    if (!o.log_path.empty() && rank == 0) check_output_file("--log", o.log_path);
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
      if (o.data_ids_path.empty()) {
        check_input_file("--data", o.data_path);
      } else {
        check_input_file("--data-ids", o.data_ids_path);
      }
      // Ids need no codec (a model directory without a tokenizer still reads them).
      const TextCodec codec = o.data_ids_path.empty() ? TextCodec::for_model(o.text_model_dir, o.config.vocab_size)
                                                      : TextCodec::bytes();
      if (o.data_ids_path.empty() && codec.is_bytes()) {
        d.emplace(o.data_path);  // bytes are the ids: the dataset reads the file itself
        return;
      }
      d.emplace(read_model_tokens(o.data_path, o.data_ids_path, codec, o.config.vocab_size, o.token_cache_dir),
                o.data_ids_path.empty() ? o.data_path : o.data_ids_path);
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
      const auto saved_seed = static_cast<std::uint64_t>(state_count(resume_state, o.resume_dir, "seed"));
      const auto saved_batch = state_count(resume_state, o.resume_dir, "batch");
      const auto saved_seq = static_cast<int>(state_count(resume_state, o.resume_dir, "seq_len"));
      OCCULT_CHECK(!o.seed || *o.seed == saved_seed, "--seed {} differs from the resumed run's seed {}", *o.seed,
                   saved_seed);
      OCCULT_CHECK(!o.batch || *o.batch == saved_batch, "--batch {} differs from the resumed run's batch {}",
                   *o.batch, saved_batch);
      OCCULT_CHECK(!o.seq_len || *o.seq_len == saved_seq, "--seq-len {} differs from the resumed run's {}",
                   *o.seq_len, saved_seq);
      seed = saved_seed;
      batch = saved_batch;
      seq_len = saved_seq;
      first_step = static_cast<int>(state_count(resume_state, o.resume_dir, "step")) + 1;
      const std::string changed = o.allow_changed_schedule ? "" : changed_run(resume_state, o);
      OCCULT_CHECK(changed.empty(), "--resume {}: {}; pass --allow-changed-schedule to continue anyway", o.resume_dir,
                   changed);
      OCCULT_CHECK(first_step <= (o.stop_at > 0 ? o.stop_at : o.steps),
                   "--resume {}: the checkpoint is at step {}, already at or past the last step {} of this run",
                   o.resume_dir, first_step - 1, o.stop_at > 0 ? o.stop_at : o.steps);
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
  check_training_step_fits_memory(model, trainable, (batch + ranks - 1) / ranks, seq_len);
  const int last_step = o.stop_at > 0 ? o.stop_at : o.steps;

  // The data's fingerprint goes into every checkpoint, so that a resume can check its data.
  nlohmann::json fingerprint;
  if (!o.save_dir.empty()) agree_on_errors(comm, [&] { fingerprint = data_fingerprint(o); });

  std::FILE* log = nullptr;
  agree_on_errors(comm, [&] {
    if (rank == 0 && !o.log_path.empty()) {
      log = std::fopen(o.log_path.c_str(), first_step > 1 ? "a" : "w");
      OCCULT_CHECK(log != nullptr, "cannot open --log {} for writing: {}", o.log_path, std::strerror(errno));
    }
  });
  // A failed write (a full disk, /dev/full) is remembered and fails every rank at the step's check.
  std::string log_error;
  auto write_log = [&](const nlohmann::json& j) {
    if (log == nullptr || !log_error.empty()) return;
    const std::string line = j.dump() + "\n";
    if (std::fputs(line.c_str(), log) < 0 || std::fflush(log) != 0) {
      log_error = fmt::format("writing --log {} failed: {}", o.log_path, std::strerror(errno));
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
                         {"data", o.data_ids_path.empty() ? o.data_path : o.data_ids_path},
                         {"data_fingerprint", fingerprint},
                         {"data_position", step},
                         {"steps", o.steps},
                         {"lr", o.adamw.lr},
                         {"warmup", o.adamw.warmup_steps},
                         {"min_lr_ratio", o.adamw.min_lr_ratio},
                         {"weight_decay", o.adamw.weight_decay},
                         {"grad_clip", o.adamw.grad_clip},
                         {"bias_update_rate", o.bias_update_rate},
                         {"config", model_config_to_json(o.config)},
                         {"dispatch", dispatch_name(o.dispatch)}};
    comm.set_activity(fmt::format("checkpoint save at step {}", step));
    save_checkpoint(o.save_dir, model, &optimizer, state);
  };

  // Runs `work` of step `step`, adding the step and its learning rate to an error it raises (a
  // non-finite router logit after a divergence), of the same kind: agreed by every rank or not.
  auto at_step = [&](int step, const auto& work) {
    auto where = [&](const Error& e) {
      const std::string weight = first_non_finite(model, /*values=*/true);
      return fmt::format("step {} (lr {:.3g}): {}{}", step, learning_rate(adamw, step), e.message(),
                         weight.empty() ? "" : "; first non-finite weight: " + weight);
    };
    try {
      work();
    } catch (const AgreedError& e) {
      throw AgreedError(__FILE__, __LINE__, where(e));
    } catch (const Error& e) {
      throw Error(__FILE__, __LINE__, where(e));
    }
  };

  // Auxiliary-loss-free balancing: every rank holds the same global loads, so every rank's
  // (replicated) bias takes the same step.
  const int num_experts = o.config.num_experts;
  auto update_biases = [&](const std::vector<std::int64_t>& loads) {
    for (int l = 0; l < o.config.num_hidden_layers; ++l) {
      const int m = model.moe_index(l);
      if (m < 0) continue;
      update_selection_bias(std::span<const std::int64_t>(loads).subspan(static_cast<std::size_t>(m) * num_experts,
                                                                          num_experts),
                            o.bias_update_rate, model.param(router_bias_tensor_name(o.config, l)));
    }
  };

  ProgressBar bar("train", last_step - first_step + 1, o.progress && rank == 0);
  double train_seconds = 0.0;
  std::int64_t train_tokens = 0;
  for (int step = first_step; step <= last_step; ++step) {
    const Batch b = data.train_batch(seed, step, batch, seq_len, rank, ranks);
    comm.bytes().reset();
    const auto start = Clock::now();
    LossParts loss;
    double norm = 0.0;
    std::vector<std::int64_t> loads;
    comm.set_activity(fmt::format("training step {}", step));
    at_step(step, [&] {
      loss = model.forward(b.tokens, b.targets, b.sequences, seq_len);
      model.backward();
      norm = optimizer.step();
      loads = model.expert_loads();
      if (o.bias_update_rate > 0) update_biases(loads);
    });
    const double seconds = seconds_since(start);
    // The loss and the gradient norm are global, so every rank sees a divergence at once; the
    // agreement names the lowest rank's first non-finite gradient (or weight).
    agree_on_errors(comm, [&] {
      OCCULT_CHECK(log_error.empty(), "{}", log_error);
      if (std::isfinite(loss.total) && std::isfinite(norm)) return;
      std::string where = first_non_finite(model, /*values=*/false);
      if (where.empty()) where = first_non_finite(model, /*values=*/true);
      OCCULT_FAIL("training diverged at step {} (lr {:.3g}): the loss is {} and the gradient norm {}; first "
                  "non-finite tensor: {}. Lower --lr, lengthen --warmup or set --grad-clip",
                  step, optimizer.last_lr(), loss.total, norm, where.empty() ? "none on this rank" : where);
    });
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
    r.max_load_ratio = max_load_ratio(loads, num_experts);
    r.expert_loads = std::move(loads);
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
               {"max_load_ratio", r.max_load_ratio},
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
      double val = 0.0;
      comm.set_activity(fmt::format("validation at step {}", step));
      at_step(step, [&] { val = evaluate(model, data, o.eval_sequences, seq_len); });
      agree_on_errors(comm, [&] {
        OCCULT_CHECK(std::isfinite(val), "training diverged at step {} (lr {:.3g}): the validation loss is {}", step,
                     optimizer.last_lr(), val);
        write_log({{"step", step}, {"val_loss", val}});
        OCCULT_CHECK(log_error.empty(), "{}", log_error);
      });
      result.evals.emplace_back(step, val);
      result.val_loss = val;
    }
    if (step != last_step && (eval_now || (o.save_every > 0 && step % o.save_every == 0))) save(step);
  }
  save(last_step);
  if (o.config.router_selection_bias) {
    for (int l = 0; l < o.config.num_hidden_layers; ++l) {
      if (model.moe_index(l) < 0) continue;
      const std::span<const float> bias = model.param(router_bias_tensor_name(o.config, l));
      result.selection_bias.emplace_back(bias.begin(), bias.end());
    }
  }
  bar.finish(fmt::format("val loss {:.4f}", result.val_loss));
  if (log != nullptr) std::fclose(log);
  result.seconds = train_seconds;
  result.tokens_per_s = train_seconds > 0 ? static_cast<double>(train_tokens) / train_seconds : 0.0;
  return result;
}

std::string train_result_json(const TrainResult& r) {
  nlohmann::json loss = nlohmann::json::array(), load_ratio = nlohmann::json::array();
  double bytes = 0.0, standard = 0.0, replicas = 0.0;
  for (const auto& s : r.steps) {
    loss.push_back(s.loss);
    load_ratio.push_back(s.max_load_ratio);
    bytes += static_cast<double>(s.bytes);
    standard += static_cast<double>(s.standard_bytes);
    replicas += s.replicas_per_token;
  }
  const double n = r.steps.empty() ? 1.0 : static_cast<double>(r.steps.size());
  nlohmann::json j{{"steps", r.steps.size()},
                   {"loss", loss},
                   {"max_load_ratio", load_ratio},
                   {"val_loss", r.val_loss},
                   {"tokens_per_s", r.tokens_per_s},
                   {"bytes_per_step", bytes / n},
                   {"standard_bytes_per_step", standard / n},
                   {"replicas_per_token", replicas / n}};
  return j.dump();
}

}  // namespace occult
