#include "occult/core/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "occult/core/error.h"

namespace occult {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

// A file image from a raw header text and a data buffer: lets each test state exactly which
// bytes are malformed.
std::vector<std::byte> image(const std::string& header, std::size_t data_bytes = 0,
                             std::uint64_t header_len_override = UINT64_MAX) {
  std::vector<std::byte> out(8 + header.size() + data_bytes, std::byte{0});
  const std::uint64_t n = header_len_override == UINT64_MAX ? header.size() : header_len_override;
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, header.data(), header.size());
  return out;
}

// The message of the occult::Error thrown by parsing `bytes` as "t.safetensors" (fails the test
// if nothing is thrown).
std::string parse_error(const std::vector<std::byte>& bytes) {
  try {
    SafetensorsReader::from_bytes(bytes, "t.safetensors");
  } catch (const Error& e) {
    return e.message();
  }
  ADD_FAILURE() << "parsing succeeded but an error was expected";
  return "";
}

// ---- dtype table ---------------------------------------------------------------------------

TEST(DType, NamesSizesAndParsingAgree) {
  const std::pair<const char*, std::size_t> expected[] = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2},
      {"I8", 1},  {"U64", 8}, {"U32", 4}, {"U16", 2},  {"U8", 1},  {"BOOL", 1}};
  for (const auto& [name, size] : expected) {
    const auto dtype = dtype_from_name(name);
    ASSERT_TRUE(dtype.has_value()) << name;
    EXPECT_EQ(dtype_name(*dtype), name);
    EXPECT_EQ(dtype_size(*dtype), size) << name;
  }
  EXPECT_FALSE(dtype_from_name("f32").has_value());
  EXPECT_FALSE(dtype_from_name("F8").has_value());
  EXPECT_TRUE(dtype_is_integer(DType::kU8));
  EXPECT_TRUE(dtype_is_integer(DType::kBool));
  EXPECT_FALSE(dtype_is_integer(DType::kBF16));
}

// ---- F16 / BF16 conversions: exact bit patterns ---------------------------------------------

