// How text reaches a model as token ids. A model directory that brings a tokenizer.json reads
// text through it (exactly as the model's own tokenizer does); occult's byte-level models read
// bytes. Token ids can also be given directly, as a file, for any model.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace occult {

class Tokenizer;

// The text <-> ids mapping of one model.
class TextCodec {
 public:
  // The tokenizer of `model_dir` (its tokenizer.json) when it has one; otherwise bytes, which
  // need vocab_size >= 256 (throws naming the directory and the vocabulary when they do not
  // fit, or when the tokenizer's ids exceed vocab_size). An empty model_dir means bytes.
  static TextCodec for_model(const std::string& model_dir, int vocab_size);
  // The byte-level codec (every byte one token).
  static TextCodec bytes();

  // The ids of `text` (no special tokens added); `threads` > 1 parallelises a large text's
  // merges (same ids).
  std::vector<std::int32_t> encode(std::string_view text, int threads = 1) const;
  // The text of `ids` (special tokens kept).
  std::string decode(std::span<const std::int32_t> ids) const;
  // Ids that stand for text: 256 for bytes, the tokenizer's vocabulary otherwise (a model's
  // vocab_size may be padded beyond it; sampling should not pick the padding).
  int vocab_limit() const;
  // True for the byte-level codec.
  bool is_bytes() const { return tokenizer_ == nullptr; }
  // "bytes", or the tokenizer file, for messages.
  std::string name() const;
  // A string that changes whenever the mapping may change (the tokenizer file's content hash),
  // used to key cached token streams.
  const std::string& identity() const { return identity_; }

 private:
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::string identity_ = "bytes";
};

// Token ids from a file: a safetensors file with an integer tensor `input_ids` (any shape,
// flattened row by row), a JSON list or object with "ids" (what `occult tokenize --json`
// prints), or whitespace-separated integers. Throws naming the file and what was expected.
std::vector<std::int32_t> read_token_ids(const std::string& path);

// The token stream a model of `vocab_size` reads: the ids of `ids_path` when it is non-empty,
// else the text of `text_path` under `codec` (tokenize_file, cached in `cache_dir`); throws
// naming the file, the position and the id when an id lies outside [0, vocab_size).
std::vector<std::int32_t> read_model_tokens(const std::string& text_path, const std::string& ids_path,
                                            const TextCodec& codec, int vocab_size,
                                            const std::string& cache_dir = {});

// The ids of text file `path` under `codec`. With a non-empty `cache_dir` the stream is stored
// there (safetensors, I32) under a key of the file's absolute path, size and modification time
// and the codec's identity, and read back instead of tokenizing again; a corpus is tokenized once.
// Throws naming the file when it cannot be read or is not valid UTF-8 (tokenizer codecs).
std::vector<std::int32_t> tokenize_file(const std::string& path, const TextCodec& codec,
                                        const std::string& cache_dir = {});

// The default cache of token streams: $OCCULT_CACHE_DIR, else $XDG_CACHE_HOME/occult, else
// $HOME/.cache/occult, with "/tokens" appended; empty when none is set.
std::string default_token_cache_dir();

}  // namespace occult
