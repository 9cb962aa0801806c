// `occult evaluate`: the placement metrics of DESIGN.md on (possibly held-out) traces.
#include <fmt/format.h>

#include <iostream>
#include <memory>
#include <string>

#include "command_registry.h"
#include "occult/core/table.h"
#include "occult/placement/place.h"

namespace occult::cli {
namespace evaluate_command {

struct EvaluateArgs {
  std::string traces;
  std::string placement;
  bool json = false;
};

void run_evaluate(const EvaluateArgs& args) {
  const Trace trace = load_trace(args.traces);
  const Placement placement = load_placement(args.placement, ReplicaPolicy::kAllow);
  const std::vector<PlacementMetrics> layers =
      evaluate_placement(trace, placement, args.placement, args.traces);
  const PlacementMetrics mean = mean_metrics(layers);
  const bool with_nodes = placement.num_nodes > 1;
  // With replicas, the primaries alone (every expert on its expert_to_device only) for comparison.
  const bool replicas = placement.has_replicas();
  std::vector<PlacementMetrics> primary_layers;
  if (replicas) {
    Placement primaries = placement;
    for (LayerPlacement& lp : primaries.layers) lp.device_experts.clear();
    primary_layers = evaluate_placement(trace, primaries, args.placement, args.traces);
  }
  const PlacementMetrics primary_mean = mean_metrics(primary_layers);
  if (args.json) {
    // Keys in the documented order (README, `occult evaluate`): layer first, then the metrics.
    auto row_of = [&](const PlacementMetrics& m, const PlacementMetrics& primary) {
      nlohmann::ordered_json row;
      row["replicas_per_token"] = m.replicas_per_token;
      if (replicas) row["primary_replicas_per_token"] = primary.replicas_per_token;
      row["remote_replicas_per_token"] = m.remote_replicas_per_token;
      row["intra_collab_ratio"] = m.intra_collab_ratio;
      row["load_imbalance"] = m.load_imbalance;
      if (with_nodes) row["nodes_per_token"] = m.nodes_per_token;
      return row;
    };
    nlohmann::ordered_json out;
    out["strategy"] = placement.strategy;
    out["num_devices"] = placement.num_devices;
    out["top_k"] = trace.top_k;
    out["layers"] = nlohmann::ordered_json::array();
    for (int l = 0; l < static_cast<int>(layers.size()); ++l) {
      nlohmann::ordered_json row;
      row["layer"] = l;
      const nlohmann::ordered_json metrics = row_of(layers[l], replicas ? primary_layers[l] : layers[l]);
      for (const auto& [key, value] : metrics.items()) row[key] = value;
      out["layers"].push_back(row);
    }
    out["mean"] = row_of(mean, primary_mean);
    std::cout << out.dump() << "\n";
    return;
  }
  auto f3 = [](double v) { return fmt::format("{:.3f}", v); };
  // With replicas a "C_T primaries" column follows C_T.
  auto cells = [&](std::string label, const PlacementMetrics& m, const PlacementMetrics& primary) {
    std::vector<std::string> row = {std::move(label), f3(m.replicas_per_token), f3(m.remote_replicas_per_token),
                                    f3(m.intra_collab_ratio), f3(m.load_imbalance),
                                    with_nodes ? f3(m.nodes_per_token) : "-"};
    if (replicas) row.insert(row.begin() + 2, f3(primary.replicas_per_token));
    return row;
  };
  std::vector<std::string> header = {"layer", "C_T", "remote C_T", "intra ratio", "imbalance",
                                     with_nodes ? "nodes/token" : "-"};
  if (replicas) header.insert(header.begin() + 2, "C_T primaries");
  TextTable table(header);
  for (int l = 0; l < static_cast<int>(layers.size()); ++l) {
    table.add_row(cells(std::to_string(l), layers[l], replicas ? primary_layers[l] : layers[l]));
  }
  table.add_rule();
  table.add_row(cells("mean", mean, primary_mean));
  fmt::print("{}", table.render());
  fmt::print("'{}' placement ({} devices{}) on {} ({} tokens): mean replicas_per_token {:.3f} of "
             "top-k {}{}, mean load_imbalance {:.3f}\n",
             placement.strategy, placement.num_devices,
             replicas ? fmt::format(" x {} slots", placement.slots_per_device) : "", args.traces, trace.num_tokens(),
             mean.replicas_per_token, trace.top_k,
             replicas ? fmt::format(" ({:.3f} on the primaries alone)", primary_mean.replicas_per_token) : "",
             mean.load_imbalance);
}

void setup_evaluate(CLI::App& root) {
  auto args = std::make_shared<EvaluateArgs>();
  CLI::App* cmd = root.add_subcommand(
      "evaluate", "Measure a placement's replicas per token, intra ratio and load on traces");
  cmd->add_option("--traces", args->traces, "Trace file to evaluate on")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--placement", args->placement, "Placement JSON from `occult place`")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_flag("--json", args->json, "Print the metrics as JSON on stdout");
  cmd->callback([args] { run_evaluate(*args); });
}

OCCULT_REGISTER_COMMAND("evaluate", setup_evaluate);

}  // namespace evaluate_command

}  // namespace occult::cli
