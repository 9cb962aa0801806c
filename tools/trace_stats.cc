// `occult trace stats`: per-layer expert load and the strongest expert collaborations of a
// routing trace (what a placement can exploit, and how skewed the load it must balance is).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "command_registry.h"
#include "occult/core/error.h"
#include "occult/core/progress.h"
#include "occult/core/table.h"
#include "occult/routing/statistics.h"
#include "occult/routing/trace.h"

namespace occult::cli {
namespace trace_stats_command {

struct StatsArgs {
  std::string traces;
  std::optional<int> layer;
  int top = 3;
  bool json = false;
};

struct Pair {
  int a, b;
  std::int64_t count;
};

// The `top` unordered expert pairs with the most co-selecting tokens; ties by lower ids.
std::vector<Pair> strongest_pairs(const std::vector<std::int64_t>& w, int num_experts, int top) {
  std::vector<Pair> pairs;
  for (int a = 0; a < num_experts; ++a) {
    for (int b = a + 1; b < num_experts; ++b) {
      const std::int64_t c = w[static_cast<std::size_t>(a) * num_experts + b];
      if (c > 0) pairs.push_back({a, b, c});
    }
  }
  const std::size_t n = std::min<std::size_t>(pairs.size(), static_cast<std::size_t>(top));
  std::partial_sort(pairs.begin(), pairs.begin() + n, pairs.end(), [](const Pair& x, const Pair& y) {
    if (x.count != y.count) return x.count > y.count;
    return x.a != y.a ? x.a < y.a : x.b < y.b;
  });
  pairs.resize(n);
  return pairs;
}

void run_trace_stats(const StatsArgs& args) {
  OCCULT_CHECK(args.top >= 0, "--top is {}, expected >= 0", args.top);
  const Trace trace = load_trace(args.traces);
  std::vector<int> layers;
  if (args.layer) {
    OCCULT_CHECK(*args.layer >= 0 && *args.layer < trace.num_layers(),
                 "--layer {} is out of range: {} has layers 0..{}", *args.layer, args.traces,
                 trace.num_layers() - 1);
    layers.push_back(*args.layer);
  } else {
    for (int l = 0; l < trace.num_layers(); ++l) layers.push_back(l);
  }

  const int e = trace.num_experts;
  ProgressBar progress("trace stats", static_cast<std::int64_t>(layers.size()), !args.json);
  TextTable table({"layer", "tokens", "load min", "load mean", "load max", "max/mean",
                   fmt::format("top {} pairs (tokens)", args.top)});
  nlohmann::json json_layers = nlohmann::json::array();
  double sum_imbalance = 0.0, worst_imbalance = 0.0;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const int l = layers[i];
    const LayerRouting& layer = trace.layers[l];
    const auto load = expert_load(layer, e);
    const auto [lo, hi] = std::minmax_element(load.begin(), load.end());
    const double mean = static_cast<double>(layer.topk_ids.size()) / e;
    const double imbalance = mean > 0 ? *hi / mean : 0.0;
    sum_imbalance += imbalance;
    worst_imbalance = std::max(worst_imbalance, imbalance);
    const auto pairs = strongest_pairs(coactivation_counts(layer, e), e, args.top);
    std::vector<std::string> cells;
    nlohmann::json json_pairs = nlohmann::json::array();
    for (const Pair& p : pairs) {
      cells.push_back(fmt::format("{}+{} ({})", p.a, p.b, p.count));
      json_pairs.push_back({{"experts", {p.a, p.b}}, {"count", p.count}});
    }
    table.add_row({std::to_string(l), std::to_string(layer.num_tokens), std::to_string(*lo),
                   fmt::format("{:.1f}", mean), std::to_string(*hi), fmt::format("{:.3f}", imbalance),
                   fmt::format("{}", fmt::join(cells, ", "))});
    json_layers.push_back({{"layer", l},
                           {"tokens", layer.num_tokens},
                           {"load", load},
                           {"load_min", *lo},
                           {"load_mean", mean},
                           {"load_max", *hi},
                           {"expert_load_imbalance", imbalance},
                           {"top_pairs", json_pairs}});
    progress.update(static_cast<std::int64_t>(i + 1), fmt::format("layer {}", l));
  }
  progress.finish();

  const double mean_imbalance = layers.empty() ? 0.0 : sum_imbalance / layers.size();
  if (args.json) {
    const nlohmann::json j = {{"file", args.traces},
                              {"num_experts", e},
                              {"top_k", trace.top_k},
                              {"num_layers", trace.num_layers()},
                              {"num_tokens", trace.num_tokens()},
                              {"num_sequences", trace.sequence_lengths.size()},
                              {"model", trace.model},
                              {"dataset", trace.dataset},
                              {"layers", json_layers},
                              {"mean", {{"expert_load_imbalance", mean_imbalance}}}};
    fmt::print("{}\n", j.dump());
    return;
  }
  fmt::print("{}: E={} k={} layers={} tokens={} sequences={}\n", args.traces, e, trace.top_k,
             trace.num_layers(), trace.num_tokens(), trace.sequence_lengths.size());
  if (!trace.model.empty()) fmt::print("model: {}\n", trace.model);
  if (!trace.dataset.empty()) fmt::print("dataset: {}\n", trace.dataset);
  fmt::print("{}", table.render());
  fmt::print("expert load max/mean: mean {:.3f}, worst {:.3f} over {} layer(s)\n", mean_imbalance,
             worst_imbalance, layers.size());
}

void setup_trace_stats(CLI::App& root) {
  CLI::App& trace = command_group(root, "trace", "Routing traces: synthesize, inspect, convert");
  CLI::App* cmd = trace.add_subcommand(
      "stats", "Per-layer expert load and the strongest expert collaborations of a trace");
  auto args = std::make_shared<StatsArgs>();
  cmd->add_option("--traces", args->traces, "Trace file (.safetensors)")->required();
  cmd->add_option("--layer", args->layer, "Only this layer (default: all)");
  cmd->add_option("--top", args->top, "Strongest collaborating expert pairs to list per layer")
      ->capture_default_str();
  cmd->add_flag("--json", args->json, "Print JSON on stdout instead of the table");
  cmd->callback([args] { run_trace_stats(*args); });
}

OCCULT_REGISTER_COMMAND("trace stats", setup_trace_stats);

}  // namespace trace_stats_command

}  // namespace occult::cli
