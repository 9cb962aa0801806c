#include "occult/text/token_source.h"

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "occult/core/error.h"
#include "occult/core/rng.h"
#include "occult/core/safetensors.h"
#include "occult/text/bytes.h"
#include "occult/text/tokenizer.h"

namespace occult {

namespace fs = std::filesystem;

namespace {

std::string read_file(const std::string& path, const char* what) {
  OCCULT_CHECK(!fs::is_directory(path), "{} {} is a directory, not a file", what, path);
  std::ifstream in(path, std::ios::binary);
  OCCULT_CHECK(in.good(), "cannot read {} {}: no such file or not readable", what, path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// True when `bytes` starts like a safetensors file: an 8-byte little-endian header length that
// fits the file, followed by '{'.
bool looks_like_safetensors(const std::string& bytes) {
  if (bytes.size() < 10) return false;
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  return n >= 2 && n <= bytes.size() - 8 && bytes[8] == '{';
}

}  // namespace

TextCodec TextCodec::bytes() {
  return TextCodec();
}

TextCodec TextCodec::for_model(const std::string& model_dir, int vocab_size) {
  TextCodec codec;
  if (!model_dir.empty() && Tokenizer::exists_in(model_dir)) {
    auto tokenizer = std::make_shared<const Tokenizer>(Tokenizer::load(model_dir));
    OCCULT_CHECK(tokenizer->vocab_size() <= vocab_size,
                 "{}: the tokenizer has ids up to {}, but the model's vocab_size is {}",
                 tokenizer->origin(), tokenizer->vocab_size() - 1, vocab_size);
    const std::string content = read_file(tokenizer->origin(), "tokenizer");
    codec.identity_ = fmt::format("tokenizer-{:016x}", fnv1a64(content));
    codec.tokenizer_ = std::move(tokenizer);
    return codec;
  }
  OCCULT_CHECK(vocab_size >= 256,
               "{} has no tokenizer.json, so text would be read as bytes, which needs vocab_size "
               ">= 256 (the "
               "model has {}): add the model's tokenizer.json, or give token ids instead of text",
               model_dir.empty() ? "the model" : model_dir, vocab_size);
  return codec;
}

std::vector<std::int32_t> TextCodec::encode(std::string_view text, int threads) const {
  return tokenizer_ ? tokenizer_->encode(text, false, threads) : byte_tokenize(text);
}

std::string TextCodec::decode(std::span<const std::int32_t> ids) const {
  return tokenizer_ ? tokenizer_->decode(ids) : byte_detokenize(ids);
}

int TextCodec::vocab_limit() const {
  return tokenizer_ ? tokenizer_->vocab_size() : 256;
}

std::string TextCodec::name() const {
  return tokenizer_ ? tokenizer_->origin() : "bytes";
}

std::vector<std::int32_t> read_token_ids(const std::string& path) {
  const std::string text = read_file(path, "token-id file");
  if (looks_like_safetensors(text)) {
    std::vector<std::byte> bytes(text.size());
    std::memcpy(bytes.data(), text.data(), text.size());
    const SafetensorsReader file = SafetensorsReader::from_bytes(std::move(bytes), path);
    OCCULT_CHECK(file.find("input_ids") != nullptr,
                 "{}: a safetensors token-id file needs a tensor 'input_ids'", path);
    return file.read_i32("input_ids");
  }
  const std::size_t first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && (text[first] == '{' || text[first] == '[')) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      OCCULT_FAIL("{} is not valid JSON: {}", path, e.what());
    }
    const nlohmann::json& ids = j.is_object() ? j.value("ids", nlohmann::json()) : j;
    OCCULT_CHECK(ids.is_array(), "{}: expected a JSON list of ids or an object with \"ids\"", path);
    std::vector<std::int32_t> out;
    for (const auto& id : ids) {
      OCCULT_CHECK(id.is_number_integer() && id.get<std::int64_t>() >= 0 &&
                       id.get<std::int64_t>() <= INT32_MAX,
                   "{}: id {} is not a non-negative 32-bit integer", path, id.dump());
      out.push_back(id.get<std::int32_t>());
    }
    return out;
  }
  std::vector<std::int32_t> out;
  std::istringstream in(text);
  std::string word;
  while (in >> word) {
    std::size_t used = 0;
    long long value = -1;
    try {
      value = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    OCCULT_CHECK(
        used == word.size() && value >= 0 && value <= INT32_MAX,
        "{}: '{}' is not a token id (expected whitespace-separated non-negative integers, a JSON "
        "list, or a safetensors file with input_ids)",
        path, word);
    out.push_back(static_cast<std::int32_t>(value));
  }
  return out;
}

std::vector<std::int32_t> read_model_tokens(const std::string& text_path, const std::string& ids_path,
                                            const TextCodec& codec, int vocab_size, const std::string& cache_dir) {
  std::vector<std::int32_t> ids = ids_path.empty() ? tokenize_file(text_path, codec, cache_dir) : read_token_ids(ids_path);
  const std::string& source = ids_path.empty() ? text_path : ids_path;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    OCCULT_CHECK(ids[i] >= 0 && ids[i] < vocab_size, "{}: token {} is id {}, outside the model's vocabulary [0, {})",
                 source, i, ids[i], vocab_size);
  }
  return ids;
}

std::vector<std::int32_t> tokenize_file(const std::string& path, const TextCodec& codec,
                                        const std::string& cache_dir) {
  OCCULT_CHECK(fs::exists(path), "cannot read text {}: no such file", path);
  fs::path cache;
  if (!cache_dir.empty() && !codec.is_bytes()) {
    std::error_code ec;
    const fs::path absolute = fs::absolute(path, ec);
    const auto size = fs::file_size(path, ec);
    const auto mtime = fs::last_write_time(path, ec).time_since_epoch().count();
    const std::string key =
        fmt::format("{}|{}|{}|{}", absolute.string(), size, mtime, codec.identity());
    cache = fs::path(cache_dir) / fmt::format("{:016x}.safetensors", fnv1a64(key));
    if (fs::exists(cache)) {
      try {
        return SafetensorsReader::open(cache.string()).read_i32("ids");
      } catch (const Error&) {
        // A damaged cache entry is rebuilt below.
      }
    }
  }
  const std::string text = read_file(path, "text");
  std::vector<std::int32_t> ids;
  try {
    ids = codec.encode(text);
  } catch (const Error& e) {
    OCCULT_FAIL("{}: {}", path, e.message());
  }
  if (!cache.empty()) {
    // The cache is an optimisation: a cache that cannot be written leaves the run unaffected.
    std::error_code ec;
    fs::create_directories(cache.parent_path(), ec);
    try {
      SafetensorsWriter w;
      w.set_metadata("source", path);
      w.set_metadata("codec", codec.identity());
      w.add_i32("ids", {static_cast<std::int64_t>(ids.size())}, ids);
      w.write(cache.string());
    } catch (const Error&) {
    }
  }
  return ids;
}

std::string default_token_cache_dir() {
  if (const char* dir = std::getenv("OCCULT_CACHE_DIR"); dir != nullptr && *dir != '\0') {
    return (fs::path(dir) / "tokens").string();
  }
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0') {
    return (fs::path(xdg) / "occult" / "tokens").string();
  }
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
    return (fs::path(home) / ".cache" / "occult" / "tokens").string();
  }
  return {};
}

}  // namespace occult
