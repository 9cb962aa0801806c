// A watchdog for blocking collectives. MPI gives a rank whose peer stopped answering (killed
// without the job noticing, stopped by a signal, stuck in a loop or a full disk) no way out of
// a collective: it waits forever. The watchdog is a thread that notices a collective that has
// lasted longer than a timeout and reports it, naming the waiting rank, the operation and what
// the rank was doing (the communicator's activity, e.g. "MoE layer 3 forward").
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace occult {

// The action taken when a collective times out: receives the full message. The default
// (kill_job_on_timeout) prints it and ends the process, which makes mpirun end the job.
using CollectiveTimeoutAction = std::function<void(const std::string& message)>;

// Prints "occult: error: MESSAGE" to stderr and ends the process at once with status 1 (no
// MPI_Finalize: the peers are not answering; mpirun ends the other ranks when this one exits).
[[noreturn]] void kill_job_on_timeout(const std::string& message);

class CollectiveWatchdog {
 public:
  // Starts the watch thread. `timeout_seconds` > 0 (throws occult::Error otherwise); `rank`
  // names this process in the message; `on_timeout` runs on the watch thread, at most once.
  CollectiveWatchdog(double timeout_seconds, int rank,
                     CollectiveTimeoutAction on_timeout = kill_job_on_timeout);
  // Stops and joins the watch thread.
  ~CollectiveWatchdog();
  CollectiveWatchdog(const CollectiveWatchdog&) = delete;
  CollectiveWatchdog& operator=(const CollectiveWatchdog&) = delete;

  // Marks the start of a blocking collective `operation` (an MPI call name) on `exchange`
  // ("" when it has none) while the rank is doing `activity`. The pointers must stay valid
  // until leave(). Does not allocate.
  void enter(const char* operation, const char* exchange, const char* activity);
  // Marks its end.
  void leave();
  double timeout_seconds() const { return timeout_seconds_; }

 private:
  void watch();

  const double timeout_seconds_;
  const int rank_;
  const CollectiveTimeoutAction on_timeout_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  bool fired_ = false;
  bool in_collective_ = false;
  std::chrono::steady_clock::time_point started_;
  const char* operation_ = "";
  const char* exchange_ = "";
  const char* activity_ = "";
  std::thread thread_;  // last: started once every other member is initialised
};

// RAII: enter() on construction, leave() on destruction; nothing when `watchdog` is null.
class WatchedCollective {
 public:
  WatchedCollective(CollectiveWatchdog* watchdog, const char* operation, const char* exchange,
                    const char* activity)
      : watchdog_(watchdog) {
    if (watchdog_ != nullptr) watchdog_->enter(operation, exchange, activity);
  }
  ~WatchedCollective() {
    if (watchdog_ != nullptr) watchdog_->leave();
  }
  WatchedCollective(const WatchedCollective&) = delete;
  WatchedCollective& operator=(const WatchedCollective&) = delete;

 private:
  CollectiveWatchdog* watchdog_;
};

}  // namespace occult
