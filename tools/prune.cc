// `occult prune`: collaboration pruning of a routing trace against a placement (DESIGN.md,
// "Collaboration pruning"): every token keeps k experts on at most M devices. Writes the pruned
// trace (same format, so `occult evaluate` reads it) and reports what pruning cost.
#include <fmt/format.h>

#include <chrono>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "command_registry.h"
#include "occult/core/error.h"
#include "occult/core/progress.h"
#include "occult/core/table.h"
#include "occult/placement/metrics.h"
#include "occult/placement/place.h"
#include "occult/placement/placement.h"
#include "occult/routing/pruning.h"
#include "occult/routing/similarity.h"
#include "occult/routing/trace.h"

namespace occult::cli {
namespace prune_command {

struct PruneArgs {
  std::string traces;
  std::string placement;
  std::string max_devices;
  std::string scheme = "score";
  std::string weights = "keep";
  int max_nodes = 0;
  bool norm_topk_prob = false;
  std::string similarity;
  std::vector<std::string> calibration;
  std::string save_similarity;
  std::string embed_similarity;
  bool json = false;
  std::string out;
};

// One layer's result at one budget.
struct LayerResult {
  PruneStats stats;
  double load_imbalance_after = 0;
};

// The per-layer row of the report.
struct Row {
  double ct_before = 0, ct_after = 0, tokens_changed = 0, selections_replaced = 0, retained_mass = 0,
         imbalance_after = 0;
};

Row row_of(const LayerResult& r, int top_k) {
  return {r.stats.replicas_per_token_before(), r.stats.replicas_per_token_after(),
          r.stats.fraction_tokens_changed(),   r.stats.fraction_selections_replaced(top_k),
          r.stats.retained_gate_mass(),        r.load_imbalance_after};
}

Row mean_of(const std::vector<Row>& rows) {
  Row m;
  for (const Row& r : rows) {
    m.ct_before += r.ct_before;
    m.ct_after += r.ct_after;
    m.tokens_changed += r.tokens_changed;
    m.selections_replaced += r.selections_replaced;
    m.retained_mass += r.retained_mass;
    m.imbalance_after += r.imbalance_after;
  }
  const double n = rows.empty() ? 1.0 : static_cast<double>(rows.size());
  m.ct_before /= n;
  m.ct_after /= n;
  m.tokens_changed /= n;
  m.selections_replaced /= n;
  m.retained_mass /= n;
  m.imbalance_after /= n;
  return m;
}

nlohmann::json row_json(const Row& r) {
  return {{"replicas_per_token_before", r.ct_before}, {"replicas_per_token_after", r.ct_after},
          {"fraction_tokens_changed", r.tokens_changed},
          {"fraction_selections_replaced", r.selections_replaced},
          {"retained_gate_mass", r.retained_mass}, {"load_imbalance_after", r.imbalance_after}};
}

std::vector<std::string> row_cells(const Row& r) {
  return {fmt::format("{:.3f}", r.ct_before),      fmt::format("{:.3f}", r.ct_after),
          fmt::format("{:.4f}", r.tokens_changed), fmt::format("{:.4f}", r.selections_replaced),
          fmt::format("{:.4f}", r.retained_mass),  fmt::format("{:.3f}", r.imbalance_after)};
}

const std::vector<std::string> kColumns = {"C_T before", "C_T after",      "tokens changed",
                                           "sel. replaced", "retained mass", "imbalance after"};

void run_prune(const PruneArgs& args) {
  const auto start = std::chrono::steady_clock::now();
  const std::optional<PruneScheme> scheme = parse_prune_scheme(args.scheme);
  OCCULT_CHECK(scheme.has_value(), "--scheme must be score, similarity or device-limited, got '{}'",
               args.scheme);
  const std::optional<PruneWeights> weights = parse_prune_weights(args.weights);
  OCCULT_CHECK(weights.has_value(), "--weights must be keep or recompute, got '{}'", args.weights);

  const Trace trace = load_trace(args.traces);
  const Placement placement = load_placement(args.placement, ReplicaPolicy::kAllow);
  check_placement_matches_trace(placement, trace, args.placement, args.traces);
  // With replicas a token may be served by any holder: pruning and the load use the holders.
  const bool replicas = placement.has_replicas();
  std::vector<ExpertHolders> holders;
  for (int l = 0; replicas && l < trace.num_layers(); ++l) holders.push_back(layer_holders(placement, placement.layer(l)));
  const int d = placement.num_devices;
  const int k = trace.top_k;
  const int e = trace.num_experts;

  // Without --max-devices prune only computes and writes the expert similarity.
  const bool similarity_only = args.max_devices.empty();
  OCCULT_CHECK(!similarity_only || !args.embed_similarity.empty() || !args.save_similarity.empty(),
               "--max-devices is required (a budget M, or 'all'), unless the command only writes the expert "
               "similarity (--embed-similarity OUT.json or --save-similarity OUT.safetensors)");
  OCCULT_CHECK(!similarity_only || args.out.empty(), "--out writes a pruned trace: give --max-devices M too");
  std::vector<int> budgets;
  const bool all = args.max_devices == "all";
  if (all) {
    for (int m = 1; m <= d; ++m) budgets.push_back(m);
  } else if (!similarity_only) {
    int m = 0;
    try {
      std::size_t used = 0;
      m = std::stoi(args.max_devices, &used);
      OCCULT_CHECK(used == args.max_devices.size(), "bad");
    } catch (const std::exception&) {
      OCCULT_FAIL("--max-devices must be an integer in [1, {}] or 'all', got '{}'", d, args.max_devices);
    }
    OCCULT_CHECK(m >= 1 && m <= d, "--max-devices must be in [1, num_devices={}] of {}, got {}", d,
                 args.placement, m);
    budgets.push_back(m);
  }
  OCCULT_CHECK(args.out.empty() || !all, "--out writes one pruned trace: give a single --max-devices, not 'all'");
  OCCULT_CHECK(args.max_nodes == 0 || (args.max_nodes >= 1 && args.max_nodes <= placement.num_nodes),
               "--max-nodes must be in [1, num_nodes={}] of {}, got {}", placement.num_nodes,
               args.placement, args.max_nodes);

  // Expert similarity, for the similarity scheme: a sidecar file, else the placement's, else
  // computed from calibration traces (by default the pruned trace itself).
  std::vector<std::vector<float>> similarity(trace.num_layers());
  std::string similarity_source = "none";
  const bool need_similarity = *scheme == PruneScheme::kSimilarity || !args.save_similarity.empty() ||
                               !args.embed_similarity.empty();
  if (need_similarity) {
    const bool placement_has = std::all_of(placement.layers.begin(), placement.layers.end(),
                                           [](const LayerPlacement& lp) { return !lp.similarity.empty(); });
    if (!args.similarity.empty()) {
      similarity = load_similarity(args.similarity, e, trace.num_layers());
      similarity_source = args.similarity;
    } else if (placement_has && args.calibration.empty()) {
      for (int l = 0; l < trace.num_layers(); ++l) similarity[l] = placement.layer(l).similarity;
      similarity_source = args.placement;
    } else {
      const std::vector<std::string> paths = args.calibration.empty() ? std::vector<std::string>{args.traces}
                                                                     : args.calibration;
      std::vector<Trace> calibration;
      for (const std::string& path : paths) {
        calibration.push_back(path == args.traces ? trace : load_trace(path));
      }
      SimilaritySource source;
      similarity = trace_similarity(calibration, paths, &source);
      similarity_source = fmt::format("{} of {}",
                                      source == SimilaritySource::kRouterProbs ? "router-probability columns"
                                                                               : "collaboration-graph rows",
                                      fmt::join(paths, ", "));
    }
    if (!args.save_similarity.empty()) save_similarity(args.save_similarity, similarity, e);
    if (!args.embed_similarity.empty()) {
      Placement with = placement;
      for (LayerPlacement& lp : with.layers) lp.similarity = similarity.at(lp.layer);
      save_placement(with, args.embed_similarity);
    }
  }
  if (similarity_only) {
    if (args.json) {
      std::cout << nlohmann::json{{"similarity_from", similarity_source},
                                  {"embedded_in", args.embed_similarity},
                                  {"saved_to", args.save_similarity}}
                       .dump()
                << "\n";
      return;
    }
    std::string written = args.embed_similarity;
    if (!args.save_similarity.empty()) written += (written.empty() ? "" : " and ") + args.save_similarity;
    fmt::print("expert similarity of {} layers x {} experts from {}; wrote {}\n", trace.num_layers(), e,
               similarity_source, written);
    return;
  }

  PruneWorkspace workspace;
  Trace pruned_trace;
  std::vector<std::vector<LayerResult>> results(budgets.size());
  std::vector<std::string> infeasible(budgets.size());  // non-empty: why budget b cannot be met
  double prune_seconds = 0;
  std::int64_t pruned_tokens = 0;
  ProgressBar progress("prune", static_cast<std::int64_t>(budgets.size()) * trace.num_layers(), !args.json);
  for (std::size_t b = 0; b < budgets.size(); ++b) {
    PruneConfig config;
    config.num_experts = e;
    config.top_k = k;
    config.num_devices = d;
    config.max_devices = budgets[b];
    config.num_nodes = placement.num_nodes;
    config.max_nodes = args.max_nodes;
    config.scheme = *scheme;
    config.weights = *weights;
    config.norm_topk_prob = args.norm_topk_prob;
    if (all) {
      // Under `all`, a budget whose devices cannot hold k experts in some layer is reported
      // as infeasible rather than aborting the table (a single M is a hard error).
      std::string why;
      for (int l = 0; l < trace.num_layers() && why.empty(); ++l) {
        const int capacity = min_kept_capacity(config, placement.layer(l).expert_to_device);
        if (capacity < k) why = fmt::format("layer {}: kept devices may hold only {} < k={} experts", l, capacity, k);
      }
      if (!why.empty()) {
        infeasible[b] = why;
        progress.update(static_cast<std::int64_t>(b + 1) * trace.num_layers(), fmt::format("M={} infeasible", budgets[b]));
        continue;
      }
    }
    Trace pruned = trace;
    for (int l = 0; l < trace.num_layers(); ++l) {
      LayerRouting& layer = pruned.layers[l];
      const std::vector<int>& e2d = placement.layer(l).expert_to_device;
      const auto t0 = std::chrono::steady_clock::now();
      LayerResult r;
      try {
        r.stats = replicas ? prune_routing(layer.topk_ids, layer.topk_weights, layer.router_probs, layer.num_tokens,
                                           holders[l], similarity[l], config, workspace)
                           : prune_routing(layer.topk_ids, layer.topk_weights, layer.router_probs, layer.num_tokens,
                                           e2d, similarity[l], config, workspace);
      } catch (const Error& error) {
        OCCULT_FAIL("{}: layer {}: {}", args.traces, l, error.message());
      }
      prune_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      pruned_tokens += layer.num_tokens;
      r.load_imbalance_after = replicas ? compute_replica_metrics(layer, holders[l], placement.num_nodes).load_imbalance
                                        : compute_placement_metrics(layer, e2d, d, placement.num_nodes).load_imbalance;
      results[b].push_back(r);
      progress.update(static_cast<std::int64_t>(b) * trace.num_layers() + l + 1,
                      fmt::format("M={} layer {}", budgets[b], l));
    }
    if (!all) {
      // Provenance: the pruned trace says how it was made (free text, read by nobody's code).
      pruned.dataset = fmt::format("{} | occult prune --max-devices {} --scheme {} --weights {}{}", trace.dataset,
                                   budgets[b], args.scheme, args.weights,
                                   args.max_nodes > 0 ? fmt::format(" --max-nodes {}", args.max_nodes) : "");
      pruned_trace = std::move(pruned);
    }
  }
  progress.finish(fmt::format("{:.0f} tokens/s", prune_seconds > 0 ? pruned_tokens / prune_seconds : 0.0));

  if (!args.out.empty()) save_trace(pruned_trace, args.out);

  nlohmann::json out = {{"traces", args.traces},
                        {"placement", args.placement},
                        {"num_devices", d},
                        {"scheme", args.scheme},
                        {"weights", args.weights},
                        {"max_nodes", args.max_nodes},
                        {"similarity_source", similarity_source},
                        {"results", nlohmann::json::array()}};
  TextTable budget_table([] {
    std::vector<std::string> h = {"M"};
    h.insert(h.end(), kColumns.begin(), kColumns.end());
    return h;
  }());
  for (std::size_t b = 0; b < budgets.size(); ++b) {
    if (!infeasible[b].empty()) {
      out["results"].push_back({{"max_devices", budgets[b]}, {"infeasible", infeasible[b]}});
      std::vector<std::string> cells(kColumns.size() + 1, "-");
      cells[0] = std::to_string(budgets[b]);
      cells[2] = "infeasible";
      budget_table.add_row(cells);
      continue;
    }
    std::vector<Row> rows;
    for (const LayerResult& r : results[b]) rows.push_back(row_of(r, k));
    const Row mean = mean_of(rows);
    nlohmann::json entry = {{"max_devices", budgets[b]}, {"layers", nlohmann::json::array()},
                            {"mean", row_json(mean)}};
    for (std::size_t l = 0; l < rows.size(); ++l) {
      nlohmann::json row = row_json(rows[l]);
      row["layer"] = l;
      entry["layers"].push_back(row);
    }
    out["results"].push_back(entry);
    if (args.json) continue;
    if (!all) {
      std::vector<std::string> header = {"layer"};
      header.insert(header.end(), kColumns.begin(), kColumns.end());
      TextTable table(header);
      for (std::size_t l = 0; l < rows.size(); ++l) {
        std::vector<std::string> cells = {std::to_string(l)};
        for (std::string& c : row_cells(rows[l])) cells.push_back(std::move(c));
        table.add_row(cells);
      }
      table.add_rule();
      std::vector<std::string> cells = {"mean"};
      for (std::string& c : row_cells(mean)) cells.push_back(std::move(c));
      table.add_row(cells);
      fmt::print("{}", table.render());
    } else {
      std::vector<std::string> cells = {std::to_string(budgets[b])};
      for (std::string& c : row_cells(mean)) cells.push_back(std::move(c));
      budget_table.add_row(cells);
    }
  }
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!args.out.empty()) out["out"] = args.out;
  out["prune_tokens_per_second"] = prune_seconds > 0 ? pruned_tokens / prune_seconds : 0.0;
  if (args.json) {
    std::cout << out.dump(2) << "\n";
    return;
  }
  if (all) {
    fmt::print("{}", budget_table.render());
    for (std::size_t b = 0; b < budgets.size(); ++b) {
      if (!infeasible[b].empty()) fmt::print("M={} infeasible: {}\n", budgets[b], infeasible[b]);
    }
  }
  fmt::print("pruned {} layers x {} tokens (top-{} of {} experts, {} devices{}) with scheme '{}', weights '{}'{}{}; "
             "{:.2e} tokens/s; {}{:.2f} s\n",
             trace.num_layers(), trace.num_tokens(), k, e, d,
             replicas ? fmt::format(" x {} slots", placement.slots_per_device) : "", args.scheme, args.weights,
             args.max_nodes > 0 ? fmt::format(", max {} nodes", args.max_nodes) : "",
             need_similarity ? fmt::format(", similarity from {}", similarity_source) : "",
             prune_seconds > 0 ? pruned_tokens / prune_seconds : 0.0,
             args.out.empty() ? "" : fmt::format("wrote {}; ", args.out), total);
}

void setup_prune(CLI::App& root) {
  auto args = std::make_shared<PruneArgs>();
  CLI::App* cmd = root.add_subcommand(
      "prune", "Collaboration pruning: restrict every token to at most M devices and report the cost");
  cmd->add_option("--traces", args->traces, "Routing trace to prune")->required()->check(CLI::ExistingFile);
  cmd->add_option("--placement", args->placement, "Placement JSON (occult place)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--max-devices", args->max_devices,
                  "Budget M: devices a token may touch, or 'all' for a table over M = 1..D (not needed to only "
                  "write the similarity)");
  cmd->add_option("--scheme", args->scheme, "score (default) | similarity | device-limited");
  cmd->add_option("--weights", args->weights,
                  "keep (default): a replacement inherits the replaced weight | recompute: own p "
                  "(needs router_probs)");
  cmd->add_flag("--norm-topk-prob", args->norm_topk_prob,
                "recompute: normalise the new weights over the selected experts");
  cmd->add_option("--max-nodes", args->max_nodes, "Node budget M_nodes (placement with nodes); 0 = none");
  cmd->add_option("--similarity", args->similarity,
                  "similarity scheme: sidecar safetensors (layers.{l}.similarity [E,E])")
      ->check(CLI::ExistingFile);
  cmd->add_option("--calibration", args->calibration,
                  "similarity scheme: traces to compute expert similarity on (default: --traces)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--save-similarity", args->save_similarity, "Write the expert similarity used as a sidecar file");
  cmd->add_option("--embed-similarity", args->embed_similarity,
                  "Write a copy of the placement JSON with each layer's similarity in it");
  cmd->add_flag("--json", args->json, "Machine-readable results on stdout");
  cmd->add_option("--out", args->out, "Write the pruned trace (safetensors, trace format)");
  cmd->callback([args] { run_prune(*args); });
}

OCCULT_REGISTER_COMMAND("prune", setup_prune);

}  // namespace prune_command

}  // namespace occult::cli
