#include "occult/routing/trace.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include <charconv>
#include <cmath>
#include <limits>
#include <set>

#include "occult/core/error.h"
#include "occult/core/safetensors.h"

namespace occult {

namespace {

// The `__metadata__` keys the format defines; everything else is carried as extra_metadata.
constexpr const char* kKnownMetadata[] = {"num_experts", "top_k", "num_layers", "model", "dataset"};
// Guards allocation sizes against absurd metadata (a real model has at most a few hundred
// layers and a few thousand experts).
constexpr int kMaxLayers = 1 << 16;
constexpr int kMaxExperts = 1 << 24;

int metadata_int(const SafetensorsReader& reader, const char* key, int min_value, int max_value) {
  const auto& metadata = reader.metadata();
  auto it = metadata.find(key);
  OCCULT_CHECK(it != metadata.end(),
               "{}: __metadata__ lacks '{}' (a trace needs num_experts, top_k and num_layers)",
               reader.source(), key);
  const std::string& text = it->second;
  int value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  OCCULT_CHECK(ec == std::errc() && end == text.data() + text.size() && !text.empty(),
               "{}: __metadata__ '{}' is \"{}\", expected an integer", reader.source(), key, text);
  OCCULT_CHECK(value >= min_value && value <= max_value,
               "{}: __metadata__ '{}' is {}, expected a value in [{}, {}]", reader.source(), key,
               value, min_value, max_value);
  return value;
}

// Checks that `name` is a 2-D [rows, cols] tensor of an accepted dtype; returns its shape.
const TensorInfo& expect_matrix(const SafetensorsReader& reader, const std::string& name,
                                std::initializer_list<DType> dtypes, const char* dtypes_text) {
  const TensorInfo& info = reader.at(name);
  bool dtype_ok = false;
  for (DType d : dtypes) dtype_ok |= info.dtype == d;
  OCCULT_CHECK(dtype_ok, "{}: tensor '{}' has dtype {}, expected {}", reader.source(), name,
               dtype_name(info.dtype), dtypes_text);
  OCCULT_CHECK(info.shape.size() == 2, "{}: tensor '{}' has {} dimensions, expected 2", reader.source(),
               name, info.shape.size());
  return info;
}

// Parses "layers.{l}.{field}"; false for any other name.
bool parse_layer_tensor(const std::string& name, int& layer, std::string& field) {
  constexpr std::string_view prefix = "layers.";
  if (name.rfind(prefix, 0) != 0) return false;
  const char* begin = name.data() + prefix.size();
  const char* end = name.data() + name.size();
  const auto [dot, ec] = std::from_chars(begin, end, layer);
  if (ec != std::errc() || dot == begin || dot == end || *dot != '.') return false;
  field.assign(dot + 1, end);
  return true;
}

DType narrowest_id_dtype(int num_experts) {
  if (num_experts <= 256) return DType::kU8;
  if (num_experts <= 32768) return DType::kI16;
  return DType::kI32;
}

}  // namespace

Trace load_trace(const std::string& path) {
  const SafetensorsReader reader = SafetensorsReader::open(path);
  Trace trace;
  trace.num_experts = metadata_int(reader, "num_experts", 1, kMaxExperts);
  trace.top_k = metadata_int(reader, "top_k", 1, trace.num_experts);
  const int num_layers = metadata_int(reader, "num_layers", 1, kMaxLayers);
  for (const auto& [key, value] : reader.metadata()) {
    if (key == "model") {
      trace.model = value;
    } else if (key == "dataset") {
      trace.dataset = value;
    } else if (std::find(std::begin(kKnownMetadata), std::end(kKnownMetadata), key) ==
               std::end(kKnownMetadata)) {
      trace.extra_metadata.emplace(key, value);
    }
  }

  // Every layers.* tensor must belong to a layer the metadata announces, so a file whose
  // metadata undercounts its layers is caught instead of silently truncated.
  for (const TensorInfo& info : reader.tensors()) {
    int layer = -1;
    std::string field;
    if (info.name.rfind("layers.", 0) != 0) continue;
    OCCULT_CHECK(parse_layer_tensor(info.name, layer, field) &&
                     (field == "topk_ids" || field == "topk_weights" || field == "router_probs"),
                 "{}: tensor '{}' is not a trace tensor (expected layers.{{l}}.topk_ids, "
                 "topk_weights or router_probs)",
                 path, info.name);
    OCCULT_CHECK(layer >= 0 && layer < num_layers,
                 "{}: tensor '{}' is for layer {}, but __metadata__ num_layers is {}", path,
                 info.name, layer, num_layers);
  }

  const std::int64_t k = trace.top_k;
  const std::int64_t e = trace.num_experts;
  std::int64_t num_tokens = -1;
  trace.layers.resize(num_layers);
  for (int l = 0; l < num_layers; ++l) {
    LayerRouting& layer = trace.layers[l];
    const std::string ids_name = fmt::format("layers.{}.topk_ids", l);
    OCCULT_CHECK(reader.find(ids_name) != nullptr,
                 "{}: layer {}: missing tensor '{}' (__metadata__ num_layers is {})", path, l,
                 ids_name, num_layers);
    const TensorInfo& ids = expect_matrix(
        reader, ids_name,
        {DType::kU8, DType::kI8, DType::kI16, DType::kU16, DType::kI32, DType::kU32, DType::kI64,
         DType::kU64},
        "an integer dtype (U8, I16, I32 or I64)");
    OCCULT_CHECK(ids.shape[1] == k, "{}: layer {}: '{}' has shape [{}, {}], expected [T, top_k={}]",
                 path, l, ids_name, ids.shape[0], ids.shape[1], k);
    if (num_tokens < 0) num_tokens = ids.shape[0];
    OCCULT_CHECK(ids.shape[0] == num_tokens,
                 "{}: layer {}: '{}' has {} tokens but layer 0 has {} (every layer must hold the "
                 "same tokens)",
                 path, l, ids_name, ids.shape[0], num_tokens);
    layer.num_tokens = num_tokens;
    layer.top_k = trace.top_k;
    layer.topk_ids = reader.read_i32(ids_name);

    const std::string weights_name = fmt::format("layers.{}.topk_weights", l);
    if (reader.find(weights_name) != nullptr) {
      const TensorInfo& w = expect_matrix(reader, weights_name,
                                          {DType::kF32, DType::kF16, DType::kBF16}, "F32, F16 or BF16");
      OCCULT_CHECK(w.shape[0] == num_tokens && w.shape[1] == k,
                   "{}: layer {}: '{}' has shape [{}, {}], expected [{}, {}] like its topk_ids", path,
                   l, weights_name, w.shape[0], w.shape[1], num_tokens, k);
      layer.topk_weights = reader.read_f32(weights_name);
    }
    const std::string probs_name = fmt::format("layers.{}.router_probs", l);
    if (reader.find(probs_name) != nullptr) {
      const TensorInfo& p = expect_matrix(reader, probs_name,
                                          {DType::kF32, DType::kF16, DType::kBF16}, "F32");
      OCCULT_CHECK(p.shape[0] == num_tokens && p.shape[1] == e,
                   "{}: layer {}: '{}' has shape [{}, {}], expected [T={}, num_experts={}]", path, l,
                   probs_name, p.shape[0], p.shape[1], num_tokens, e);
      layer.router_probs = reader.read_f32(probs_name);
    }
  }

  if (const TensorInfo* lengths = reader.find("sequence_lengths")) {
    OCCULT_CHECK(dtype_is_integer(lengths->dtype) && lengths->dtype != DType::kBool,
                 "{}: tensor 'sequence_lengths' has dtype {}, expected I32", path,
                 dtype_name(lengths->dtype));
    OCCULT_CHECK(lengths->shape.size() == 1,
                 "{}: tensor 'sequence_lengths' has {} dimensions, expected 1", path,
                 lengths->shape.size());
    trace.sequence_lengths = reader.read_i32("sequence_lengths");
  }
  validate_trace(trace, path);
  return trace;
}

void validate_trace(const Trace& trace, const std::string& source) {
  const int e = trace.num_experts;
  const int k = trace.top_k;
  OCCULT_CHECK(e >= 1, "{}: num_experts is {}, expected at least 1", source, e);
  OCCULT_CHECK(k >= 1 && k <= e, "{}: top_k is {}, expected 1 <= top_k <= num_experts={}", source,
               k, e);
  OCCULT_CHECK(!trace.layers.empty(), "{}: the trace has no layers", source);
  const std::int64_t num_tokens = trace.layers.front().num_tokens;
  OCCULT_CHECK(num_tokens >= 0, "{}: layer 0 has {} tokens", source, num_tokens);
  for (int l = 0; l < trace.num_layers(); ++l) {
    const LayerRouting& layer = trace.layers[l];
    OCCULT_CHECK(layer.num_tokens == num_tokens,
                 "{}: layer {} has {} tokens but layer 0 has {} (every layer must hold the same "
                 "tokens)",
                 source, l, layer.num_tokens, num_tokens);
    OCCULT_CHECK(layer.top_k == k, "{}: layer {} has top_k {}, but the trace's top_k is {}", source,
                 l, layer.top_k, k);
    const std::size_t slots = static_cast<std::size_t>(num_tokens) * k;
    OCCULT_CHECK(layer.topk_ids.size() == slots,
                 "{}: layer {}: topk_ids holds {} ids, expected T*k = {}*{} = {}", source, l,
                 layer.topk_ids.size(), num_tokens, k, slots);
    for (std::int64_t t = 0; t < num_tokens; ++t) {
      const std::int32_t* ids = layer.ids_of(t);
      for (int a = 0; a < k; ++a) {
        OCCULT_CHECK(ids[a] >= 0 && ids[a] < e,
                     "{}: layer {}: token {}: expert id {} is out of range [0, num_experts={})",
                     source, l, t, ids[a], e);
        for (int b = 0; b < a; ++b) {
          OCCULT_CHECK(ids[a] != ids[b],
                       "{}: layer {}: token {}: expert {} is selected twice (a token's top_k={} "
                       "experts must be distinct)",
                       source, l, t, ids[a], k);
        }
      }
    }
    if (layer.has_weights()) {
      OCCULT_CHECK(layer.topk_weights.size() == slots,
                   "{}: layer {}: topk_weights holds {} values, expected T*k = {}", source, l,
                   layer.topk_weights.size(), slots);
      for (std::size_t i = 0; i < slots; ++i) {
        OCCULT_CHECK(std::isfinite(layer.topk_weights[i]),
                     "{}: layer {}: token {}: topk_weights holds {}, expected a finite weight",
                     source, l, i / k, layer.topk_weights[i]);
      }
    }
    if (layer.has_router_probs()) {
      const std::size_t cells = static_cast<std::size_t>(num_tokens) * e;
      OCCULT_CHECK(layer.router_probs.size() == cells,
                   "{}: layer {}: router_probs holds {} values, expected T*E = {}*{} = {}", source,
                   l, layer.router_probs.size(), num_tokens, e, cells);
      for (std::size_t i = 0; i < cells; ++i) {
        OCCULT_CHECK(std::isfinite(layer.router_probs[i]),
                     "{}: layer {}: token {}: router_probs holds {}, expected a finite probability",
                     source, l, i / e, layer.router_probs[i]);
      }
    }
  }
  if (!trace.sequence_lengths.empty()) {
    std::int64_t total = 0;
    for (std::size_t s = 0; s < trace.sequence_lengths.size(); ++s) {
      OCCULT_CHECK(trace.sequence_lengths[s] > 0,
                   "{}: sequence_lengths[{}] is {}, expected a positive length", source, s,
                   trace.sequence_lengths[s]);
      total += trace.sequence_lengths[s];
    }
    OCCULT_CHECK(total == num_tokens,
                 "{}: sequence_lengths sum to {} tokens, but the layers hold {}", source, total,
                 num_tokens);
  }
}

void save_trace(const Trace& trace, const std::string& path, const TraceWriteOptions& options) {
  validate_trace(trace, path);
  DType ids_dtype = options.ids_i32 ? DType::kI32 : narrowest_id_dtype(trace.num_experts);
  if (options.ids_dtype) ids_dtype = *options.ids_dtype;
  DType weights_dtype = options.weights_f16 ? DType::kF16 : DType::kF32;
  if (options.weights_dtype) weights_dtype = *options.weights_dtype;
  OCCULT_CHECK(ids_dtype == DType::kU8 || ids_dtype == DType::kI16 || ids_dtype == DType::kI32 ||
                   ids_dtype == DType::kI64,
               "{}: cannot write expert ids as {}; expected U8, I16, I32 or I64", path,
               dtype_name(ids_dtype));
  const std::int64_t id_limit = ids_dtype == DType::kU8    ? 256
                                : ids_dtype == DType::kI16 ? 32768
                                                           : std::numeric_limits<std::int64_t>::max();
  OCCULT_CHECK(trace.num_experts <= id_limit,
               "{}: {} cannot hold expert ids of num_experts={} (at most {} experts)", path,
               dtype_name(ids_dtype), trace.num_experts, id_limit);
  OCCULT_CHECK(weights_dtype == DType::kF32 || weights_dtype == DType::kF16 ||
                   weights_dtype == DType::kBF16,
               "{}: cannot write weights as {}; expected F32, F16 or BF16", path,
               dtype_name(weights_dtype));

  SafetensorsWriter writer;
  for (const auto& [key, value] : trace.extra_metadata) writer.set_metadata(key, value);
  writer.set_metadata("num_experts", std::to_string(trace.num_experts));
  writer.set_metadata("top_k", std::to_string(trace.top_k));
  writer.set_metadata("num_layers", std::to_string(trace.num_layers()));
  writer.set_metadata("model", trace.model);
  writer.set_metadata("dataset", trace.dataset);

  const std::int64_t t = trace.num_tokens();
  const std::int64_t k = trace.top_k;
  for (int l = 0; l < trace.num_layers(); ++l) {
    const LayerRouting& layer = trace.layers[l];
    const std::string ids_name = fmt::format("layers.{}.topk_ids", l);
    const auto& ids = layer.topk_ids;
    switch (ids_dtype) {
      case DType::kU8:
        writer.add_u8(ids_name, {t, k}, std::vector<std::uint8_t>(ids.begin(), ids.end()));
        break;
      case DType::kI16:
        writer.add_i16(ids_name, {t, k}, std::vector<std::int16_t>(ids.begin(), ids.end()));
        break;
      case DType::kI32:
        writer.add_i32(ids_name, {t, k}, ids);
        break;
      default:
        writer.add_i64(ids_name, {t, k}, std::vector<std::int64_t>(ids.begin(), ids.end()));
        break;
    }
    if (layer.has_weights()) {
      const std::string name = fmt::format("layers.{}.topk_weights", l);
      if (weights_dtype == DType::kF16) {
        writer.add_f16(name, {t, k}, layer.topk_weights);
      } else if (weights_dtype == DType::kBF16) {
        writer.add_bf16(name, {t, k}, layer.topk_weights);
      } else {
        writer.add_f32(name, {t, k}, layer.topk_weights);
      }
    }
    if (layer.has_router_probs() && options.write_router_probs) {
      writer.add_f32(fmt::format("layers.{}.router_probs", l), {t, trace.num_experts},
                     layer.router_probs);
    }
  }
  if (!trace.sequence_lengths.empty()) {
    writer.add_i32("sequence_lengths", {static_cast<std::int64_t>(trace.sequence_lengths.size())},
                   trace.sequence_lengths);
  }
  writer.write(path);
}

Trace concatenate_traces(const std::vector<Trace>& traces, const std::vector<std::string>& sources) {
  OCCULT_CHECK(!traces.empty(), "concatenate_traces: no traces given");
  OCCULT_CHECK(sources.size() == traces.size(),
               "concatenate_traces: {} traces but {} source names", traces.size(), sources.size());
  const Trace& first = traces.front();
  // Shapes first: a trace of another model is the likelier mistake and the clearer message.
  for (std::size_t i = 0; i < traces.size(); ++i) {
    const Trace& tr = traces[i];
    OCCULT_CHECK(tr.num_experts == first.num_experts && tr.top_k == first.top_k &&
                     tr.num_layers() == first.num_layers(),
                 "{}: shape (num_experts={}, top_k={}, num_layers={}) differs from {} "
                 "(num_experts={}, top_k={}, num_layers={}); traces of different models cannot be "
                 "combined",
                 sources[i], tr.num_experts, tr.top_k, tr.num_layers(), sources[0],
                 first.num_experts, first.top_k, first.num_layers());
  }
  for (std::size_t i = 0; i < traces.size(); ++i) validate_trace(traces[i], sources[i]);
  // Optional parts are kept per layer where every input (with tokens) has them.
  std::vector<bool> all_weights(first.num_layers(), true), all_probs(first.num_layers(), true);
  bool all_lengths = true;
  for (const Trace& tr : traces) {
    for (int l = 0; l < tr.num_layers(); ++l) {
      const LayerRouting& layer = tr.layers[l];
      all_weights[l] = all_weights[l] && (layer.has_weights() || layer.num_tokens == 0);
      all_probs[l] = all_probs[l] && (layer.has_router_probs() || layer.num_tokens == 0);
    }
    all_lengths &= !tr.sequence_lengths.empty() || tr.num_tokens() == 0;
  }

  Trace out;
  out.num_experts = first.num_experts;
  out.top_k = first.top_k;
  out.extra_metadata = first.extra_metadata;
  std::set<std::string> models, datasets;
  for (const Trace& tr : traces) {
    models.insert(tr.model);
    datasets.insert(tr.dataset);
  }
  out.model = fmt::format("{}", fmt::join(models, " + "));
  out.dataset = fmt::format("{}", fmt::join(datasets, " + "));
  out.layers.resize(first.num_layers());
  for (int l = 0; l < first.num_layers(); ++l) {
    LayerRouting& layer = out.layers[l];
    layer.top_k = first.top_k;
    for (const Trace& tr : traces) {
      const LayerRouting& in = tr.layers[l];
      layer.num_tokens += in.num_tokens;
      layer.topk_ids.insert(layer.topk_ids.end(), in.topk_ids.begin(), in.topk_ids.end());
      if (all_weights[l]) {
        layer.topk_weights.insert(layer.topk_weights.end(), in.topk_weights.begin(),
                                  in.topk_weights.end());
      }
      if (all_probs[l]) {
        layer.router_probs.insert(layer.router_probs.end(), in.router_probs.begin(),
                                  in.router_probs.end());
      }
    }
  }
  if (all_lengths) {
    for (const Trace& tr : traces) {
      out.sequence_lengths.insert(out.sequence_lengths.end(), tr.sequence_lengths.begin(),
                                  tr.sequence_lengths.end());
    }
  }
  return out;
}

}  // namespace occult
