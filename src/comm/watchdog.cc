#include "occult/comm/watchdog.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "occult/core/error.h"

namespace occult {

void kill_job_on_timeout(const std::string& message) {
  fmt::print(stderr, "occult: error: {}\n", message);
  std::fflush(stderr);
  std::_Exit(1);
}

CollectiveWatchdog::CollectiveWatchdog(double timeout_seconds, int rank,
                                       CollectiveTimeoutAction on_timeout)
    : timeout_seconds_(timeout_seconds), rank_(rank), on_timeout_(std::move(on_timeout)) {
  OCCULT_CHECK(timeout_seconds_ > 0, "collective timeout must be positive, got {} s",
               timeout_seconds_);
  thread_ = std::thread([this] { watch(); });
}

CollectiveWatchdog::~CollectiveWatchdog() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void CollectiveWatchdog::enter(const char* operation, const char* exchange, const char* activity) {
  std::lock_guard lock(mutex_);
  in_collective_ = true;
  started_ = std::chrono::steady_clock::now();
  operation_ = operation;
  exchange_ = exchange;
  activity_ = activity;
}

void CollectiveWatchdog::leave() {
  std::lock_guard lock(mutex_);
  in_collective_ = false;
}

void CollectiveWatchdog::watch() {
  // Polling a few times per timeout keeps the overshoot under a quarter of it (and under a
  // second) without a wake-up per collective.
  const auto poll = std::chrono::duration<double>(std::min(1.0, timeout_seconds_ / 4));
  std::unique_lock lock(mutex_);
  while (!stop_ && !fired_) {
    wake_.wait_for(lock, poll);
    if (stop_ || !in_collective_) continue;
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
    if (waited < timeout_seconds_) continue;
    fired_ = true;
    const std::string where = exchange_[0] != '\0'
                                  ? fmt::format("{} (exchange '{}')", operation_, exchange_)
                                  : std::string(operation_);
    const std::string doing = activity_[0] != '\0' ? fmt::format(" during {}", activity_) : "";
    const std::string message = fmt::format(
        "rank {} waited {:.0f} s in {}{} for its peers: another rank stopped answering (killed, "
        "stopped or "
        "stuck); ending the job (--collective-timeout {:g} s; 0 disables the watchdog)",
        rank_, waited, where, doing, timeout_seconds_);
    lock.unlock();
    // When every waiting rank times out alike, let rank 0's message be the one printed: ranks
    // notice the timeout up to a poll apart (more when they entered the collective apart), and
    // rank 0's exit ends the job well within two polls and a second.
    if (rank_ != 0) std::this_thread::sleep_for(2 * poll + std::chrono::seconds(1));
    on_timeout_(message);
    lock.lock();
  }
}

}  // namespace occult
