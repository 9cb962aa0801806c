// Expert similarity for the similarity pruning scheme (DESIGN.md, "Collaboration pruning"):
// the cosine of two experts' router-probability columns over a calibration set, or of their
// collaboration-graph rows where no probabilities were recorded. Matrices are E x E row-major.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "occult/routing/trace.h"

namespace occult {

// Accumulates the Gram matrix of router-probability columns over calibration batches, so a
// calibration set can be streamed; similarity() then gives the column cosines.
class ProbabilityGram {
 public:
  // An empty accumulator for `num_experts` columns.
  explicit ProbabilityGram(int num_experts);
  // Adds router_probs[T, E] (row-major) of `num_tokens` tokens.
  void add(std::span<const float> router_probs, std::int64_t num_tokens);
  // Tokens added so far.
  std::int64_t num_tokens() const { return num_tokens_; }
  // Cosine of every pair of columns; an expert whose column is all zero has similarity 0 to
  // every expert, itself included.
  std::vector<float> similarity() const;

 private:
  int num_experts_;
  std::int64_t num_tokens_ = 0;
  std::vector<double> gram_;  // [E, E], upper triangle filled by dsyrk, mirrored on read
};

// Cosine of the columns of router_probs[T, E].
std::vector<float> probability_similarity(std::span<const float> router_probs, std::int64_t num_tokens,
                                          int num_experts);

// Cosine of the rows of a collaboration graph W[E, E] (coactivation_counts); an expert that
// never collaborates has similarity 0 to every expert.
std::vector<float> collaboration_similarity(std::span<const std::int64_t> coactivation, int num_experts);

// How a layer's similarity was obtained (for reports).
enum class SimilaritySource { kRouterProbs, kCollaborationGraph };

// The similarity of one MoE layer over several calibration traces' routing of it: from router
// probabilities when every one of them has them, else from their summed collaboration graph.
std::vector<float> layer_similarity(std::span<const LayerRouting* const> layers, int num_experts,
                                    SimilaritySource* source = nullptr);

// Per-layer similarity of a calibration set (traces of one model shape; throws naming the
// first file whose shape differs from the first's).
std::vector<std::vector<float>> trace_similarity(const std::vector<Trace>& calibration,
                                                 const std::vector<std::string>& sources,
                                                 SimilaritySource* source = nullptr);

// Writes the sidecar file: safetensors with F32 tensors `layers.{l}.similarity` [E, E] and
// __metadata__ format "occult-similarity/1", num_experts, num_layers.
void save_similarity(const std::string& path, const std::vector<std::vector<float>>& per_layer,
                     int num_experts);

// Reads a sidecar file; throws naming the file and tensor unless it has `num_layers` layers of
// E x E finite values.
std::vector<std::vector<float>> load_similarity(const std::string& path, int num_experts, int num_layers);

}  // namespace occult
