// The tokenizer pipeline in the order of the Hugging Face `tokenizers` library: added tokens
// that skip normalization, normalizer, added tokens matched on normalized text,
// pre-tokenizers, BPE per pre-token, post-processor; decode maps tokens back through the
// decoder.
#include "occult/text/tokenizer.h"

#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <deque>
#include <thread>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "occult/core/error.h"
#include "text/regex.h"
#include "text/utf8.h"

namespace occult {
namespace text_detail {
namespace {

using json = nlohmann::json;
using Span = std::pair<std::size_t, std::size_t>;

// The pre-tokenizer regex of GPT-2, which ByteLevel applies when use_regex is true.
constexpr const char* kByteLevelPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Words longer than this are merged every time rather than cached, as in the reference: they
// are rare, and caching them would let one pathological input fill the cache.
constexpr std::size_t kMaxCachedWordBytes = 256;
// Entries the word cache holds before it stops inserting (a few MiB for typical words).
constexpr std::size_t kWordCacheCapacity = 1 << 17;

// GPT-2's byte-to-unicode table: printable Latin-1 bytes map to themselves, the other 68 bytes
// to U+0100 onwards, so that every byte is a visible character in vocab and merges.
struct ByteAlphabet {
  std::array<std::string, 256> byte_to_utf8;
  std::array<int, 512> code_point_to_byte;

  ByteAlphabet() {
    code_point_to_byte.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const char32_t cp =
          printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + extra++);
      append_utf8(cp, byte_to_utf8[b]);
      code_point_to_byte[cp] = b;
    }
  }
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  OCCULT_CHECK(in.good(), "cannot open {}", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json parse_json(std::string_view text, const std::string& origin) {
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    OCCULT_FAIL("{} is not valid JSON: {}", origin, e.what());
  }
}

std::string type_of(const json& j, const std::string& what, const std::string& origin) {
  OCCULT_CHECK(j.is_object(), "{}: {} must be an object or null", origin, what);
  OCCULT_CHECK(j.contains("type") && j["type"].is_string(), "{}: {} has no \"type\"", origin, what);
  return j["type"].get<std::string>();
}

bool bool_field(const json& j, const char* key, bool fallback) {
  const auto it = j.find(key);
  return it == j.end() || it->is_null() ? fallback : it->get<bool>();
}

// Rust's char::is_numeric: general categories Nd, Nl and No.
bool is_numeric(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
}

// Rust's char::is_alphanumeric plus '_': what single_word added tokens must not touch.
bool is_word_char(char32_t cp) {
  if (cp < 0x80) return std::isalnum(static_cast<int>(cp)) || cp == '_';
  const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO) ||
         cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_MC;
}

// The code point that ends s[0, end) (valid UTF-8, end > 0).
char32_t code_point_before(std::string_view s, std::size_t end) {
  std::size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return next_code_point(s, i);
}

enum class Behavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

Behavior parse_behavior(const json& j, const std::string& origin) {
  const std::string name = j.is_string() ? j.get<std::string>() : "";
  if (name == "Removed") return Behavior::removed;
  if (name == "Isolated") return Behavior::isolated;
  if (name == "MergedWithPrevious") return Behavior::merged_with_previous;
  if (name == "MergedWithNext") return Behavior::merged_with_next;
  if (name == "Contiguous") return Behavior::contiguous;
  OCCULT_FAIL(
      "{}: unknown Split behavior '{}' (expected Removed, Isolated, MergedWithPrevious, "
      "MergedWithNext or Contiguous)",
      origin, j.dump());
}

// Splits `piece` by (span, is_match) events according to `behavior`, as the reference's
// NormalizedString::split does, appending the non-empty parts to `out`.
void split_by_behavior(std::string_view piece, const std::vector<std::pair<Span, bool>>& events,
                       Behavior behavior, std::vector<std::string_view>& out) {
  std::vector<Span> parts;
  parts.reserve(events.size());
  switch (behavior) {
    case Behavior::isolated:
      for (const auto& e : events) parts.push_back(e.first);
      break;
    case Behavior::removed:
      for (const auto& e : events) {
        if (!e.second) parts.push_back(e.first);
      }
      break;
    case Behavior::merged_with_previous: {
      bool previous_match = false;
      for (const auto& [span, is_match] : events) {
        if (is_match && !previous_match && !parts.empty()) {
          parts.back().second = span.second;
        } else {
          parts.push_back(span);
        }
        previous_match = is_match;
      }
      break;
    }
    case Behavior::merged_with_next: {
      bool previous_match = false;
      for (auto it = events.rbegin(); it != events.rend(); ++it) {
        const auto& [span, is_match] = *it;
        if (is_match && !previous_match && !parts.empty()) {
          parts.back().first = span.first;
        } else {
          parts.push_back(span);
        }
        previous_match = is_match;
      }
      std::reverse(parts.begin(), parts.end());
      break;
    }
    case Behavior::contiguous: {
      bool previous_match = false;
      for (const auto& [span, is_match] : events) {
        if (is_match == previous_match && !parts.empty()) {
          parts.back().second = span.second;
        } else {
          parts.push_back(span);
        }
        previous_match = is_match;
      }
      break;
    }
  }
  for (const Span& p : parts) {
    if (p.second > p.first) out.push_back(piece.substr(p.first, p.second - p.first));
  }
}

// (span, is_match) events covering `piece` from the matches of a pattern.
void events_from_matches(std::string_view piece, const std::vector<Span>& matches, bool invert,
                         std::vector<std::pair<Span, bool>>& events) {
  events.clear();
  std::size_t prev = 0;
  for (const Span& m : matches) {
    if (prev != m.first) events.push_back({{prev, m.first}, invert});
    events.push_back({m, !invert});
    prev = m.second;
  }
  if (prev != piece.size()) events.push_back({{prev, piece.size()}, invert});
}

struct PreTokenizer {
  enum class Kind { split, byte_level, digits } kind = Kind::split;
  std::unique_ptr<Regex> regex;  // Split with a Regex pattern, or ByteLevel with use_regex
  std::string literal;           // Split with a String pattern
  Behavior behavior = Behavior::isolated;
  bool invert = false;
  bool add_prefix_space = false;
  bool individual_digits = false;
};

struct PostStep {
  enum class Kind { template_single, wrap } kind = PostStep::Kind::wrap;
  // template_single: the ids of each item, with kSequenceMarker standing for the input.
  std::vector<std::vector<std::int32_t>> items;
  std::vector<bool> is_sequence;
};

struct AddedToken {
  std::string content;
  std::int32_t id = 0;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = false;
};

// A byte trie over added-token contents for leftmost-longest matching.
struct AddedTrie {
  struct Node {
    std::vector<std::pair<unsigned char, std::int32_t>> children;
    std::int32_t token = -1;  // index into the added-token list
  };
  std::vector<Node> nodes{1};
  std::array<bool, 256> first_byte{};

