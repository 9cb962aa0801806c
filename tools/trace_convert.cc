// `occult trace convert`: rewrites a trace with other id / weight dtypes (e.g. U8 ids and F16
// weights for compact shipped copies), optionally without router_probs, and reports what the
// conversion cost in precision.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "command_registry.h"
#include "occult/core/error.h"
#include "occult/core/progress.h"
#include "occult/core/safetensors.h"
#include "occult/core/table.h"
#include "occult/routing/trace.h"

namespace occult::cli {
namespace trace_convert_command {

struct ConvertArgs {
  std::string in;
  std::string out;
  std::string ids = "auto";
  std::string weights = "keep";
  bool drop_probs = false;
  bool json = false;
};

// What converting to `dtype` does to a float: the exact value the file will hold.
float stored_value(float value, DType dtype) {
  if (dtype == DType::kF16) return f16_to_float(float_to_f16(value));
  if (dtype == DType::kBF16) return bf16_to_float(float_to_bf16(value));
  return value;
}

void run_trace_convert(const ConvertArgs& args) {
  OCCULT_CHECK(std::filesystem::absolute(args.in) != std::filesystem::absolute(args.out),
               "--out {} is the input file; write to another path", args.out);
  ProgressBar progress("trace convert", 3, !args.json);
  DType in_ids = DType::kI32, in_weights = DType::kF32;
  bool had_probs = false;
  {
    const SafetensorsReader reader = SafetensorsReader::open(args.in);
    if (const TensorInfo* t = reader.find("layers.0.topk_ids")) in_ids = t->dtype;
    if (const TensorInfo* t = reader.find("layers.0.topk_weights")) in_weights = t->dtype;
    had_probs = reader.find("layers.0.router_probs") != nullptr;
  }
  Trace trace = load_trace(args.in);
  progress.update(1, "loaded");

  TraceWriteOptions options;
  if (args.ids != "auto") {
    options.ids_dtype = args.ids == "u8"    ? DType::kU8
                        : args.ids == "i16" ? DType::kI16
                        : args.ids == "i32" ? DType::kI32
                                            : DType::kI64;
  }
  DType out_weights = in_weights;
  if (args.weights != "keep") {
    out_weights = args.weights == "f16" ? DType::kF16 : args.weights == "bf16" ? DType::kBF16 : DType::kF32;
  }
  options.weights_dtype = out_weights;
  options.write_router_probs = !args.drop_probs;

  // Precision lost on the weights: the worst relative change over nonzero weights.
  double max_abs = 0.0, max_rel = 0.0;
  std::int64_t weights_count = 0;
  for (const LayerRouting& layer : trace.layers) {
    for (float w : layer.topk_weights) {
      const double diff = std::fabs(static_cast<double>(stored_value(w, out_weights)) - w);
      max_abs = std::max(max_abs, diff);
      if (w != 0.0f) max_rel = std::max(max_rel, diff / std::fabs(w));
      ++weights_count;
    }
  }
  progress.update(2, "converting");
  save_trace(trace, args.out, options);
  progress.finish(fmt::format("wrote {}", args.out));

  DType out_ids = options.ids_dtype.value_or(DType::kU8);
  {
    const SafetensorsReader written = SafetensorsReader::open(args.out);
    out_ids = written.at("layers.0.topk_ids").dtype;
  }
  const auto bytes_in = std::filesystem::file_size(args.in);
  const auto bytes_out = std::filesystem::file_size(args.out);
  const bool has_weights = weights_count > 0;
  const bool probs_out = had_probs && !args.drop_probs;
  if (args.json) {
    const nlohmann::json j = {
        {"in", args.in},
        {"out", args.out},
        {"bytes_in", bytes_in},
        {"bytes_out", bytes_out},
        {"ids", {{"from", dtype_name(in_ids)}, {"to", dtype_name(out_ids)}}},
        {"weights", has_weights ? nlohmann::json{{"from", dtype_name(in_weights)},
                                                 {"to", dtype_name(out_weights)},
                                                 {"max_abs_change", max_abs},
                                                 {"max_rel_change", max_rel}}
                                : nlohmann::json(nullptr)},
        {"router_probs", {{"in", had_probs}, {"out", probs_out}}}};
    fmt::print("{}\n", j.dump());
    return;
  }
  TextTable table({"part", "from", "to", "max abs change", "max rel change"});
  table.add_row({"topk_ids", std::string(dtype_name(in_ids)), std::string(dtype_name(out_ids)), "0", "0"});
  if (has_weights) {
    table.add_row({"topk_weights", std::string(dtype_name(in_weights)), std::string(dtype_name(out_weights)),
                   fmt::format("{:.3g}", max_abs), fmt::format("{:.3g}", max_rel)});
  }
  if (had_probs) table.add_row({"router_probs", "F32", probs_out ? "F32" : "dropped", "0", "0"});
  fmt::print("{}", table.render());
  fmt::print("{} ({:.2f} MB) -> {} ({:.2f} MB): E={} k={} layers={} tokens={}\n", args.in,
             bytes_in / 1e6, args.out, bytes_out / 1e6, trace.num_experts, trace.top_k,
             trace.num_layers(), trace.num_tokens());
}

void setup_trace_convert(CLI::App& root) {
  CLI::App& trace = command_group(root, "trace", "Routing traces: synthesize, inspect, convert");
  CLI::App* cmd = trace.add_subcommand(
      "convert", "Rewrite a trace with other id/weight dtypes, optionally without router_probs");
  auto args = std::make_shared<ConvertArgs>();
  cmd->add_option("--in", args->in, "Input trace file")->required();
  cmd->add_option("--out", args->out, "Output trace file (written atomically)")->required();
  cmd->add_option("--ids", args->ids, "Expert id dtype (auto: narrowest that holds E)")
      ->check(CLI::IsMember({"auto", "u8", "i16", "i32", "i64"}))
      ->capture_default_str();
  cmd->add_option("--weights", args->weights, "Weight dtype (keep: as in the input)")
      ->check(CLI::IsMember({"keep", "f32", "f16", "bf16"}))
      ->capture_default_str();
  cmd->add_flag("--drop-probs", args->drop_probs, "Do not write router_probs");
  cmd->add_flag("--json", args->json, "Print a JSON summary on stdout");
  cmd->callback([args] { run_trace_convert(*args); });
}

OCCULT_REGISTER_COMMAND("trace convert", setup_trace_convert);

}  // namespace trace_convert_command

}  // namespace occult::cli
