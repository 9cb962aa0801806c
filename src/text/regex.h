// A compiled PCRE2 pattern (UTF + UCP, JIT when available) that lists its matches, which is
// what the Split and ByteLevel pre-tokenizers need from the Oniguruma patterns of tokenizer.json.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace occult::text_detail {

class Regex {
 public:
  // Compiles `pattern`; throws occult::Error with PCRE2's message and offset when it does not
  // compile. `origin` names the file in that message.
  Regex(const std::string& pattern, const std::string& origin);
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex();

  // Appends the [begin, end) byte offsets of the successive non-overlapping matches in
  // `subject` (valid UTF-8) to `out`; after an empty match the search resumes one character on.
  void find_all(std::string_view subject,
                std::vector<std::pair<std::size_t, std::size_t>>& out) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*, kept opaque so that pcre2.h stays out of headers
  bool jit_ = false;
  std::string pattern_;
};

}  // namespace occult::text_detail
