// IEEE half (F16) and bfloat16 (BF16) conversions, shared by the safetensors reader and writer
// and by the MoE exchanges' half-width wire formats. Inline because the exchanges call them once
// per value on their hot path. Both narrowings round to nearest, ties to even; Inf and NaN are
// preserved (a NaN stays a NaN); overflow goes to Inf.
#pragma once

#include <bit>
#include <cstdint>

namespace occult {

// The nearest IEEE half to `value` (ties to even; below half the smallest subnormal -> 0).
inline std::uint16_t float_to_f16(float value) {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(value);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // Inf or NaN; a NaN stays a (quiet) NaN with its top payload bits
    if (abs > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
    return static_cast<std::uint16_t>(sign | 0x7c00u);
  }
  // 65520 is halfway between 65504 (largest half) and 65536; ties go to even, i.e. to Inf.
  if (abs >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);
  if (abs < 0x38800000u) {  // below 2^-14: a half subnormal (or zero) in units of 2^-24
    // Below 2^-25 (half the smallest subnormal) everything rounds to zero; exactly 2^-25 is a
    // tie that rounds to the even value, zero, which the general path below also produces.
    if (abs < 0x33000000u) return static_cast<std::uint16_t>(sign);
    const std::uint32_t exponent = abs >> 23;
    const std::uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - exponent;  // 14..24
    std::uint32_t half = mantissa >> shift;
    const std::uint32_t rest = mantissa & ((1u << shift) - 1u);
    const std::uint32_t halfway = 1u << (shift - 1u);
    if (rest > halfway || (rest == halfway && (half & 1u))) ++half;  // may carry into 0x400: fine
    return static_cast<std::uint16_t>(sign | half);
  }
  std::uint32_t half = (abs - 0x38000000u) >> 13;  // rebias 127 -> 15, keep 10 mantissa bits
  const std::uint32_t rest = abs & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;  // a carry bumps the exponent
  return static_cast<std::uint16_t>(sign | half);
}

// The float equal to IEEE half `bits` (exact: every half is a float).
inline float f16_to_float(std::uint16_t bits) {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
  const std::uint32_t exponent = (bits >> 10) & 0x1fu;
  const std::uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0) {
    // Subnormal or zero: mantissa * 2^-24 is exact in float.
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// The nearest bfloat16 to `value` (ties to even).
inline std::uint16_t float_to_bf16(float value) {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(value);
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    // Truncating could clear every payload bit and turn the NaN into Inf; force it quiet.
    return static_cast<std::uint16_t>((x >> 16) | 0x0040u);
  }
  const std::uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);  // ties to even; overflow -> Inf
  return static_cast<std::uint16_t>((x + rounding) >> 16);
}

// The float equal to bfloat16 `bits` (exact: a bfloat16 is a float's top 16 bits).
inline float bf16_to_float(std::uint16_t bits) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

}  // namespace occult
