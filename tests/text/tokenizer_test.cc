// Hand-checked tiny tokenizer.json cases: each Split behaviour and invert, Digits, the ByteLevel
// options, the added-token flags, both merges forms, ignore_merges, the post-processor; and
// malformed files that must fail with a message naming what is wrong.
#include "occult/text/tokenizer.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "occult/core/error.h"

namespace occult {
namespace {

using json = nlohmann::json;
using Ids = std::vector<std::int32_t>;

// A character-level BPE over a, b and '-': ids a=0 b=1 -=2 ab=3 ab-=4 -ab=5 --=6. BPE never
// merges across pre-tokens, so the ids show where a pre-tokenizer split.
json dash_tokenizer(const json& pre_tokenizer) {
  return {{"model",
           {{"type", "BPE"},
            {"vocab", {{"a", 0}, {"b", 1}, {"-", 2}, {"ab", 3}, {"ab-", 4}, {"-ab", 5}, {"--", 6}}},
            {"merges", {"a b", "ab -", "- ab", "- -"}}}},
          {"pre_tokenizer", pre_tokenizer}};
}

json dash_split(const std::string& behavior, bool invert = false) {
  return {{"type", "Split"},
          {"pattern", {{"String", "-"}}},
          {"behavior", behavior},
          {"invert", invert}};
}

Ids encode(const json& tokenizer_json, const std::string& text, bool special = false) {
  return Tokenizer::from_json(tokenizer_json.dump()).encode(text, special);
}

TEST(SplitTest, EachBehavior) {
  EXPECT_EQ(encode(dash_tokenizer(dash_split("Isolated")), "ab-ab"), (Ids{3, 2, 3}));
  EXPECT_EQ(encode(dash_tokenizer(dash_split("Removed")), "ab-ab"), (Ids{3, 3}));
  EXPECT_EQ(encode(dash_tokenizer(dash_split("MergedWithPrevious")), "ab-ab"), (Ids{4, 3}));
  EXPECT_EQ(encode(dash_tokenizer(dash_split("MergedWithNext")), "ab-ab"), (Ids{3, 5}));
  EXPECT_EQ(encode(dash_tokenizer(dash_split("Isolated")), "ab--ab"), (Ids{3, 2, 2, 3}));
  EXPECT_EQ(encode(dash_tokenizer(dash_split("Contiguous")), "ab--ab"), (Ids{3, 6, 3}));
  // Without a split the merges run over the whole text: both "a b", then "ab -" (rank 1)
  // before "- ab" (rank 2), which then no longer applies.
  EXPECT_EQ(encode(dash_tokenizer(nullptr), "ab-ab"), (Ids{4, 3}));
}

TEST(SplitTest, Invert) {
  // Inverted, the text between dashes is what matched.
  EXPECT_EQ(encode(dash_tokenizer(dash_split("Removed", true)), "ab-ab"), (Ids{2}));
  EXPECT_EQ(encode(dash_tokenizer(dash_split("MergedWithPrevious", true)), "ab-ab"), (Ids{3, 5}));
  EXPECT_EQ(encode(dash_tokenizer(dash_split("MergedWithNext", true)), "ab-ab"), (Ids{4, 3}));
  EXPECT_EQ(encode(dash_tokenizer(dash_split("Isolated", true)), "ab-ab"), (Ids{3, 2, 3}));
}

TEST(SplitTest, RegexPatternAndSequence) {
  const json regex_split = {{"type", "Split"},
                            {"pattern", {{"Regex", "-+"}}},
                            {"behavior", "Isolated"},
                            {"invert", false}};
  EXPECT_EQ(encode(dash_tokenizer(regex_split), "ab--ab-"), (Ids{3, 6, 3, 2}));
  const json sequence = {{"type", "Sequence"},
                         {"pretokenizers", {regex_split, dash_split("Isolated")}}};
  EXPECT_EQ(encode(dash_tokenizer(sequence), "ab--ab"), (Ids{3, 2, 2, 3}));
}

// Digits over a character vocabulary where "a 1" would merge if Digits did not split it.
json digits_tokenizer(bool individual) {
  return {{"model",
           {{"type", "BPE"},
            {"vocab", {{"a", 0}, {"1", 1}, {"2", 2}, {"3", 3}, {"a1", 4}, {"12", 5}, {"123", 6}}},
            {"merges", json::array({json::array({"a", "1"}), json::array({"1", "2"}),
                                    json::array({"12", "3"})})}}},
          {"pre_tokenizer", {{"type", "Digits"}, {"individual_digits", individual}}}};
}

TEST(DigitsTest, RunsOrSingleDigits) {
  EXPECT_EQ(encode(digits_tokenizer(false), "a123a"), (Ids{0, 6, 0}));
  EXPECT_EQ(encode(digits_tokenizer(true), "a123a"), (Ids{0, 1, 2, 3, 0}));
  EXPECT_EQ(encode(digits_tokenizer(false), "12a1"), (Ids{5, 0, 1}));
}

TEST(MergesTest, StringAndListFormsAgree) {
  json as_lists = dash_tokenizer(nullptr);
  as_lists["model"]["merges"] = json::array({json::array({"a", "b"}), json::array({"ab", "-"}),
                                             json::array({"-", "ab"}), json::array({"-", "-"})});
  EXPECT_EQ(encode(as_lists, "ab-ab"), encode(dash_tokenizer(nullptr), "ab-ab"));
  EXPECT_EQ(encode(as_lists, "--ab"), (Ids{2, 5}));  // "- ab" (rank 2) before "- -" (rank 3)
}

TEST(MergesTest, IgnoreMerges) {
  json t = {{"model",
             {{"type", "BPE"},
              {"vocab", {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"abc", 4}}},
              {"merges", {"a b"}}}}};
  EXPECT_EQ(encode(t, "abc"), (Ids{3, 2}));
  t["model"]["ignore_merges"] = true;
  EXPECT_EQ(encode(t, "abc"), (Ids{4}));
  EXPECT_EQ(encode(t, "abcc"), (Ids{3, 2, 2}));  // not a vocab word: merged as usual
}

// GPT-2's byte alphabet: printable Latin-1 bytes are themselves, the others U+0100 onwards.
std::string byte_char(int b) {
  int extra = 0, cp = -1;
  for (int k = 0; k < 256; ++k) {
    const bool printable = (k >= 0x21 && k <= 0x7E) || (k >= 0xA1 && k <= 0xAC) || k >= 0xAE;
    const int c = printable ? k : 256 + extra++;
    if (k == b) cp = c;
  }
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return s;
}

// A byte-level BPE: id b for byte b, then hi=256 Ġh=257 Ġhi=258 yo=259 you=260 Ġyou=261
// iĠ=262; "i Ġ" is the first merge, so it wins wherever ByteLevel's regex does not split.
json byte_tokenizer(const json& byte_level) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
  const std::string g = byte_char(' ');
  vocab["hi"] = 256;
  vocab[g + "h"] = 257;
  vocab[g + "hi"] = 258;
  vocab["yo"] = 259;
  vocab["you"] = 260;
  vocab[g + "you"] = 261;
  vocab["i" + g] = 262;
  return {{"model",
           {{"type", "BPE"},
            {"vocab", vocab},
            {"merges", {"i " + g, "h i", g + " h", g + "h i", "y o", "yo u", g + " you"}}}},
          {"pre_tokenizer", byte_level},
          {"decoder", {{"type", "ByteLevel"}}}};
}

