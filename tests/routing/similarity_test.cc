#include "occult/routing/similarity.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>

#include "occult/core/error.h"
#include "occult/routing/statistics.h"
#include "routing/reference.h"

namespace occult {
namespace {

TEST(Similarity, HandComputedProbabilityColumns) {
  // Columns over 2 tokens: c0 = (1, 1), c1 = (0, 1), c2 = (0, 0).
  const std::vector<float> probs = {1, 0, 0, 1, 1, 0};
  const std::vector<float> sim = probability_similarity(probs, 2, 3);
  const float inv_sqrt2 = static_cast<float>(1.0 / (std::sqrt(2.0) * 1.0));
  EXPECT_EQ(sim, (std::vector<float>{1, inv_sqrt2, 0, inv_sqrt2, 1, 0, 0, 0, 0}));
}

TEST(Similarity, HandComputedCollaborationRows) {
  // Tokens {0, 1} and {0, 2}: rows r0 = (0, 1, 1), r1 = r2 = (1, 0, 0).
  LayerRouting layer;
  layer.num_tokens = 2;
  layer.top_k = 2;
  layer.topk_ids = {0, 1, 0, 2};
  const std::vector<float> sim = collaboration_similarity(coactivation_counts(layer, 3), 3);
  EXPECT_EQ(sim, (std::vector<float>{1, 0, 0, 0, 1, 1, 0, 1, 1}));

  SimilaritySource source;
  const LayerRouting* layers[] = {&layer};
  EXPECT_EQ(layer_similarity(layers, 3, &source), sim);
  EXPECT_EQ(source, SimilaritySource::kCollaborationGraph);
}

TEST(Similarity, BlasPathMatchesNaiveTwinExactly) {
  // Dyadic probabilities (multiples of 1/8) make every dot product exact in double, so the
  // chunked dsyrk path and the triple loop must agree bit for bit. 5000 tokens span 3 chunks.
  std::mt19937 rng(7);
  const int e = 13;
  const std::int64_t t = 5000;
  std::vector<float> probs(t * e);
  for (float& p : probs) p = static_cast<float>(rng() % 9) / 8.0f;
  for (int i = 0; i < e; ++i) probs[3 * e + i] = 0;  // and a zero column:
  for (std::int64_t r = 0; r < t; ++r) probs[r * e + 5] = 0;
  const std::vector<float> fast = probability_similarity(probs, t, e);
  const std::vector<float> slow = reference::probability_similarity(probs, t, e);
  ASSERT_EQ(fast.size(), slow.size());
  EXPECT_EQ(0, std::memcmp(fast.data(), slow.data(), fast.size() * sizeof(float)));
  EXPECT_EQ(fast[5 * e + 5], 0.0f);
  EXPECT_EQ(fast[0], 1.0f);

  // Streaming in two batches gives the same matrix.
  ProbabilityGram gram(e);
  gram.add(std::span<const float>(probs).first(1000 * e), 1000);
  gram.add(std::span<const float>(probs).subspan(1000 * e), t - 1000);
  EXPECT_EQ(gram.num_tokens(), t);
  EXPECT_EQ(gram.similarity(), fast);
}

TEST(Similarity, SidecarRoundTripAndErrors) {
  const std::string path =
      (std::filesystem::temp_directory_path() / "occult_similarity_test.safetensors").string();
  const std::vector<std::vector<float>> layers = {{1, 0.5f, 0.5f, 1}, {1, -0.25f, -0.25f, 1}};
  save_similarity(path, layers, 2);
  EXPECT_EQ(load_similarity(path, 2, 2), layers);
  EXPECT_EQ(load_similarity(path, 2, 1).size(), 1u);
  try {
    load_similarity(path, 2, 3);
    FAIL() << "expected an error for a missing layer";
  } catch (const Error& error) {
    EXPECT_NE(error.message().find("layers.2.similarity"), std::string::npos) << error.message();
  }
  EXPECT_THROW(load_similarity(path, 3, 1), Error);  // E mismatch
  EXPECT_THROW(save_similarity(path, {{1, 2, 3}}, 2), Error);
  std::remove(path.c_str());
}

TEST(Similarity, LayerSimilarityPrefersProbabilities) {
  LayerRouting layer;
  layer.num_tokens = 2;
  layer.top_k = 1;
  layer.topk_ids = {0, 1};
  layer.router_probs = {1, 0, 0, 1, 1, 0};
  SimilaritySource source;
  const LayerRouting* layers[] = {&layer, &layer};
  EXPECT_EQ(layer_similarity(layers, 3, &source), probability_similarity(layer.router_probs, 2, 3));
  EXPECT_EQ(source, SimilaritySource::kRouterProbs);
  EXPECT_THROW(probability_similarity(layer.router_probs, 3, 3), Error);
}

}  // namespace
}  // namespace occult
