// Charts of what people look at in occult's outputs (training curves, C_T per layer, inference
// latency), built from the commands' own JSON by pure functions, and the gnuplot script that
// draws a chart. Nothing here runs a program: render.h does.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace occult::plot {

// One line of a chart: points (x[i], y[i]) in the order drawn; x and y have the same length.
struct Series {
  std::string label;
  std::vector<double> x;
  std::vector<double> y;
};

// A horizontal reference line across a panel (the top-k line of a C_T chart).
struct ReferenceLine {
  double y = 0.0;
  std::string label;
};

// One set of axes: its lines share the x and y axes.
struct Panel {
  std::string title;
  std::string xlabel;
  std::string ylabel;
  std::vector<Series> series = {};
  std::optional<ReferenceLine> reference = std::nullopt;
  bool integer_x = false;  // x counts something (layers): tics on whole numbers only
  bool log_x = false;      // x spans orders of magnitude (batch sizes)
};

// A picture: panels stacked top to bottom, with a title over all of them.
struct Chart {
  std::string title;
  std::vector<Panel> panels;
};

// The training and validation loss against the step (one panel) and tokens/s against the step
// (a second panel), from `occult train --log` JSONL text: each non-empty line is an object with
// "step" and either "loss" and "tokens_per_s" (a training step) or "val_loss" (an evaluation).
// `source` names the file in errors: a line that is not JSON, a record without "step" or with
// neither kind of value, or a log without any training step.
Chart train_chart(const std::string& jsonl, const std::string& source);

// One placement measurement to draw: `doc` is `occult evaluate --json` output, `occult place
// --json` output for one strategy, or a placement file (`occult-placement/1`), named `source`;
// `label` names its line ("" = the document's strategy, else the file name).
struct PlacementInput {
  nlohmann::json doc;
  std::string source;
  std::string label;
};

// C_T (mean devices per token) per MoE layer, one line per input, with a line at top-k (what
// standard dispatch sends per token) when `top_k` is given or an input states its "top_k" (all
// that state it must agree). Errors name the source and the missing or malformed key.
Chart placement_chart(const std::vector<PlacementInput>& inputs, std::optional<int> top_k);

// How `infer_chart` lays out x.
enum class InferAxis { kBatch, kPromptTokens };

// Prefill latency (ms) and decode latency per step (ms) against the batch or the prompt length,
// one line per variant name ("standard", "occult+prune2", ...), from one or more `occult bench
// infer --json` documents (each has "batch", "prompt_tokens" and "variants" [{"name",
// "prefill_ms", "decode_ms_per_step"}]). Points are sorted by x; two documents with the same x
// for one variant are an error naming both.
struct InferInput {
  nlohmann::json doc;
  std::string source;
};
Chart infer_chart(const std::vector<InferInput>& inputs, InferAxis axis);

// The gnuplot script that draws `chart` into the PNG `out_path`: the data travel inside the
// script (datablocks), the terminal is pngcairo when this gnuplot has it and png otherwise.
// Every panel needs at least one series with at least one point.
std::string gnuplot_script(const Chart& chart, const std::string& out_path);

}  // namespace occult::plot
