// Next-token sampling for generation: greedy (argmax), or temperature + nucleus (top-p)
// sampling driven by a counter-based random stream, so the token drawn for (seed, sequence,
// step) is the same whichever rank holds the sequence and however many ranks there are.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace occult {

// How the next token is chosen from a row of logits.
struct SamplingOptions {
  float temperature = 0.0f;   // 0 = greedy (argmax, ties to the lower id); > 0 divides the logits
  float top_p = 1.0f;         // nucleus: smallest prefix of descending probabilities reaching top_p
  std::uint64_t seed = 1234;  // with (sequence, step) it names the random number of each draw
  int vocab_limit = 0;        // > 0: only ids below it may be drawn (byte-level text: 256)
};

// Throws occult::Error naming the flag unless temperature >= 0 and finite, top_p in (0, 1],
// vocab_limit >= 0.
void validate_sampling_options(const SamplingOptions& options);

// The uniform number in [0, 1) that draw (sequence, step) of `seed` uses; depends on nothing else.
double sampling_uniform(std::uint64_t seed, std::int64_t sequence, std::int64_t step);

// Nucleus choice from probabilities `probs` (non-negative, summing to ~1) given the uniform `u`:
// sorts ids by descending probability (ties to the lower id), keeps the shortest prefix whose
// sum reaches top_p * total, and returns the id whose cumulative interval of that prefix
// contains u * (sum of the kept prefix).
std::int32_t sample_from_probs(std::span<const float> probs, float top_p, double u);

// The next token of sequence `sequence` at generation step `step` from logits [V]
// (vocab_limit applied first): argmax when temperature is 0, else softmax(logits / T) then
// sample_from_probs with sampling_uniform(seed, sequence, step). `scratch` avoids allocation.
std::int32_t sample_token(std::span<const float> logits, const SamplingOptions& options,
                          std::int64_t sequence, std::int64_t step,
                          std::vector<float>* scratch = nullptr);

}  // namespace occult
