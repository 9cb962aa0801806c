// The check both KV-cache tests run (tests/infer for occult's own model, tests/hf for every
// Hugging Face family): prefill each sequence's prompt, decode the rest one token at a time, and
// compare every logits row the engine returns with a one-process full forward of the sequence.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "occult/comm/communicator.h"
#include "occult/infer/inference.h"
#include "occult/model/model.h"

namespace occult::testing {

// max |a - b| / max |b| over one logits row.
inline double relative_error(std::span<const float> a, std::span<const float> b) {
  double diff = 0.0, scale = 0.0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return diff / scale;
}

// Collective over `comm` (the ranks of `model`). Every rank passes the same global `seqs`; rank
// r takes its rank_share of them, prefills the first prompt_lengths[s] tokens of each on `model`
// (blocked prefill attention of `attention_block_rows` query rows; 0 = the default), then decodes
// the rest, every rank taking the same number of steps. Each returned row must be within
// `max_relative_error` of `reference`'s full forward (a model on one process). *rows_checked
// gets the decoded rows checked over all ranks. `mla_absorbed_decode` picks the engine's
// latent-attention decode form (absorbed or expanded; no effect without latent attention).
inline void check_cached_decoding(Communicator& comm, MoeTransformer& model,
                                  MoeTransformer& reference,
                                  const std::vector<std::vector<std::int32_t>>& seqs,
                                  const std::vector<int>& prompt_lengths, int attention_block_rows,
                                  double max_relative_error, std::int64_t* rows_checked,
                                  bool mla_absorbed_decode = true) {
  const ModelConfig& config = model.config();
  const int V = config.vocab_size;
  const Share share = rank_share(static_cast<std::int64_t>(seqs.size()), comm.rank(), comm.size());
  std::vector<std::vector<std::int32_t>> prompts;
  std::vector<std::vector<float>> expected;
  for (std::int64_t s = share.begin; s < share.end; ++s) {
    prompts.emplace_back(seqs[s].begin(), seqs[s].begin() + prompt_lengths[s]);
    const std::vector<std::int32_t> targets(seqs[s].size(), 0);
    reference.forward(seqs[s], targets, 1, static_cast<int>(seqs[s].size()));
    const auto logits = reference.logits();
    expected.emplace_back(logits.begin(), logits.end());
  }
  const int n = static_cast<int>(prompts.size());
  InferenceEngine engine(model, {.max_sequences = n,
                                 .max_length = config.max_position_embeddings,
                                 .attention_block_rows = attention_block_rows,
                                 .mla_absorbed_decode = mla_absorbed_decode});
  const auto row = [&](const std::vector<float>& logits, int t) {
    return std::span<const float>(logits).subspan(static_cast<std::size_t>(t) * V, V);
  };

  const auto first = engine.prefill(prompts);
  ASSERT_EQ(first.size(), static_cast<std::size_t>(n) * V);
  for (int i = 0; i < n; ++i) {
    const int last = static_cast<int>(prompts[i].size()) - 1;
    EXPECT_LT(
        relative_error(first.subspan(static_cast<std::size_t>(i) * V, V), row(expected[i], last)),
        max_relative_error)
        << "prefill, sequence " << share.begin + i << " position " << last;
  }
  // Every rank takes the same number of decode steps, even with nothing left to decode.
  int steps = 0;
  for (std::size_t s = 0; s < seqs.size(); ++s) {
    steps = std::max(steps, static_cast<int>(seqs[s].size()) - prompt_lengths[s]);
  }
  std::int64_t checked = 0;
  for (int step = 0; step < steps; ++step) {
    std::vector<int> slots;
    std::vector<std::int32_t> tokens;
    for (int i = 0; i < n; ++i) {
      const auto& seq = seqs[share.begin + i];
      const int pos = engine.length(i);
      if (pos < static_cast<int>(seq.size())) {
        slots.push_back(i);
        tokens.push_back(seq[pos]);
      }
    }
    const auto logits = engine.decode(slots, tokens);
    ASSERT_EQ(logits.size(), slots.size() * V);
    for (std::size_t j = 0; j < slots.size(); ++j) {
      const int pos = engine.length(slots[j]) - 1;
      EXPECT_LT(relative_error(logits.subspan(j * V, V), row(expected[slots[j]], pos)),
                max_relative_error)
          << "decode, sequence " << share.begin + slots[j] << " position " << pos;
      ++checked;
    }
  }
  comm.all_reduce_sum(std::span<std::int64_t>(&checked, 1));
  *rows_checked = checked;
}

}  // namespace occult::testing
