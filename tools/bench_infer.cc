// `occult bench infer`: prefill and decode latency of the KV-cache engine under mpirun, per
// dispatch (and pruning budget), side by side with the speed-up over standard dispatch: the shape
// of the paper's inference comparisons. Warm-up, repeats, medians; bytes from the Communicator.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <fstream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "command_registry.h"
#include "infer_cli.h"
#include "occult/core/rng.h"
#include "occult/core/progress.h"
#include "occult/core/table.h"
#include "occult/model/model_dir.h"
#include "occult/text/token_source.h"
#include "occult/infer/inference.h"

namespace occult::cli {
namespace bench_infer_command {

using Clock = std::chrono::steady_clock;

struct BenchFlags {
  ModelFlags model;
  std::string dispatches = "standard,occult";
  std::string data;  // prompts from this text instead of random ids
  std::int64_t batch = 8;
  int prompt_tokens = 128, decode_steps = 16, repeats = 3, warmup = 1;
  double kv_memory_gib = 8.0;
  bool json = false, no_progress = false;
};

struct Variant {
  std::string name;
  std::string dispatch;
  int prune_devices = 0;
  double prefill_ms = 0, decode_ms_per_step = 0, tokens_per_s = 0, prefill_tokens_per_s = 0;
  double bytes_prefill = 0, bytes_per_decode_step = 0;
  double prefill_speedup = 0, decode_speedup = 0;
  double load_seconds = 0;        // building the model and reading its weights, slowest rank
  double peak_rss_bytes = 0;      // the largest peak resident set of any rank so far
  double rss_bytes_all_ranks = 0; // sum over ranks of each rank's peak resident set so far
};

// This process's peak resident set in bytes (VmHWM), 0 when /proc is not available.
double peak_rss_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return 1024.0 * std::stod(line.substr(6));
  }
  return 0.0;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n == 0 ? 0.0 : n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

// MoE hidden-state bytes (dispatch + combine) over all ranks since the last reset.
double exchange_bytes(Communicator& comm) {
  const auto totals = sum_over_ranks(comm);
  double bytes = 0;
  for (const char* name : {kExchangeDispatch, kExchangeCombine}) {
    const auto it = totals.find(name);
    if (it != totals.end()) bytes += static_cast<double>(it->second.total_bytes());
  }
  return bytes;
}

// Seconds of `body` on the slowest rank; ranks start together.
template <typename Body>
double timed(Communicator& comm, Body&& body) {
  comm.barrier();
  const auto start = Clock::now();
  body();
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  comm.all_reduce_max(std::span<double>(&seconds, 1));
  return seconds;
}

void run_variant(Variant& v, const BenchFlags& f, const ModelConfig& config, Communicator& comm,
                 const std::vector<std::vector<std::int32_t>>& prompts, ProgressBar& bar,
                 std::int64_t& done) {
  ModelFlags mf = f.model;
  mf.prune_devices = v.prune_devices;
  const ParallelOptions parallel = resolve_parallel_options(mf, config, comm, v.dispatch);
  std::unique_ptr<MoeTransformer> model;
  v.load_seconds = timed(comm, [&] { model = build_model(mf, config, parallel, comm); });
  InferenceOptions io;
  io.max_sequences = static_cast<std::int64_t>(prompts.size());
  io.max_length = f.prompt_tokens + f.decode_steps;
  io.memory_limit_bytes = static_cast<std::int64_t>(f.kv_memory_gib * (1ll << 30));
  InferenceEngine engine(*model, io);
  const int n = static_cast<int>(prompts.size());
  const int V = config.vocab_size;
  std::vector<int> slots(n);
  for (int i = 0; i < n; ++i) slots[i] = i;
  std::vector<std::int32_t> next(n);
  // Greedy next tokens keep the decode inputs realistic (the model's own continuation).
  auto pick = [&](std::span<const float> logits) {
    for (int i = 0; i < n; ++i) {
      const float* row = logits.data() + static_cast<std::size_t>(i) * V;
      next[i] = static_cast<std::int32_t>(std::max_element(row, row + V) - row);
    }
  };
  std::vector<double> prefill_s, decode_s;
  double prefill_bytes = 0, decode_bytes = 0;
  for (int r = 0; r < f.warmup + f.repeats; ++r) {
    const bool measured = r >= f.warmup;
    comm.bytes().reset();
    std::span<const float> logits;
    const double tp = timed(comm, [&] { logits = engine.prefill(prompts); });
    pick(logits);
    const double pb = exchange_bytes(comm);
    comm.bytes().reset();
    std::vector<double> steps;
    for (int s = 0; s < f.decode_steps; ++s) {
      steps.push_back(timed(comm, [&] { logits = engine.decode(slots, next); }));
      pick(logits);
    }
    const double db = exchange_bytes(comm);
    if (measured) {
      prefill_s.push_back(tp);
      decode_s.insert(decode_s.end(), steps.begin(), steps.end());
      prefill_bytes = pb;
      decode_bytes = f.decode_steps > 0 ? db / f.decode_steps : 0.0;
    }
    bar.update(++done, fmt::format("{} {}", v.name, measured ? "measuring" : "warm-up"));
  }
  const double total_prompt = static_cast<double>(f.batch) * f.prompt_tokens;
  v.prefill_ms = 1e3 * median(prefill_s);
  v.decode_ms_per_step = 1e3 * median(decode_s);
  v.tokens_per_s =
      v.decode_ms_per_step > 0 ? static_cast<double>(f.batch) / (v.decode_ms_per_step / 1e3) : 0.0;
  v.prefill_tokens_per_s = v.prefill_ms > 0 ? total_prompt / (v.prefill_ms / 1e3) : 0.0;
  v.bytes_prefill = prefill_bytes;
  v.bytes_per_decode_step = decode_bytes;
  double rss[2] = {peak_rss_bytes(), peak_rss_bytes()};
  comm.all_reduce_max(std::span<double>(rss, 1));
  comm.all_reduce_sum(std::span<double>(rss + 1, 1));
  v.peak_rss_bytes = rss[0];
  v.rss_bytes_all_ranks = rss[1];
}

void run_bench(const BenchFlags& f) {
  run_on_mpi_world([&](Communicator& comm) {
    const ModelConfig config = resolve_model_config(f.model, comm, /*allow_random=*/true);
    std::vector<Variant> variants;
    agree_on_errors(comm, [&] {
      OCCULT_CHECK(f.batch >= 1, "--batch must be >= 1 (global sequences), got {}", f.batch);
      OCCULT_CHECK(f.prompt_tokens >= 1, "--prompt-tokens must be >= 1, got {}", f.prompt_tokens);
      OCCULT_CHECK(f.decode_steps >= 0, "--decode-steps must be >= 0, got {}", f.decode_steps);
      OCCULT_CHECK(f.repeats >= 1 && f.warmup >= 0,
                   "--repeats must be >= 1 and --warmup >= 0, got {} and {}", f.repeats, f.warmup);
      OCCULT_CHECK(f.prompt_tokens + f.decode_steps <= config.max_position_embeddings,
                   "--prompt-tokens {} + --decode-steps {} exceed the model's context "
                   "max_position_embeddings = {}",
                   f.prompt_tokens, f.decode_steps, config.max_position_embeddings);
      OCCULT_CHECK(f.model.prune_devices >= 0 && f.model.prune_devices <= comm.size(),
                   "--prune-devices must be in [0, {} ranks], got {}", comm.size(),
                   f.model.prune_devices);
      const auto names = split_list(f.dispatches);
      OCCULT_CHECK(!names.empty(), "--dispatch needs at least one of standard, occult");
      for (const auto& d : names) {
        parse_dispatch(d);
        variants.push_back({.name = d, .dispatch = d});
      }
      if (f.model.prune_devices > 0) {
        for (const auto& d : names) {
          variants.push_back({.name = fmt::format("{}+prune{}", d, f.model.prune_devices),
                              .dispatch = d,
                              .prune_devices = f.model.prune_devices});
        }
      }
    });
    // The same prompts for every variant: consecutive windows of --data, or ids drawn from
    // (seed, sequence, position); this rank's share.
    const Share share = rank_share(f.batch, comm.rank(), comm.size());
    std::vector<std::vector<std::int32_t>> prompts;
    if (!f.data.empty()) {
      agree_on_errors(comm, [&] {
        const TextCodec codec = TextCodec::for_model(f.model.checkpoint, config.vocab_size);
        const std::vector<std::int32_t> ids = tokenize_file(f.data, codec, default_token_cache_dir());
        const std::int64_t needed = f.batch * f.prompt_tokens;
        OCCULT_CHECK(static_cast<std::int64_t>(ids.size()) >= needed,
                     "--data {} has {} tokens, fewer than --batch {} x --prompt-tokens {} = {}",
                     f.data, ids.size(), f.batch, f.prompt_tokens, needed);
        for (std::int64_t s = share.begin; s < share.end; ++s) {
          prompts.emplace_back(ids.begin() + s * f.prompt_tokens, ids.begin() + (s + 1) * f.prompt_tokens);
        }
      });
    }
    for (std::int64_t s = share.begin; s < share.end && f.data.empty(); ++s) {
      SplitMix64 rng(f.model.seed ^ (0x51ED2701ull * static_cast<std::uint64_t>(s + 1)));
      std::vector<std::int32_t> p(f.prompt_tokens);
      for (auto& t : p)
        t = static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(config.vocab_size)));
      prompts.push_back(std::move(p));
    }
    const bool root = comm.rank() == 0;
    ProgressBar bar("bench infer",
                    static_cast<std::int64_t>(variants.size()) * (f.warmup + f.repeats),
                    root && !f.json && !f.no_progress);
    std::int64_t done = 0;
    for (auto& v : variants) run_variant(v, f, config, comm, prompts, bar, done);
    bar.finish();
    // Baseline: unpruned standard dispatch when it ran, else the first variant.
    const Variant* base = &variants.front();
    for (const auto& v : variants) {
      if (v.dispatch == "standard" && v.prune_devices == 0) base = &v;
    }
    for (auto& v : variants) {
      v.prefill_speedup = v.prefill_ms > 0 ? base->prefill_ms / v.prefill_ms : 0.0;
      v.decode_speedup =
          v.decode_ms_per_step > 0 ? base->decode_ms_per_step / v.decode_ms_per_step : 0.0;
    }
    if (!root) return;
    const double weights_bytes =
        f.model.checkpoint.empty() ? 0.0 : static_cast<double>(ModelWeights::open(f.model.checkpoint).stored_bytes());
    if (f.json) {
      nlohmann::json list = nlohmann::json::array();
      for (const auto& v : variants) {
        list.push_back({{"name", v.name},
                        {"dispatch", v.dispatch},
                        {"prune_devices", v.prune_devices},
                        {"prefill_ms", v.prefill_ms},
                        {"decode_ms_per_step", v.decode_ms_per_step},
                        {"tokens_per_s", v.tokens_per_s},
                        {"bytes_prefill", v.bytes_prefill},
                        {"bytes_per_decode_step", v.bytes_per_decode_step},
                        {"prefill_speedup", v.prefill_speedup},
                        {"decode_speedup", v.decode_speedup},
                        {"load_seconds", v.load_seconds},
                        {"peak_rss_bytes_max_rank", v.peak_rss_bytes},
                        {"peak_rss_bytes_all_ranks", v.rss_bytes_all_ranks}});
      }
      const nlohmann::json doc{{"variants", list},
                               {"weights_bytes", weights_bytes},
                               {"wire", f.model.wire},
                               {"overlap", f.model.overlap},
                               {"compute", f.model.compute},
                               {"gemm", f.model.gemm},
                               {"ranks", comm.size()},
                               {"batch", f.batch},
                               {"prompt_tokens", f.prompt_tokens},
                               {"decode_steps", f.decode_steps}};
      fmt::print("{}\n", doc.dump());
      return;
    }
    fmt::print(
        "bench infer: {} ranks, {} wire, {} compute on {}, batch {} x {} prompt tokens, {} decode steps, {} repeats after {} "
        "warm-up; "
        "H={} L={} E={} k={} F={}\n",
        comm.size(), f.model.wire, f.model.compute, f.model.gemm, f.batch, f.prompt_tokens, f.decode_steps, f.repeats, f.warmup,
        config.hidden_size, config.num_hidden_layers, config.num_experts,
        config.num_experts_per_tok, config.moe_intermediate_size);
    TextTable table({"variant", "load s", "prefill ms", "prefill tok/s", "decode ms/step", "decode tok/s",
                     "bytes/token prefill", "bytes/token decode", "prefill speed-up", "decode speed-up"});
    const double prompt_tokens = static_cast<double>(f.batch) * f.prompt_tokens;
    for (const auto& v : variants) {
      table.add_row({v.name, fmt::format("{:.2f}", v.load_seconds), fmt::format("{:.2f}", v.prefill_ms),
                     fmt::format("{:.0f}", v.prefill_tokens_per_s), fmt::format("{:.3f}", v.decode_ms_per_step),
                     fmt::format("{:.0f}", v.tokens_per_s), human_bytes(v.bytes_prefill / prompt_tokens),
                     human_bytes(v.bytes_per_decode_step / static_cast<double>(f.batch)),
                     fmt::format("{:.2f}x", v.prefill_speedup), fmt::format("{:.2f}x", v.decode_speedup)});
    }
    fmt::print("{}", table.render());
    if (weights_bytes > 0) {
      fmt::print("weights on disk {}; peak RSS: largest rank {}, all ranks {} ({:.2f}x the weights)\n",
                 human_bytes(weights_bytes), human_bytes(variants.back().peak_rss_bytes),
                 human_bytes(variants.back().rss_bytes_all_ranks), variants.back().rss_bytes_all_ranks / weights_bytes);
    }
  });
}

