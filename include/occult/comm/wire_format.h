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
};

// "f32", "bf16" or "f16".
std::string_view wire_format_name(WireFormat format);
// Parses "f32", "bf16" or "f16"; throws occult::Error naming `flag` and the accepted values.
WireFormat parse_wire_format(std::string_view text, std::string_view flag = "--wire");
// Bytes one value occupies on the wire (4 or 2).
std::int64_t wire_bytes_per_value(WireFormat format);
// The unit roundoff u = 2^-p of the format, p its significand bits (2^-24, 2^-8, 2^-11): a
// value in the format's normal range arrives as x (1 + d) with |d| <= u.
double wire_unit_roundoff(WireFormat format);

// Writes values.size() values in `format` to out (values.size() * wire_bytes_per_value bytes;
// `out` needs no alignment).
void encode_wire(WireFormat format, std::span<const float> values, std::byte* out);
// Reads out.size() values in `format` from `in` and widens them to F32 (exact).
void decode_wire(WireFormat format, const std::byte* in, std::span<float> out);
// As decode_wire, but adds the widened values to `out` (the F32 accumulation of combine).
void decode_wire_add(WireFormat format, const std::byte* in, std::span<float> out);

}  // namespace occult