  void insert(std::string_view s, std::int32_t token) {
    if (s.empty()) return;
    first_byte[static_cast<unsigned char>(s[0])] = true;
    std::int32_t n = 0;
    for (const char ch : s) {
      const auto c = static_cast<unsigned char>(ch);
      std::int32_t next = -1;
      for (const auto& [k, v] : nodes[n].children) {
        if (k == c) next = v;
      }
      if (next < 0) {
        next = static_cast<std::int32_t>(nodes.size());
        nodes[n].children.emplace_back(c, next);
        nodes.emplace_back();
      }
      n = next;
    }
    if (nodes[n].token < 0) nodes[n].token = token;
  }

  bool empty() const { return nodes.size() == 1; }

  // The longest token starting at s[i] as (token index, length), or (-1, 0).
  std::pair<std::int32_t, std::size_t> longest_at(std::string_view s, std::size_t i) const {
    std::pair<std::int32_t, std::size_t> best{-1, 0};
    std::int32_t n = 0;
    for (std::size_t j = i; j < s.size(); ++j) {
      const auto c = static_cast<unsigned char>(s[j]);
      std::int32_t next = -1;
      for (const auto& [k, v] : nodes[n].children) {
        if (k == c) next = v;
      }
      if (next < 0) break;
      n = next;
      if (nodes[n].token >= 0) best = {nodes[n].token, j + 1 - i};
    }
    return best;
  }
};

struct MergeValue {
  std::int32_t rank;
  std::int32_t id;
};

struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

}  // namespace

struct TokenizerImpl {
  std::string origin;
  // normalizer
  bool nfc = false;
  // pre-tokenizers, flattened from nested Sequences
  std::vector<PreTokenizer> pre_tokenizers;
  bool byte_level = false;  // BPE sees the GPT-2 byte alphabet rather than the text's characters
  // model
  std::unordered_map<std::string, std::int32_t, StringHash, std::equal_to<>> vocab;
  std::unordered_map<std::uint64_t, MergeValue> merges;
  std::array<std::int32_t, 256> byte_ids{};  // byte -> id of its byte-level character, or -1
  bool ignore_merges = false;
  std::optional<std::int32_t> unk_id;
  bool fuse_unk = false;
  // added tokens
  std::vector<AddedToken> added;
  AddedTrie raw_trie, normalized_trie;
  // id -> token content; has_token marks the ids in use
  std::vector<std::string> id_to_content;
  std::vector<bool> has_token, special;
  // post-processor and decoder
  std::vector<PostStep> post_steps;
  enum class Decoder { none, byte_level } decoder = Decoder::none;
  bool clean_up_tokenization_spaces = false;

  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<std::int32_t>, StringHash, std::equal_to<>>
      cache;

  void load_normalizer(const json& j);
  void load_pre_tokenizer(const json& j);
  void load_model(const json& j);
  void load_added_tokens(const json& j);
  void load_post_processor(const json& j);
  void load_decoder(const json& j);