TEST(HalfConversion, KnownBitPatterns) {
  EXPECT_EQ(float_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(float_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(float_to_f16(0.0f), 0x0000);
  EXPECT_EQ(float_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(float_to_f16(65504.0f), 0x7bff);  // largest finite half
  EXPECT_EQ(float_to_f16(0x1p-24f), 0x0001);  // smallest subnormal
  EXPECT_EQ(float_to_f16(0x1p-14f), 0x0400);  // smallest normal
  EXPECT_EQ(float_to_f16(0.333251953125f), 0x3555);
  EXPECT_EQ(float_to_f16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(float_to_f16(-std::numeric_limits<float>::infinity()), 0xfc00);
  const std::uint16_t nan = float_to_f16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x03ff, 0);
  // A signalling NaN whose payload lives only in the low bits must stay a NaN.
  EXPECT_NE(float_to_f16(std::bit_cast<float>(0x7f800001u)) & 0x03ff, 0);

  EXPECT_EQ(f16_to_float(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_float(0xc000), -2.0f);
  EXPECT_EQ(f16_to_float(0x7bff), 65504.0f);
  EXPECT_EQ(f16_to_float(0x0001), 0x1p-24f);
  EXPECT_EQ(f16_to_float(0x03ff), 1023 * 0x1p-24f);  // largest subnormal
  EXPECT_EQ(f16_to_float(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f16_to_float(0x7e00)));
  EXPECT_TRUE(std::signbit(f16_to_float(0x8000)));
}

TEST(HalfConversion, RoundsToNearestEven) {
  // 1 + 2^-11 is halfway between 1.0 (0x3c00, even) and 1 + 2^-10 (0x3c01): goes to even.
  EXPECT_EQ(float_to_f16(1.0f + 0x1p-11f), 0x3c00);
  // 1 + 3*2^-11 is halfway between 0x3c01 (odd) and 0x3c02 (even): goes up to even.
  EXPECT_EQ(float_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);
  // Just above halfway rounds up.
  EXPECT_EQ(float_to_f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);
  // 65519.99 rounds down to 65504; 65520 (the tie) rounds to even, i.e. overflows to Inf.
  EXPECT_EQ(float_to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(float_to_f16(65520.0f), 0x7c00);
  // Subnormal ties: 2^-25 is half the smallest subnormal -> 0 (even); 3*2^-25 -> 2 (even).
  EXPECT_EQ(float_to_f16(0x1p-25f), 0x0000);
  EXPECT_EQ(float_to_f16(0x1p-25f + 0x1p-40f), 0x0001);
  EXPECT_EQ(float_to_f16(3 * 0x1p-25f), 0x0002);
  EXPECT_EQ(float_to_f16(5 * 0x1p-25f), 0x0002);
  // The largest subnormal plus a half unit rounds up into the smallest normal.
  EXPECT_EQ(float_to_f16(1023 * 0x1p-24f + 0x1p-25f), 0x0400);
}

TEST(HalfConversion, EveryHalfRoundTripsExactly) {
  for (std::uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const auto h = static_cast<std::uint16_t>(bits);
    const float f = f16_to_float(h);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(f))));
      continue;
    }
    ASSERT_EQ(float_to_f16(f), h) << "bits " << bits;
  }
}

TEST(BFloat16Conversion, KnownBitPatternsAndRounding) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(float_to_bf16(-2.0f), 0xc000);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(float_to_bf16(0x1p-133f), 0x0001);  // smallest bf16 subnormal
  // 1 + 2^-8 is halfway between 1.0 (even) and 1 + 2^-7: to even.
  EXPECT_EQ(float_to_bf16(1.0f + 0x1p-8f), 0x3f80);
  // 1 + 3*2^-8 is halfway between 0x3f81 (odd) and 0x3f82: up to even.
  EXPECT_EQ(float_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
  // The largest float rounds to Inf.
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7f80);
  // A NaN whose payload is only in the low 16 bits stays a NaN.
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::bit_cast<float>(0x7f800001u)))));
  EXPECT_EQ(bf16_to_float(0x3f80), 1.0f);
  EXPECT_EQ(bf16_to_float(0x0001), 0x1p-133f);
  for (std::uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const float f = bf16_to_float(static_cast<std::uint16_t>(bits));
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_bf16(f), bits);
  }
}

// ---- writer / reader round trips ---------------------------------------------------------

