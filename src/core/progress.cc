#include "occult/core/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>

namespace occult {

namespace {
// Non-terminal outputs get a status line at most this often, so logs stay readable.
constexpr auto kLogInterval = std::chrono::seconds(5);
// Terminal redraws are throttled so drawing never costs measurable time.
constexpr auto kTtyInterval = std::chrono::milliseconds(100);
constexpr int kBarWidth = 24;
}  // namespace

ProgressBar::ProgressBar(std::string label, std::int64_t total, bool enabled, std::FILE* out)
    : label_(std::move(label)),
      total_(std::max<std::int64_t>(total, 1)),
      enabled_(enabled),
      tty_(enabled && isatty(fileno(out))),
      out_(out),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_ - std::chrono::hours(1)) {}

void ProgressBar::update(std::int64_t done, const std::string& status) {
  done_ = std::min(done, total_);
  status_ = status;
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_draw_ < (tty_ ? std::chrono::duration_cast<std::chrono::steady_clock::duration>(kTtyInterval)
                               : std::chrono::duration_cast<std::chrono::steady_clock::duration>(kLogInterval))) {
    return;
  }
  last_draw_ = now;
  draw(false);
}

void ProgressBar::finish(const std::string& status) {
  if (finished_) return;
  finished_ = true;
  done_ = total_;
  if (!status.empty()) status_ = status;
  if (enabled_) draw(true);
}

void ProgressBar::draw(bool final_line) {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double fraction = static_cast<double>(done_) / static_cast<double>(total_);
  const int filled = static_cast<int>(fraction * kBarWidth);
  const double eta = done_ > 0 ? elapsed * (1.0 - fraction) / fraction : 0.0;
  std::string line = fmt::format("{} [{}{}] {}/{} {:.0f}s", label_, std::string(filled, '#'),
                                 std::string(kBarWidth - filled, '.'), done_, total_, elapsed);
  if (!final_line && done_ > 0) line += fmt::format(" eta {:.0f}s", eta);
  if (!status_.empty()) line += " | " + status_;
  if (tty_) {
    fmt::print(out_, "\r\033[2K{}{}", line, final_line ? "\n" : "");
  } else {
    fmt::print(out_, "{}\n", line);
  }
  std::fflush(out_);
}

}  // namespace occult