  void encode_into(std::string_view text, std::vector<std::int32_t>& out, int threads) const;
  void encode_normalized(std::string_view text, std::vector<std::int32_t>& out, int threads) const;
  void pre_tokenize(std::string_view text, std::deque<std::string>& storage,
                    std::vector<std::string_view>& pieces) const;
  void bpe(std::string_view word, std::vector<std::int32_t>& out) const;
  void merge_word(std::string_view word, std::vector<std::int32_t>& out) const;
  void split_added(std::string_view text, const AddedTrie& trie,
                   std::vector<std::pair<std::string_view, std::int32_t>>& parts) const;
  std::string normalize(std::string_view text) const;
};

void TokenizerImpl::load_normalizer(const json& j) {
  if (j.is_null()) return;
  const std::string type = type_of(j, "normalizer", origin);
  if (type == "NFC") {
    nfc = true;
  } else if (type == "Sequence") {
    OCCULT_CHECK(j.contains("normalizers") && j["normalizers"].is_array(),
                 "{}: the Sequence normalizer has no \"normalizers\" list", origin);
    for (const json& n : j["normalizers"]) load_normalizer(n);
  } else {
    OCCULT_FAIL("{}: normalizer type '{}' is not supported (supported: NFC, Sequence, none)",
                origin, type);
  }
}

void TokenizerImpl::load_pre_tokenizer(const json& j) {
  if (j.is_null()) return;
  const std::string type = type_of(j, "pre_tokenizer", origin);
  OCCULT_CHECK(!byte_level || type == "Sequence",
               "{}: pre-tokenizer '{}' follows ByteLevel; only a final ByteLevel is supported",
               origin, type);
  PreTokenizer p;
  if (type == "Sequence") {
    OCCULT_CHECK(j.contains("pretokenizers") && j["pretokenizers"].is_array(),
                 "{}: the Sequence pre-tokenizer has no \"pretokenizers\" list", origin);
    for (const json& n : j["pretokenizers"]) load_pre_tokenizer(n);
    return;
  } else if (type == "Split") {
    p.kind = PreTokenizer::Kind::split;
    OCCULT_CHECK(j.contains("pattern") && j["pattern"].is_object(),
                 "{}: the Split pre-tokenizer has no \"pattern\" object", origin);
    const json& pattern = j["pattern"];
    if (pattern.contains("Regex")) {
      p.regex = std::make_unique<Regex>(pattern["Regex"].get<std::string>(), origin);
    } else if (pattern.contains("String")) {
      p.literal = pattern["String"].get<std::string>();
    } else {
      OCCULT_FAIL("{}: the Split pattern {} is neither {{\"Regex\": ...}} nor {{\"String\": ...}}",
                  origin, pattern.dump());
    }
    OCCULT_CHECK(j.contains("behavior"), "{}: the Split pre-tokenizer has no \"behavior\"", origin);
    p.behavior = parse_behavior(j["behavior"], origin);
    p.invert = bool_field(j, "invert", false);
  } else if (type == "ByteLevel") {
    p.kind = PreTokenizer::Kind::byte_level;
    p.add_prefix_space = bool_field(j, "add_prefix_space", true);
    // trim_offsets changes only offsets, which this tokenizer does not report.
    if (bool_field(j, "use_regex", true))
      p.regex = std::make_unique<Regex>(kByteLevelPattern, origin);
    byte_level = true;
  } else if (type == "Digits") {
    p.kind = PreTokenizer::Kind::digits;
    p.individual_digits = bool_field(j, "individual_digits", false);
  } else {
    OCCULT_FAIL(
        "{}: pre-tokenizer type '{}' is not supported (supported: Split, ByteLevel, "
        "Digits, Sequence)",
        origin, type);
  }
  pre_tokenizers.push_back(std::move(p));
}