TEST(Safetensors, RoundTripsEveryWriterDtype) {
  SafetensorsWriter writer;
  writer.set_metadata("num_experts", "64");
  writer.set_metadata("model", "tiny \"quoted\" name");
  const std::vector<float> f = {1.0f, -2.5f, 0.1f, 65504.0f, 0x1p-24f, -0.0f};
  const std::vector<std::int64_t> i64 = {std::numeric_limits<std::int64_t>::min(), -1, 0,
                                         std::numeric_limits<std::int64_t>::max()};
  const std::vector<std::int32_t> i32 = {-7, 0, 2147483647};
  const std::vector<std::int16_t> i16 = {-32768, 5, 32767};
  const std::vector<std::uint8_t> u8 = {0, 1, 255, 7, 9};
  writer.add_u8("u8", {5}, u8);
  writer.add_f32("f32", {2, 3}, f);
  writer.add_f16("f16", {3, 2}, f);
  writer.add_bf16("bf16", {6}, f);
  writer.add_i64("i64", {4}, i64);
  writer.add_i32("i32", {3, 1}, i32);
  writer.add_i16("i16", {3}, i16);
  writer.add("scalar", DType::kF32, {}, std::as_bytes(std::span<const float>(f).first(1)));
  writer.add("empty", DType::kI32, {0, 4}, {});

  const auto bytes = writer.to_bytes();
  std::uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ((8 + header_len) % 8, 0u) << "data buffer must start 8-byte aligned";

  const auto reader = SafetensorsReader::from_bytes(bytes, "mem");
  EXPECT_EQ(reader.metadata().at("num_experts"), "64");
  EXPECT_EQ(reader.metadata().at("model"), "tiny \"quoted\" name");
  EXPECT_EQ(reader.tensors().size(), 9u);
  // Every tensor starts at a multiple of its element size and the buffer has no gaps.
  std::uint64_t expected_begin = 0;
  for (const TensorInfo& info : reader.tensors()) {
    EXPECT_EQ(info.data_begin % dtype_size(info.dtype), 0u) << info.name;
    EXPECT_EQ(info.data_begin, expected_begin) << info.name;
    expected_begin = info.data_end;
  }
  EXPECT_EQ(reader.read_f32("f32"), f);
  EXPECT_EQ(reader.at("f32").shape, (std::vector<std::int64_t>{2, 3}));
  const auto f16 = reader.read_f32("f16");
  for (std::size_t i = 0; i < f.size(); ++i) EXPECT_EQ(f16[i], f16_to_float(float_to_f16(f[i])));
  EXPECT_EQ(f16[0], 1.0f);
  EXPECT_EQ(f16[3], 65504.0f);
  const auto bf16 = reader.read_f32("bf16");
  for (std::size_t i = 0; i < f.size(); ++i) EXPECT_EQ(bf16[i], bf16_to_float(float_to_bf16(f[i])));
  EXPECT_EQ(reader.read_i64("i64"), i64);
  EXPECT_EQ(reader.read_i32("i32"), i32);
  EXPECT_EQ(reader.read_i64("i16"), (std::vector<std::int64_t>{-32768, 5, 32767}));
  EXPECT_EQ(reader.read_i32("u8"), (std::vector<std::int32_t>{0, 1, 255, 7, 9}));
  EXPECT_EQ(reader.read_f32("scalar"), std::vector<float>{1.0f});
  EXPECT_EQ(reader.at("scalar").numel(), 1);
  EXPECT_TRUE(reader.read_i64("empty").empty());
  EXPECT_EQ(reader.at("empty").numel(), 0);
  EXPECT_EQ(reader.find("missing"), nullptr);
}

// The Hugging Face reference writer's own test vectors (safetensors/src/tensor.rs,
// test_serialization and test_empty): our files must be byte-identical, so that tools built on
// the reference implementation read what occult writes.
std::vector<std::byte> bytes_of_text(std::uint64_t header_len, const std::string& text) {
  std::vector<std::byte> out(8);
  std::memcpy(out.data(), &header_len, 8);
  for (char c : text) out.push_back(std::byte(c));
  return out;
}

TEST(Safetensors, MatchesTheReferenceWriterByteForByte) {
  SafetensorsWriter one;
  const std::vector<float> data = {0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f};
  one.add_f32("attn.0", {1, 2, 3}, data);
  std::vector<std::byte> expected =
      bytes_of_text(64, R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})");
  const auto raw = std::as_bytes(std::span<const float>(data));
  expected.insert(expected.end(), raw.begin(), raw.end());
  EXPECT_EQ(one.to_bytes(), expected);

  EXPECT_EQ(SafetensorsWriter().to_bytes(), bytes_of_text(8, "{}      "));
  SafetensorsWriter meta;
  meta.set_metadata("framework", "pt");
  EXPECT_EQ(meta.to_bytes(), bytes_of_text(40, R"({"__metadata__":{"framework":"pt"}}     )"));
}

