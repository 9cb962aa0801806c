// A progress line for long-running commands, redrawn in place on a terminal and printed as
// periodic status lines otherwise (logs, CI).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace occult {

class ProgressBar {
 public:
  // `total` units of work; `label` prefixes the line. Writes to `out` (stderr by default);
  // when `enabled` is false nothing is printed (e.g. --json, or ranks other than 0).
  ProgressBar(std::string label, std::int64_t total, bool enabled = true, std::FILE* out = stderr);
  // Sets the completed count and a free-text status (e.g. "loss 2.31 | 41k tok/s").
  void update(std::int64_t done, const std::string& status = "");
  // Draws the final state and ends the line.
  void finish(const std::string& status = "");

 private:
  void draw(bool final_line);

  std::string label_;
  std::int64_t total_;
  std::int64_t done_ = 0;
  std::string status_;
  bool enabled_;
  bool tty_;
  std::FILE* out_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
  bool finished_ = false;
};

}  // namespace occult
