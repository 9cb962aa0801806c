// Runs gnuplot on a generated script (render.h).
#include "occult/plot/render.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "occult/core/error.h"

namespace occult::plot {

namespace {

// The path of the first executable `name` on PATH, or "" when there is none.
std::string find_on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    // An empty PATH entry means the current folder.
    const std::string candidate =
        (dir.empty() ? std::filesystem::path(".") : std::filesystem::path(dir)) / name;
    if (::access(candidate.c_str(), X_OK) == 0 && std::filesystem::is_regular_file(candidate))
      return candidate;
  }
  return "";
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Removes the scratch files however rendering ends.
struct Scratch {
  std::string script, errors;
  ~Scratch() {
    std::error_code ignored;
    std::filesystem::remove(script, ignored);
    std::filesystem::remove(errors, ignored);
  }
};

}  // namespace

void render_png(const Chart& chart, const std::string& out_path) {
  const std::string gnuplot = find_on_path("gnuplot");
  OCCULT_CHECK(
      !gnuplot.empty(),
      "gnuplot is not installed (no gnuplot on PATH); install the Debian package gnuplot-nox "
      "(scripts/bootstrap.sh does)");
  check_output_file("--out", out_path);
  const std::string script = gnuplot_script(chart, out_path);

  std::string pattern = (std::filesystem::temp_directory_path() / "occult-plot-XXXXXX").string();
  const int fd = ::mkstemp(pattern.data());
  OCCULT_CHECK(fd >= 0, "cannot create a temporary file for the gnuplot script in {}: {}",
               std::filesystem::temp_directory_path().string(), std::strerror(errno));
  Scratch scratch{pattern, pattern + ".err"};
  const bool written =
      ::write(fd, script.data(), script.size()) == static_cast<ssize_t>(script.size());
  ::close(fd);
  OCCULT_CHECK(written, "cannot write the gnuplot script {}", scratch.script);

  const pid_t pid = ::fork();
  OCCULT_CHECK(pid >= 0, "cannot start gnuplot: {}", std::strerror(errno));
  if (pid == 0) {
    // The child: stderr into the scratch file, stdout discarded, then gnuplot.
    const int err = ::open(scratch.errors.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const int null = ::open("/dev/null", O_WRONLY);
    if (err >= 0) ::dup2(err, 2);
    if (null >= 0) ::dup2(null, 1);
    ::execl(gnuplot.c_str(), "gnuplot", scratch.script.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  if (!ok) {
    std::error_code ignored;
    std::filesystem::remove(out_path, ignored);
    OCCULT_FAIL("{} failed drawing {} (exit {}): {}", gnuplot, out_path,
                WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_all(scratch.errors));
  }
  // A PNG starts with these 8 bytes; anything else means gnuplot drew nothing usable.
  constexpr std::array<unsigned char, 8> kPngSignature = {0x89, 'P',  'N',  'G',
                                                          '\r', '\n', 0x1a, '\n'};
  const std::string png = read_all(out_path);
  OCCULT_CHECK(
      png.size() > kPngSignature.size() &&
          std::equal(kPngSignature.begin(), kPngSignature.end(), png.begin(),
                     [](unsigned char a, char b) { return a == static_cast<unsigned char>(b); }),
      "gnuplot left no PNG at {} ({} bytes): {}", out_path, png.size(), read_all(scratch.errors));
}

}  // namespace occult::plot
