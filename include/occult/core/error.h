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

// An Error that every rank of an MPI job raised together (agree_on_errors hands each rank the
// same message), so no rank waits in a collective and the job may end through MPI_Finalize.
// Any other exception may have been raised on one rank alone and must end the job by abort.
class AgreedError : public Error {
 public:
  using Error::Error;
};

// Call only inside a catch block: the handled exception as a sentence a user can act on. An
// occult::Error gives its message; any other exception (std::bad_alloc, a JSON, std::stoi or
// filesystem exception, ...) says what kind of failure it was together with its what().
std::string describe_current_exception();

// Checks that `path`, given as `what` (a flag such as "--data"), names an existing regular file;
// throws "WHAT PATH does not exist" or "WHAT PATH is a directory, not a file".
void check_input_file(const std::string& what, const std::string& path);

// Checks that `path`, given as `what`, names an existing directory; throws "WHAT PATH does not
// exist" or "WHAT PATH is a file, not a directory".
void check_input_directory(const std::string& what, const std::string& path);

// Prepares an output file before any work: creates `path`'s parent folders and checks that the
// file can be opened for writing, leaving an existing file as it was; throws naming `what` and
// `path` (a directory where the file should be, a folder that cannot be created or written).
void check_output_file(const std::string& what, const std::string& path);

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
