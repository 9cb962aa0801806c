// Sampling: greedy ties, the nucleus cut and the cumulative intervals on hand-computed dyadic
// probabilities (exact in float), counter-based determinism, and flag validation.
#include "occult/infer/sampling.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "occult/core/error.h"

namespace occult {
namespace {

TEST(SampleFromProbs, WalksTheDescendingCumulativeIntervals) {
  // Descending order is id 1 (0.5), id 2 (0.375), id 0 (0.125): intervals [0,.5) [.5,.875)
  // [.875,1).
  const std::vector<float> p = {0.125f, 0.5f, 0.375f};
  EXPECT_EQ(sample_from_probs(p, 1.0f, 0.0), 1);
  EXPECT_EQ(sample_from_probs(p, 1.0f, 0.25), 1);
  EXPECT_EQ(sample_from_probs(p, 1.0f, 0.5), 2);  // an interval's upper edge belongs to the next id
  EXPECT_EQ(sample_from_probs(p, 1.0f, 0.8), 2);
  EXPECT_EQ(sample_from_probs(p, 1.0f, 0.875), 0);
  EXPECT_EQ(sample_from_probs(p, 1.0f, 0.999), 0);
}

TEST(SampleFromProbs, TopPKeepsTheShortestPrefixReachingTheMass) {
  const std::vector<float> p = {0.125f, 0.5f, 0.375f};
  // top_p 0.5: id 1 alone reaches it.
  for (double u : {0.0, 0.3, 0.7, 0.999}) EXPECT_EQ(sample_from_probs(p, 0.5f, u), 1) << u;
  // top_p 0.75: ids 1 and 2 (mass 0.875), renormalised: id 1 below u = 0.5/0.875 = 4/7.
  EXPECT_EQ(sample_from_probs(p, 0.75f, 0.5), 1);    // x = 0.4375 < 0.5
  EXPECT_EQ(sample_from_probs(p, 0.75f, 0.6), 2);    // x = 0.525
  EXPECT_EQ(sample_from_probs(p, 0.75f, 0.999), 2);  // id 0 is outside the nucleus
}

TEST(SampleFromProbs, TiesGoToTheLowerIdFirst) {
  const std::vector<float> p = {0.25f, 0.25f, 0.5f};  // order 2, 0, 1
  EXPECT_EQ(sample_from_probs(p, 1.0f, 0.25), 2);
  EXPECT_EQ(sample_from_probs(p, 1.0f, 0.5), 0);
  EXPECT_EQ(sample_from_probs(p, 1.0f, 0.8), 1);
}

TEST(SampleToken, GreedyIsArgmaxWithTiesToTheLowerIdAndHonoursTheVocabLimit) {
  SamplingOptions o;  // temperature 0
  const std::vector<float> logits = {1.0f, 3.0f, 3.0f, 2.0f};
  EXPECT_EQ(sample_token(logits, o, 0, 0), 1);
  const std::vector<float> high_tail = {5.0f, 1.0f, 9.0f};
  EXPECT_EQ(sample_token(high_tail, o, 0, 0), 2);
  o.vocab_limit = 2;
  EXPECT_EQ(sample_token(high_tail, o, 0, 0), 0);
}

TEST(SampleToken, TinyTemperatureIsGreedy) {
  SamplingOptions o;
  o.temperature = 1e-3f;
  const std::vector<float> logits = {0.0f, 0.5f, 2.0f, 1.9f};
  for (int step = 0; step < 50; ++step) EXPECT_EQ(sample_token(logits, o, 3, step), 2);
}

TEST(SampleToken, DrawsDependOnlyOnSeedSequenceAndStep) {
  SamplingOptions o;
  o.temperature = 1.0f;
  o.seed = 99;
  // logits = log p: softmax gives back p = (1/8, 1/2, 3/8).
  const std::vector<float> logits = {std::log(0.125f), std::log(0.5f), std::log(0.375f)};
  std::vector<int> counts(3, 0);
  const int draws = 20000;
  for (int step = 0; step < draws; ++step) {
    const int a = sample_token(logits, o, 5, step);
    EXPECT_EQ(a, sample_token(logits, o, 5, step));  // no hidden state
    ++counts[a];
  }
  // 20000 seeded draws (deterministic): frequencies within 0.02 of p (about 7 standard deviations).
  EXPECT_NEAR(counts[0] / double(draws), 0.125, 0.02);
  EXPECT_NEAR(counts[1] / double(draws), 0.5, 0.02);
  EXPECT_NEAR(counts[2] / double(draws), 0.375, 0.02);
  EXPECT_NE(sampling_uniform(99, 5, 0), sampling_uniform(99, 6, 0));
  EXPECT_NE(sampling_uniform(99, 5, 0), sampling_uniform(99, 5, 1));
  EXPECT_NE(sampling_uniform(99, 5, 0), sampling_uniform(98, 5, 0));
  for (int s = 0; s < 100; ++s) {
    const double u = sampling_uniform(1, s, s);
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
  }
}

TEST(SamplingOptions, RejectsBadFlagsNamingThem) {
  SamplingOptions o;
  o.temperature = -1.0f;
  EXPECT_THROW(
      {
        try {
          validate_sampling_options(o);
        } catch (const Error& e) {
          EXPECT_NE(e.message().find("--temperature"), std::string::npos) << e.message();
          throw;
        }
      },
      Error);
  o.temperature = NAN;
  EXPECT_THROW(validate_sampling_options(o), Error);
  o.temperature = 1.0f;
  o.top_p = 0.0f;
  EXPECT_THROW(validate_sampling_options(o), Error);
  o.top_p = 1.5f;
  EXPECT_THROW(validate_sampling_options(o), Error);
  o.top_p = 1.0f;
  EXPECT_NO_THROW(validate_sampling_options(o));
}

}  // namespace
}  // namespace occult
