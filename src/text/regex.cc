#define PCRE2_CODE_UNIT_WIDTH 8
#include "text/regex.h"

#include <pcre2.h>

#include "occult/core/error.h"
#include "text/utf8.h"

namespace occult::text_detail {
namespace {

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof buffer);
  return reinterpret_cast<const char*>(buffer);
}

// One match-data block per thread: group 0 is all we read, and creating one per match would
// cost an allocation for every pre-token.
struct ThreadMatchData {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  ~ThreadMatchData() { pcre2_match_data_free(data); }
};

pcre2_match_data* thread_match_data() {
  thread_local ThreadMatchData md;
  return md.data;
}

}  // namespace

Regex::Regex(const std::string& pattern, const std::string& origin) : pattern_(pattern) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
  OCCULT_CHECK(code != nullptr, "{}: the regex '{}' does not compile at offset {}: {}", origin,
               pattern, offset, pcre2_message(error));
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() {
  pcre2_code_free(static_cast<pcre2_code*>(code_));
}

void Regex::find_all(std::string_view subject,
                     std::vector<std::pair<std::size_t, std::size_t>>& out) const {
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* md = thread_match_data();
  const auto* data = reinterpret_cast<PCRE2_SPTR>(subject.data());
  std::size_t start = 0;
  while (start <= subject.size()) {
    int rc = jit_ ? pcre2_jit_match(code, data, subject.size(), start, 0, md, nullptr)
                  : PCRE2_ERROR_JIT_STACKLIMIT;
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      // The interpreter keeps its backtracking frames on the heap, so very long runs that
      // exhaust the JIT stack still match.
      rc = pcre2_match(code, data, subject.size(), start, PCRE2_NO_JIT | PCRE2_NO_UTF_CHECK, md,
                       nullptr);
    }
    if (rc == PCRE2_ERROR_NOMATCH) return;
    OCCULT_CHECK(rc >= 0, "matching the regex '{}' failed: {}", pattern_, pcre2_message(rc));
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(md);
    const std::size_t begin = ovector[0], end = ovector[1];
    out.emplace_back(begin, end);
    if (end > begin) {
      start = end;
    } else if (end < subject.size()) {
      start = end + sequence_length(static_cast<unsigned char>(subject[end]));
    } else {
      return;
    }
  }
}

}  // namespace occult::text_detail
