#include "occult/infer/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "occult/core/rng.h"
#include "occult/core/error.h"

namespace occult {

void validate_sampling_options(const SamplingOptions& options) {
  OCCULT_CHECK(std::isfinite(options.temperature) && options.temperature >= 0.0f,
               "--temperature must be a finite number >= 0 (0 = greedy), got {}",
               options.temperature);
  OCCULT_CHECK(options.top_p > 0.0f && options.top_p <= 1.0f, "--top-p must be in (0, 1], got {}",
               options.top_p);
  OCCULT_CHECK(options.vocab_limit >= 0, "the sampling vocabulary limit must be >= 0, got {}",
               options.vocab_limit);
}

double sampling_uniform(std::uint64_t seed, std::int64_t sequence, std::int64_t step) {
  // Three SplitMix64 rounds mix (seed, sequence, step) into one stream start: draws never
  // depend on which rank holds the sequence or on how many draws other sequences made.
  SplitMix64 a(seed);
  SplitMix64 b(a.next() ^ static_cast<std::uint64_t>(sequence));
  SplitMix64 c(b.next() ^ (static_cast<std::uint64_t>(step) * 0x9E3779B97F4A7C15ull));
  return c.uniform();
}

std::int32_t sample_from_probs(std::span<const float> probs, float top_p, double u) {
  OCCULT_CHECK(!probs.empty(), "cannot sample from an empty probability row");
  std::vector<std::int32_t> order(probs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::int32_t a, std::int32_t b) { return probs[a] > probs[b]; });
  double total = 0.0;
  for (float p : probs) total += p;
  OCCULT_CHECK(total > 0.0 && std::isfinite(total), "probabilities sum to {}, cannot sample",
               total);
  // The nucleus: the shortest descending prefix reaching top_p of the mass (at least one id).
  const double target = static_cast<double>(top_p) * total;
  double kept = 0.0;
  std::size_t n = 0;
  while (n < order.size()) {
    kept += probs[order[n]];
    ++n;
    if (kept >= target) break;
  }
  const double x = u * kept;
  double cumulative = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    cumulative += probs[order[i]];
    if (x < cumulative) return order[i];
  }
  // u * kept rounds to kept only through floating point: the last kept id owns that edge.
  return order[n - 1];
}

std::int32_t sample_token(std::span<const float> logits, const SamplingOptions& options,
                          std::int64_t sequence, std::int64_t step, std::vector<float>* scratch) {
  const std::size_t V = options.vocab_limit > 0
                            ? std::min<std::size_t>(logits.size(), options.vocab_limit)
                            : logits.size();
  OCCULT_CHECK(V > 0, "cannot sample from an empty logits row");
  if (options.temperature == 0.0f) {
    std::size_t best = 0;
    for (std::size_t i = 1; i < V; ++i) {
      if (logits[i] > logits[best]) best = i;  // strict: ties keep the lower id
    }
    return static_cast<std::int32_t>(best);
  }
  std::vector<float> local;
  std::vector<float>& probs = scratch != nullptr ? *scratch : local;
  probs.resize(V);
  float maxv = logits[0];
  for (std::size_t i = 1; i < V; ++i) maxv = std::max(maxv, logits[i]);
  const double inv_t = 1.0 / options.temperature;
  double sum = 0.0;
  for (std::size_t i = 0; i < V; ++i) {
    probs[i] = static_cast<float>(std::exp((static_cast<double>(logits[i]) - maxv) * inv_t));
    sum += probs[i];
  }
  for (std::size_t i = 0; i < V; ++i) probs[i] = static_cast<float>(probs[i] / sum);
  return sample_from_probs(probs, options.top_p, sampling_uniform(options.seed, sequence, step));
}

}  // namespace occult
