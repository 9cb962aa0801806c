#include "occult/core/error.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <ios>
#include <new>
#include <stdexcept>
#include <string_view>

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

std::string describe_current_exception() {
  try {
    throw;
  } catch (const Error& e) {
    return e.message();
  } catch (const std::bad_alloc&) {
    return "out of memory: a buffer could not be allocated (std::bad_alloc); use more ranks, a "
           "smaller --batch or --seq-len, or a smaller model";
  } catch (const std::filesystem::filesystem_error& e) {
    return fmt::format("file system error: {}", e.what());
  } catch (const std::ios_base::failure& e) {
    return fmt::format("I/O error: {}", e.what());
  } catch (const std::invalid_argument& e) {
    return fmt::format("invalid value: {} could not parse its input (std::invalid_argument)", e.what());
  } catch (const std::out_of_range& e) {
    return fmt::format("value out of range: {} (std::out_of_range)", e.what());
  } catch (const std::exception& e) {
    // nlohmann::json's exceptions start with "[json.exception.<kind>]".
    if (std::string_view(e.what()).starts_with("[json.exception")) {
      return fmt::format("malformed JSON value: {}", e.what());
    }
    return fmt::format("unexpected internal error: {}", e.what());
  } catch (...) {
    return "unexpected internal error: an exception of unknown type";
  }
}

void check_input_file(const std::string& what, const std::string& path) {
  OCCULT_CHECK(std::filesystem::exists(path), "{} {} does not exist", what, path);
  OCCULT_CHECK(!std::filesystem::is_directory(path), "{} {} is a directory, not a file", what, path);
}

void check_input_directory(const std::string& what, const std::string& path) {
  OCCULT_CHECK(std::filesystem::exists(path), "{} {} does not exist", what, path);
  OCCULT_CHECK(std::filesystem::is_directory(path), "{} {} is a file, not a directory", what, path);
}

void check_output_file(const std::string& what, const std::string& path) {
  namespace fs = std::filesystem;
  OCCULT_CHECK(!path.empty(), "{} needs a file name", what);
  OCCULT_CHECK(!fs::is_directory(path), "{} {} is a directory, not a file", what, path);
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    fs::create_directories(parent, ec);
    OCCULT_CHECK(!ec && fs::is_directory(parent), "{} {}: cannot create the folder {}: {}", what, path,
                 parent.string(), ec ? ec.message() : "a file of that name exists");
  }
  const bool existed = fs::exists(path);
  std::FILE* f = std::fopen(path.c_str(), "ab");
  OCCULT_CHECK(f != nullptr, "{} {} cannot be written: {}", what, path, std::strerror(errno));
  std::fclose(f);
  if (!existed) fs::remove(path);
}

}  // namespace occult
