// Replicas on real routing: calibrate on --trace, evaluate held-out on --heldout, at every
// D in --devices and S in ceil(E/D) + --extra-slots. For each: the default (hypergraph)
// placement without replicas and with S slots per device, their mean C_T, remote C_T and
// load imbalance on both traces (held-out imbalance: mean and max over layers) and the CPU
// time to place all layers. Single-threaded.
//
//   build/bench/placement/bench_replicas [--trace F] [--heldout F] [--devices 4 8]
//       [--extra-slots 1 2] [--max-imbalance 1.10] [--replica-chunks 4]
//       [--replica-flatten 0.5] [--primary-flatten 0] [--oracle] [--seed 0]
//       [--json]
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "occult/core/error.h"
#include "occult/core/table.h"
#include "occult/placement/place.h"
#include "occult/placement/replicate.h"
#include "thread_time.h"

namespace {

using namespace occult;
using occult::bench::thread_seconds;

struct Measured {
  PlacementMetrics calib, heldout;
  double heldout_max_imbalance = 0;
  double seconds = 0;
};

Measured measure(const Trace& calib, const Trace& heldout, const PartitionOptions& options) {
  Measured m;
  const double t0 = thread_seconds();
  const Placement p = place_experts(calib, std::string(kDefaultStrategy), options);
  m.seconds = thread_seconds() - t0;
  m.calib = mean_metrics(evaluate_placement(calib, p));
  const std::vector<PlacementMetrics> layers = evaluate_placement(heldout, p);
  m.heldout = mean_metrics(layers);
  for (const PlacementMetrics& x : layers) m.heldout_max_imbalance = std::max(m.heldout_max_imbalance, x.load_imbalance);
  return m;
}

// Bounds that use what a placement cannot know: "oracle loads" places primaries (no slots) on
// the calibration co-activation with each expert's load taken from the held-out trace (scaled
// to the calibration's token count); "oracle replicas" keeps the calibration primaries (no-slot
// default placement) and chooses the replicas on the held-out routing, unflattened. Both
// evaluated held-out.
struct Oracle {
  PlacementMetrics loads, replicas;
};

Oracle oracle(const Trace& calib, const Trace& heldout, const PartitionOptions& options) {
  const auto partitioner = make_partitioner(kDefaultStrategy);
  PartitionOptions primary = options;
  primary.slots_per_device = 0;
  primary.primary_flatten = 0;
  // Replicas fitted to the held-out text itself: no flattening (it trades in-sample C_T for
  // robustness to other text).
  PartitionOptions in_sample = options;
  in_sample.replica_flatten = 0;
  std::vector<PlacementMetrics> loads, replicas;
  const double scale = static_cast<double>(calib.num_tokens()) / static_cast<double>(heldout.num_tokens());
  for (int l = 0; l < calib.num_layers(); ++l) {
    const CollaborationGraph graph = build_collaboration_graph(calib.layers[l], calib.num_experts);
    const std::vector<int> e2d = partitioner->partition(graph, primary);
    const CollaborationGraph held = build_collaboration_graph(heldout.layers[l], calib.num_experts);
    CollaborationGraph known = graph;
    for (int x = 0; x < calib.num_experts; ++x) known.load[x] = std::llround(static_cast<double>(held.load[x]) * scale);
    loads.push_back(compute_placement_metrics(heldout.layers[l], partitioner->partition(known, primary),
                                              options.num_devices, options.num_nodes));
    const auto de = choose_replicas(heldout.layers[l], calib.num_experts, e2d, in_sample);
    replicas.push_back(
        compute_replica_metrics(heldout.layers[l], holders_from_device_experts(de, e2d), options.num_nodes));
  }
  return {mean_metrics(loads), mean_metrics(replicas)};
}

nlohmann::json to_json(const Measured& m) {
  return {{"calibration", metrics_to_json(m.calib, false)},
          {"heldout", metrics_to_json(m.heldout, false)},
          {"heldout_max_load_imbalance", m.heldout_max_imbalance},
          {"seconds", m.seconds}};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("Replica placement on real routing: C_T and load, calibration vs held-out");
  std::string trace_path = "data/traces/dsv2lite-esft-intent.safetensors";
  std::string heldout_path = "data/traces/dsv2lite-esft-law.safetensors";
  std::vector<int> devices = {4, 8};
  std::vector<int> extra_slots = {1, 2};
  PartitionOptions base;
  double primary_flatten = 0.0;
  bool json = false;
  bool with_oracle = false;
  app.add_option("--trace", trace_path, "Calibration trace")->capture_default_str();
  app.add_option("--heldout", heldout_path, "Held-out trace")->capture_default_str();
  app.add_option("--devices", devices, "Device counts D")->capture_default_str();
  app.add_option("--extra-slots", extra_slots, "Slots per device beyond ceil(E/D)")->capture_default_str();
  app.add_option("--max-imbalance", base.max_imbalance, "Load limit on calibration")->capture_default_str();
  app.add_option("--replica-chunks", base.replica_chunks, "Parts of the calibration the limit must hold on")
      ->capture_default_str();
  app.add_option("--replica-flatten", base.replica_flatten, "Popularity flattening of replica gains")
      ->capture_default_str();
  app.add_option("--primary-flatten", primary_flatten,
                 "Popularity flattening of the graph the primaries of the rows with slots are placed on "
                 "(the rows without slots stay the default placement)")
      ->capture_default_str();
  app.add_option("--seed", base.seed, "Placement seed")->capture_default_str();
  app.add_flag("--json", json, "JSON on stdout");
  app.add_flag("--oracle", with_oracle,
               "Also the bounds that know the held-out trace: its expert loads for the primaries, its "
               "routing for the replicas (at the largest S)");
  CLI11_PARSE(app, argc, argv);
  try {
    const Trace calib = load_trace(trace_path);
    const Trace heldout = load_trace(heldout_path);
    const int e = calib.num_experts;
    auto f3 = [](double v) { return fmt::format("{:.3f}", v); };
    TextTable table({"D", "S", "C_T calib", "C_T held-out", "x no replicas", "remote C_T held-out",
                     "imbalance calib (mean)", "imbalance held-out (mean)", "imbalance held-out (max)", "seconds"});
    nlohmann::json out = {{"trace", trace_path}, {"heldout", heldout_path}, {"results", nlohmann::json::array()}};
    for (const int d : devices) {
      PartitionOptions options = base;
      options.num_devices = d;
      options.slots_per_device = 0;
      const Measured plain = measure(calib, heldout, options);
      auto row = [&](const std::string& slots, const Measured& m) {
        table.add_row({std::to_string(d), slots, f3(m.calib.replicas_per_token), f3(m.heldout.replicas_per_token),
                       f3(m.heldout.replicas_per_token / plain.heldout.replicas_per_token),
                       f3(m.heldout.remote_replicas_per_token), f3(m.calib.load_imbalance),
                       f3(m.heldout.load_imbalance), f3(m.heldout_max_imbalance), fmt::format("{:.2f}", m.seconds)});
      };
      row("- (none)", plain);
      out["results"].push_back({{"devices", d}, {"slots_per_device", 0}, {"result", to_json(plain)}});
      for (const int extra : extra_slots) {
        options.slots_per_device = (e + d - 1) / d + extra;
        options.primary_flatten = primary_flatten;
        const Measured m = measure(calib, heldout, options);
        row(std::to_string(options.slots_per_device), m);
        out["results"].push_back(
            {{"devices", d}, {"slots_per_device", options.slots_per_device}, {"result", to_json(m)}});
      }
      if (with_oracle) {
        const Oracle o = oracle(calib, heldout, options);
        auto bound = [&](const std::string& what, const std::string& slots, const PlacementMetrics& m) {
          table.add_row({std::to_string(d), slots + " " + what, "-", f3(m.replicas_per_token),
                         f3(m.replicas_per_token / plain.heldout.replicas_per_token), f3(m.remote_replicas_per_token), "-",
                         f3(m.load_imbalance), "-", "-"});
          out["results"].push_back({{"devices", d},
                                    {"slots_per_device", slots},
                                    {"oracle", what},
                                    {"heldout", metrics_to_json(m, false)}});
        };
        bound("oracle loads", "none", o.loads);
        bound("oracle replicas", std::to_string(options.slots_per_device), o.replicas);
      }
      table.add_rule();
    }
    if (json) {
      std::cout << out.dump(2) << "\n";
    } else {
      fmt::print("calibration {} ({} tokens), held-out {} ({} tokens); --max-imbalance {}, --replica-chunks {}, --replica-flatten {}, --primary-flatten {}\n",
                 trace_path, calib.num_tokens(), heldout_path, heldout.num_tokens(), base.max_imbalance,
                 base.replica_chunks, base.replica_flatten, primary_flatten);
      fmt::print("{}", table.render());
    }
  } catch (const occult::Error& error) {
    std::cerr << "bench_replicas: error: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
