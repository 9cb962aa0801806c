// `occult place`: calibrate an expert placement on routing traces and write it as JSON.
#include <fmt/format.h>

#include <chrono>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "command_registry.h"
#include "occult/core/error.h"
#include "occult/core/progress.h"
#include "occult/core/table.h"
#include "occult/model/config.h"
#include "occult/placement/groups.h"
#include "occult/placement/place.h"

namespace occult::cli {
namespace place_command {

struct PlaceArgs {
  std::vector<std::string> traces;
  int devices = 0;
  int nodes = 1;
  std::string strategy = std::string(kDefaultStrategy);
  double max_imbalance = 1.10;
  std::uint64_t seed = 0;
  int restarts = PartitionOptions{}.num_restarts;
  bool cross_layer = false;
  int slots_per_device = 0;
  int replica_chunks = PartitionOptions{}.replica_chunks;
  double replica_flatten = PartitionOptions{}.replica_flatten;
  double primary_flatten = PartitionOptions{}.primary_flatten;
  bool json = false;
  std::string out;
  int groups = 0;                 // the model's expert groups (0: not placing by groups)
  std::string groups_from_model;  // or: a model directory whose config.json gives n_group
};

// The number of expert groups to place by: --groups, or n_group of --groups-from-model's
// config.json (0 when neither is given).
int expert_groups(const PlaceArgs& args, const Trace& trace) {
  if (args.groups_from_model.empty()) return args.groups;
  const std::string path = args.groups_from_model + "/config.json";
  const ModelConfig config = load_model_config(path);
  OCCULT_CHECK(config.n_group > 1,
               "--groups-from-model {}: the model routes without expert groups (n_group = {}); give --groups G",
               args.groups_from_model, config.n_group);
  OCCULT_CHECK(config.num_experts == trace.num_experts,
               "--groups-from-model {}: the model has {} routed experts but the traces have {}", args.groups_from_model,
               config.num_experts, trace.num_experts);
  return config.n_group;
}

Trace load_calibration(const std::vector<std::string>& paths) {
  std::vector<Trace> traces;
  for (const std::string& path : paths) traces.push_back(load_trace(path));
  if (traces.size() == 1) return std::move(traces.front());
  return concatenate_traces(traces, paths);
}

std::string f3(double v) { return fmt::format("{:.3f}", v); }

void run_place(const PlaceArgs& args) {
  const auto start = std::chrono::steady_clock::now();
  const Trace trace = load_calibration(args.traces);
  PartitionOptions options;
  options.num_devices = args.devices;
  options.num_nodes = args.nodes;
  options.seed = args.seed;
  options.max_imbalance = args.max_imbalance;
  options.num_restarts = args.restarts;
  options.slots_per_device = args.slots_per_device;
  options.replica_chunks = args.replica_chunks;
  options.replica_flatten = args.replica_flatten;
  options.primary_flatten = args.primary_flatten;
  const bool slots = args.slots_per_device > 0;
  const bool all = args.strategy == "all";
  std::vector<std::string> strategies = all ? partitioner_names()
                                            : std::vector<std::string>{args.strategy};
  if (!all) make_partitioner(args.strategy);  // fail on a bad name before any work
  // With groups, the group placement is the one written and is compared, in the strategies
  // table, with the strategy (or strategies) placed on the same traces.
  const int groups = expert_groups(args, trace);
  OCCULT_CHECK(groups >= 0, "--groups must be >= 1, got {}", groups);
  if (groups > 0) {
    group_placement(trace.num_experts, groups, args.devices);  // fail on bad counts before any work
    OCCULT_CHECK(!slots, "--groups places whole groups without replicas; drop --slots-per-device");
    strategies.insert(strategies.begin(), "groups");
  }
  const bool compare = all || groups > 0;
  const bool with_nodes = args.nodes > 1;

  // The written placement: the chosen strategy, or the default one under `all`.
  Placement written;
  nlohmann::json json_out;
  // The nodes/token column appears only when the placement has several nodes; it goes just
  // before the last (time) column.
  auto node_column = [with_nodes](std::vector<std::string> row, std::string node_cell) {
    if (with_nodes) row.insert(row.end() - 1, std::move(node_cell));
    return row;
  };
  // With slots, the primaries' own C_T and the copies added follow the C_T column (position).
  auto slot_columns = [slots](std::vector<std::string> row, std::size_t position, std::string primary_cell,
                              std::string copies_cell) {
    if (slots) {
      row.insert(row.begin() + static_cast<std::ptrdiff_t>(position), std::move(copies_cell));
      row.insert(row.begin() + static_cast<std::ptrdiff_t>(position), std::move(primary_cell));
    }
    return row;
  };
  TextTable comparison(slot_columns(node_column({"strategy", "C_T", "remote C_T", "intra ratio",
                                                "imbalance mean", "imbalance max", "within limit", "seconds"},
                                               "nodes/token"),
                                   2, "C_T primaries", "copies"));
  for (const std::string& strategy : strategies) {
    ProgressBar progress(fmt::format("place {}", strategy), trace.num_layers(), !args.json);
    const auto t0 = std::chrono::steady_clock::now();
    Placement placement =
        strategy == "groups"
            ? place_expert_groups(trace, groups, options)
            : place_experts(trace, strategy, options, args.cross_layer, [&](int layer, int done, double) {
                progress.update(done, fmt::format("layer {}", layer));
              });
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    progress.finish(fmt::format("{:.2f} s", seconds));
    std::vector<PlacementMetrics> per_layer;
    double primary_ct = 0;
    std::int64_t copies = 0;
    for (const LayerPlacement& lp : placement.layers) {
      if (slots) {
        primary_ct += lp.metrics["primary_replicas_per_token"].get<double>() / placement.layers.size();
        copies += lp.metrics["replica_copies"].get<std::int64_t>();
      }
      PlacementMetrics m;
      m.replicas_per_token = lp.metrics["replicas_per_token"];
      m.remote_replicas_per_token = lp.metrics["remote_replicas_per_token"];
      m.intra_collab_ratio = lp.metrics["intra_collab_ratio"];
      m.load_imbalance = lp.metrics["load_imbalance"];
      if (with_nodes) m.nodes_per_token = lp.metrics["nodes_per_token"];
      per_layer.push_back(m);
    }
    const PlacementMetrics mean = mean_metrics(per_layer);
    double max_imbalance = 0;
    for (const PlacementMetrics& m : per_layer) max_imbalance = std::max(max_imbalance, m.load_imbalance);

    if (compare) {
      // Only some strategies balance load; the column says which ones kept every layer within
      // --max-imbalance on the calibration traces (a margin absorbs the rounding of the load ratio).
      const bool within_limit = max_imbalance <= args.max_imbalance + 1e-9;
      comparison.add_row(slot_columns(
          node_column({strategy, f3(mean.replicas_per_token), f3(mean.remote_replicas_per_token),
                       f3(mean.intra_collab_ratio), f3(mean.load_imbalance), f3(max_imbalance),
                       within_limit ? "yes" : "no", fmt::format("{:.2f}", seconds)},
                      f3(mean.nodes_per_token)),
          2, f3(primary_ct), std::to_string(copies)));
      nlohmann::json entry = {{"strategy", strategy},
                              {"mean", metrics_to_json(mean, with_nodes)},
                              {"max_load_imbalance", max_imbalance},
                              {"within_max_imbalance", within_limit},
                              {"seconds", seconds}};
      if (slots) {
        entry["primary_replicas_per_token"] = primary_ct;
        entry["replica_copies"] = copies;
      }
      json_out["strategies"].push_back(entry);
    } else {
      json_out["strategy"] = strategy;
      json_out["layers"] = nlohmann::json::array();
      for (const LayerPlacement& lp : placement.layers) {
        nlohmann::json row = lp.metrics;
        row["layer"] = lp.layer;
        json_out["layers"].push_back(row);
      }
      json_out["mean"] = metrics_to_json(mean, with_nodes);
      json_out["max_load_imbalance"] = max_imbalance;
      json_out["seconds"] = seconds;
      if (slots) {
        json_out["primary_replicas_per_token"] = primary_ct;
        json_out["replica_copies"] = copies;
      }
      if (!args.json) {
        TextTable table(slot_columns(
            node_column({"layer", "C_T", "remote C_T", "intra ratio", "imbalance", "ms"}, "nodes/token"), 2,
            "C_T primaries", "copies"));
        for (std::size_t l = 0; l < placement.layers.size(); ++l) {
          const PlacementMetrics& m = per_layer[l];
          const nlohmann::json& lm = placement.layers[l].metrics;
          table.add_row(slot_columns(
              node_column({std::to_string(placement.layers[l].layer), f3(m.replicas_per_token),
                           f3(m.remote_replicas_per_token), f3(m.intra_collab_ratio), f3(m.load_imbalance),
                           fmt::format("{:.1f}", 1e3 * lm["seconds"].get<double>())},
                          f3(m.nodes_per_token)),
              2, slots ? f3(lm["primary_replicas_per_token"].get<double>()) : "",
              slots ? std::to_string(lm["replica_copies"].get<std::int64_t>()) : ""));
        }
        table.add_rule();
        table.add_row(slot_columns(
            node_column({"mean", f3(mean.replicas_per_token), f3(mean.remote_replicas_per_token),
                         f3(mean.intra_collab_ratio), f3(mean.load_imbalance),
                         fmt::format("{:.1f}", 1e3 * seconds / placement.layers.size())},
                        f3(mean.nodes_per_token)),
            2, f3(primary_ct), std::to_string(copies)));
        fmt::print("{}", table.render());
      }
    }
    const std::string chosen = groups > 0 ? "groups" : all ? std::string(kDefaultStrategy) : args.strategy;
    if (strategy == chosen) written = std::move(placement);
  }
  save_placement(written, args.out);
  const double total =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (args.json) {
    json_out["out"] = args.out;
    json_out["top_k"] = trace.top_k;
    std::cout << json_out.dump(2) << "\n";
    return;
  }
  if (compare) fmt::print("{}", comparison.render());
  const std::vector<PlacementMetrics> m = evaluate_placement(trace, written, args.out, "calibration");
  const PlacementMetrics mean = mean_metrics(m);
  double max_imbalance = 0;
  for (const PlacementMetrics& x : m) max_imbalance = std::max(max_imbalance, x.load_imbalance);
  fmt::print(
      "placed {} layers x {} experts on {} devices{}{}{} with '{}': mean replicas_per_token {:.3f} "
      "(of top-k {}), max load_imbalance {:.3f}; wrote {} ({:.2f} s)\n",
      trace.num_layers(), trace.num_experts, args.devices,
      with_nodes ? fmt::format(" ({} nodes)", args.nodes) : "",
      slots ? fmt::format(" x {} slots", args.slots_per_device) : "",
      groups > 0 ? fmt::format(" in {} groups of {}", groups, trace.num_experts / groups) : "", written.strategy,
      mean.replicas_per_token, trace.top_k, max_imbalance, args.out, total);
}

void setup_place(CLI::App& root) {
  auto args = std::make_shared<PlaceArgs>();
  CLI::App* cmd = root.add_subcommand(
      "place", "Calibrate an expert placement on routing traces and write it as JSON");
  cmd->add_option("--traces", args->traces, "Calibration trace file(s); repeat to concatenate")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--devices", args->devices, "Expert-parallel devices D")->required();
  cmd->add_option("--nodes", args->nodes, "Nodes N (devices [n*D/N, (n+1)*D/N) form node n)")
      ->capture_default_str();
  cmd->add_option("--strategy", args->strategy,
                  "contiguous | random | greedy-fps | metis | hypergraph (default) | all")
      ->capture_default_str();
  cmd->add_option("--max-imbalance", args->max_imbalance,
                  "hypergraph: max device load / mean on the calibration traces")
      ->capture_default_str();
  cmd->add_option("--seed", args->seed, "Seed for random, metis and hypergraph")
      ->capture_default_str();
  cmd->add_option("--restarts", args->restarts, "hypergraph: perturb-and-refine rounds per layer")
      ->capture_default_str();
  cmd->add_flag("--cross-layer", args->cross_layer,
                "hypergraph: also start each layer from the previous layer's placement");
  cmd->add_option("--slots-per-device", args->slots_per_device,
                  "Experts each device may hold (>= ceil(E/D)); spare slots hold replicas chosen for "
                  "fewer devices per token and load (0: no replicas)")
      ->capture_default_str();
  cmd->add_option("--replica-chunks", args->replica_chunks,
                  "Replicas: the load limit must hold on each of this many parts of the calibration trace")
      ->capture_default_str();
  cmd->add_option("--replica-flatten", args->replica_flatten,
                  "Replicas: rank copies with each calibration token weighted by (mean expert load / load)^B "
                  "over its experts, so copies follow co-activation more than the calibration text's popular "
                  "experts (0: tokens as they are; B in [0, 1])")
      ->capture_default_str();
  cmd->add_option("--primary-flatten", args->primary_flatten,
                  "Place primaries on the collaboration graph weighted as --replica-flatten does with this "
                  "exponent (0: tokens as they are; B in [0, 1]); loads stay the tokens' own")
      ->capture_default_str();
  auto* groups = cmd->add_option("--groups", args->groups,
                                 "Place the model's G expert groups (E/G consecutive ids, DeepSeek's n_group) whole "
                                 "on devices (G a multiple of D, or D of G); writes that placement and compares its "
                                 "C_T with --strategy's on the same traces");
  cmd->add_option("--groups-from-model", args->groups_from_model,
                  "As --groups, with G = n_group of this model directory's config.json")
      ->excludes(groups);
  cmd->add_flag("--json", args->json, "Machine-readable summary on stdout");
  cmd->add_option("--out", args->out,
                  "Placement JSON to write (under `all`: the default strategy's; with --groups: the group placement)")
      ->required();
  cmd->callback([args] { run_place(*args); });
}

OCCULT_REGISTER_COMMAND("place", setup_place);

}  // namespace place_command

}  // namespace occult::cli
