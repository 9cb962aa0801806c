// UTF-8 validation, lossy decoding and code point helpers shared by the tokenizer pipeline.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace occult::text_detail {

// The length of the valid UTF-8 sequence starting at s[i], or 0 when it is invalid (truncated,
// overlong, a surrogate or above U+10FFFF); the same rules as Rust's str and WHATWG decoding.
std::size_t valid_sequence_length(std::string_view s, std::size_t i);

// The offset of the first invalid UTF-8 sequence in `s`, or s.size() when it is all valid.
std::size_t first_invalid_utf8(std::string_view s);

// `bytes` as valid UTF-8: each maximal invalid subpart becomes U+FFFD (Rust's
// String::from_utf8_lossy and the WHATWG decoder agree on this rule).
std::string utf8_lossy(std::string_view bytes);

// Decodes the code point at s[i] of valid UTF-8 and advances i past it.
inline char32_t next_code_point(std::string_view s, std::size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  if (b0 < 0xE0) {
    const char32_t cp = ((b0 & 0x1Fu) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3Fu);
    i += 2;
    return cp;
  }
  if (b0 < 0xF0) {
    const char32_t cp = ((b0 & 0x0Fu) << 12) |
                        ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 6) |
                        (static_cast<unsigned char>(s[i + 2]) & 0x3Fu);
    i += 3;
    return cp;
  }
  const char32_t cp = ((b0 & 0x07u) << 18) |
                      ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 12) |
                      ((static_cast<unsigned char>(s[i + 2]) & 0x3Fu) << 6) |
                      (static_cast<unsigned char>(s[i + 3]) & 0x3Fu);
  i += 4;
  return cp;
}

// The length in bytes of the UTF-8 sequence whose lead byte is `lead` (valid input only).
inline std::size_t sequence_length(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

// Appends the UTF-8 encoding of `cp` to `out`.
void append_utf8(char32_t cp, std::string& out);

// Rust's char::is_whitespace (the Unicode White_Space property), which added-token
// lstrip/rstrip use.
bool is_white_space(char32_t cp);

}  // namespace occult::text_detail
