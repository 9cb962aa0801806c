// Pieces shared by the inference subcommands (`generate`, `profile`, `bench infer`): building the
// model from a checkpoint or a config, checking a placement against it, and the parallel options
// from the dispatch / placement / pruning flags. Every check runs under agree_on_errors, so bad
// input fails on every rank with one message (rank 0 prints it) instead of hanging.
#pragma once

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "occult/comm/communicator.h"
#include "occult/comm/mpi_communicator.h"
#include "moe_cli.h"
#include "mpi_cli.h"
#include "occult/core/error.h"
#include "occult/core/table.h"
#include "occult/model/checkpoint.h"
#include "occult/model/config.h"
#include "occult/model/model.h"
#include "occult/model/model_dir.h"
#include "occult/placement/placement.h"

namespace occult::cli {

// The flags every inference subcommand shares.
struct ModelFlags {
  std::string checkpoint;  // model directory: Hugging Face (config.json + safetensors) or occult's
  std::string config;  // config.json: random weights, or the architecture the checkpoint must have
  std::string dispatch = "occult";
  std::string wire = "f32";  // MoE exchange payload format (--wire)
  std::string overlap = "off";  // MoE forward exchanges overlapped with experts (--overlap)
  std::string placement;  // occult-placement/1 JSON; empty = contiguous
  int prune_devices = 0;
  std::string prune_scheme = "score";
  std::uint64_t seed = 1234;  // random weights (no checkpoint)
  std::string weights = "auto";  // dtype the matrices are held in: auto | f32 | bf16
  std::string compute = "f32";   // precision of the GEMM products (--compute)
  std::string gemm = "onednn";   // GEMM library (--gemm)
};

// Adds --compute and --gemm (into `compute` and `gemm`): how the model's GEMMs run.
inline void add_compute_flags(CLI::App* cmd, std::string& compute, std::string& gemm) {
  cmd->add_option("--compute", compute,
                  "GEMM precision: f32 | bf16 (operands rounded to BF16, F32 accumulation; training keeps F32 "
                  "master weights and gradients; needs a CPU with AVX512-BF16)")
      ->capture_default_str();
  cmd->add_option("--gemm", gemm, "GEMM library: onednn | blas (OpenBLAS, the reference path)")
      ->capture_default_str();
}
inline void add_compute_flags(CLI::App* cmd, ModelFlags& f) { add_compute_flags(cmd, f.compute, f.gemm); }

// The GEMM options of --gemm and --compute; throws naming the flag for a bad value or for BF16
// compute on a CPU without AVX512-BF16.
inline GemmOptions resolve_gemm_options(const std::string& compute, const std::string& gemm) {
  GemmOptions options{parse_gemm_backend(gemm, "--gemm"), parse_compute_dtype(compute, "--compute")};
  check_compute_dtype_supported(options.compute, "--compute");
  return options;
}
inline GemmOptions resolve_gemm_options(const ModelFlags& f) { return resolve_gemm_options(f.compute, f.gemm); }

// Adds --model (alias --checkpoint; required) and --config (optional, must match): the model a
// command runs.
inline void add_checkpoint_flags(CLI::App* cmd, ModelFlags& f) {
  cmd->add_option("--model,--checkpoint", f.checkpoint,
                  "model directory: a Hugging Face one (config.json + model.safetensors or shards) or "
                  "occult train --save")
      ->required();
  cmd->add_option("--config", f.config, "config.json the checkpoint must match (optional)");
  cmd->add_option("--weights", f.weights,
                  "dtype the matrices and experts are held in: auto (bf16 when the model directory "
                  "stores BF16, else f32) | f32 | bf16 (half the memory; arithmetic stays F32)")
      ->capture_default_str();
}

// The dtype `--weights` asks for; "auto" is BF16 when the model directory stores its embedding
// in BF16 (a BF16 checkpoint), else F32. Throws naming the flag for any other value.
inline WeightDType resolve_weight_dtype(const ModelFlags& f) {
  if (f.weights == "f32") return WeightDType::kF32;
  if (f.weights == "bf16") return WeightDType::kBF16;
  OCCULT_CHECK(f.weights == "auto", "--weights must be auto, f32 or bf16, got \"{}\"", f.weights);
  if (f.checkpoint.empty()) return WeightDType::kF32;
  return ModelWeights::open(f.checkpoint).dtype_of("model.embed_tokens.weight") == DType::kBF16 ? WeightDType::kBF16
                                                                                               : WeightDType::kF32;
}

// Adds --wire (the format of the MoE exchanges' hidden-state rows) and --overlap (whether the
// MoE forward overlaps its exchanges with expert compute).
inline void add_wire_flag(CLI::App* cmd, ModelFlags& f) {
  cmd->add_option("--wire", f.wire, "MoE exchange payloads: f32 | bf16 | f16 | fp8 (fp8: E4M3 forward dispatch, BF16 elsewhere; sums stay F32)")
      ->capture_default_str();
  cmd->add_option("--overlap", f.overlap, "overlap the MoE forward's exchanges with expert compute: on | off")
      ->capture_default_str();
}

// Adds --dispatch, --wire, --placement, --prune-devices and --prune-scheme: how the MoE layers route.
inline void add_routing_flags(CLI::App* cmd, ModelFlags& f) {
  cmd->add_option("--dispatch", f.dispatch, "standard | occult")->capture_default_str();
  add_wire_flag(cmd, f);
  add_compute_flags(cmd, f);
  cmd->add_option("--placement", f.placement, "placement JSON (occult place); default contiguous");
  cmd->add_option("--prune-devices", f.prune_devices, "collaboration pruning budget M (0 = off)")
      ->capture_default_str();
  cmd->add_option("--prune-scheme", f.prune_scheme,
                  "score | similarity (needs the similarity in --placement) | device-limited")
      ->capture_default_str();
}

// Collective. The model config: the checkpoint's, which must be --config's architecture when
// both are given; or --config's alone when random weights are allowed.
inline ModelConfig resolve_model_config(const ModelFlags& f, Communicator& comm,
                                        bool allow_random) {
  ModelConfig config;
  agree_on_errors(comm, [&] {
    if (allow_random) {
      OCCULT_CHECK(!f.checkpoint.empty() || !f.config.empty(),
                   "give --model DIR (trained weights) or --config FILE (random weights)");
    } else {
      OCCULT_CHECK(!f.checkpoint.empty(), "give --model DIR");
    }
    if (!f.config.empty()) check_input_file("--config", f.config);
    if (f.checkpoint.empty()) {
      config = load_model_config(f.config);
      return;
    }
    config = load_checkpoint_config(f.checkpoint);
    if (!f.config.empty()) {
      const ModelConfig given = load_model_config(f.config);
      OCCULT_CHECK(
          same_architecture(given, config),
          "--model {} was trained with another model config than --config {} (compare its "
          "config.json)",
          f.checkpoint, f.config);
    }
  });
  return config;
}

// Collective. The parallel options of the flags: the placement file checked against the model
// (experts, layers) and the ranks, the pruning budget against the ranks.
inline ParallelOptions resolve_parallel_options(const ModelFlags& f, const ModelConfig& config,
                                                Communicator& comm, const std::string& dispatch) {
  ParallelOptions parallel;
  agree_on_errors(comm, [&] {
    parallel.dispatch = parse_dispatch(dispatch);
    parallel.wire = parse_wire_format(f.wire, "--wire");
    parallel.overlap = parse_overlap_flag(f.overlap);
    parallel.prune_devices = f.prune_devices;
    parallel.prune_scheme = f.prune_scheme;
    parallel.training = false;
    parallel.weight_dtype = resolve_weight_dtype(f);
    parallel.gemm = resolve_gemm_options(f);
    OCCULT_CHECK(f.prune_devices >= 0 && f.prune_devices <= comm.size(),
                 "--prune-devices must be in [0, {} ranks], got {}", comm.size(), f.prune_devices);
    if (f.placement.empty()) return;
    check_input_file("--placement", f.placement);
    const Placement p = load_placement(f.placement, ReplicaPolicy::kAllow);
    OCCULT_CHECK(
        p.num_experts == config.num_experts,
        "--placement {} is for a model with {} experts, but this model has num_experts = {}",
        f.placement, p.num_experts, config.num_experts);
    OCCULT_CHECK(static_cast<int>(p.layers.size()) == config.num_moe_layers(),
                 "--placement {} has {} layers, but this model has {} MoE layers", f.placement,
                 p.layers.size(), config.num_moe_layers());
    OCCULT_CHECK(p.num_devices == comm.size(),
                 "--placement {} is for {} devices, but the run has {} ranks (mpirun -np {})",
                 f.placement, p.num_devices, comm.size(), p.num_devices);
    for (int l = 0; l < config.num_moe_layers(); ++l) {
      parallel.expert_to_device.push_back(p.layer(l).expert_to_device);
      parallel.similarity.push_back(p.layer(l).similarity);
    }
    if (p.has_replicas()) {
      for (int l = 0; l < config.num_moe_layers(); ++l) parallel.device_experts.push_back(p.layer(l).device_experts);
    }
  });
  return parallel;
}

// Collective. The model with the checkpoint's weights, or random weights from f.seed.
inline std::unique_ptr<MoeTransformer> build_model(const ModelFlags& f, const ModelConfig& config,
                                                   const ParallelOptions& parallel,
                                                   Communicator& comm) {
  std::unique_ptr<MoeTransformer> model;
  agree_on_errors(comm, [&] { model = std::make_unique<MoeTransformer>(config, comm, parallel); });
  if (f.checkpoint.empty()) {
    model->init_weights(f.seed);
  } else {
    load_checkpoint(f.checkpoint, *model, nullptr);
  }
  return model;
}

}  // namespace occult::cli
