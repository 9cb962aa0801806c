// Placement speed and quality against the placement targets. Single-threaded.
//
//   speed (real):      all layers of one shipped trace at D devices with the default strategy,
//                      medians over repeats after a warm-up, greedy-fps and metis in the same run;
//   speed (synthetic): L layers x E experts x T tokens, top-k (default 64 x 256 x 100k, k=8);
//   quality:           calibrate every strategy on --trace, evaluate on --heldout, at each D in
//                      --quality-devices: mean replicas_per_token (calibration, held-out) and
//                      load_imbalance (max over layers on calibration; mean on held-out).
//
//   build/bench/placement/bench_place [--trace F] [--heldout F] [--devices 8] [--repeats 5]
//       [--synthetic-layers 64 --synthetic-experts 256 --synthetic-tokens 100000 --synthetic-top-k 8]
//       [--synthetic-repeats 1] [--skip-real] [--skip-synthetic] [--skip-quality] [--json]
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "occult/core/error.h"
#include "occult/core/progress.h"
#include "occult/core/table.h"
#include "occult/placement/place.h"
#include "thread_time.h"
#include "occult/routing/synth.h"

namespace {

using namespace occult;
using occult::bench::thread_seconds;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Timed {
  double median_s = 0;
  double min_s = 0;
  Placement placement;
};

// Median CPU seconds to place every layer of `trace` with `strategy`, after `warmups` runs.
Timed time_placement(const Trace& trace, const std::string& strategy, const PartitionOptions& o,
                     int warmups, int repeats) {
  Timed t;
  for (int i = 0; i < warmups; ++i) place_experts(trace, strategy, o);
  std::vector<double> seconds;
  for (int i = 0; i < repeats; ++i) {
    const double start = thread_seconds();
    t.placement = place_experts(trace, strategy, o);
    seconds.push_back(thread_seconds() - start);
  }
  t.median_s = median(seconds);
  t.min_s = *std::min_element(seconds.begin(), seconds.end());
  return t;
}

struct Summary {
  double mean_ct = 0, max_imbalance = 0, mean_imbalance = 0;
};
Summary summarize(const Trace& trace, const Placement& placement) {
  const std::vector<PlacementMetrics> layers = evaluate_placement(trace, placement);
  Summary s;
  s.mean_ct = mean_metrics(layers).replicas_per_token;
  s.mean_imbalance = mean_metrics(layers).load_imbalance;
  for (const PlacementMetrics& m : layers) s.max_imbalance = std::max(s.max_imbalance, m.load_imbalance);
  return s;
}

std::string f3(double v) { return fmt::format("{:.3f}", v); }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Placement speed and quality benchmark"};
  std::string trace_path = "data/traces/dsv2lite-esft-intent.safetensors";
  std::string heldout_path = "data/traces/dsv2lite-esft-law.safetensors";
  int devices = 8;
  int repeats = 5;
  int syn_layers = 64, syn_experts = 256, syn_top_k = 8, syn_repeats = 1;
  std::int64_t syn_tokens = 100000;
  std::vector<int> quality_devices = {4, 8};
  bool skip_real = false, skip_synthetic = false, skip_quality = false, json = false;
  app.add_option("--trace", trace_path, "Calibration trace (speed and quality)");
  app.add_option("--heldout", heldout_path, "Held-out trace (quality)");
  app.add_option("--devices", devices, "Devices for the speed runs");
  app.add_option("--repeats", repeats, "Timed repeats of the real-trace runs (after 1 warm-up)");
  app.add_option("--synthetic-layers", syn_layers);
  app.add_option("--synthetic-experts", syn_experts);
  app.add_option("--synthetic-tokens", syn_tokens);
  app.add_option("--synthetic-top-k", syn_top_k);
  app.add_option("--synthetic-repeats", syn_repeats, "Timed repeats of the synthetic run (no warm-up)");
  app.add_option("--quality-devices", quality_devices);
  app.add_flag("--skip-real", skip_real);
  app.add_flag("--skip-synthetic", skip_synthetic);
  app.add_flag("--skip-quality", skip_quality);
  app.add_flag("--json", json);
  CLI11_PARSE(app, argc, argv);

