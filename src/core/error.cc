#include "occult/core/error.h"

#include <cstring>

namespace occult {

namespace {
std::string basename_of(const char* file) {
  const char* slash = std::strrchr(file, '/');
  return slash ? slash + 1 : file;
}
}  // namespace

Error::Error(const char* file, int line, const std::string& message)
    : std::runtime_error(fmt::format("{}:{}: {}", basename_of(file), line, message)),
      message_(message) {}

}  // namespace occult
