// Encode never crashes: random bytes either encode or fail with occult::Error (invalid UTF-8),
// and random valid UTF-8 (every plane, combining marks, white space runs, special-token
// fragments) always encodes and round-trips through decode.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <random>
#include <string>

#include "occult/core/error.h"
#include "occult/text/tokenizer.h"

namespace occult {
namespace {

std::string source_dir() {
  const char* dir = std::getenv("OCCULT_SOURCE_DIR");
  return dir ? dir : ".";
}

void append_utf8(char32_t cp, std::string& out) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Random valid UTF-8 biased towards what tokenizers find hard.
std::string random_utf8(std::mt19937& rng) {
  static const char* const kFragments[] = {"<|im_start|>", "<|endoftext|>", "<|im", "<｜User｜>",
                                           "'s",           "'LL",           "\r\n", "    ",
                                           "\t\t",         "123456"};
  std::uniform_int_distribution<int> length(0, 64), kind(0, 9);
  std::string s;
  const int n = length(rng);
  for (int k = 0; k < n; ++k) {
    char32_t cp = 0;
    switch (kind(rng)) {
      case 0:
        s += kFragments[rng() % std::size(kFragments)];
        continue;
      case 1:
        cp = 0x20 + rng() % 0x5F;
        break;  // printable ASCII
      case 2:
        cp = rng() % 0x20;
        break;  // controls, \t \n \r
      case 3:
        cp = 0x300 + rng() % 0x70;
        break;  // combining marks
      case 4:
        cp = 0x4E00 + rng() % 0x5200;
        break;  // CJK
      case 5:
        cp = 0x1F300 + rng() % 0x300;
        break;  // emoji
      case 6:
        cp = 0x2000 + rng() % 0x70;
        break;  // spaces, ZWJ, punctuation
      case 7:
        cp = 0x80 + rng() % 0x780;
        break;  // Latin-1 .. Arabic
      default:
        cp = rng() % 0x10FFFF;
        break;  // anything
    }
    if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;
    append_utf8(cp, s);
  }
  return s;
}

void fuzz(const std::string& name, bool round_trip_exact) {
  const Tokenizer tokenizer = Tokenizer::load(source_dir() + "/data/tokenizers/" + name);
  std::mt19937 rng(12345);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  int iterations = 0, rejected = 0;
  for (; iterations < 200000 && std::chrono::steady_clock::now() < deadline; ++iterations) {
    std::string bytes(rng() % 48, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    try {
      const auto ids = tokenizer.encode(bytes, iterations % 2 == 0);
      if (round_trip_exact) {
        EXPECT_EQ(tokenizer.decode(ids), bytes);
      }
    } catch (const Error& e) {
      ++rejected;
      ASSERT_NE(e.message().find("byte offset"), std::string::npos) << e.message();
    }
    const std::string text = random_utf8(rng);
    const auto ids = tokenizer.encode(text);
    for (const std::int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tokenizer.vocab_size());
    if (round_trip_exact) {
      ASSERT_EQ(tokenizer.decode(ids), text);
    }
  }
  EXPECT_GT(iterations, 100);
  EXPECT_GT(rejected, 0);
}

TEST(TokenizerFuzzTest, Qwen3NeverCrashes) {
  fuzz("qwen3", false);
}
TEST(TokenizerFuzzTest, DeepSeekV3NeverCrashesAndRoundTrips) {
  fuzz("deepseek_v3", true);
}

}  // namespace
}  // namespace occult
