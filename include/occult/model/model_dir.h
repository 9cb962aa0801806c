// The weights of a Hugging Face model directory: `model.safetensors`, or the shards that
// `model.safetensors.index.json` maps each tensor to (its "weight_map"). occult's own checkpoints
// are such directories too. Shards are memory-mapped when opened and a tensor's bytes are read
// (and widened to F32 from BF16, F16 or F32) only when asked for, so each rank of an
// expert-parallel run touches only the tensors it holds.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "occult/core/safetensors.h"

namespace occult {

// Name of the single-file weights and of the shard index inside a model directory.
inline constexpr const char* kModelWeightsFile = "model.safetensors";
inline constexpr const char* kModelIndexFile = "model.safetensors.index.json";

class ModelWeights {
 public:
  // Opens `dir`'s weights: the index and every shard it names when the index exists, else
  // model.safetensors. Throws naming the directory and file for a missing weights file, a
  // malformed index, a shard that does not exist or does not parse, and an index entry naming a
  // tensor that its shard lacks.
  static ModelWeights open(const std::string& dir);

  // True when the directory has tensor `name`.
  bool contains(const std::string& name) const;
  // Every tensor name, sorted.
  std::vector<std::string> names() const;
  // The file that holds `name` (for messages).
  const std::string& file_of(const std::string& name) const;
  // Copies tensor `name` into `out` as F32. Throws naming the file and tensor when it is
  // missing, its shape is not `shape`, or its dtype is not F32, F16, BF16 (or F64).
  void read(const std::string& name, std::span<const std::int64_t> shape,
            std::span<float> out) const;
  // Copies tensor `name` into `out` as BF16: stored BF16 bytes as they are, other float dtypes
  // rounded to nearest even. Throws like read().
  void read_bf16(const std::string& name, std::span<const std::int64_t> shape,
                 std::span<std::uint16_t> out) const;
  // The dtype tensor `name` is stored in (throws naming the directory when it is missing).
  DType dtype_of(const std::string& name) const;
  // Bytes the directory's tensors occupy on disk (sum over tensors, as stored).
  std::int64_t stored_bytes() const;

 private:
  // The file holding `name`, after checking its shape is `shape` (throws like read()).
  const SafetensorsReader& file_with(const std::string& name, std::span<const std::int64_t> shape) const;

  std::vector<std::shared_ptr<SafetensorsReader>> files_;
  std::map<std::string, std::size_t> where_;  // tensor name -> index into files_
  std::string dir_;
};

}  // namespace occult