void setup(CLI::App& root) {
  auto f = std::make_shared<BenchFlags>();
  CLI::App& bench =
      command_group(root, "bench", "Benchmarks (run under mpirun for expert parallelism).");
  CLI::App* cmd = bench.add_subcommand(
      "infer",
      "Prefill and decode latency of KV-cache inference per dispatch (medians over --repeats after "
      "--warmup),\n"
      "decode tokens/s, MoE exchange bytes and the speed-up over standard dispatch. --json prints\n"
      "{\"variants\": [{name, dispatch, prune_devices, prefill_ms, decode_ms_per_step, "
      "tokens_per_s,\n"
      "bytes_prefill, bytes_per_decode_step, prefill_speedup, decode_speedup}]}.");
  auto* config = cmd->add_option("--config", f->model.config, "model config.json (random weights)");
  auto* checkpoint = cmd->add_option("--model,--checkpoint", f->model.checkpoint,
                                     "model directory (Hugging Face or occult train --save)");
  config->excludes(checkpoint);
  cmd->add_option("--weights", f->model.weights, "auto | f32 | bf16: the dtype matrices and experts are held in")
      ->capture_default_str();
  cmd->add_option("--batch", f->batch, "global sequences (spread over ranks)")
      ->capture_default_str();
  cmd->add_option("--prompt-tokens", f->prompt_tokens, "prompt length of every sequence")
      ->capture_default_str();
  cmd->add_option("--decode-steps", f->decode_steps, "decode steps after the prefill")
      ->capture_default_str();
  cmd->add_option("--dispatch", f->dispatches, "comma-separated: standard,occult")
      ->capture_default_str();
  cmd->add_option("--data", f->data,
                  "prompts: consecutive --prompt-tokens windows of this text (default random ids)");
  add_wire_flag(cmd, f->model);
  add_compute_flags(cmd, f->model);
  cmd->add_option("--placement", f->model.placement, "placement JSON; default contiguous");
  cmd->add_option("--prune-devices", f->model.prune_devices,
                  "also run every dispatch with collaboration pruning to M devices (0 = no)")
      ->capture_default_str();
  cmd->add_option("--prune-scheme", f->model.prune_scheme, "score | similarity | device-limited")
      ->capture_default_str();
  cmd->add_option("--repeats", f->repeats, "measured repeats (medians)")->capture_default_str();
  cmd->add_option("--warmup", f->warmup, "unmeasured warm-up repeats")->capture_default_str();
  cmd->add_option("--seed", f->model.seed, "random weights and prompt ids")->capture_default_str();
  cmd->add_option("--kv-memory-gib", f->kv_memory_gib, "KV-cache budget per rank")
      ->capture_default_str();
  cmd->add_flag("--json", f->json, "print the variants as JSON");
  cmd->add_flag("--no-progress", f->no_progress, "do not draw the progress bar");
  cmd->callback([f] { run_bench(*f); });
}

OCCULT_REGISTER_COMMAND("bench_infer", setup);

}  // namespace bench_infer_command
}  // namespace occult::cli