void TokenizerImpl::load_model(const json& j) {
  OCCULT_CHECK(j.is_object(), "{}: \"model\" must be an object", origin);
  const std::string type = j.contains("type") ? j["type"].get<std::string>() : "BPE";
  OCCULT_CHECK(type == "BPE",
               "{}: model type '{}' is not supported (only byte-level BPE models are)", origin,
               type);
  OCCULT_CHECK(j.contains("vocab") && j["vocab"].is_object(), "{}: the BPE model has no \"vocab\"",
               origin);
  OCCULT_CHECK(j.contains("merges") && j["merges"].is_array(),
               "{}: the BPE model has no \"merges\"", origin);
  OCCULT_CHECK(j.value("dropout", json()).is_null() || j["dropout"].get<double>() == 0.0,
               "{}: BPE dropout is not supported (encoding would not be deterministic)", origin);
  OCCULT_CHECK(!bool_field(j, "byte_fallback", false), "{}: BPE byte_fallback is not supported",
               origin);
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    OCCULT_CHECK(!j.contains(key) || j[key].is_null() || j[key].get<std::string>().empty(),
                 "{}: a BPE {} is not supported", origin, key);
  }
  ignore_merges = bool_field(j, "ignore_merges", false);
  fuse_unk = bool_field(j, "fuse_unk", false);

  const json& v = j["vocab"];
  vocab.reserve(v.size());
  for (auto it = v.begin(); it != v.end(); ++it) {
    OCCULT_CHECK(it.value().is_number_integer() && it.value().get<std::int64_t>() >= 0 &&
                     it.value().get<std::int64_t>() < (1ll << 31),
                 "{}: vocab entry '{}' has id {}, expected a non-negative integer", origin,
                 it.key(), it.value().dump());
    vocab.emplace(it.key(), it.value().get<std::int32_t>());
  }
  const auto id_of = [&](const std::string& token, std::size_t rank) {
    const auto it = vocab.find(token);
    OCCULT_CHECK(it != vocab.end(), "{}: merge {} uses '{}', which is not in the vocab", origin,
                 rank, token);
    return it->second;
  };
  const json& m = j["merges"];
  merges.reserve(m.size());
  for (std::size_t rank = 0; rank < m.size(); ++rank) {
    const json& entry = m[rank];
    std::string a, b;
    if (entry.is_string()) {
      const std::string line = entry.get<std::string>();
      const std::size_t space = line.find(' ');
      OCCULT_CHECK(space != std::string::npos && line.find(' ', space + 1) == std::string::npos,
                   "{}: bad merge {} '{}': expected two tokens separated by one space", origin,
                   rank, line);
      a = line.substr(0, space);
      b = line.substr(space + 1);
    } else if (entry.is_array() && entry.size() == 2 && entry[0].is_string() &&
               entry[1].is_string()) {
      a = entry[0].get<std::string>();
      b = entry[1].get<std::string>();
    } else {
      OCCULT_FAIL("{}: bad merge {} {}: expected \"a b\" or [\"a\", \"b\"]", origin, rank,
                  entry.dump());
    }
    const std::int32_t ia = id_of(a, rank), ib = id_of(b, rank);
    const std::int32_t merged = id_of(a + b, rank);
    const std::uint64_t key =
        (static_cast<std::uint64_t>(ia) << 32) | static_cast<std::uint32_t>(ib);
    // The first occurrence of a pair keeps its rank, as in the reference's HashMap insert order.
    merges.emplace(key, MergeValue{static_cast<std::int32_t>(rank), merged});
  }
  if (j.contains("unk_token") && j["unk_token"].is_string()) {
    const auto it = vocab.find(j["unk_token"].get<std::string>());
    OCCULT_CHECK(it != vocab.end(), "{}: unk_token '{}' is not in the vocab", origin,
                 j["unk_token"].get<std::string>());
    unk_id = it->second;
  }
}

void TokenizerImpl::load_added_tokens(const json& j) {
  if (j.is_null()) return;
  OCCULT_CHECK(j.is_array(), "{}: \"added_tokens\" must be a list", origin);
  for (const json& t : j) {
    OCCULT_CHECK(t.is_object() && t.contains("id") && t.contains("content"),
                 "{}: added token {} needs \"id\" and \"content\"", origin, t.dump());
    AddedToken a;
    a.content = t["content"].get<std::string>();
    a.id = t["id"].get<std::int32_t>();
    OCCULT_CHECK(a.id >= 0, "{}: added token '{}' has negative id {}", origin, a.content, a.id);
    OCCULT_CHECK(!a.content.empty(), "{}: added token {} has empty content", origin, a.id);
    check_utf8(a.content);
    a.special = bool_field(t, "special", false);
    a.lstrip = bool_field(t, "lstrip", false);
    a.rstrip = bool_field(t, "rstrip", false);
    a.single_word = bool_field(t, "single_word", false);
    a.normalized = bool_field(t, "normalized", !a.special);
    added.push_back(std::move(a));
  }
}

void TokenizerImpl::load_post_processor(const json& j) {
  if (j.is_null()) return;
  const std::string type = type_of(j, "post_processor", origin);
  if (type == "Sequence") {
    OCCULT_CHECK(j.contains("processors") && j["processors"].is_array(),
                 "{}: the Sequence post-processor has no \"processors\" list", origin);
    for (const json& p : j["processors"]) load_post_processor(p);
  } else if (type == "ByteLevel") {
    // Only offsets change; the ids are those of the input.
  } else if (type == "TemplateProcessing") {
    OCCULT_CHECK(j.contains("single") && j["single"].is_array(),
                 "{}: TemplateProcessing has no \"single\" template", origin);
    const json specials = j.value("special_tokens", json::object());
    PostStep step;
    step.kind = PostStep::Kind::template_single;
    for (const json& item : j["single"]) {
      if (item.contains("Sequence")) {
        step.items.emplace_back();
        step.is_sequence.push_back(true);
      } else if (item.contains("SpecialToken")) {
        const std::string name = item["SpecialToken"].at("id").get<std::string>();
        OCCULT_CHECK(specials.contains(name),
                     "{}: TemplateProcessing uses special token '{}' that it does not define",
                     origin, name);
        step.items.push_back(specials[name].at("ids").get<std::vector<std::int32_t>>());
        step.is_sequence.push_back(false);
      } else {
        OCCULT_FAIL("{}: unknown TemplateProcessing item {}", origin, item.dump());
      }
    }
    post_steps.push_back(std::move(step));
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    PostStep step;
    step.kind = PostStep::Kind::template_single;
    step.items = {
        {j.at("cls").at(1).get<std::int32_t>()}, {}, {j.at("sep").at(1).get<std::int32_t>()}};
    step.is_sequence = {false, true, false};
    post_steps.push_back(std::move(step));
  } else {
    OCCULT_FAIL(
        "{}: post_processor type '{}' is not supported (supported: TemplateProcessing, "
        "ByteLevel, RobertaProcessing, BertProcessing, Sequence)",
        origin, type);
  }
}