TEST(Safetensors, ReadsOtherIntegerAndFloatDtypes) {
  SafetensorsWriter writer;
  const std::vector<double> f64 = {0.5, -3.0};
  const std::vector<std::int8_t> i8 = {-128, 127};
  const std::vector<std::uint16_t> u16 = {65535, 1};
  const std::vector<std::uint32_t> u32 = {4294967295u, 2};
  const std::vector<std::uint64_t> u64 = {9223372036854775807ull, 3};
  const std::vector<std::uint64_t> u64_big = {9223372036854775808ull};
  writer.add("f64", DType::kF64, {2}, std::as_bytes(std::span(f64)));
  writer.add("i8", DType::kI8, {2}, std::as_bytes(std::span(i8)));
  writer.add("u16", DType::kU16, {2}, std::as_bytes(std::span(u16)));
  writer.add("u32", DType::kU32, {2}, std::as_bytes(std::span(u32)));
  writer.add("u64", DType::kU64, {2}, std::as_bytes(std::span(u64)));
  writer.add("u64_big", DType::kU64, {1}, std::as_bytes(std::span(u64_big)));
  const auto reader = SafetensorsReader::from_bytes(writer.to_bytes(), "mem.safetensors");
  EXPECT_EQ(reader.read_f32("f64"), (std::vector<float>{0.5f, -3.0f}));
  EXPECT_EQ(reader.read_i64("i8"), (std::vector<std::int64_t>{-128, 127}));
  EXPECT_EQ(reader.read_i64("u16"), (std::vector<std::int64_t>{65535, 1}));
  EXPECT_EQ(reader.read_i64("u32"), (std::vector<std::int64_t>{4294967295ll, 2}));
  EXPECT_EQ(reader.read_i64("u64"), (std::vector<std::int64_t>{9223372036854775807ll, 3}));
  EXPECT_THROW(reader.read_i64("u64_big"), Error);
  try {
    reader.read_i32("u32");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_THAT(e.message(), AllOf(HasSubstr("mem.safetensors"), HasSubstr("'u32'"),
                                   HasSubstr("4294967295"), HasSubstr("32-bit")));
  }
  try {
    reader.read_f32("i8");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_THAT(e.message(), AllOf(HasSubstr("mem.safetensors"), HasSubstr("'i8'"), HasSubstr("I8")));
  }
  try {
    reader.read_i64("f64");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_THAT(e.message(), AllOf(HasSubstr("'f64'"), HasSubstr("integer")));
  }
}

TEST(Safetensors, ExpectShapeNamesFileTensorAndBothShapes) {
  SafetensorsWriter writer;
  const std::vector<float> f(6, 1.0f);
  writer.add_f32("w", {2, 3}, f);
  const auto reader = SafetensorsReader::from_bytes(writer.to_bytes(), "m.safetensors");
  const std::int64_t ok[] = {2, -1};
  EXPECT_NO_THROW(reader.expect_shape("w", ok));
  const std::int64_t bad[] = {3, 2};
  try {
    reader.expect_shape("w", bad);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_THAT(e.message(), AllOf(HasSubstr("m.safetensors"), HasSubstr("'w'"),
                                   HasSubstr("[2, 3]"), HasSubstr("[3, 2]")));
  }
  try {
    reader.at("nope");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_THAT(e.message(), AllOf(HasSubstr("m.safetensors"), HasSubstr("'nope'")));
  }
}

TEST(Safetensors, WriterRejectsBadInput) {
  SafetensorsWriter writer;
  const std::vector<float> f(4, 0.0f);
  EXPECT_THROW(writer.add_f32("x", {3}, f), Error);          // byte count mismatch
  EXPECT_THROW(writer.add_f32("x", {-4}, f), Error);         // negative extent
  EXPECT_THROW(writer.add_f32("__metadata__", {4}, f), Error);
  EXPECT_THROW(writer.add_f32("", {4}, f), Error);
  writer.add_f32("x", {4}, f);
  EXPECT_THROW(writer.add_f32("x", {2, 2}, f), Error);       // duplicate
}

TEST(Safetensors, WritesFileAtomicallyAndOpensByMmap) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("occult_st_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "a.safetensors").string();
  SafetensorsWriter writer;
  const std::vector<std::int32_t> ids = {3, 1, 2};
  writer.add_i32("ids", {3}, ids);
  writer.write(path);
  writer.write(path);  // overwriting an existing file works
  const auto reader = SafetensorsReader::open(path);
  EXPECT_EQ(reader.source(), path);
  EXPECT_EQ(reader.read_i32("ids"), ids);
  // No temporary file is left behind.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir), {}), 1);
  try {
    writer.write((dir / "no_such_dir" / "b.safetensors").string());
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_THAT(e.message(), HasSubstr("b.safetensors"));
  }
  try {
    SafetensorsReader::open((dir / "missing.safetensors").string());
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_THAT(e.message(), AllOf(HasSubstr("missing.safetensors"), HasSubstr("cannot open")));
  }
  // An empty file is too short, not an mmap failure.
  const std::string empty = (dir / "empty.safetensors").string();
  std::ofstream(empty).close();
  try {
    SafetensorsReader::open(empty);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_THAT(e.message(), AllOf(HasSubstr("empty.safetensors"), HasSubstr("0 bytes")));
  }
  std::filesystem::remove_all(dir);
}

