// occult::Tokenizer: a Hugging Face `tokenizer.json` byte-level BPE tokenizer (the family of
// Qwen, DeepSeek, OLMoE/GPT-NeoX, Llama 3 and GPT-2) that encodes and decodes exactly like the
// Hugging Face `tokenizers` library, so that real models see the ids they were trained on.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace occult {

namespace text_detail {
struct TokenizerImpl;
}  // namespace text_detail

// A loaded tokenizer. Immutable after load except for an internal, mutex-guarded cache of
// words already merged, so one instance may be shared by threads that encode concurrently.
//
// Supported: normalizers none / NFC / Sequence; pre-tokenizers Split (regex or string; every
// behaviour; invert), ByteLevel, Digits, Sequence; model BPE (merges as "a b" or ["a","b"],
// ignore_merges); added tokens with lstrip / rstrip / single_word / normalized; decoder
// ByteLevel; post-processors TemplateProcessing, ByteLevel, Roberta/Bert and Sequence. Anything
// else is a load-time occult::Error naming the type and the file.
class Tokenizer {
 public:
  // Loads DIR/tokenizer.json (and DIR/tokenizer_config.json when present) or a tokenizer.json
  // path; throws occult::Error for a missing file, malformed JSON or an unsupported component.
  static Tokenizer load(const std::string& dir_or_file);

  // Builds a tokenizer from the text of a tokenizer.json (and optionally of a
  // tokenizer_config.json); `origin` names the source in error messages.
  static Tokenizer from_json(std::string_view tokenizer_json, std::string_view config_json = {},
                             const std::string& origin = "tokenizer.json");

  // True when DIR/tokenizer.json exists (a model directory that brings its own tokenizer).
  static bool exists_in(const std::string& dir);

  // The ids of `text` (UTF-8; invalid UTF-8 is an occult::Error naming the byte offset); with
  // add_special_tokens the post-processor's template (e.g. BOS) is applied.
  // `threads` > 1 runs the BPE merges of large texts on that many threads (the result is the same
  // ids: merges never cross pre-tokenized pieces).
  std::vector<std::int32_t> encode(std::string_view text, bool add_special_tokens = false, int threads = 1) const;

  // The text of `ids` (ids out of range are an occult::Error); skip_special_tokens drops added
  // tokens marked special. Byte sequences that are not valid UTF-8 become U+FFFD.
  std::string decode(std::span<const std::int32_t> ids, bool skip_special_tokens = false) const;

  // The number of ids, added tokens included: the largest id + 1.
  std::int32_t vocab_size() const;

  // The id of a vocabulary or added token given by its exact content, if any.
  std::optional<std::int32_t> token_to_id(std::string_view token) const;

  // The content of token `id` (byte-level alphabet for model tokens), or nullopt when unused.
  std::optional<std::string> id_to_token(std::int32_t id) const;

  // Whether `id` is an added token marked special (e.g. <|im_start|>).
  bool is_special(std::int32_t id) const;

  // The file the tokenizer was loaded from (or the origin given to from_json).
  const std::string& origin() const;

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

 private:
  explicit Tokenizer(std::unique_ptr<text_detail::TokenizerImpl> impl);
  std::unique_ptr<text_detail::TokenizerImpl> impl_;
};

// Throws occult::Error naming the byte offset of the first invalid UTF-8 sequence in `text`
// (overlong forms, surrogates and code points above U+10FFFF are invalid, as in Rust's str).
void check_utf8(std::string_view text);

}  // namespace occult
