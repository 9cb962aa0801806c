#include "occult/comm/wire_format.h"

#include <algorithm>
#include <cstring>

#include "occult/core/error.h"
#include "occult/core/half.h"

namespace occult {

std::string_view wire_format_name(WireFormat format) {
  switch (format) {
    case WireFormat::kF32: return "f32";
    case WireFormat::kBF16: return "bf16";
    case WireFormat::kF16: return "f16";
  }
  return "?";
}

WireFormat parse_wire_format(std::string_view text, std::string_view flag) {
  if (text == "f32") return WireFormat::kF32;
  if (text == "bf16") return WireFormat::kBF16;
  if (text == "f16") return WireFormat::kF16;
  OCCULT_FAIL("{} '{}': expected f32, bf16 or f16", flag, text);
}

std::int64_t wire_bytes_per_value(WireFormat format) { return format == WireFormat::kF32 ? 4 : 2; }

double wire_unit_roundoff(WireFormat format) {
  switch (format) {
    case WireFormat::kF32: return 0x1p-24;
    case WireFormat::kBF16: return 0x1p-8;
    case WireFormat::kF16: return 0x1p-11;
  }
  return 0;
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
  }
}

void decode_wire(WireFormat format, const std::byte* in, std::span<float> out) {
  switch (format) {
    case WireFormat::kF32:
      if (!out.empty()) std::memcpy(out.data(), in, out.size_bytes());
      return;
    case WireFormat::kBF16: return decode_half<bf16_to_float, false>(in, out);
    case WireFormat::kF16: return decode_half<f16_to_float, false>(in, out);
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
  }
}

}  // namespace occult