json byte_level(bool add_prefix_space, bool use_regex, bool trim_offsets = false) {
  return {{"type", "ByteLevel"},
          {"add_prefix_space", add_prefix_space},
          {"use_regex", use_regex},
          {"trim_offsets", trim_offsets}};
}

TEST(ByteLevelTest, Options) {
  EXPECT_EQ(encode(byte_tokenizer(byte_level(false, true)), "hi you"), (Ids{256, 261}));
  // " hi": "h i" outranks "Ġ h", and there is no "Ġ hi" merge.
  EXPECT_EQ(encode(byte_tokenizer(byte_level(true, true)), "hi you"), (Ids{' ', 256, 261}));
  EXPECT_EQ(encode(byte_tokenizer(byte_level(true, true)), " hi"), (Ids{' ', 256}));
  EXPECT_EQ(encode(byte_tokenizer(byte_level(false, false)), "hi you"), (Ids{'h', 262, 260}));
  // " hi you" as one word: "i Ġ" first, then "Ġ h" (its "h i" partner is gone), then you.
  EXPECT_EQ(encode(byte_tokenizer(byte_level(true, false)), "hi you"), (Ids{257, 262, 260}));
  EXPECT_EQ(encode(byte_tokenizer(byte_level(false, true, true)), "hi you"), (Ids{256, 261}));
  // Bytes that are not printable ASCII are ids of their own, and decode restores them.
  const Tokenizer t = Tokenizer::from_json(byte_tokenizer(byte_level(false, true)).dump());
  EXPECT_EQ(t.encode("\xC3\xA9\n"), (Ids{0xC3, 0xA9, '\n'}));
  EXPECT_EQ(t.decode(Ids{258, 0xC3, 0xA9}), " hi\xC3\xA9");
  // A lone lead byte decodes to U+FFFD, as the reference's lossy UTF-8 does.
  EXPECT_EQ(t.decode(Ids{'a', 0xC3, 'b'}),
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(t.decode(Ids{0xE2, 0x82}), "\xEF\xBF\xBD");
}

json with_added(json t, const json& tokens) {
  t["added_tokens"] = tokens;
  return t;
}

json added(const std::string& content, int id, bool special, bool lstrip = false,
           bool rstrip = false, bool single_word = false, bool normalized = false) {
  return {{"id", id},
          {"content", content},
          {"special", special},
          {"lstrip", lstrip},
          {"rstrip", rstrip},
          {"single_word", single_word},
          {"normalized", normalized}};
}

TEST(AddedTokensTest, Flags) {
  const json base = byte_tokenizer(byte_level(false, true));
  const json t = with_added(
      base, {added("<x>", 300, true), added("<l>", 301, false, true),
             added("<r>", 302, false, false, true), added("sw", 303, false, false, false, true)});
  EXPECT_EQ(encode(t, "a<x>b"), (Ids{'a', 300, 'b'}));
  EXPECT_EQ(encode(t, "a  <x>b"), (Ids{'a', ' ', ' ', 300, 'b'}));
  EXPECT_EQ(encode(t, "a  <l>b"), (Ids{'a', 301, 'b'}));    // lstrip swallows the spaces
  EXPECT_EQ(encode(t, "a<r> \n b"), (Ids{'a', 302, 'b'}));  // rstrip swallows white space
  EXPECT_EQ(encode(t, "sw x"), (Ids{303, ' ', 'x'}));
  EXPECT_EQ(encode(t, "a,sw."), (Ids{'a', ',', 303, '.'}));
  EXPECT_EQ(encode(t, "asw"), (Ids{'a', 's', 'w'}));  // single_word: inside a word, no match
  EXPECT_EQ(encode(t, "<x><x>"), (Ids{300, 300}));
  const Tokenizer tok = Tokenizer::from_json(t.dump());
  EXPECT_EQ(tok.decode(Ids{300, 256, 302}), "<x>hi<r>");
  EXPECT_EQ(tok.decode(Ids{300, 256, 302}, true), "hi<r>");  // only special tokens are skipped
  EXPECT_EQ(tok.vocab_size(), 304);
  EXPECT_EQ(tok.token_to_id("<l>"), 301);
  EXPECT_EQ(tok.token_to_id("missing"), std::nullopt);
}

TEST(AddedTokensTest, LongestMatchWins) {
  const json t = with_added(byte_tokenizer(byte_level(false, true)),
                            {added("<a", 300, true), added("<ab>", 301, true)});
  EXPECT_EQ(encode(t, "<ab><a"), (Ids{301, 300}));
  EXPECT_EQ(encode(t, "<ac"), (Ids{300, 'c'}));
}

TEST(AddedTokensTest, NormalizedMatchesAfterNfc) {
  json base = byte_tokenizer(byte_level(false, true));
  base["normalizer"] = {{"type", "NFC"}};
  const std::string nfc_e = "\xC3\xA9", nfd_e = "e\xCC\x81";
  const json normalized =
      with_added(base, json::array({added(nfc_e, 300, false, false, false, false, true)}));
  EXPECT_EQ(encode(normalized, nfd_e), (Ids{300}));
  EXPECT_EQ(encode(normalized, nfc_e), (Ids{300}));
  const json raw = with_added(base, json::array({added(nfc_e, 300, false)}));
  EXPECT_EQ(encode(raw, nfc_e), (Ids{300}));
  // Not normalized: the NFD text does not match, then NFC turns it into the bytes of é.
  EXPECT_EQ(encode(raw, nfd_e), (Ids{0xC3, 0xA9}));
  // A normalizer Sequence with NFC behaves like NFC.
  base["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}}}};
  EXPECT_EQ(encode(base, nfd_e), (Ids{0xC3, 0xA9}));
}

TEST(PostProcessorTest, TemplateOnlyWhenAsked) {
  json t = with_added(byte_tokenizer(byte_level(false, true)),
                      {added("<s>", 300, true), added("</s>", 301, true)});
  t["post_processor"] = {
      {"type", "Sequence"},
      {"processors",
       {{{"type", "ByteLevel"}, {"trim_offsets", false}},
        {{"type", "TemplateProcessing"},
         {"single",
          {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
           {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
           {{"SpecialToken", {{"id", "</s>"}, {"type_id", 0}}}}}},
         {"special_tokens",
          {{"<s>", {{"id", "<s>"}, {"ids", {300}}, {"tokens", {"<s>"}}}},
           {"</s>", {{"id", "</s>"}, {"ids", {301}}, {"tokens", {"</s>"}}}}}}}}}};
  EXPECT_EQ(encode(t, "hi"), (Ids{256}));
  EXPECT_EQ(encode(t, "hi", true), (Ids{300, 256, 301}));
  EXPECT_EQ(encode(t, "", true), (Ids{300, 301}));
}

TEST(EncodeTest, EmptyAndInvalidUtf8) {
  const Tokenizer t = Tokenizer::from_json(byte_tokenizer(byte_level(false, true)).dump());
  EXPECT_TRUE(t.encode("").empty());
  try {
    t.encode(
        "abc\xFF"
        "def");
    FAIL() << "invalid UTF-8 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("byte offset 3"), std::string::npos) << e.message();
  }
  EXPECT_THROW(t.encode("\xED\xA0\x80"), Error);  // a surrogate
  EXPECT_THROW(t.encode("\xC0\xAF"), Error);      // overlong
  EXPECT_THROW(t.encode("ab\xE2\x82"), Error);    // truncated
  EXPECT_THROW(t.decode(Ids{100000}), Error);
  EXPECT_THROW(t.decode(Ids{-1}), Error);
}

// The message of the occult::Error that loading `text` throws ("" when it loads).
std::string load_error(const std::string& text) {
  try {
    Tokenizer::from_json(text, {}, "bad/tokenizer.json");
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

void expect_error(const std::string& text, const std::string& expected) {
  const std::string message = load_error(text);
  EXPECT_NE(message.find(expected), std::string::npos)
      << "message: '" << message << "', expected it to contain '" << expected << "'";
  EXPECT_NE(message.find("bad/tokenizer.json"), std::string::npos) << message;
}

TEST(MalformedTest, ClearErrors) {
  expect_error("{\"version\": \"1.0\"}", "no \"model\"");
  expect_error("{\"model\": ", "is not valid JSON");
  json t = dash_tokenizer(nullptr);
  t["model"]["merges"] = {"a b c"};
  expect_error(t.dump(), "bad merge 0 'a b c'");
  t["model"]["merges"] = {"a x"};
  expect_error(t.dump(), "'x', which is not in the vocab");
  t["model"]["merges"] = {{"a"}};
  expect_error(t.dump(), "bad merge 0");
  t["model"]["merges"] = {"b -"};  // "b-" is not in the vocab
  expect_error(t.dump(), "'b-', which is not in the vocab");
  t = dash_tokenizer(nullptr);
  t["model"].erase("merges");
  expect_error(t.dump(), "has no \"merges\"");
  t = dash_tokenizer(nullptr);
  t["model"]["type"] = "WordPiece";
  expect_error(t.dump(), "model type 'WordPiece' is not supported");
  t["model"]["type"] = "Unigram";
  expect_error(t.dump(), "model type 'Unigram' is not supported");
  t = dash_tokenizer(nullptr);
  t["normalizer"] = {{"type", "NFKC"}};
  expect_error(t.dump(), "normalizer type 'NFKC' is not supported");
  t = dash_tokenizer({{"type", "Whitespace"}});
  expect_error(t.dump(), "pre-tokenizer type 'Whitespace' is not supported");
  t = dash_tokenizer(
      {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}});
  expect_error(t.dump(), "does not compile");
  t = dash_tokenizer({{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", "Sideways"}});
  expect_error(t.dump(), "unknown Split behavior");
  t = dash_tokenizer(nullptr);
  t["decoder"] = {{"type", "WordPiece"}};
  expect_error(t.dump(), "decoder type 'WordPiece' is not supported");
  t = dash_tokenizer(nullptr);
  t["post_processor"] = {{"type", "Mystery"}};
  expect_error(t.dump(), "post_processor type 'Mystery' is not supported");
  t = dash_tokenizer(nullptr);
  t["model"]["byte_fallback"] = true;
  expect_error(t.dump(), "byte_fallback is not supported");
  EXPECT_EQ(load_error(dash_tokenizer(nullptr).dump()), "");
}

TEST(MalformedTest, MissingFile) {
  try {
    Tokenizer::load("/nonexistent/dir");
    FAIL() << "loaded a missing tokenizer";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("no tokenizer at /nonexistent/dir"), std::string::npos)
        << e.message();
  }
}

}  // namespace
}  // namespace occult