void TokenizerImpl::load_decoder(const json& j) {
  if (j.is_null()) return;
  const std::string type = type_of(j, "decoder", origin);
  if (type == "ByteLevel") {
    decoder = Decoder::byte_level;
  } else if (type == "Sequence" && j.contains("decoders") && j["decoders"].is_array() &&
             j["decoders"].size() == 1) {
    load_decoder(j["decoders"][0]);
  } else {
    OCCULT_FAIL("{}: decoder type '{}' is not supported (supported: ByteLevel, none)", origin,
                type);
  }
}

std::string TokenizerImpl::normalize(std::string_view text) const {
  if (!nfc) return std::string(text);
  // Code points below U+0300 (lead bytes below 0xCC) are never changed by NFC and never
  // compose with what follows them, so most text skips utf8proc entirely.
  const bool stable = std::none_of(text.begin(), text.end(),
                                   [](char c) { return static_cast<unsigned char>(c) >= 0xCC; });
  if (stable) return std::string(text);
  utf8proc_uint8_t* result = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                   static_cast<utf8proc_ssize_t>(text.size()), &result,
                   static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  OCCULT_CHECK(n >= 0, "NFC normalization failed: {}", utf8proc_errmsg(n));
  std::string out(reinterpret_cast<const char*>(result), static_cast<std::size_t>(n));
  std::free(result);
  return out;
}

// Splits `text` around the added tokens of `trie` the way the reference's AddedVocabulary
// does: leftmost-longest matches, single_word matches dropped when they touch a word
// character, lstrip/rstrip widening the match over neighbouring white space.
void TokenizerImpl::split_added(
    std::string_view text, const AddedTrie& trie,
    std::vector<std::pair<std::string_view, std::int32_t>>& parts) const {
  parts.clear();
  if (trie.empty()) {
    parts.emplace_back(text, -1);
    return;
  }
  std::size_t emitted = 0;  // text before this offset is already in parts
  std::size_t i = 0;
  while (i < text.size()) {
    if (!trie.first_byte[static_cast<unsigned char>(text[i])]) {
      ++i;
      continue;
    }
    const auto [index, length] = trie.longest_at(text, i);
    if (index < 0) {
      ++i;
      continue;
    }
    const AddedToken& token = added[index];
    std::size_t start = i, stop = i + length;
    i = stop;
    if (token.single_word) {
      const bool start_ok = start == 0 || !is_word_char(code_point_before(text, start));
      std::size_t k = stop;
      const bool stop_ok = stop == text.size() || !is_word_char(next_code_point(text, k));
      if (!start_ok || !stop_ok) continue;
    }
    if (token.lstrip) {
      while (start > emitted) {
        std::size_t k = start - 1;
        while (k > 0 && (static_cast<unsigned char>(text[k]) & 0xC0) == 0x80) --k;
        std::size_t probe = k;
        if (!is_white_space(next_code_point(text, probe))) break;
        start = k;
      }
      start = std::max(start, emitted);
    }
    if (token.rstrip) {
      while (stop < text.size()) {
        std::size_t probe = stop;
        if (!is_white_space(next_code_point(text, probe))) break;
        stop = probe;
      }
      i = stop;
    }
    if (emitted < start) parts.emplace_back(text.substr(emitted, start - emitted), -1);
    parts.emplace_back(text.substr(start, stop - start), token.id);
    emitted = stop;
  }
  if (emitted < text.size()) parts.emplace_back(text.substr(emitted), -1);
}