// ---- malformed input: one case each, message names file (and tensor) ---------------------

TEST(SafetensorsMalformed, FileShorterThanLengthField) {
  EXPECT_THAT(parse_error(std::vector<std::byte>(5)),
              AllOf(HasSubstr("t.safetensors"), HasSubstr("5 bytes"), HasSubstr("8-byte")));
}

TEST(SafetensorsMalformed, HeaderLengthPastEndOfFile) {
  EXPECT_THAT(parse_error(image("{}", 0, 300)),
              AllOf(HasSubstr("t.safetensors"), HasSubstr("header length 300"),
                    HasSubstr("past the end")));
}

TEST(SafetensorsMalformed, AbsurdHeaderLength) {
  EXPECT_THAT(parse_error(image("{}", 0, 1ull << 62)),
              AllOf(HasSubstr("t.safetensors"), HasSubstr("absurd")));
}

TEST(SafetensorsMalformed, HeaderNotJson) {
  EXPECT_THAT(parse_error(image("{\"a\": [1, 2}")),
              AllOf(HasSubstr("t.safetensors"), HasSubstr("not valid JSON")));
}

TEST(SafetensorsMalformed, HeaderNotAnObject) {
  EXPECT_THAT(parse_error(image("[1, 2, 3]")),
              AllOf(HasSubstr("t.safetensors"), HasSubstr("must be an object")));
}

TEST(SafetensorsMalformed, EntryNotAnObject) {
  EXPECT_THAT(parse_error(image(R"({"w": [1, 2]})")),
              AllOf(HasSubstr("t.safetensors"), HasSubstr("tensor 'w'"), HasSubstr("object")));
}

TEST(SafetensorsMalformed, MissingKey) {
  EXPECT_THAT(parse_error(image(R"({"w": {"dtype": "F32", "shape": [1]}})", 4)),
              AllOf(HasSubstr("t.safetensors"), HasSubstr("tensor 'w'"),
                    HasSubstr("missing key 'data_offsets'")));
}

TEST(SafetensorsMalformed, ExtraKey) {
  EXPECT_THAT(
      parse_error(image(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}})", 4)),
      AllOf(HasSubstr("t.safetensors"), HasSubstr("tensor 'w'"), HasSubstr("unexpected key 'x'")));
}

TEST(SafetensorsMalformed, UnknownDtype) {
  EXPECT_THAT(parse_error(image(R"({"w": {"dtype": "F8", "shape": [1], "data_offsets": [0, 1]}})", 1)),
              AllOf(HasSubstr("t.safetensors"), HasSubstr("tensor 'w'"),
                    HasSubstr("unknown dtype 'F8'")));
}

TEST(SafetensorsMalformed, DtypeNotString) {
  EXPECT_THAT(parse_error(image(R"({"w": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}})", 4)),
              AllOf(HasSubstr("tensor 'w'"), HasSubstr("dtype")));
}

TEST(SafetensorsMalformed, NegativeShape) {
  EXPECT_THAT(parse_error(image(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4)),
              AllOf(HasSubstr("t.safetensors"), HasSubstr("tensor 'w'"), HasSubstr("non-negative")));
}

TEST(SafetensorsMalformed, ShapeNotIntegers) {
  EXPECT_THAT(parse_error(image(R"({"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})", 4)),
              AllOf(HasSubstr("tensor 'w'"), HasSubstr("shape")));
  EXPECT_THAT(parse_error(image(R"({"w": {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}})", 4)),
              AllOf(HasSubstr("tensor 'w'"), HasSubstr("shape")));
}

