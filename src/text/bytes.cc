#include "occult/text/bytes.h"

#include "occult/core/error.h"

namespace occult {

std::vector<std::int32_t> byte_tokenize(std::string_view text) {
  std::vector<std::int32_t> ids(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string byte_detokenize(std::span<const std::int32_t> ids) {
  std::string text(ids.size(), '\0');
  for (std::size_t i = 0; i < ids.size(); ++i) {
    OCCULT_CHECK(ids[i] >= 0 && ids[i] < 256, "token id {} is not a byte", ids[i]);
    text[i] = static_cast<char>(ids[i]);
  }
  return text;
}

}  // namespace occult
