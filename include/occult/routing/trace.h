// Routing traces: which experts every token selected, per MoE layer (DESIGN.md, "File formats").
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "occult/core/safetensors.h"

namespace occult {

// The routing of one MoE layer over T tokens.
struct LayerRouting {
  std::int64_t num_tokens = 0;
  int top_k = 0;
  std::vector<std::int32_t> topk_ids;  // [T, k] row-major; k distinct ids per token
  std::vector<float> topk_weights;     // [T, k] or empty; descending per token when present
  std::vector<float> router_probs;     // [T, E] or empty

  bool has_weights() const { return !topk_weights.empty(); }
  bool has_router_probs() const { return !router_probs.empty(); }
  // Token t's k expert ids.
  const std::int32_t* ids_of(std::int64_t t) const { return topk_ids.data() + t * top_k; }
};

// A routing trace: every layer has the same number of tokens (the same tokens, in order).
struct Trace {
  int num_experts = 0;
  int top_k = 0;
  std::vector<LayerRouting> layers;
  std::vector<std::int32_t> sequence_lengths;  // may be empty; sums to num_tokens() otherwise
  std::string model;
  std::string dataset;
  // Other `__metadata__` strings (e.g. "source"), carried through load and save unchanged.
  std::map<std::string, std::string> extra_metadata;

  int num_layers() const { return static_cast<int>(layers.size()); }
  std::int64_t num_tokens() const { return layers.empty() ? 0 : layers.front().num_tokens; }
};

// Loads and validates a trace file; every error names the file and the layer or tensor.
Trace load_trace(const std::string& path);

// Throws occult::Error naming `source` unless: E >= 1, 1 <= k <= E, every layer has T tokens,
// ids in [0, E), k distinct ids per token, weights/probs shapes match and are finite, sequence
// lengths positive and summing to T, at least one layer.
void validate_trace(const Trace& trace, const std::string& source);

// Options for writing a trace. Ids are written in the narrowest integer dtype that holds
// num_experts (U8 for E <= 256) unless ids_i32 is set; weights as F32 or F16.
struct TraceWriteOptions {
  bool ids_i32 = false;
  bool weights_f16 = false;
  bool write_router_probs = true;
  // Explicit dtypes, overriding the two flags above: ids U8, I16, I32 or I64 (must hold
  // num_experts - 1); weights F32, F16 or BF16.
  std::optional<DType> ids_dtype;
  std::optional<DType> weights_dtype;
};

// Writes `trace` (validated first) to `path` in the trace format.
void save_trace(const Trace& trace, const std::string& path, const TraceWriteOptions& options = {});

// Concatenates traces of the same model shape (E, k, layer count) token-wise, e.g. several
// calibration files; throws naming the first file that disagrees. A layer's weights and
// router_probs, and the sequence_lengths, are kept only when every input has them.
Trace concatenate_traces(const std::vector<Trace>& traces, const std::vector<std::string>& sources);

}  // namespace occult
