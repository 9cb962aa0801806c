// The byte-level "tokenizer" of occult's own models: every byte is a token (vocabulary 256, id =
// the byte's unsigned value). Real models bring a tokenizer.json (tokenizer.h).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace occult {

// The ids of `text`'s bytes.
std::vector<std::int32_t> byte_tokenize(std::string_view text);
// The inverse of byte_tokenize; throws unless every id is in [0, 256).
std::string byte_detokenize(std::span<const std::int32_t> ids);

}  // namespace occult
