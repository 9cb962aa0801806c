// Pure chart building: JSON in, series and gnuplot text out (chart.h).
#include "occult/plot/chart.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <sstream>

#include "occult/core/error.h"

namespace occult::plot {

namespace {

// The number at `key` of the object `row`; `where` names the file and record in the error.
double number_at(const nlohmann::json& row, const char* key, const std::string& where) {
  OCCULT_CHECK(row.is_object() && row.contains(key), "{}: expected key \"{}\" (a number)", where,
               key);
  const nlohmann::json& v = row.at(key);
  OCCULT_CHECK(v.is_number(), "{}: key \"{}\" is {}, expected a number", where, key, v.dump());
  return v.get<double>();
}

// The file name without folders or extension: the default label of a line.
std::string stem(const std::string& path) {
  return std::filesystem::path(path).stem().string();
}

}  // namespace

Chart train_chart(const std::string& jsonl, const std::string& source) {
  Series train{"training cross-entropy", {}, {}};
  Series validation{"validation cross-entropy", {}, {}};
  Series speed{"tokens/s", {}, {}};
  std::istringstream lines(jsonl);
  std::string line;
  int line_number = 0;
  while (std::getline(lines, line)) {
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = fmt::format("{} line {}", source, line_number);
    nlohmann::json row;
    try {
      row = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      OCCULT_FAIL("{}: not JSON ({}); expected one object per line as `occult train --log` writes",
                  where, e.what());
    }
    OCCULT_CHECK(row.is_object(), "{}: expected a JSON object, got {}", where, row.dump());
    const double step = number_at(row, "step", where);
    if (row.contains("val_loss")) {
      validation.x.push_back(step);
      validation.y.push_back(number_at(row, "val_loss", where));
    } else if (row.contains("loss")) {
      // The cross-entropy alone is what the validation loss measures; older logs have only "loss".
      train.x.push_back(step);
      train.y.push_back(
          number_at(row, row.contains("cross_entropy") ? "cross_entropy" : "loss", where));
      speed.x.push_back(step);
      speed.y.push_back(number_at(row, "tokens_per_s", where));
    } else {
      OCCULT_FAIL("{}: expected key \"loss\" (a training step) or \"val_loss\" (an evaluation)",
                  where);
    }
  }
  OCCULT_CHECK(!train.x.empty(),
               "{} has no training step (a line with \"step\" and \"loss\"); expected the "
               "JSONL that `occult train --log` writes",
               source);
  Panel loss{.title = "loss (lower is better)",
             .xlabel = "step",
             .ylabel = "nats per token",
             .integer_x = true};
  loss.series.push_back(std::move(train));
  if (!validation.x.empty()) loss.series.push_back(std::move(validation));
  Panel throughput{.title = "training throughput (slowest rank)",
                   .xlabel = "step",
                   .ylabel = "tokens/s",
                   .integer_x = true};
  throughput.series.push_back(std::move(speed));
  return Chart{
      .title = fmt::format("occult train: {}", std::filesystem::path(source).filename().string()),
      .panels = {std::move(loss), std::move(throughput)}};
}

Chart placement_chart(const std::vector<PlacementInput>& inputs, std::optional<int> top_k) {
  OCCULT_CHECK(!inputs.empty(), "plot placement needs at least one --in file");
  Panel panel{.title = "replicas per token C_T: devices a token visits (lower is better)",
              .xlabel = "MoE layer",
              .ylabel = "C_T (devices per token)",
              .integer_x = true};
  std::optional<int> stated_top_k;
  std::string stated_by;
  for (const PlacementInput& in : inputs) {
    const nlohmann::json& doc = in.doc;
    OCCULT_CHECK(doc.is_object(),
                 "{}: expected a JSON object (occult evaluate --json, occult place --json or a "
                 "placement file)",
                 in.source);
    const bool placement_file = doc.contains("format");
    if (placement_file) {
      OCCULT_CHECK(doc["format"] == "occult-placement/1",
                   "{}: key \"format\" is {}, expected \"occult-placement/1\"", in.source,
                   doc["format"].dump());
    }
    OCCULT_CHECK(doc.contains("layers") && doc["layers"].is_array() && !doc["layers"].empty(),
                 "{}: expected key \"layers\" (a non-empty list of per-layer metrics){}", in.source,
                 doc.contains("strategies") ? "; `occult place --strategy all --json` has only "
                                              "means: plot each strategy's placement "
                                              "file or its `occult evaluate --json` instead"
                                            : "");
    if (doc.contains("top_k")) {
      const int k = static_cast<int>(number_at(doc, "top_k", in.source));
      OCCULT_CHECK(!stated_top_k || *stated_top_k == k,
                   "{} has \"top_k\" {} but {} has {}: the inputs measure "
                   "different models",
                   in.source, k, stated_by, *stated_top_k);
      stated_top_k = k;
      stated_by = in.source;
    }
    Series line;
    line.label = !in.label.empty() ? in.label
                 : doc.contains("strategy") && doc["strategy"].is_string()
                     ? doc["strategy"].get<std::string>()
                     : stem(in.source);
    const nlohmann::json& layers = doc["layers"];
    for (std::size_t i = 0; i < layers.size(); ++i) {
      const std::string where = fmt::format("{} layers[{}]", in.source, i);
      const nlohmann::json& row = layers[i];
      const double layer = row.is_object() && row.contains("layer") ? number_at(row, "layer", where)
                                                                    : static_cast<double>(i);
      const nlohmann::json& metrics = placement_file ? row.value("metrics", nlohmann::json()) : row;
      line.x.push_back(layer);
      line.y.push_back(
          number_at(metrics, "replicas_per_token", placement_file ? where + " metrics" : where));
    }
    panel.series.push_back(std::move(line));
  }
  if (top_k && stated_top_k) {
    OCCULT_CHECK(*top_k == *stated_top_k, "--top-k {} disagrees with \"top_k\" {} in {}", *top_k,
                 *stated_top_k, stated_by);
  }
  if (!top_k) top_k = stated_top_k;
  if (top_k) {
    OCCULT_CHECK(*top_k >= 1, "--top-k must be >= 1, got {}", *top_k);
    panel.reference =
        ReferenceLine{static_cast<double>(*top_k),
                      fmt::format("top-k = {} (standard dispatch: a copy per expert)", *top_k)};
  }
  return Chart{.title = "occult placement", .panels = {std::move(panel)}};
}

Chart infer_chart(const std::vector<InferInput>& inputs, InferAxis axis) {
  OCCULT_CHECK(!inputs.empty(), "plot infer needs at least one --in file");
  const char* x_key = axis == InferAxis::kBatch ? "batch" : "prompt_tokens";
  // Per variant, in order of first appearance: x -> (prefill ms, decode ms, source).
  struct Point {
    double prefill_ms, decode_ms;
    std::string source;
  };
  std::vector<std::string> names;
  std::map<std::string, std::map<double, Point>> points;
  for (const InferInput& in : inputs) {
    OCCULT_CHECK(in.doc.is_object() && in.doc.contains("variants") && in.doc["variants"].is_array(),
                 "{}: expected key \"variants\" (a list), as `occult bench infer --json` writes",
                 in.source);
    const double x = number_at(in.doc, x_key, in.source);
    const nlohmann::json& variants = in.doc["variants"];
    for (std::size_t i = 0; i < variants.size(); ++i) {
      const std::string where = fmt::format("{} variants[{}]", in.source, i);
      const nlohmann::json& v = variants[i];
      OCCULT_CHECK(v.is_object() && v.contains("name") && v["name"].is_string(),
                   "{}: expected key \"name\" (a string)", where);
      const std::string name = v["name"].get<std::string>();
      auto& by_x = points[name];
      if (by_x.empty()) names.push_back(name);
      OCCULT_CHECK(!by_x.contains(x),
                   "{} and {} both measure variant \"{}\" at {} {}; give each --in file another "
                   "{}",
                   by_x.contains(x) ? by_x.at(x).source : "", in.source, name, x_key, x, x_key);
      by_x[x] = {number_at(v, "prefill_ms", where), number_at(v, "decode_ms_per_step", where),
                 in.source};
    }
  }
  const std::string xlabel =
      axis == InferAxis::kBatch ? "batch (sequences, all ranks)" : "prompt tokens per sequence";
  Panel prefill{.title = "prefill latency (lower is better)", .xlabel = xlabel, .ylabel = "ms"};
  Panel decode{.title = "decode latency per step (lower is better)",
               .xlabel = xlabel,
               .ylabel = "ms per step"};
  double lo = 0, hi = 0;
  for (const std::string& name : names) {
    Series p{name, {}, {}}, d{name, {}, {}};
    for (const auto& [x, point] : points[name]) {  // std::map: sorted by x
      p.x.push_back(x);
      p.y.push_back(point.prefill_ms);
      d.x.push_back(x);
      d.y.push_back(point.decode_ms);
      lo = lo == 0 ? x : std::min(lo, x);
      hi = std::max(hi, x);
    }
    prefill.series.push_back(std::move(p));
    decode.series.push_back(std::move(d));
  }
  // Batch sizes are usually powers of two; a log axis spreads them evenly.
  prefill.log_x = decode.log_x = lo > 0 && hi / lo >= 8;
  return Chart{.title = "occult bench infer", .panels = {std::move(prefill), std::move(decode)}};
}

namespace {

// `text` inside a gnuplot double-quoted string.
std::string quoted(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out + "\"";
}

}  // namespace

std::string gnuplot_script(const Chart& chart, const std::string& out_path) {
  OCCULT_CHECK(!chart.panels.empty(), "a chart needs at least one panel");
  const int width = 800;
  const int height = 320 * static_cast<int>(chart.panels.size()) + 40;
  std::string s = "# Generated by occult plot.\n";
  s += fmt::format(
      "if (strstrt(GPVAL_TERMINALS, \"pngcairo\") > 0) {{\n"
      "  set terminal pngcairo noenhanced size {0},{1} font \"sans,10\"\n"
      "}} else {{\n"
      "  set terminal png noenhanced size {0},{1}\n"
      "}}\n",
      width, height);
  std::string path;  // single-quoted: a quote is doubled
  for (char c : out_path) path += c == '\'' ? std::string("''") : std::string(1, c);
  s += fmt::format("set output '{}'\n", path);
  for (std::size_t p = 0; p < chart.panels.size(); ++p) {
    const Panel& panel = chart.panels[p];
    OCCULT_CHECK(!panel.series.empty(), "panel \"{}\" has no series", panel.title);
    for (std::size_t i = 0; i < panel.series.size(); ++i) {
      const Series& series = panel.series[i];
      OCCULT_CHECK(series.x.size() == series.y.size() && !series.x.empty(),
                   "series \"{}\" of panel \"{}\" has {} x and {} y values; expected the same "
                   "number, at least 1",
                   series.label, panel.title, series.x.size(), series.y.size());
      s += fmt::format("$d{}_{} << EOD\n", p, i);
      for (std::size_t j = 0; j < series.x.size(); ++j) {
        OCCULT_CHECK(std::isfinite(series.x[j]) && std::isfinite(series.y[j]),
                     "series \"{}\" of panel \"{}\" has a non-finite point ({}, {})", series.label,
                     panel.title, series.x[j], series.y[j]);
        s += fmt::format("{:.9g} {:.9g}\n", series.x[j], series.y[j]);
      }
      s += "EOD\n";
    }
  }
  s +=
      fmt::format("set multiplot layout {},1 title {}\n", chart.panels.size(), quoted(chart.title));
  s += "set grid\nset key below horizontal\nset offsets 0, 0, graph 0.05, graph 0.05\nset style "
       "data linespoints\n";
  for (std::size_t p = 0; p < chart.panels.size(); ++p) {
    const Panel& panel = chart.panels[p];
    s += fmt::format("set title {}\nset xlabel {}\nset ylabel {}\n", quoted(panel.title),
                     quoted(panel.xlabel), quoted(panel.ylabel));
    s += panel.log_x ? "set logscale x 2\n" : "unset logscale x\n";
    if (panel.integer_x) {
      double lo = panel.series[0].x[0], hi = lo;
      for (const Series& series : panel.series) {
        for (double x : series.x) lo = std::min(lo, x), hi = std::max(hi, x);
      }
      // About 16 labelled tics at most, on whole numbers.
      s += fmt::format("set xtics {}\nset xrange [{}:{}]\n",
                       std::max(1.0, std::ceil((hi - lo) / 16.0)), lo - 0.5, hi + 0.5);
    } else {
      s += "set xtics autofreq\nset autoscale x\n";
    }
    s += "plot ";
    for (std::size_t i = 0; i < panel.series.size(); ++i) {
      // Points mark measurements while they are few; a long curve (a training log) is a line.
      s += fmt::format("{}$d{}_{} using 1:2 title {} with {}", i == 0 ? "" : ", \\\n     ", p, i,
                       quoted(panel.series[i].label),
                       panel.series[i].x.size() <= 50 ? "linespoints pointsize 0.6" : "lines");
    }
    if (panel.reference) {
      s += fmt::format(
          ", \\\n     {:.9g} title {} with lines dashtype 2 linewidth 2 linecolor rgb \"#555555\"",
          panel.reference->y, quoted(panel.reference->label));
    }
    s += "\n";
  }
  s += "unset multiplot\nset output\n";
  return s;
}

}  // namespace occult::plot