  try {
    nlohmann::json out;
    PartitionOptions options;
    options.num_devices = devices;

    if (!skip_real) {
      const Trace trace = load_trace(trace_path);
      TextTable table({"strategy", "median s", "min s", "ms/layer", "x greedy-fps time",
                       "C_T", "max imbalance"});
      double greedy_s = 0;
      for (const std::string strategy : {"greedy-fps", "metis", "hypergraph"}) {
        const Timed t = time_placement(trace, strategy, options, 1, repeats);
        if (strategy == "greedy-fps") greedy_s = t.median_s;
        const Summary s = summarize(trace, t.placement);
        table.add_row({strategy, fmt::format("{:.3f}", t.median_s), fmt::format("{:.3f}", t.min_s),
                       fmt::format("{:.1f}", 1e3 * t.median_s / trace.num_layers()),
                       fmt::format("{:.1f}", t.median_s / greedy_s), f3(s.mean_ct),
                       f3(s.max_imbalance)});
        out["real"].push_back({{"strategy", strategy}, {"median_s", t.median_s}, {"min_s", t.min_s},
                               {"layers", trace.num_layers()}, {"mean_replicas_per_token", s.mean_ct},
                               {"max_load_imbalance", s.max_imbalance}});
      }
      if (!json) {
        fmt::print("speed, real trace {} ({} layers x {} experts x {} tokens, k={}), D={}, "
                   "CPU seconds, median of {} after 1 warm-up:\n{}\n",
                   trace_path, trace.num_layers(), trace.num_experts, trace.num_tokens(),
                   trace.top_k, devices, repeats, table.render());
      }
    }

    if (!skip_synthetic) {
      SynthOptions so;
      so.num_layers = syn_layers;
      so.num_experts = syn_experts;
      so.num_tokens = syn_tokens;
      so.top_k = syn_top_k;
      so.num_groups = devices;
      so.group_affinity = 0.6;
      so.hot_experts = syn_experts / 16;
      so.seed = 1;
      ProgressBar gen("synthesize", syn_layers, !json);
      const SynthTrace synth = synthesize_trace(so, [&](int l) { gen.update(l + 1); });
      gen.finish();
      TextTable table({"strategy", "median s", "min s", "ms/layer", "C_T", "max imbalance"});
      for (const std::string strategy : {"greedy-fps", "hypergraph"}) {
        const Timed t = time_placement(synth.trace, strategy, options, 0, syn_repeats);
        const Summary s = summarize(synth.trace, t.placement);
        table.add_row({strategy, fmt::format("{:.2f}", t.median_s), fmt::format("{:.2f}", t.min_s),
                       fmt::format("{:.0f}", 1e3 * t.median_s / syn_layers), f3(s.mean_ct),
                       f3(s.max_imbalance)});
        out["synthetic"].push_back({{"strategy", strategy}, {"median_s", t.median_s},
                                    {"layers", syn_layers}, {"experts", syn_experts},
                                    {"tokens", syn_tokens}, {"top_k", syn_top_k},
                                    {"mean_replicas_per_token", s.mean_ct},
                                    {"max_load_imbalance", s.max_imbalance}});
      }
      if (!json) {
        fmt::print("speed, synthetic {} layers x {} experts x {} tokens, k={} ({} planted groups, "
                   "{} hot experts), D={}, CPU seconds, median of {}:\n{}\n",
                   syn_layers, syn_experts, syn_tokens, syn_top_k, so.num_groups, so.hot_experts,
                   devices, syn_repeats, table.render());
      }
    }

    if (!skip_quality) {
      const Trace calibration = load_trace(trace_path);
      const Trace heldout = load_trace(heldout_path);
      for (int d : quality_devices) {
        PartitionOptions o;
        o.num_devices = d;
        TextTable table({"strategy", "C_T calib", "C_T held-out", "imbalance calib max",
                         "imbalance held-out mean", "held-out vs hypergraph"});
        std::vector<std::pair<std::string, std::pair<Summary, Summary>>> rows;
        for (const std::string& strategy : partitioner_names()) {
          const Placement p = place_experts(calibration, strategy, o);
          rows.push_back({strategy, {summarize(calibration, p), summarize(heldout, p)}});
        }
        const double ours = rows.back().second.second.mean_ct;
        for (const auto& [strategy, s] : rows) {
          table.add_row({strategy, f3(s.first.mean_ct), f3(s.second.mean_ct),
                         f3(s.first.max_imbalance), f3(s.second.mean_imbalance),
                         fmt::format("{:+.1f}%", 100.0 * (s.second.mean_ct / ours - 1))});
          out["quality"].push_back({{"devices", d}, {"strategy", strategy},
                                    {"calibration_replicas_per_token", s.first.mean_ct},
                                    {"heldout_replicas_per_token", s.second.mean_ct},
                                    {"calibration_max_load_imbalance", s.first.max_imbalance},
                                    {"heldout_mean_load_imbalance", s.second.mean_imbalance}});
        }
        if (!json) {
          fmt::print("quality, D={}: calibrate on {}, evaluate on {} (mean over {} layers):\n{}\n", d,
                     trace_path, heldout_path, calibration.num_layers(), table.render());
        }
      }
    }
    if (json) std::cout << out.dump(2) << "\n";
  } catch (const occult::Error& e) {
    fmt::print(stderr, "bench_place: error: {}\n", e.message());
    return 1;
  }
  return 0;
}
