// occult::Error and the checking macros every module uses.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace occult {

// The one exception type of the library: a sentence a user can act on, prefixed by the
// source location that raised it. Library code never calls exit().
class Error : public std::runtime_error {
 public:
  Error(const char* file, int line, const std::string& message);

  // The message without the file:line prefix (what a command-line user should read).
  const std::string& message() const { return message_; }

 private:
  std::string message_;
};

}  // namespace occult

// OCCULT_CHECK(cond, "fmt {}", args...): throws occult::Error with the formatted message when
// cond is false. Use it for every input check (shapes, ids, file contents, flags).
#define OCCULT_CHECK(cond, ...)                                              \
  do {                                                                       \
    if (!(cond)) [[unlikely]] {                                              \
      throw ::occult::Error(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__)); \
    }                                                                        \
  } while (0)

// OCCULT_FAIL("fmt {}", args...): throws occult::Error unconditionally.
#define OCCULT_FAIL(...) throw ::occult::Error(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__))
