// The training text loader: a train/validation split of one token stream and batches that
// depend only on (seed, step), never on the rank count: the global batch is the same for every
// D and rank r takes a contiguous share of its sequences.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "occult/comm/communicator.h"  // Share, rank_share
#include "occult/text/bytes.h"          // byte_tokenize (the byte-level default)

namespace occult {

// One batch of this rank: tokens and next-token targets [B_local, T].
struct Batch {
  std::int64_t sequences = 0;
  int seq_len = 0;
  std::vector<std::int32_t> tokens;
  std::vector<std::int32_t> targets;
};

// A text file split into train (first 1 - val_fraction) and validation (the rest) token streams.
class TextDataset {
 public:
  // Reads `path` as bytes (byte-level models); throws naming it when it cannot be read or is
  // too short to split.
  TextDataset(const std::string& path, double val_fraction = 0.1);
  // Splits a token stream already read (e.g. through a model's tokenizer); `name` (the file it
  // came from) names it in errors.
  TextDataset(std::vector<std::int32_t> tokens, std::string name, double val_fraction = 0.1);
  // Tokens in the training split (the first 1 - val_fraction of the file).
  std::int64_t train_tokens() const { return static_cast<std::int64_t>(train_.size()); }
  // Tokens in the validation split (the rest).
  std::int64_t val_tokens() const { return static_cast<std::int64_t>(val_.size()); }
  // The file this dataset was read from.
  const std::string& path() const { return path_; }

  // Training batch of 1-based step `step`: `global_batch` windows of seq_len+1 tokens at
  // offsets drawn from (seed, step); this rank's share of them.
  Batch train_batch(std::uint64_t seed, std::int64_t step, std::int64_t global_batch, int seq_len, int rank,
                    int ranks) const;
  // The validation windows: min(max_sequences, whole windows in the split), non-overlapping
  // from the start of the split; this rank's share.
  Batch val_batch(std::int64_t max_sequences, int seq_len, int rank, int ranks) const;

 private:
  std::string path_;
  std::vector<std::int32_t> train_, val_;
};

}  // namespace occult
