// Deterministic randomized corruption of a real safetensors image: every mutated file must
// either parse into tensors that lie inside the buffer, or be rejected with occult::Error.
// Anything else (a crash, a foreign exception, a tensor outside the buffer) fails the test.
// Run it under -fsanitize=address,undefined to catch out-of-bounds reads as well.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>

#include "occult/core/error.h"
#include "occult/core/safetensors.h"

namespace occult {
namespace {

// A small image with every dtype family, an empty tensor, a scalar and metadata: the seed that
// all mutations start from (about 600 bytes).
std::vector<std::byte> seed_image() {
  SafetensorsWriter writer;
  writer.set_metadata("num_experts", "8");
  writer.set_metadata("top_k", "2");
  writer.set_metadata("num_layers", "1");
  const std::vector<std::uint8_t> ids = {0, 3, 7, 1, 2, 5, 6, 4};
  const std::vector<float> weights = {0.5f, 0.25f, 0.75f, 0.125f, 0.375f, 0.0625f, 0.9f, 0.01f};
  const std::vector<std::int64_t> i64 = {-1, 1LL << 40};
  const std::vector<std::int16_t> i16 = {-3, 300};
  const std::vector<std::int32_t> lengths = {3, 1};
  writer.add_u8("layers.0.topk_ids", {4, 2}, ids);
  writer.add_f16("layers.0.topk_weights", {4, 2}, weights);
  writer.add_f32("probs", {2, 4}, weights);
  writer.add_bf16("bf", {8}, weights);
  writer.add_i64("big", {2}, i64);
  writer.add_i16("small", {2, 1}, i16);
  writer.add_i32("sequence_lengths", {2}, lengths);
  writer.add("empty", DType::kF32, {0, 3}, {});
  writer.add("scalar", DType::kF32, {}, std::as_bytes(std::span<const float>(weights).first(1)));
  return writer.to_bytes();
}

std::uint64_t header_length(const std::vector<std::byte>& bytes) {
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  return n;
}

void set_header_length(std::vector<std::byte>& bytes, std::uint64_t n) {
  std::memcpy(bytes.data(), &n, 8);
}

// Applies one random mutation; the kinds mirror how files really break (bit rot, truncated
// downloads, hand-edited headers) plus adversarial length fields.
void mutate(std::vector<std::byte>& bytes, std::mt19937_64& rng) {
  auto pick = [&](std::uint64_t n) { return n == 0 ? 0 : rng() % n; };
  if (bytes.size() < 8) {  // already shorter than the length field: only growing makes sense
    bytes.push_back(std::byte(pick(256)));
    return;
  }
  // Where the (possibly corrupted) header claims to end, clamped to the file without overflow.
  const std::uint64_t header_end =
      header_length(bytes) > bytes.size() - 8 ? bytes.size() : 8 + header_length(bytes);
  switch (pick(9)) {
    case 0: {  // flip a few random bits anywhere
      const int flips = 1 + static_cast<int>(pick(4));
      for (int i = 0; i < flips; ++i) bytes[pick(bytes.size())] ^= std::byte(1u << pick(8));
      break;
    }
    case 1:  // truncate
      bytes.resize(pick(bytes.size()));
      break;
    case 2: {  // header length: small delta, huge value, or an arbitrary 64-bit value
      const std::uint64_t n = header_length(bytes);
      const std::uint64_t choices[] = {n + 1 + pick(16), n - 1 - pick(16), rng(), bytes.size(),
                                       bytes.size() - 8, UINT64_MAX, 0, n ^ (1ull << pick(64))};
      set_header_length(bytes, choices[pick(8)]);
      break;
    }
    case 3: {  // change a digit in the header (shapes, offsets, metadata numbers)
      std::vector<std::size_t> digits;
      for (std::size_t i = 8; i < header_end; ++i) {
        const char c = static_cast<char>(bytes[i]);
        if (c >= '0' && c <= '9') digits.push_back(i);
      }
      if (!digits.empty()) bytes[digits[pick(digits.size())]] = std::byte('0' + pick(10));
      break;
    }
    case 4: {  // replace a structural JSON character with another one
      const char tokens[] = {'{', '}', '[', ']', ',', ':', '"', '-', ' ', '.', 'e', '\\', '\0'};
      if (header_end > 8) bytes[8 + pick(header_end - 8)] = std::byte(tokens[pick(sizeof(tokens))]);
      break;
    }
    case 5: {  // insert or delete header bytes, keeping or fixing the length field
      if (header_end <= 8) break;
      const std::size_t at = 8 + pick(header_end - 8);
      const bool fix_length = pick(2) == 0;
      if (pick(2) == 0) {
        bytes.insert(bytes.begin() + at, std::byte(' ' + pick(95)));
        if (fix_length) set_header_length(bytes, header_length(bytes) + 1);
      } else {
        bytes.erase(bytes.begin() + at);
        if (fix_length) set_header_length(bytes, header_length(bytes) - 1);
      }
      break;
    }
    case 6: {  // swap a dtype name for another (changes byte counts or validity)
      static const char* const names[] = {"\"F32\"", "\"F16\"", "\"U8\"", "\"I64\"", "\"BF16\"",
                                          "\"I16\"", "\"I32\""};
      std::string header(reinterpret_cast<const char*>(bytes.data()) + 8, header_end - 8);
      const std::string from = names[pick(7)], to = names[pick(7)];
      const auto pos = header.find(from);
      if (pos == std::string::npos) break;
      header.replace(pos, from.size(), to);
      std::vector<std::byte> out(8);
      set_header_length(out, header.size());
      for (char c : header) out.push_back(std::byte(c));
      out.insert(out.end(), bytes.begin() + header_end, bytes.end());
      bytes = std::move(out);
      break;
    }
    case 7:  // append garbage
      for (int i = 0, n = 1 + static_cast<int>(pick(32)); i < n; ++i) bytes.push_back(std::byte(pick(256)));
      break;
    default: {  // overwrite a run of bytes with random ones
      const std::size_t at = pick(bytes.size());
      const std::size_t n = std::min<std::size_t>(bytes.size() - at, 1 + pick(16));
      for (std::size_t i = 0; i < n; ++i) bytes[at + i] = std::byte(pick(256));
      break;
    }
  }
}

// Checks the reader's promises on a file it accepted, and reads every tensor.
void check_accepted(const SafetensorsReader& reader, std::size_t file_size) {
  std::uint64_t previous_end = 0;
  for (const TensorInfo& info : reader.tensors()) {
    const auto raw = reader.raw(info);
    ASSERT_LE(info.data_begin, info.data_end);
    ASSERT_LE(info.data_end, file_size);
    ASSERT_EQ(raw.size(), static_cast<std::uint64_t>(info.numel()) * dtype_size(info.dtype));
    if (raw.size() > 0) {
      ASSERT_GE(info.data_begin, previous_end) << "tensors overlap";
      previous_end = info.data_end;
    }
    try {
      if (dtype_is_integer(info.dtype)) {
        (void)reader.read_i64(info.name);
        (void)reader.read_i32(info.name);
      } else {
        (void)reader.read_f32(info.name);
      }
    } catch (const Error&) {
      // Values that do not fit (e.g. U64 above INT64_MAX, I64 outside I32) are a clean error.
    }
  }
}

TEST(SafetensorsFuzz, RandomCorruptionsParseOrFailCleanly) {
  const std::vector<std::byte> seed = seed_image();
  ASSERT_NO_THROW(SafetensorsReader::from_bytes(seed, "seed"));
  std::mt19937_64 rng(20250513);  // the raw engine is specified by the standard: same on every platform
  constexpr int kCases = 30000;
  int accepted = 0, rejected = 0;
  for (int i = 0; i < kCases; ++i) {
    std::vector<std::byte> bytes = seed;
    const int mutations = 1 + static_cast<int>(rng() % 3);
    for (int m = 0; m < mutations && !bytes.empty(); ++m) mutate(bytes, rng);
    const std::size_t size = bytes.size();
    try {
      const auto reader = SafetensorsReader::from_bytes(std::move(bytes), "fuzz");
      ++accepted;
      check_accepted(reader, size);
      if (HasFatalFailure()) {
        FAIL() << "case " << i;
      }
    } catch (const Error& e) {
      ++rejected;
      ASSERT_NE(std::string(e.message()).find("fuzz"), std::string::npos)
          << "case " << i << ": error does not name the source: " << e.message();
    } catch (const std::exception& e) {
      FAIL() << "case " << i << ": foreign exception escaped the reader: " << e.what();
    }
  }
  // Both outcomes must be common, or the mutations are not exercising the validator.
  EXPECT_GT(accepted, kCases / 20);
  EXPECT_GT(rejected, kCases / 4);
  std::printf("accepted %d, rejected %d of %d mutated files\n", accepted, rejected, kCases);
}

}  // namespace
}  // namespace occult