void TokenizerImpl::pre_tokenize(std::string_view text, std::deque<std::string>& storage,
                                 std::vector<std::string_view>& pieces) const {
  pieces.clear();
  pieces.push_back(text);
  std::vector<std::string_view> next;
  std::vector<Span> matches;
  std::vector<std::pair<Span, bool>> events;
  for (const PreTokenizer& p : pre_tokenizers) {
    next.clear();
    for (std::string_view piece : pieces) {
      switch (p.kind) {
        case PreTokenizer::Kind::split: {
          matches.clear();
          if (p.regex) {
            p.regex->find_all(piece, matches);
          } else if (!p.literal.empty()) {
            for (std::size_t at = piece.find(p.literal); at != std::string_view::npos;
                 at = piece.find(p.literal, at + p.literal.size())) {
              matches.emplace_back(at, at + p.literal.size());
            }
          }
          events_from_matches(piece, matches, p.invert, events);
          split_by_behavior(piece, events, p.behavior, next);
          break;
        }
        case PreTokenizer::Kind::digits: {
          // Each numeric character is a match of its own; the runs between are non-matches.
          events.clear();
          std::size_t last = 0;
          for (std::size_t k = 0; k < piece.size();) {
            const std::size_t b = k;
            if (is_numeric(next_code_point(piece, k))) {
              if (last < b) events.push_back({{last, b}, false});
              events.push_back({{b, k}, true});
              last = k;
            }
          }
          if (last < piece.size()) events.push_back({{last, piece.size()}, false});
          split_by_behavior(piece, events,
                            p.individual_digits ? Behavior::isolated : Behavior::contiguous, next);
          break;
        }
        case PreTokenizer::Kind::byte_level: {
          if (p.add_prefix_space && !piece.starts_with(' ')) {
            storage.emplace_back(" ");
            storage.back().append(piece);
            piece = storage.back();
          }
          if (p.regex) {
            matches.clear();
            p.regex->find_all(piece, matches);
            events_from_matches(piece, matches, false, events);
            split_by_behavior(piece, events, Behavior::isolated, next);
          } else if (!piece.empty()) {
            next.push_back(piece);
          }
          break;
        }
      }
    }
    pieces.swap(next);
  }
}

