#include "occult/train/data.h"

#include <fstream>
#include <sstream>

#include "occult/core/rng.h"
#include "occult/core/error.h"

namespace occult {

namespace {

std::vector<std::int32_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  OCCULT_CHECK(in.good(), "cannot read corpus {}: no such file or not readable", path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return byte_tokenize(buffer.str());
}

}  // namespace

TextDataset::TextDataset(const std::string& path, double val_fraction)
    : TextDataset(read_bytes(path), path, val_fraction) {}

TextDataset::TextDataset(std::vector<std::int32_t> ids, std::string name, double val_fraction)
    : path_(std::move(name)) {
  OCCULT_CHECK(val_fraction > 0.0 && val_fraction < 1.0, "validation fraction must be in (0, 1), got {}",
               val_fraction);
  const auto split = static_cast<std::size_t>(static_cast<double>(ids.size()) * (1.0 - val_fraction));
  train_.assign(ids.begin(), ids.begin() + split);
  val_.assign(ids.begin() + split, ids.end());
  OCCULT_CHECK(train_.size() >= 2 && val_.size() >= 2, "corpus {} has {} tokens: too short to split", path_,
               ids.size());
}

namespace {
void fill(Batch& batch, const std::vector<std::int32_t>& stream, std::int64_t index, std::int64_t offset) {
  const int T = batch.seq_len;
  for (int t = 0; t < T; ++t) {
    batch.tokens[index * T + t] = stream[offset + t];
    batch.targets[index * T + t] = stream[offset + t + 1];
  }
}
}  // namespace

Batch TextDataset::train_batch(std::uint64_t seed, std::int64_t step, std::int64_t global_batch, int seq_len,
                               int rank, int ranks) const {
  const std::int64_t windows = train_tokens() - seq_len;
  OCCULT_CHECK(windows >= 1, "--seq-len {} needs a training split longer than {} tokens; {} has {}", seq_len,
               seq_len + 1, path_, train_tokens());
  const Share share = rank_share(global_batch, rank, ranks);
  Batch batch;
  batch.sequences = share.end - share.begin;
  batch.seq_len = seq_len;
  batch.tokens.resize(batch.sequences * seq_len);
  batch.targets.resize(batch.sequences * seq_len);
  // One stream per step: every rank draws all global offsets and keeps its share, so the
  // batch does not depend on the rank count.
  SplitMix64 rng(seed * 0x9E3779B97F4A7C15ull + static_cast<std::uint64_t>(step) * 0xD1B54A32D192ED03ull + 1);
  for (std::int64_t i = 0; i < global_batch; ++i) {
    const auto offset = static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(windows)));
    if (i >= share.begin && i < share.end) fill(batch, train_, i - share.begin, offset);
  }
  return batch;
}

Batch TextDataset::val_batch(std::int64_t max_sequences, int seq_len, int rank, int ranks) const {
  const std::int64_t whole = (val_tokens() - 1) / seq_len;
  OCCULT_CHECK(whole >= 1, "--seq-len {} is longer than the validation split of {} ({} tokens)", seq_len,
               path_, val_tokens());
  const std::int64_t global = std::min(max_sequences, whole);
  const Share share = rank_share(global, rank, ranks);
  Batch batch;
  batch.sequences = share.end - share.begin;
  batch.seq_len = seq_len;
  batch.tokens.resize(batch.sequences * seq_len);
  batch.targets.resize(batch.sequences * seq_len);
  for (std::int64_t i = share.begin; i < share.end; ++i) fill(batch, val_, i - share.begin, i * seq_len);
  return batch;
}

}  // namespace occult
