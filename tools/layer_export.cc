// `occult layer export`: one MoE layer of a model directory, and random inputs, in the files
// `occult layer run` reads, so that a layer of a real (or trained) model can be run alone.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "command_registry.h"
#include "occult/core/error.h"
#include "occult/core/rng.h"
#include "occult/core/safetensors.h"
#include "occult/model/arch.h"
#include "occult/model/config.h"
#include "occult/model/model_dir.h"

namespace occult::cli {
namespace layer_export_command {

struct LayerExportArgs {
  std::string model, out;
  int layer = 0;
  std::int64_t tokens = 64;
  std::uint64_t seed = 1;
};

// T x H standard-normal values from `seed` (the scale of RMS-normalised hidden states).
std::vector<float> normal_rows(std::int64_t tokens, int hidden, std::uint64_t seed) {
  SplitMix64 rng(seed);
  std::vector<float> v(static_cast<std::size_t>(tokens) * hidden);
  for (float& x : v) x = static_cast<float>(rng.normal());
  return v;
}

void run_export(const LayerExportArgs& a) {
  check_input_directory("--model", a.model);
  const std::string config_path = (std::filesystem::path(a.model) / "config.json").string();
  check_input_file("--model's config", config_path);
  const ModelConfig config = load_model_config(config_path);
  const int moe_layers = config.num_moe_layers();
  OCCULT_CHECK(moe_layers > 0, "--model {} has no MoE layer", a.model);
  OCCULT_CHECK(a.layer >= 0 && a.layer < moe_layers,
               "--layer {} is out of range: {} has MoE layers 0..{} (layers count MoE layers only, "
               "as in traces and "
               "placements)",
               a.layer, a.model, moe_layers - 1);
  OCCULT_CHECK(a.tokens >= 1, "--tokens must be >= 1, got {}", a.tokens);
  const ModelWeights weights = ModelWeights::open(a.model);
  const int l = config.moe_layer(a.layer);
  const int E = config.num_experts, H = config.hidden_size, F = config.moe_intermediate_size;

  SafetensorsWriter w;
  w.set_metadata("top_k", std::to_string(config.num_experts_per_tok));
  w.set_metadata("norm_topk_prob", config.norm_topk_prob ? "true" : "false");
  w.set_metadata("model", a.model);
  w.set_metadata("layer", std::to_string(a.layer));
  std::vector<float> buf(static_cast<std::size_t>(E) * H);
  weights.read(router_tensor_name(config, l), std::vector<std::int64_t>{E, H}, buf);
  w.add_f32("mlp.gate.weight", {E, H}, buf);
  static constexpr const char* kKinds[3] = {"gate_proj", "up_proj", "down_proj"};
  buf.resize(static_cast<std::size_t>(F) * H);
  for (int e = 0; e < E; ++e) {
    for (int kind = 0; kind < 3; ++kind) {
      // W1 and W3 are [F, H], W2 is [H, F].
      const std::vector<std::int64_t> shape =
          kind == 2 ? std::vector<std::int64_t>{H, F} : std::vector<std::int64_t>{F, H};
      weights.read(expert_tensor_name(config, l, e, kind), shape, buf);
      w.add_f32(fmt::format("mlp.experts.{}.{}.weight", e, kKinds[kind]), shape, buf);
    }
  }
  std::filesystem::create_directories(a.out);
  const std::filesystem::path out(a.out);
  w.write((out / "weights.safetensors").string());
  SafetensorsWriter input;
  input.add_f32("hidden_states", {a.tokens, H}, normal_rows(a.tokens, H, a.seed));
  input.write((out / "input.safetensors").string());
  SafetensorsWriter grad;
  grad.add_f32("grad_output", {a.tokens, H},
               normal_rows(a.tokens, H, a.seed ^ 0x9E3779B97F4A7C15ull));
  grad.write((out / "grad_output.safetensors").string());
  fmt::print(
      "layer export: MoE layer {} (model layer {}) of {}: E={} H={} F={} top-k {}{}; wrote "
      "{}/weights.safetensors, "
      "{}/input.safetensors and {}/grad_output.safetensors ({} tokens)\n",
      a.layer, l, a.model, E, H, F, config.num_experts_per_tok,
      config.norm_topk_prob ? " (norm_topk_prob: run with --norm-topk-prob)" : "", a.out, a.out,
      a.out, a.tokens);
}

void setup(CLI::App& root) {
  CLI::App& group =
      command_group(root, "layer", "Run one expert-parallel MoE layer (under mpirun)");
  auto args = std::make_shared<LayerExportArgs>();
  CLI::App* cmd = group.add_subcommand(
      "export",
      "Write one MoE layer of a model directory and random inputs in the files `layer run` reads");
  cmd->add_option("--model,--checkpoint", args->model,
                  "model directory (config.json + model.safetensors or shards)")
      ->required();
  cmd->add_option("--layer", args->layer, "MoE layer ordinal (dense layers are not counted)")
      ->capture_default_str();
  cmd->add_option("--tokens", args->tokens, "rows of the random hidden_states and grad_output")
      ->capture_default_str();
  cmd->add_option("--seed", args->seed, "seed of the random rows")->capture_default_str();
  cmd->add_option(
         "--out", args->out,
         "folder to write weights.safetensors, input.safetensors and grad_output.safetensors into")
      ->required();
  cmd->callback([args] { run_export(*args); });
}

OCCULT_REGISTER_COMMAND("layer export", setup);

}  // namespace layer_export_command

}  // namespace occult::cli
