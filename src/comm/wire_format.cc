#include "occult/comm/wire_format.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "occult/core/error.h"
#include "occult/core/half.h"

namespace occult {

std::string_view wire_format_name(WireFormat format) {
  switch (format) {
    case WireFormat::kF32: return "f32";
    case WireFormat::kBF16: return "bf16";
    case WireFormat::kF16: return "f16";
    case WireFormat::kFP8: return "fp8";
  }
  return "?";
}

WireFormat parse_wire_format(std::string_view text, std::string_view flag) {
  if (text == "f32") return WireFormat::kF32;
  if (text == "bf16") return WireFormat::kBF16;
  if (text == "f16") return WireFormat::kF16;
  if (text == "fp8") return WireFormat::kFP8;
  OCCULT_FAIL("{} '{}': expected f32, bf16, f16 or fp8", flag, text);
}

WireFormat exchange_wire(WireFormat configured, bool forward_dispatch) {
  if (configured == WireFormat::kFP8 && !forward_dispatch) return WireFormat::kBF16;
  return configured;
}

std::int64_t wire_bytes_per_value(WireFormat format) { return format == WireFormat::kF32 ? 4 : 2; }

std::int64_t wire_row_bytes(WireFormat format, std::int64_t width) {
  return format == WireFormat::kFP8 ? width + static_cast<std::int64_t>(sizeof(float))
                                    : width * wire_bytes_per_value(format);
}

double wire_unit_roundoff(WireFormat format) {
  switch (format) {
    case WireFormat::kF32: return 0x1p-24;
    case WireFormat::kBF16: return 0x1p-8;
    case WireFormat::kF16: return 0x1p-11;
    case WireFormat::kFP8: return 0x1p-4;
  }
  return 0;
}

std::uint8_t float_to_e4m3(float value) {
  const std::uint8_t sign = std::signbit(value) ? 0x80 : 0x00;
  const float a = std::fabs(value);
  if (std::isnan(a)) return sign | 0x7f;
  if (a >= 448.0f) return sign | 0x7e;  // saturate (E4M3FN has no infinity)
  if (a < 0x1p-6f) {
    // Subnormals are multiples of 2^-9; 8 of them is the smallest normal, code 0x08, so the
    // rounded count is the code either way. nearbyint rounds ties to even.
    return sign | static_cast<std::uint8_t>(std::nearbyint(a * 512.0f));
  }
  int e = 0;
  const float m = std::frexp(a, &e);  // a = m 2^e, m in [0.5, 1)
  int exponent = e - 1;               // a = (2m) 2^exponent, -6 <= exponent <= 8
  int q = static_cast<int>(std::nearbyint((2.0f * m - 1.0f) * 8.0f));  // exact before rounding
  if (q == 8) {
    q = 0;
    ++exponent;
  }
  if (exponent > 8 || (exponent == 8 && q > 6)) return sign | 0x7e;
  return sign | static_cast<std::uint8_t>(((exponent + 7) << 3) | q);
}

float e4m3_to_float(std::uint8_t code) {
  const int field = (code >> 3) & 0xf, mantissa = code & 0x7;
  float v = 0.0f;
  if (field == 0xf && mantissa == 0x7) {
    v = std::numeric_limits<float>::quiet_NaN();
  } else if (field == 0) {
    v = std::ldexp(static_cast<float>(mantissa), -9);
  } else {
    v = std::ldexp(1.0f + mantissa / 8.0f, field - 7);
  }
  return (code & 0x80) != 0 ? -v : v;
}

namespace {
// Half-width codes are built in a local array and copied out, so `out` needs no alignment and
// the conversion loop still vectorises.
template <std::uint16_t (*Narrow)(float)>
void encode_half(std::span<const float> values, std::byte* out) {
  constexpr std::size_t kBlock = 256;
  std::uint16_t codes[kBlock];
  for (std::size_t i = 0; i < values.size(); i += kBlock) {
    const std::size_t n = std::min(kBlock, values.size() - i);
    for (std::size_t j = 0; j < n; ++j) codes[j] = Narrow(values[i + j]);
    std::memcpy(out + 2 * i, codes, 2 * n);
  }
}

template <float (*Widen)(std::uint16_t), bool kAdd>
void decode_half(const std::byte* in, std::span<float> out) {
  constexpr std::size_t kBlock = 256;
  std::uint16_t codes[kBlock];
  for (std::size_t i = 0; i < out.size(); i += kBlock) {
    const std::size_t n = std::min(kBlock, out.size() - i);
    std::memcpy(codes, in + 2 * i, 2 * n);
    for (std::size_t j = 0; j < n; ++j) {
      if constexpr (kAdd) {
        out[i + j] += Widen(codes[j]);
      } else {
        out[i + j] = Widen(codes[j]);
      }
    }
  }
}
}  // namespace

void encode_wire(WireFormat format, std::span<const float> values, std::byte* out) {
  switch (format) {
    case WireFormat::kF32:
      if (!values.empty()) std::memcpy(out, values.data(), values.size_bytes());
      return;
    case WireFormat::kBF16: return encode_half<float_to_bf16>(values, out);
    case WireFormat::kF16: return encode_half<float_to_f16>(values, out);
    case WireFormat::kFP8: OCCULT_FAIL("encode_wire: fp8 rows carry a scale; use encode_wire_rows");
  }
}

void decode_wire(WireFormat format, const std::byte* in, std::span<float> out) {
  switch (format) {
    case WireFormat::kF32:
      if (!out.empty()) std::memcpy(out.data(), in, out.size_bytes());
      return;
    case WireFormat::kBF16: return decode_half<bf16_to_float, false>(in, out);
    case WireFormat::kF16: return decode_half<f16_to_float, false>(in, out);
    case WireFormat::kFP8: OCCULT_FAIL("decode_wire: fp8 rows carry a scale; use decode_wire_rows");
  }
}

void decode_wire_add(WireFormat format, const std::byte* in, std::span<float> out) {
  switch (format) {
    case WireFormat::kF32: {
      float block[256];
      for (std::size_t i = 0; i < out.size(); i += 256) {
        const std::size_t n = std::min<std::size_t>(256, out.size() - i);
        std::memcpy(block, in + 4 * i, 4 * n);
        for (std::size_t j = 0; j < n; ++j) out[i + j] += block[j];
      }
      return;
    }
    case WireFormat::kBF16: return decode_half<bf16_to_float, true>(in, out);
    case WireFormat::kF16: return decode_half<f16_to_float, true>(in, out);
    case WireFormat::kFP8: OCCULT_FAIL("decode_wire_add: fp8 is a dispatch format (combine sums BF16)");
  }
}

void encode_wire_rows(WireFormat format, std::span<const float> rows, std::int64_t width, std::byte* out) {
  if (format != WireFormat::kFP8) return encode_wire(format, rows, out);
  const std::int64_t n = width > 0 ? static_cast<std::int64_t>(rows.size()) / width : 0;
  std::uint8_t codes[256];
  for (std::int64_t r = 0; r < n; ++r, out += width + 4) {
    const float* x = rows.data() + r * width;
    float amax = 0.0f;
    for (std::int64_t i = 0; i < width; ++i) amax = std::max(amax, std::fabs(x[i]));
    // A zero, non-finite or vanishing row keeps scale 1 (its codes are then 0, NaN or saturated).
    float scale = amax / 448.0f;
    if (!(scale > 0.0f) || !std::isfinite(scale)) scale = 1.0f;
    std::memcpy(out, &scale, sizeof(float));
    for (std::int64_t i = 0; i < width; i += 256) {
      const std::int64_t m = std::min<std::int64_t>(256, width - i);
      for (std::int64_t j = 0; j < m; ++j) codes[j] = float_to_e4m3(x[i + j] / scale);
      std::memcpy(out + 4 + i, codes, static_cast<std::size_t>(m));
    }
  }
}

void decode_wire_rows(WireFormat format, const std::byte* in, std::int64_t width, std::span<float> out) {
  if (format != WireFormat::kFP8) return decode_wire(format, in, out);
  // Every code's value, computed once.
  static const auto table = [] {
    std::array<float, 256> t{};
    for (int c = 0; c < 256; ++c) t[static_cast<std::size_t>(c)] = e4m3_to_float(static_cast<std::uint8_t>(c));
    return t;
  }();
  const std::int64_t n = width > 0 ? static_cast<std::int64_t>(out.size()) / width : 0;
  for (std::int64_t r = 0; r < n; ++r, in += width + 4) {
    float scale = 0.0f;
    std::memcpy(&scale, in, sizeof(float));
    const auto* codes = reinterpret_cast<const std::uint8_t*>(in + 4);
    float* y = out.data() + r * width;
    for (std::int64_t i = 0; i < width; ++i) y[i] = table[codes[i]] * scale;
  }
}

}  // namespace occult
