// How the model subcommands take their input text: --data TEXT (read through the model
// directory's tokenizer.json when it has one, else as bytes) or --input-ids FILE (token ids
// for any model), and --tokens N to keep the first N tokens.
#pragma once

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "occult/core/error.h"
#include "occult/text/token_source.h"

namespace occult::cli {

struct TextInputFlags {
  std::string data;       // a text file
  std::string input_ids;  // or a token-id file
  std::int64_t tokens = 0;
};

// Adds --data, --input-ids and --tokens; `what` names the text in the help ("text to evaluate").
inline void add_text_input_flags(CLI::App* cmd, TextInputFlags& f, const std::string& what) {
  auto* data =
      cmd->add_option("--data", f.data,
                      what +
                          " (read with the model's tokenizer.json when its directory has one, "
                          "else bytes are tokens)");
  auto* ids = cmd->add_option("--input-ids", f.input_ids,
                              "token ids instead of --data: safetensors input_ids, a JSON list, or "
                              "whitespace-separated integers");
  data->excludes(ids);
  cmd->add_option("--tokens", f.tokens, "use only the first N tokens (0 = all)")
      ->capture_default_str();
}

// The token stream of the flags for a model of `vocab_size` in `model_dir`; `unit` gets "byte"
// or "token" (what one id stands for, for the tables). Throws naming the file or the flag. Call
// it inside agree_on_errors.
inline std::vector<std::int32_t> read_text_input(const TextInputFlags& f,
                                                 const std::string& model_dir, int vocab_size,
                                                 std::string* unit) {
  OCCULT_CHECK(!f.data.empty() || !f.input_ids.empty(), "give --data TEXT or --input-ids FILE");
  OCCULT_CHECK(f.tokens >= 0, "--tokens must be >= 0 (0 = all), got {}", f.tokens);
  for (const auto& [flag, path] :
       {std::pair{"--data", f.data}, std::pair{"--input-ids", f.input_ids}}) {
    OCCULT_CHECK(path.empty() || !std::filesystem::is_directory(path),
                 "cannot read {} {}: it is a directory, not a file", flag, path);
    OCCULT_CHECK(path.empty() || std::filesystem::is_regular_file(path),
                 "cannot read {} {}: no such file", flag, path);
  }
  // Ids need no codec (a model directory without a tokenizer still reads them).
  const TextCodec codec = f.input_ids.empty() ? TextCodec::for_model(model_dir, vocab_size) : TextCodec::bytes();
  std::vector<std::int32_t> ids = read_model_tokens(f.data, f.input_ids, codec, vocab_size, default_token_cache_dir());
  *unit = f.input_ids.empty() && codec.is_bytes() ? "byte" : "token";
  const std::string& source = f.input_ids.empty() ? f.data : f.input_ids;
  OCCULT_CHECK(!ids.empty(), "{} holds no tokens", source);
  OCCULT_CHECK(f.tokens <= static_cast<std::int64_t>(ids.size()),
               "{} has {} tokens, fewer than --tokens {}", source, ids.size(), f.tokens);
  if (f.tokens > 0) ids.resize(static_cast<std::size_t>(f.tokens));
  return ids;
}

}  // namespace occult::cli