// Byte-pair merging of one pre-token: repeatedly merge the adjacent pair of lowest merge rank,
// the leftmost one among equals, which is the order of the reference's priority queue.
void TokenizerImpl::merge_word(std::string_view word, std::vector<std::int32_t>& out) const {
  struct Symbol {
    std::int32_t id;
    std::int32_t prev, next;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  const auto push_symbol = [&](std::int32_t id) {
    const auto n = static_cast<std::int32_t>(symbols.size());
    symbols.push_back({id, n - 1, n + 1});
  };
  if (byte_level) {
    for (const char c : word) {
      const std::int32_t id = byte_ids[static_cast<unsigned char>(c)];
      if (id >= 0) {
        push_symbol(id);
      } else if (unk_id && !(fuse_unk && !symbols.empty() && symbols.back().id == *unk_id)) {
        push_symbol(*unk_id);
      }
    }
  } else {
    for (std::size_t k = 0; k < word.size();) {
      const std::size_t b = k;
      next_code_point(word, k);
      const auto it = vocab.find(word.substr(b, k - b));
      if (it != vocab.end()) {
        push_symbol(it->second);
      } else if (unk_id && !(fuse_unk && !symbols.empty() && symbols.back().id == *unk_id)) {
        push_symbol(*unk_id);
      }
    }
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;

  struct Candidate {
    std::int32_t rank, pos, left, right, merged;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  const auto consider = [&](std::int32_t pos) {
    const std::int32_t next = symbols[pos].next;
    if (next < 0) return;
    const std::uint64_t key = (static_cast<std::uint64_t>(symbols[pos].id) << 32) |
                              static_cast<std::uint32_t>(symbols[next].id);
    const auto it = merges.find(key);
    if (it != merges.end()) {
      queue.push({it->second.rank, pos, symbols[pos].id, symbols[next].id, it->second.id});
    }
  };
  for (std::int32_t k = 0; k + 1 < static_cast<std::int32_t>(symbols.size()); ++k) consider(k);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = symbols[c.pos];
    // Entries go stale when a neighbour merged first; the ids tell, since a position's symbol
    // only ever grows.
    if (left.id != c.left || left.next < 0 || symbols[left.next].id != c.right) continue;
    const std::int32_t right = left.next;
    left.id = c.merged;
    left.next = symbols[right].next;
    if (left.next >= 0) symbols[left.next].prev = c.pos;
    symbols[right].id = -1;
    if (left.prev >= 0) consider(left.prev);
    consider(c.pos);
  }
  for (std::int32_t k = 0; k >= 0; k = symbols[k].next) out.push_back(symbols[k].id);
}

void TokenizerImpl::bpe(std::string_view word, std::vector<std::int32_t>& out) const {
  if (ignore_merges) {
    std::string mapped;
    if (byte_level) {
      for (const char c : word)
        mapped += byte_alphabet().byte_to_utf8[static_cast<unsigned char>(c)];
    }
    const auto it = vocab.find(byte_level ? std::string_view(mapped) : word);
    if (it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (word.size() == 1 && byte_level && byte_ids[static_cast<unsigned char>(word[0])] >= 0) {
    out.push_back(byte_ids[static_cast<unsigned char>(word[0])]);
    return;
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::lock_guard lock(cache_mutex);
    const auto it = cache.find(word);
    if (it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const std::size_t first = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::lock_guard lock(cache_mutex);
    if (cache.size() < kWordCacheCapacity) {
      cache.emplace(std::string(word), std::vector<std::int32_t>(out.begin() + first, out.end()));
    }
  }
}

void TokenizerImpl::encode_normalized(std::string_view text, std::vector<std::int32_t>& out, int threads) const {
  std::deque<std::string> storage;
  std::vector<std::string_view> pieces;
  pre_tokenize(text, storage, pieces);
  // BPE never merges across pieces, so contiguous runs of pieces encode independently and their
  // ids concatenate to exactly the sequential result. Small texts are not worth a thread.
  constexpr std::size_t kPiecesPerThread = 4096;
  const std::size_t parts =
      std::min<std::size_t>(static_cast<std::size_t>(std::max(threads, 1)), pieces.size() / kPiecesPerThread + 1);
  if (parts <= 1) {
    for (std::string_view piece : pieces) bpe(piece, out);
    return;
  }
  std::vector<std::vector<std::int32_t>> outs(parts);
  std::vector<std::thread> workers;
  for (std::size_t p = 0; p < parts; ++p) {
    workers.emplace_back([&, p] {
      const std::size_t begin = pieces.size() * p / parts, end = pieces.size() * (p + 1) / parts;
      for (std::size_t i = begin; i < end; ++i) bpe(pieces[i], outs[p]);
    });
  }
  for (auto& w : workers) w.join();
  for (const auto& o : outs) out.insert(out.end(), o.begin(), o.end());
}

void TokenizerImpl::encode_into(std::string_view text, std::vector<std::int32_t>& out, int threads) const {
  std::vector<std::pair<std::string_view, std::int32_t>> raw_parts, normalized_parts;
  split_added(text, raw_trie, raw_parts);
  for (const auto& [part, id] : raw_parts) {
    if (id >= 0) {
      out.push_back(id);
      continue;
    }
    const std::string normalized = normalize(part);
    split_added(normalized, normalized_trie, normalized_parts);
    for (const auto& [sub, sub_id] : normalized_parts) {
      if (sub_id >= 0) {
        out.push_back(sub_id);
      } else {
        encode_normalized(sub, out, threads);
      }
    }
  }
}

}  // namespace text_detail

void check_utf8(std::string_view text) {
  const std::size_t bad = text_detail::first_invalid_utf8(text);
  if (bad == text.size()) return;
  std::string bytes;
  for (std::size_t k = bad; k < std::min(text.size(), bad + 4); ++k) {
    bytes += fmt::format("{}{:02X}", bytes.empty() ? "" : " ", static_cast<unsigned char>(text[k]));
  }
  OCCULT_FAIL("the text is not valid UTF-8: invalid byte sequence at byte offset {} (bytes {})",
              bad, bytes);
}

Tokenizer::Tokenizer(std::unique_ptr<text_detail::TokenizerImpl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

bool Tokenizer::exists_in(const std::string& dir) {
  return std::filesystem::is_regular_file(std::filesystem::path(dir) / "tokenizer.json");
}

Tokenizer Tokenizer::load(const std::string& dir_or_file) {
  namespace fs = std::filesystem;
  fs::path file = dir_or_file;
  if (fs::is_directory(file)) file /= "tokenizer.json";
  OCCULT_CHECK(fs::is_regular_file(file),
               "no tokenizer at {}: expected a tokenizer.json file or "
               "a directory that holds one",
               dir_or_file);
  const fs::path config = file.parent_path() / "tokenizer_config.json";
  const std::string config_text = fs::is_regular_file(config) ? text_detail::read_file(config) : "";
  return from_json(text_detail::read_file(file), config_text, file.string());
}

Tokenizer Tokenizer::from_json(std::string_view tokenizer_json, std::string_view config_json,
                               const std::string& origin) {
  using text_detail::json;
  auto impl = std::make_unique<text_detail::TokenizerImpl>();
  impl->origin = origin;
  const json j = text_detail::parse_json(tokenizer_json, origin);
  OCCULT_CHECK(j.is_object(), "{}: expected a JSON object at the top level", origin);
  OCCULT_CHECK(j.contains("model"), "{}: no \"model\" (is this a Hugging Face tokenizer.json?)",
               origin);
  impl->load_normalizer(j.value("normalizer", json()));
  impl->load_pre_tokenizer(j.value("pre_tokenizer", json()));
  impl->load_model(j["model"]);
  impl->load_added_tokens(j.value("added_tokens", json()));
  impl->load_post_processor(j.value("post_processor", json()));
  impl->load_decoder(j.value("decoder", json()));
  if (!config_json.empty()) {
    const json c = text_detail::parse_json(config_json, "tokenizer_config.json beside " + origin);
    impl->clean_up_tokenization_spaces =
        text_detail::bool_field(c, "clean_up_tokenization_spaces", false);
  }

  auto& t = *impl;
  std::int32_t max_id = -1;
  for (const auto& [token, id] : t.vocab) max_id = std::max(max_id, id);
  for (const auto& a : t.added) max_id = std::max(max_id, a.id);
  t.id_to_content.assign(static_cast<std::size_t>(max_id + 1), {});
  t.has_token.assign(static_cast<std::size_t>(max_id + 1), false);
  t.special.assign(static_cast<std::size_t>(max_id + 1), false);
  for (const auto& [token, id] : t.vocab) {
    t.id_to_content[id] = token;
    t.has_token[id] = true;
  }
  for (std::size_t k = 0; k < t.added.size(); ++k) {
    const auto& a = t.added[k];
    t.id_to_content[a.id] = a.content;
    t.has_token[a.id] = true;
    t.special[a.id] = a.special;
    // Two passes even without a normalizer: a token matched first in the raw text can hide a
    // longer normalized token that overlaps it, and the reference resolves it that way.
    if (a.normalized) {
      t.normalized_trie.insert(t.normalize(a.content), static_cast<std::int32_t>(k));
    } else {
      t.raw_trie.insert(a.content, static_cast<std::int32_t>(k));
    }
  }
  for (int b = 0; b < 256; ++b) {
    const auto it = t.vocab.find(text_detail::byte_alphabet().byte_to_utf8[b]);
    t.byte_ids[b] = it == t.vocab.end() ? -1 : it->second;
  }
  return Tokenizer(std::move(impl));
}

std::vector<std::int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens, int threads) const {
  check_utf8(text);
  std::vector<std::int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  impl_->encode_into(text, ids, threads);
  if (!add_special_tokens) return ids;
  for (const auto& step : impl_->post_steps) {
    std::vector<std::int32_t> wrapped;
    for (std::size_t k = 0; k < step.items.size(); ++k) {
      const auto& part = step.is_sequence[k] ? ids : step.items[k];
      wrapped.insert(wrapped.end(), part.begin(), part.end());
    }
    ids.swap(wrapped);
  }
  return ids;
}

std::string Tokenizer::decode(std::span<const std::int32_t> ids, bool skip_special_tokens) const {
  const auto& t = *impl_;
  const auto& alphabet = text_detail::byte_alphabet();
  std::string bytes;
  bool first = true;
  for (const std::int32_t id : ids) {
    OCCULT_CHECK(id >= 0 && id < vocab_size() && t.has_token[id],
                 "cannot decode id {}: not a token of {} (vocab_size {})", id, t.origin,
                 vocab_size());
    if (skip_special_tokens && t.special[id]) continue;
    const std::string& token = t.id_to_content[id];
    if (t.decoder == text_detail::TokenizerImpl::Decoder::none) {
      if (!first) bytes += ' ';
      bytes += token;
      first = false;
      continue;
    }
    // A token whose characters all belong to the byte alphabet is bytes; any other (an added
    // token such as <｜User｜>) is its own UTF-8, as in the reference ByteLevel decoder.
    std::string decoded;
    bool all_bytes = true;
    for (std::size_t k = 0; k < token.size() && all_bytes;) {
      const char32_t cp = text_detail::next_code_point(token, k);
      const int b = cp < alphabet.code_point_to_byte.size() ? alphabet.code_point_to_byte[cp] : -1;
      if (b < 0) {
        all_bytes = false;
      } else {
        decoded.push_back(static_cast<char>(b));
      }
    }
    bytes += all_bytes ? decoded : token;
  }
  std::string text = text_detail::utf8_lossy(bytes);
  if (t.clean_up_tokenization_spaces) {
    // transformers' clean_up_tokenization, for configs that ask for it.
    for (const auto& [from, to] :
         std::initializer_list<std::pair<std::string_view, std::string_view>>{{" .", "."},
                                                                              {" ?", "?"},
                                                                              {" !", "!"},
                                                                              {" ,", ","},
                                                                              {" ' ", "'"},
                                                                              {" n't", "n't"},
                                                                              {" 'm", "'m"},
                                                                              {" 's", "'s"},
                                                                              {" 've", "'ve"},
                                                                              {" 're", "'re"}}) {
      std::string replaced;
      std::size_t at = 0;
      for (std::size_t hit; (hit = text.find(from, at)) != std::string::npos;
           at = hit + from.size()) {
        replaced.append(text, at, hit - at).append(to);
      }
      replaced.append(text, at);
      text.swap(replaced);
    }
  }
  return text;
}

std::int32_t Tokenizer::vocab_size() const {
  return static_cast<std::int32_t>(impl_->id_to_content.size());
}

std::optional<std::int32_t> Tokenizer::token_to_id(std::string_view token) const {
  for (const auto& a : impl_->added) {
    if (a.content == token) return a.id;
  }
  const auto it = impl_->vocab.find(token);
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}

std::optional<std::string> Tokenizer::id_to_token(std::int32_t id) const {
  if (id < 0 || id >= vocab_size() || !impl_->has_token[id]) return std::nullopt;
  return impl_->id_to_content[id];
}

bool Tokenizer::is_special(std::int32_t id) const {
  return id >= 0 && id < vocab_size() && impl_->special[id];
}

const std::string& Tokenizer::origin() const {
  return impl_->origin;
}

}  // namespace occult
