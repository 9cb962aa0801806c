// Wire formats of the MoE exchanges: names, flag errors, and encode/decode against hand-worked
// values (round to nearest even, little-endian codes, F32 accumulation on decode_wire_add).
#include "occult/comm/wire_format.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "occult/core/error.h"

namespace occult {
namespace {

TEST(WireFormat, NamesParseAndBadValuesNameTheFlag) {
  for (WireFormat w : {WireFormat::kF32, WireFormat::kBF16, WireFormat::kF16}) {
    EXPECT_EQ(parse_wire_format(wire_format_name(w)), w);
  }
  EXPECT_EQ(wire_bytes_per_value(WireFormat::kF32), 4);
  EXPECT_EQ(wire_bytes_per_value(WireFormat::kBF16), 2);
  EXPECT_EQ(wire_bytes_per_value(WireFormat::kF16), 2);
  EXPECT_EQ(wire_unit_roundoff(WireFormat::kBF16), 1.0 / 256);
  EXPECT_EQ(wire_unit_roundoff(WireFormat::kF16), 1.0 / 2048);
  try {
    parse_wire_format("fp8", "--wire");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("--wire 'fp8': expected f32, bf16 or f16"), std::string::npos) << e.message();
  }
}

std::vector<std::uint16_t> codes(const std::vector<std::byte>& bytes) {
  std::vector<std::uint16_t> out(bytes.size() / 2);
  for (std::size_t i = 0; i < out.size(); ++i) {
    // Little-endian, as every supported host stores them.
    out[i] = static_cast<std::uint16_t>(std::to_integer<unsigned>(bytes[2 * i]) |
                                        (std::to_integer<unsigned>(bytes[2 * i + 1]) << 8));
  }
  return out;
}

TEST(WireFormat, EncodesHandWorkedValues) {
  // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even (1.0, 0x3f80);
  // 1 + 3*2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6 (0x3f82).
  // In F16 (10 fraction bits) 1 + 2^-8 is exact (0x3c04) and 1 + 2^-11 ties down to 1.0.
  const std::vector<float> v = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, -2.0f, 1.0f + 0x1p-11f};
  std::vector<std::byte> bf16(8), f16(8), f32(16);
  encode_wire(WireFormat::kBF16, v, bf16.data());
  encode_wire(WireFormat::kF16, v, f16.data());
  encode_wire(WireFormat::kF32, v, f32.data());
  EXPECT_EQ(codes(bf16), (std::vector<std::uint16_t>{0x3f80, 0x3f82, 0xc000, 0x3f80}));
  EXPECT_EQ(codes(f16), (std::vector<std::uint16_t>{0x3c04, 0x3c0c, 0xc000, 0x3c00}));
  EXPECT_EQ(std::memcmp(f32.data(), v.data(), 16), 0);

  std::vector<float> back(4);
  decode_wire(WireFormat::kBF16, bf16.data(), back);
  EXPECT_EQ(back, (std::vector<float>{1.0f, 1.0f + 0x1p-6f, -2.0f, 1.0f}));
  decode_wire(WireFormat::kF16, f16.data(), back);
  EXPECT_EQ(back, (std::vector<float>{1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, -2.0f, 1.0f}));
  // Accumulating decode: 0.5 + widened value, in F32.
  std::vector<float> sum(4, 0.5f);
  decode_wire_add(WireFormat::kBF16, bf16.data(), sum);
  EXPECT_EQ(sum, (std::vector<float>{1.5f, 1.5f + 0x1p-6f, -1.5f, 1.5f}));
  std::vector<float> sum32(4, 0.5f);
  decode_wire_add(WireFormat::kF32, f32.data(), sum32);
  EXPECT_EQ(sum32[0], 0.5f + v[0]);
}

TEST(WireFormat, UnalignedBuffersAndLongRowsRoundTrip) {
  // Rows in a packed message start at any byte; more than one internal block of values.
  std::vector<float> v(1000);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i) * 0.37f - 150.0f;
  for (WireFormat w : {WireFormat::kF32, WireFormat::kBF16, WireFormat::kF16}) {
    std::vector<std::byte> buf(1 + v.size() * wire_bytes_per_value(w));
    encode_wire(w, v, buf.data() + 1);
    std::vector<float> back(v.size());
    decode_wire(w, buf.data() + 1, back);
    const double u = wire_unit_roundoff(w);
    for (std::size_t i = 0; i < v.size(); ++i) {
      ASSERT_LE(std::abs(back[i] - v[i]), u * std::abs(v[i])) << wire_format_name(w) << " " << i;
    }
  }
}

}  // namespace
}  // namespace occult
