// Tiny random Hugging Face model directories (config.json with each architecture's real keys,
// single-file or sharded safetensors with its real tensor names) for testing model loading and
// the forward pass against the reference twin.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace occult::hf {

// What to write: the architecture, the stored dtype ("f32", "bf16", "f16"), the shard count, tied
// embeddings (nullopt: the variant's default), the random seed, and the variant ("default" or
// "alt", which flips the architecture's optional features; see fixture_config).
struct FixtureOptions {
  std::string arch;
  std::string dtype = "f32";
  int shards = 1;
  std::optional<bool> tied;
  std::uint64_t seed = 1;
  std::string variant = "default";
};

// The config.json a checkpoint of `options.arch` would carry, with tiny shapes.
nlohmann::ordered_json fixture_config(const FixtureOptions& options);

// Writes config.json and random weights into `dir` (created if absent): model.safetensors, or
// model-0000i-of-0000N.safetensors split by layer with model.safetensors.index.json.
void write_fixture(const FixtureOptions& options, const std::string& dir);

// Writes `input_ids` [batch, seq] (dtype "i32" or "i64") of uniform random ids in [0, vocab).
void write_input_ids(const std::string& path, int batch, int seq, int vocab, std::uint64_t seed,
                     const std::string& dtype);

// A balanced, non-contiguous placement (expert e on device e % devices) for every MoE layer of
// the model in `model_dir`, numbered by ordinal among the MoE layers.
nlohmann::ordered_json round_robin_placement(const std::string& model_dir, int devices);

}  // namespace occult::hf
