#include "occult/routing/similarity.h"

#include <cblas.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "occult/core/error.h"
#include "occult/core/safetensors.h"
#include "occult/routing/statistics.h"

namespace occult {

namespace {

// Tokens converted to double per dsyrk call: bounds the scratch (kChunk x E doubles) while
// keeping each BLAS call large enough to run at full speed.
constexpr std::int64_t kChunk = 2048;

// cos(i, j) = G[i][j] / sqrt(G[i][i] G[j][j]) from a full symmetric Gram matrix.
std::vector<float> cosine_from_gram(const std::vector<double>& gram, int e) {
  std::vector<float> out(static_cast<std::size_t>(e) * e, 0.0f);
  for (int i = 0; i < e; ++i) {
    for (int j = 0; j < e; ++j) {
      const double ni = gram[static_cast<std::size_t>(i) * e + i];
      const double nj = gram[static_cast<std::size_t>(j) * e + j];
      if (ni > 0 && nj > 0) {
        out[static_cast<std::size_t>(i) * e + j] =
            static_cast<float>(gram[static_cast<std::size_t>(i) * e + j] / (std::sqrt(ni) * std::sqrt(nj)));
      }
    }
  }
  return out;
}

}  // namespace

ProbabilityGram::ProbabilityGram(int num_experts) : num_experts_(num_experts) {
  OCCULT_CHECK(num_experts >= 1, "similarity: num_experts must be >= 1, got {}", num_experts);
  gram_.assign(static_cast<std::size_t>(num_experts) * num_experts, 0.0);
}

void ProbabilityGram::add(std::span<const float> router_probs, std::int64_t num_tokens) {
  const int e = num_experts_;
  OCCULT_CHECK(num_tokens >= 0 && router_probs.size() == static_cast<std::size_t>(num_tokens) * e,
               "similarity: router_probs has {} values, expected num_tokens={} x num_experts={}",
               router_probs.size(), num_tokens, e);
  std::vector<double> chunk;
  for (std::int64_t start = 0; start < num_tokens; start += kChunk) {
    const std::int64_t rows = std::min(kChunk, num_tokens - start);
    chunk.assign(router_probs.begin() + start * e, router_probs.begin() + (start + rows) * e);
    for (std::size_t i = 0; i < chunk.size(); ++i) {
      OCCULT_CHECK(std::isfinite(chunk[i]), "similarity: router probability of token {} expert {} is not finite",
                   start + static_cast<std::int64_t>(i) / e, i % e);
    }
    // gram (upper) += chunk^T chunk; chunk is rows x E row-major.
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, e, static_cast<int>(rows), 1.0, chunk.data(), e,
                1.0, gram_.data(), e);
  }
  num_tokens_ += num_tokens;
}

std::vector<float> ProbabilityGram::similarity() const {
  const int e = num_experts_;
  std::vector<double> full = gram_;
  for (int i = 0; i < e; ++i) {
    for (int j = 0; j < i; ++j) full[static_cast<std::size_t>(i) * e + j] = full[static_cast<std::size_t>(j) * e + i];
  }
  return cosine_from_gram(full, e);
}

std::vector<float> probability_similarity(std::span<const float> router_probs, std::int64_t num_tokens,
                                          int num_experts) {
  ProbabilityGram gram(num_experts);
  gram.add(router_probs, num_tokens);
  return gram.similarity();
}

std::vector<float> collaboration_similarity(std::span<const std::int64_t> coactivation, int num_experts) {
  const int e = num_experts;
  OCCULT_CHECK(e >= 1 && coactivation.size() == static_cast<std::size_t>(e) * e,
               "similarity: collaboration graph has {} entries, expected num_experts^2 = {}",
               coactivation.size(), static_cast<std::size_t>(std::max(e, 0)) * std::max(e, 0));
  // Counts are exact in double up to 2^53, so the Gram matrix of rows is exact as well.
  std::vector<double> gram(static_cast<std::size_t>(e) * e, 0.0);
  for (int i = 0; i < e; ++i) {
    for (int j = i; j < e; ++j) {
      double dot = 0;
      for (int c = 0; c < e; ++c) {
        dot += static_cast<double>(coactivation[static_cast<std::size_t>(i) * e + c]) *
               static_cast<double>(coactivation[static_cast<std::size_t>(j) * e + c]);
      }
      gram[static_cast<std::size_t>(i) * e + j] = gram[static_cast<std::size_t>(j) * e + i] = dot;
    }
  }
  return cosine_from_gram(gram, e);
}

