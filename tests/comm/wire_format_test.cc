// Wire formats of the MoE exchanges: names, flag errors, and encode/decode against hand-worked
// values (round to nearest even, little-endian codes, F32 accumulation on decode_wire_add).
#include "occult/comm/wire_format.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "occult/core/error.h"

namespace occult {
namespace {

TEST(WireFormat, NamesParseAndBadValuesNameTheFlag) {
  for (WireFormat w : {WireFormat::kF32, WireFormat::kBF16, WireFormat::kF16, WireFormat::kFP8}) {
    EXPECT_EQ(parse_wire_format(wire_format_name(w)), w);
  }
  EXPECT_EQ(wire_bytes_per_value(WireFormat::kF32), 4);
  EXPECT_EQ(wire_bytes_per_value(WireFormat::kBF16), 2);
  EXPECT_EQ(wire_bytes_per_value(WireFormat::kF16), 2);
  EXPECT_EQ(wire_unit_roundoff(WireFormat::kBF16), 1.0 / 256);
  EXPECT_EQ(wire_unit_roundoff(WireFormat::kF16), 1.0 / 2048);
  try {
    parse_wire_format("fp4", "--wire");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("--wire 'fp4': expected f32, bf16, f16 or fp8"), std::string::npos) << e.message();
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

// FP8 (E4M3FN) codes worked by hand: 1.0 = exponent field 7 (0x38); 1 + 1/16 is halfway between
// 1 and 1.125 and ties to even (1.0); 1 + 3/16 ties up to 1.25 (0x3a); 448 = 1.75 * 2^8 is the
// largest code (0x7e) and anything above saturates to it; 2^-9 is the smallest subnormal (0x01),
// 1.5 * 2^-9 ties to 2 * 2^-9 (0x02); 2^-6 is the smallest normal (0x08); -0.5 = 0xb0.
TEST(WireFormat, Fp8CodesWorkedByHand) {
  const std::vector<std::pair<float, std::uint8_t>> cases = {
      {1.0f, 0x38},         {1.0f + 0x1p-4f, 0x38}, {1.0f + 3 * 0x1p-4f, 0x3a}, {448.0f, 0x7e},  {1000.0f, 0x7e},
      {0x1p-9f, 0x01},      {1.5f * 0x1p-9f, 0x02}, {0x1p-6f, 0x08},            {-0.5f, 0xb0},   {0.0f, 0x00},
      {0x1p-11f, 0x00},     {240.0f, 0x77}};
  for (const auto& [value, code] : cases) {
    EXPECT_EQ(float_to_e4m3(value), code) << value;
  }
  EXPECT_EQ(e4m3_to_float(0x7e), 448.0f);
  EXPECT_EQ(e4m3_to_float(0x01), 0x1p-9f);
  EXPECT_EQ(e4m3_to_float(0xb0), -0.5f);
  EXPECT_TRUE(std::isnan(e4m3_to_float(0x7f)));
  // Every finite code is a fixed point of decode then encode.
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;
    EXPECT_EQ(float_to_e4m3(e4m3_to_float(static_cast<std::uint8_t>(c))), c == 0x80 ? 0x80 : c) << c;
  }
}

// kFP8 rows: [F32 scale = amax / 448 | one code per value]; each value comes back within 2^-4 of
// itself (normal range) or 2^-10 of the scale (subnormal range); the other exchanges are BF16.
TEST(WireFormat, Fp8RowsCarryTheirScaleAndRoundWithinTheBound) {
  EXPECT_EQ(exchange_wire(WireFormat::kFP8, true), WireFormat::kFP8);
  EXPECT_EQ(exchange_wire(WireFormat::kFP8, false), WireFormat::kBF16);
  EXPECT_EQ(exchange_wire(WireFormat::kF16, true), WireFormat::kF16);
  EXPECT_EQ(wire_row_bytes(WireFormat::kFP8, 6), 10);
  EXPECT_EQ(wire_row_bytes(WireFormat::kBF16, 6), 12);
  // Row 0: amax 896 -> scale 2, so 896 is code 0x7e and 2 is 1.0 (0x38); row 1 is all zeros.
  const std::vector<float> rows = {896.0f, 2.0f, -1.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  std::vector<std::byte> wire(2 * 8);
  encode_wire_rows(WireFormat::kFP8, rows, 4, wire.data());
  float scale = 0;
  std::memcpy(&scale, wire.data(), 4);
  EXPECT_EQ(scale, 2.0f);
  EXPECT_EQ(std::to_integer<int>(wire[4]), 0x7e);
  EXPECT_EQ(std::to_integer<int>(wire[5]), 0x38);
  EXPECT_EQ(std::to_integer<int>(wire[6]), 0xb0);
  std::memcpy(&scale, wire.data() + 8, 4);
  EXPECT_EQ(scale, 1.0f);
  std::vector<float> back(8);
  decode_wire_rows(WireFormat::kFP8, wire.data(), 4, back);
  EXPECT_EQ(back, rows);

  std::vector<float> x(64 * 32);
  std::uint64_t state = 12345;
  for (float& v : x) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    v = std::ldexp(static_cast<float>(state >> 40) / 16777216.0f - 0.5f, static_cast<int>(state % 13) - 6);
  }
  std::vector<std::byte> w(static_cast<std::size_t>(64 * wire_row_bytes(WireFormat::kFP8, 32)));
  encode_wire_rows(WireFormat::kFP8, x, 32, w.data());
  std::vector<float> y(x.size());
  decode_wire_rows(WireFormat::kFP8, w.data(), 32, y);
  for (int r = 0; r < 64; ++r) {
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[r * 32 + i]));
    const double s = amax / 448.0;
    for (int i = 0; i < 32; ++i) {
      const double v = x[r * 32 + i];
      // One rounding of v / s in E4M3, one F32 rounding of the division and of code * scale.
      const double bound = std::max(0x1p-4 * std::fabs(v), 0x1p-10 * s) * (1 + 1e-6) + 1e-6 * std::fabs(v);
      EXPECT_LE(std::fabs(y[r * 32 + i] - v), bound) << r << " " << i;
    }
  }
}

}  // namespace
}  // namespace occult