TEST(SafetensorsMalformed, NumelOverflow) {
  EXPECT_THAT(parse_error(image(
                  R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})")),
              AllOf(HasSubstr("tensor 'w'"), HasSubstr("64 bits")));
  // numel fits but bytes do not.
  EXPECT_THAT(parse_error(image(
                  R"({"w": {"dtype": "F64", "shape": [4611686018427387904], "data_offsets": [0, 0]}})")),
              AllOf(HasSubstr("tensor 'w'"), HasSubstr("64 bits")));
}

TEST(SafetensorsMalformed, DataOffsetsNotAPair) {
  EXPECT_THAT(parse_error(image(R"({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0]}})", 1)),
              AllOf(HasSubstr("tensor 'w'"), HasSubstr("[begin, end]")));
  EXPECT_THAT(parse_error(image(R"({"w": {"dtype": "U8", "shape": [1], "data_offsets": [-1, 0]}})", 1)),
              AllOf(HasSubstr("tensor 'w'"), HasSubstr("[begin, end]")));
}

TEST(SafetensorsMalformed, OffsetsEndBeforeBegin) {
  EXPECT_THAT(parse_error(image(R"({"w": {"dtype": "U8", "shape": [0], "data_offsets": [4, 2]}})", 4)),
              AllOf(HasSubstr("t.safetensors"), HasSubstr("tensor 'w'"), HasSubstr("[4, 2]")));
}

TEST(SafetensorsMalformed, ByteCountDoesNotMatchShape) {
  EXPECT_THAT(parse_error(image(R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})", 24)),
              AllOf(HasSubstr("t.safetensors"), HasSubstr("tensor 'w'"), HasSubstr("span 20 bytes"),
                    HasSubstr("needs 24")));
}

TEST(SafetensorsMalformed, OffsetsPastDataBuffer) {
  EXPECT_THAT(parse_error(image(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 12)),
              AllOf(HasSubstr("t.safetensors"), HasSubstr("tensor 'w'"), HasSubstr("12-byte data buffer")));
}

TEST(SafetensorsMalformed, OverlappingTensors) {
  EXPECT_THAT(
      parse_error(image(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                        R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                        12)),
      AllOf(HasSubstr("t.safetensors"), HasSubstr("tensor 'b'"), HasSubstr("overlaps tensor 'a'")));
}

TEST(SafetensorsMalformed, GapsAndEmptyTensorsAreAccepted) {
  const auto reader = SafetensorsReader::from_bytes(
      image(R"({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},)"
            R"( "e": {"dtype": "F32", "shape": [0], "data_offsets": [1, 1]},)"
            R"( "b": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6]}})",
            8),
      "gap");
  EXPECT_EQ(reader.tensors().size(), 3u);
  EXPECT_EQ(reader.tensors()[0].name, "a");
  EXPECT_EQ(reader.tensors()[2].name, "b");
}

TEST(SafetensorsMalformed, MetadataNotStringToString) {
  EXPECT_THAT(parse_error(image(R"({"__metadata__": {"num_experts": 64}})")),
              AllOf(HasSubstr("t.safetensors"), HasSubstr("__metadata__ entry 'num_experts'")));
  EXPECT_THAT(parse_error(image(R"({"__metadata__": "x"})")),
              AllOf(HasSubstr("t.safetensors"), HasSubstr("__metadata__")));
}

TEST(SafetensorsMalformed, DuplicateTensorName) {
  EXPECT_THAT(
      parse_error(image(R"({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},)"
                        R"( "w": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}})",
                        2)),
      AllOf(HasSubstr("t.safetensors"), HasSubstr("'w'"), HasSubstr("twice")));
}

TEST(SafetensorsMalformed, DuplicateFieldInsideEntry) {
  EXPECT_THAT(parse_error(image(
                  R"({"w": {"dtype": "U8", "dtype": "F32", "shape": [1], "data_offsets": [0, 1]}})", 1)),
              AllOf(HasSubstr("t.safetensors"), HasSubstr("'dtype'"), HasSubstr("twice")));
}

}  // namespace
}  // namespace occult