std::vector<float> layer_similarity(std::span<const LayerRouting* const> layers, int num_experts,
                                    SimilaritySource* source) {
  OCCULT_CHECK(!layers.empty(), "similarity: no calibration routing given");
  const bool all_probs = std::all_of(layers.begin(), layers.end(),
                                     [](const LayerRouting* l) { return l->has_router_probs(); });
  if (source) *source = all_probs ? SimilaritySource::kRouterProbs : SimilaritySource::kCollaborationGraph;
  if (all_probs) {
    ProbabilityGram gram(num_experts);
    for (const LayerRouting* l : layers) gram.add(l->router_probs, l->num_tokens);
    return gram.similarity();
  }
  std::vector<std::int64_t> counts(static_cast<std::size_t>(num_experts) * num_experts, 0);
  for (const LayerRouting* l : layers) {
    const std::vector<std::int64_t> w = coactivation_counts(*l, num_experts);
    for (std::size_t i = 0; i < w.size(); ++i) counts[i] += w[i];
  }
  return collaboration_similarity(counts, num_experts);
}

std::vector<std::vector<float>> trace_similarity(const std::vector<Trace>& calibration,
                                                 const std::vector<std::string>& sources,
                                                 SimilaritySource* source) {
  OCCULT_CHECK(!calibration.empty(), "similarity: no calibration trace given");
  const Trace& first = calibration.front();
  for (std::size_t i = 0; i < calibration.size(); ++i) {
    const Trace& t = calibration[i];
    const std::string name = i < sources.size() ? sources[i] : fmt::format("calibration trace {}", i);
    OCCULT_CHECK(t.num_experts == first.num_experts && t.top_k == first.top_k &&
                     t.num_layers() == first.num_layers(),
                 "{}: shape E={} k={} layers={} differs from the first calibration trace "
                 "(E={} k={} layers={})",
                 name, t.num_experts, t.top_k, t.num_layers(), first.num_experts, first.top_k,
                 first.num_layers());
  }
  std::vector<std::vector<float>> out;
  SimilaritySource overall = SimilaritySource::kRouterProbs;
  for (int l = 0; l < first.num_layers(); ++l) {
    std::vector<const LayerRouting*> layers;
    for (const Trace& t : calibration) layers.push_back(&t.layers[l]);
    SimilaritySource layer_source;
    out.push_back(layer_similarity(layers, first.num_experts, &layer_source));
    if (layer_source == SimilaritySource::kCollaborationGraph) overall = layer_source;
  }
  if (source) *source = overall;
  return out;
}

void save_similarity(const std::string& path, const std::vector<std::vector<float>>& per_layer,
                     int num_experts) {
  const std::size_t n = static_cast<std::size_t>(num_experts) * num_experts;
  SafetensorsWriter writer;
  writer.set_metadata("format", "occult-similarity/1");
  writer.set_metadata("num_experts", std::to_string(num_experts));
  writer.set_metadata("num_layers", std::to_string(per_layer.size()));
  for (std::size_t l = 0; l < per_layer.size(); ++l) {
    OCCULT_CHECK(per_layer[l].size() == n, "{}: layer {} similarity has {} values, expected {} x {}", path, l,
                 per_layer[l].size(), num_experts, num_experts);
    writer.add_f32(fmt::format("layers.{}.similarity", l), {num_experts, num_experts}, per_layer[l]);
  }
  writer.write(path);
}

std::vector<std::vector<float>> load_similarity(const std::string& path, int num_experts, int num_layers) {
  const SafetensorsReader reader = SafetensorsReader::open(path);
  std::vector<std::vector<float>> out;
  const std::int64_t shape[2] = {num_experts, num_experts};
  for (int l = 0; l < num_layers; ++l) {
    const std::string name = fmt::format("layers.{}.similarity", l);
    OCCULT_CHECK(reader.find(name) != nullptr,
                 "{}: no tensor {} (the similarity file has fewer layers than the trace's {})", path, name,
                 num_layers);
    reader.expect_shape(name, shape);
    std::vector<float> values = reader.read_f32(name);
    for (std::size_t i = 0; i < values.size(); ++i) {
      OCCULT_CHECK(std::isfinite(values[i]), "{}: tensor {} has a non-finite value at [{}][{}]", path, name,
                   i / num_experts, i % num_experts);
    }
    out.push_back(std::move(values));
  }
  return out;
}

}  // namespace occult
