// Every golden text (tests/text/golden/*.json, ids from Hugging Face's reference port) encodes
// to exactly the reference ids with both shipped tokenizers, and decodes back to itself.
#include <gtest/gtest.h>
#include <utf8proc.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "occult/text/tokenizer.h"

namespace occult {
namespace {

std::string source_dir() {
  const char* dir = std::getenv("OCCULT_SOURCE_DIR");
  return dir ? dir : ".";
}

// NFC of `text`: what decode returns for a tokenizer whose normalizer is NFC.
std::string nfc(const std::string& text) {
  utf8proc_uint8_t* out = utf8proc_NFC(reinterpret_cast<const utf8proc_uint8_t*>(text.c_str()));
  std::string result(reinterpret_cast<const char*>(out));
  std::free(out);
  return result;
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, EncodesLikeTheReferenceAndRoundTrips) {
  const std::string name = GetParam();
  const Tokenizer tokenizer = Tokenizer::load(source_dir() + "/data/tokenizers/" + name);
  const nlohmann::json golden = read_json(source_dir() + "/tests/text/golden/" + name + ".json");
  ASSERT_GE(golden["cases"].size(), 40u);
  for (const auto& c : golden["cases"]) {
    const std::string text = c["text"].get<std::string>();
    const auto expected = c["ids"].get<std::vector<std::int32_t>>();
    const auto expected_special = c["ids_with_special_tokens"].get<std::vector<std::int32_t>>();
    const std::string shown = text.substr(0, 80);
    EXPECT_EQ(tokenizer.encode(text), expected) << name << ": " << shown;
    EXPECT_EQ(tokenizer.encode(text, true), expected_special) << name << ": " << shown;
    // Qwen3 normalizes to NFC, so its round trip gives the NFC form of NFD input.
    EXPECT_EQ(tokenizer.decode(expected), name == "qwen3" ? nfc(text) : text)
        << name << ": " << shown;
    // A second encode comes from the word cache and must not differ from the first.
    EXPECT_EQ(tokenizer.encode(text), expected) << name << " (cached): " << shown;
  }
}

// Threads split the merges of one text at pre-tokenized pieces: the ids must be exactly the
// one-thread ids on a corpus large enough to take the threaded path (the golden texts prove the
// one-thread ids right).
TEST_P(GoldenTest, ThreadedEncodeGivesTheSameIds) {
  const Tokenizer tokenizer = Tokenizer::load(source_dir() + "/data/tokenizers/" + GetParam());
  std::ifstream in(source_dir() + "/data/corpus/tinyshakespeare.txt", std::ios::binary);
  ASSERT_TRUE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str().substr(0, 300000);
  const auto one = tokenizer.encode(text);
  ASSERT_GT(one.size(), 3u * 4096u);
  for (int threads : {2, 3, 7}) EXPECT_EQ(tokenizer.encode(text, false, threads), one) << threads << " threads";
}

INSTANTIATE_TEST_SUITE_P(Shipped, GoldenTest, ::testing::Values("qwen3", "deepseek_v3"));

TEST(GoldenTest, KnownIdsAndVocabulary) {
  const Tokenizer qwen = Tokenizer::load(source_dir() + "/data/tokenizers/qwen3");
  EXPECT_EQ(qwen.encode("Hello, world!"), (std::vector<std::int32_t>{9707, 11, 1879, 0}));
  EXPECT_EQ(qwen.vocab_size(), 151669);
  EXPECT_EQ(qwen.token_to_id("<|im_start|>"), 151644);
  EXPECT_TRUE(qwen.is_special(151644));
  EXPECT_FALSE(qwen.is_special(9707));
  EXPECT_EQ(qwen.decode(std::vector<std::int32_t>{151644, 9707, 151645}, true), "Hello");
  const Tokenizer deepseek =
      Tokenizer::load(source_dir() + "/data/tokenizers/deepseek_v3/tokenizer.json");
  EXPECT_EQ(deepseek.encode("Hello, world!"), (std::vector<std::int32_t>{19923, 14, 2058, 3}));
  EXPECT_EQ(deepseek.vocab_size(), 128815);
  EXPECT_EQ(deepseek.token_to_id("<｜begin▁of▁sentence｜>"), 0);
  EXPECT_TRUE(Tokenizer::exists_in(source_dir() + "/data/tokenizers/qwen3"));
  EXPECT_FALSE(Tokenizer::exists_in(source_dir() + "/data"));
}

}  // namespace
}  // namespace occult
