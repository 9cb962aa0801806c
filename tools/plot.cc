// `occult plot train | placement | infer`: PNG pictures of the commands' own outputs (the
// training log, placement metrics, inference benchmarks), drawn by gnuplot.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "command_registry.h"
#include "occult/core/error.h"
#include "occult/plot/chart.h"
#include "occult/plot/render.h"

namespace occult::cli {
namespace plot_command {

std::string read_text(const std::string& path) {
  check_input_file("--in", path);
  std::ifstream in(path, std::ios::binary);
  OCCULT_CHECK(in.good(), "--in {} cannot be opened for reading", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

nlohmann::json read_json(const std::string& path, const char* expected) {
  const std::string text = read_text(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    OCCULT_FAIL("--in {} is not JSON ({}); expected {}", path, e.what(), expected);
  }
}

void done(const std::string& out) {
  fmt::print("wrote {}\n", out);
}

struct TrainArgs {
  std::string in, out;
};

struct PlacementArgs {
  std::vector<std::string> in, labels;
  std::optional<int> top_k;
  std::string out;
};

struct InferArgs {
  std::vector<std::string> in;
  std::string x = "batch", out;
};

void setup_plot(CLI::App& root) {
  CLI::App* group = root.add_subcommand(
      "plot",
      "PNG pictures (gnuplot) of a training log, placement metrics or inference benchmarks");
  group->require_subcommand(1);

  auto train = std::make_shared<TrainArgs>();
  CLI::App* t = group->add_subcommand(
      "train",
      "Training and validation loss and tokens/s against the step, from `occult train --log`");
  t->add_option("--in", train->in, "JSONL log written by `occult train --log`")->required();
  t->add_option("--out", train->out, "PNG to write")->required();
  t->callback([train] {
    plot::render_png(plot::train_chart(read_text(train->in), train->in), train->out);
    done(train->out);
  });

  auto placement = std::make_shared<PlacementArgs>();
  CLI::App* p = group->add_subcommand(
      "placement",
      "C_T per MoE layer of one or more placements, with the top-k line of standard dispatch");
  p->add_option("--in", placement->in,
                "`occult evaluate --json` output, `occult place --json` output or a placement "
                "file; repeat to "
                "compare")
      ->required();
  p->add_option("--label", placement->labels,
                "name of each --in file's line, in order (default: its strategy)");
  p->add_option("--top-k", placement->top_k,
                "experts per token, for the top-k line (default: the inputs' top_k)");
  p->add_option("--out", placement->out, "PNG to write")->required();
  p->callback([placement] {
    OCCULT_CHECK(placement->labels.empty() || placement->labels.size() == placement->in.size(),
                 "--label is given {} times for {} --in files; give one per file or none",
                 placement->labels.size(), placement->in.size());
    std::vector<plot::PlacementInput> inputs;
    for (std::size_t i = 0; i < placement->in.size(); ++i) {
      inputs.push_back(
          {read_json(placement->in[i], "occult evaluate --json or occult place --json output"),
           placement->in[i], placement->labels.empty() ? "" : placement->labels[i]});
    }
    plot::render_png(plot::placement_chart(inputs, placement->top_k), placement->out);
    done(placement->out);
  });

  auto infer = std::make_shared<InferArgs>();
  CLI::App* i = group->add_subcommand(
      "infer",
      "Prefill and decode latency per variant against the batch, from `occult bench infer --json`");
  i->add_option("--in", infer->in,
                "`occult bench infer --json` output; repeat for several batch sizes")
      ->required();
  i->add_option("--x", infer->x, "batch | prompt-tokens: what the files differ in")
      ->check(CLI::IsMember({"batch", "prompt-tokens"}))
      ->capture_default_str();
  i->add_option("--out", infer->out, "PNG to write")->required();
  i->callback([infer] {
    std::vector<plot::InferInput> inputs;
    for (const auto& path : infer->in)
      inputs.push_back({read_json(path, "occult bench infer --json output"), path});
    plot::render_png(
        plot::infer_chart(
            inputs, infer->x == "batch" ? plot::InferAxis::kBatch : plot::InferAxis::kPromptTokens),
        infer->out);
    done(infer->out);
  });
}

OCCULT_REGISTER_COMMAND("plot", setup_plot);

}  // namespace plot_command

}  // namespace occult::cli
