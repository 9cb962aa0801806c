// Wire formats of the MoE hidden-state exchanges (dispatch, combine and their backward twins):
// rows are cast once to the format before sending and widened to F32 on arrival, so every sum
// (stage-1 on the expert's device, stage-2 at home) accumulates in F32. Half-width formats
// halve the bytes on the link at the cost of one rounding per value sent.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace occult {

// How one hidden-state value travels.
enum class WireFormat : std::uint8_t {
  kF32,   // 4 bytes, exact
  kBF16,  // 2 bytes, bfloat16 (8-bit significand, F32's range), round to nearest even
  kF16,   // 2 bytes, IEEE half (11-bit significand, |x| <= 65504; below 2^-14 loses precision)
  // The forward dispatch in FP8 E4M3 (4-bit significand) with one F32 scale per row (the row's
  // largest magnitude over 448, E4M3's largest value), as DeepEP dispatches; the other three
  // exchanges in BF16.
  kFP8,
};

// "f32", "bf16", "f16" or "fp8".
std::string_view wire_format_name(WireFormat format);
// Parses "f32", "bf16", "f16" or "fp8"; throws occult::Error naming `flag` and the accepted values.
WireFormat parse_wire_format(std::string_view text, std::string_view flag = "--wire");
// The format one exchange uses under the configured one: kFP8 is kFP8 on the forward dispatch
// and kBF16 elsewhere; the others are used on every exchange.
WireFormat exchange_wire(WireFormat configured, bool forward_dispatch);
// Bytes one value occupies on the wire (4 or 2; kFP8: 2, the BF16 of its other exchanges, which
// bounds its dispatch too; wire_row_bytes is exact).
std::int64_t wire_bytes_per_value(WireFormat format);
// Bytes of one row of `width` values: width * wire_bytes_per_value, or in kFP8 the row's F32
// scale and one byte per value (width + 4).
std::int64_t wire_row_bytes(WireFormat format, std::int64_t width);
// The unit roundoff u = 2^-p of the format, p its significand bits (2^-24, 2^-8, 2^-11; 2^-4 for
// E4M3): a value in the format's normal range arrives as x (1 + d) with |d| <= u. In kFP8 a value
// below 2^-6 times its row's scale is subnormal and arrives within 2^-10 times the scale.
double wire_unit_roundoff(WireFormat format);

// Writes values.size() values in `format` to out (values.size() * wire_bytes_per_value bytes;
// `out` needs no alignment).
void encode_wire(WireFormat format, std::span<const float> values, std::byte* out);
// Reads out.size() values in `format` from `in` and widens them to F32 (exact).
void decode_wire(WireFormat format, const std::byte* in, std::span<float> out);
// As decode_wire, but adds the widened values to `out` (the F32 accumulation of combine).
void decode_wire_add(WireFormat format, const std::byte* in, std::span<float> out);
// Rows of `width` values (rows.size() a multiple of width) to wire_row_bytes each; in kFP8 each
// row is [F32 scale | width E4M3 codes], scale = max |x| / 448 (1 for a zero row), codes the
// nearest E4M3 (ties to even) of x / scale. The other formats write what encode_wire writes.
void encode_wire_rows(WireFormat format, std::span<const float> rows, std::int64_t width, std::byte* out);
// The inverse: out.size() / width rows read from `in`, widened to F32 (code times scale).
void decode_wire_rows(WireFormat format, const std::byte* in, std::int64_t width, std::span<float> out);

// One E4M3 code (OCP FP8 E4M3FN: bias 7, no infinities, 0x7f/0xff NaN) of `value`, the nearest
// (ties to even), magnitudes above 448 saturating to 448; and its value.
std::uint8_t float_to_e4m3(float value);
float e4m3_to_float(std::uint8_t code);

}  // namespace occult
