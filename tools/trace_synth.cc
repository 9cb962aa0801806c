// `occult trace synth`: writes a synthetic routing trace with planted expert groups and hot
// experts (occult/routing/synth.h), for tests, demos and benchmarks at any scale.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "command_registry.h"
#include "occult/core/error.h"
#include "occult/core/progress.h"
#include "occult/core/table.h"
#include "occult/routing/statistics.h"
#include "occult/routing/synth.h"
#include "occult/routing/trace.h"

namespace occult::cli {
namespace trace_synth_command {

struct SynthArgs {
  SynthOptions synth;
  std::string out;
  std::string ids = "auto";
  std::string weights = "f32";
  bool json = false;
};

void run_trace_synth(const SynthArgs& args) {
  OCCULT_CHECK(!args.out.empty(), "--out is required");
  const SynthOptions& o = args.synth;
  ProgressBar progress("trace synth", o.num_layers + 1, !args.json);
  const SynthTrace synth = synthesize_trace(o, [&](int l) {
    progress.update(l + 1, fmt::format("layer {}/{}", l + 1, o.num_layers));
  });

  TraceWriteOptions write;
  if (args.ids != "auto") {
    write.ids_dtype = args.ids == "u8" ? DType::kU8 : args.ids == "i16" ? DType::kI16 : DType::kI32;
  }
  write.weights_dtype = args.weights == "f16"    ? DType::kF16
                        : args.weights == "bf16" ? DType::kBF16
                                                 : DType::kF32;
  save_trace(synth.trace, args.out, write);
  const auto bytes = std::filesystem::file_size(args.out);
  progress.finish(fmt::format("wrote {}", args.out));

  // Measured structure, so the user sees what was planted: expert load spread, and the share
  // of picks inside the picking token's own group (should be close to --affinity).
  TextTable table({"layer", "tokens", "load min", "load mean", "load max", "max/mean", "own-group picks"});
  nlohmann::json layers = nlohmann::json::array();
  for (int l = 0; l < synth.trace.num_layers(); ++l) {
    const LayerRouting& layer = synth.trace.layers[l];
    const auto load = expert_load(layer, o.num_experts);
    const auto [lo, hi] = std::minmax_element(load.begin(), load.end());
    const double mean = static_cast<double>(layer.topk_ids.size()) / o.num_experts;
    std::int64_t own = 0;
    for (std::int64_t t = 0; t < layer.num_tokens; ++t) {
      for (int j = 0; j < layer.top_k; ++j) {
        own += synth.expert_group[l][layer.ids_of(t)[j]] == synth.token_group[t];
      }
    }
    const double own_share = static_cast<double>(own) / static_cast<double>(layer.topk_ids.size());
    table.add_row({std::to_string(l), std::to_string(layer.num_tokens), std::to_string(*lo),
                   fmt::format("{:.1f}", mean), std::to_string(*hi), fmt::format("{:.3f}", *hi / mean),
                   fmt::format("{:.3f}", own_share)});
    layers.push_back({{"layer", l},
                      {"expert_group", synth.expert_group[l]},
                      {"hot_experts", synth.hot_experts[l]},
                      {"load_min", *lo},
                      {"load_max", *hi},
                      {"load_mean", mean},
                      {"own_group_share", own_share}});
  }
  if (args.json) {
    nlohmann::json j = {{"out", args.out},
                        {"bytes", bytes},
                        {"num_experts", o.num_experts},
                        {"top_k", o.top_k},
                        {"num_layers", o.num_layers},
                        {"num_tokens", o.num_tokens},
                        {"num_groups", o.num_groups},
                        {"seed", o.seed},
                        {"layers", layers}};
    fmt::print("{}\n", j.dump());
    return;
  }
  fmt::print("{}", table.render());
  fmt::print("wrote {} ({:.2f} MB): E={} k={} layers={} tokens={} groups={} affinity={} hot={} seed={}\n",
             args.out, bytes / 1e6, o.num_experts, o.top_k, o.num_layers, o.num_tokens, o.num_groups,
             o.group_affinity, o.hot_experts, o.seed);
}

void setup_trace_synth(CLI::App& root) {
  CLI::App& trace = command_group(root, "trace", "Routing traces: synthesize, inspect, convert");
  CLI::App* cmd = trace.add_subcommand(
      "synth", "Write a synthetic routing trace with planted expert groups and hot experts");
  auto args = std::make_shared<SynthArgs>();
  SynthOptions& s = args->synth;
  cmd->add_option("--experts", s.num_experts, "Experts per layer (E)")->required();
  cmd->add_option("--top-k", s.top_k, "Experts per token (k)")->required();
  cmd->add_option("--layers", s.num_layers, "MoE layers")->required();
  cmd->add_option("--tokens", s.num_tokens, "Tokens")->required();
  cmd->add_option("--groups", s.num_groups,
                  "Planted groups of E/G co-selected experts (G must divide E)")
      ->capture_default_str();
  cmd->add_option("--affinity", s.group_affinity,
                  "Probability that each pick comes from the token's own group")
      ->capture_default_str();
  cmd->add_option("--hot-experts", s.hot_experts, "Hot experts per layer")->capture_default_str();
  cmd->add_option("--hot-skew", s.hot_skew,
                  "Hot expert of rank r is picked with weight 1 + S/r (others: 1)")
      ->capture_default_str();
  cmd->add_option("--seq-len", s.sequence_length,
                  "Mean sequence length (0: write no sequence_lengths)")
      ->capture_default_str();
  cmd->add_flag("--router-probs", s.router_probs, "Also write router_probs [T, E] per layer");
  cmd->add_option("--seed", s.seed, "Random seed (same seed, same file)")->capture_default_str();
  cmd->add_option("--ids", args->ids, "Expert id dtype (auto: narrowest that holds E)")
      ->check(CLI::IsMember({"auto", "u8", "i16", "i32"}))
      ->capture_default_str();
  cmd->add_option("--weights", args->weights, "Weight dtype")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}))
      ->capture_default_str();
  cmd->add_option("--out", args->out, "Output trace file (.safetensors)")->required();
  cmd->add_flag("--json", args->json, "Print a JSON summary on stdout (with the planted groups)");
  cmd->callback([args] { run_trace_synth(*args); });
}

OCCULT_REGISTER_COMMAND("trace synth", setup_trace_synth);

}  // namespace trace_synth_command

}  // namespace occult::cli
