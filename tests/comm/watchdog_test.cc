// The collective watchdog: a collective that outlasts the timeout is reported once, naming the
// rank, the operation, the exchange and the activity; one that ends in time is not.
#include "occult/comm/watchdog.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>

#include "occult/comm/communicator.h"
#include "occult/core/error.h"

namespace occult {
namespace {

using namespace std::chrono_literals;

struct Reports {
  std::mutex mutex;
  std::vector<std::string> messages;
  CollectiveTimeoutAction action() {
    return [this](const std::string& m) {
      std::lock_guard lock(mutex);
      messages.push_back(m);
    };
  }
  std::size_t count() {
    std::lock_guard lock(mutex);
    return messages.size();
  }
};

// Waits up to `limit` for `reports` to hold at least one message.
bool wait_for_report(Reports& reports, std::chrono::seconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (reports.count() > 0) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

TEST(CollectiveWatchdog, ReportsAStuckCollectiveOnceNamingRankOperationExchangeAndActivity) {
  Reports reports;
  CollectiveWatchdog watchdog(0.2, 0, reports.action());
  watchdog.enter("MPI_Alltoallv", "dispatch", "MoE layer 3 forward");
  ASSERT_TRUE(wait_for_report(reports, 10s));
  std::this_thread::sleep_for(300ms);  // several more polls: still one report
  watchdog.leave();
  ASSERT_EQ(reports.count(), 1u);
  const std::string& m = reports.messages[0];
  EXPECT_NE(m.find("rank 0 waited"), std::string::npos) << m;
  EXPECT_NE(m.find("MPI_Alltoallv (exchange 'dispatch')"), std::string::npos) << m;
  EXPECT_NE(m.find("during MoE layer 3 forward"), std::string::npos) << m;
  EXPECT_NE(m.find("--collective-timeout 0.2 s"), std::string::npos) << m;
}

TEST(CollectiveWatchdog, LeavesCollectivesThatEndInTimeAlone) {
  Reports reports;
  {
    CollectiveWatchdog watchdog(5.0, 2, reports.action());
    for (int i = 0; i < 100; ++i) {
      WatchedCollective watched(&watchdog, "MPI_Allreduce", "", "");
    }
    std::this_thread::sleep_for(300ms);  // idle between collectives is not waiting
  }
  EXPECT_EQ(reports.count(), 0u);
}

TEST(CollectiveWatchdog, IdleTimeBetweenCollectivesDoesNotCount) {
  Reports reports;
  CollectiveWatchdog watchdog(0.3, 1, reports.action());
  watchdog.enter("MPI_Barrier", "", "");
  watchdog.leave();
  std::this_thread::sleep_for(700ms);  // more than twice the timeout, outside any collective
  EXPECT_EQ(reports.count(), 0u);
  watchdog.enter("MPI_Barrier", "", "");  // the clock starts again here
  std::this_thread::sleep_for(50ms);
  watchdog.leave();
  EXPECT_EQ(reports.count(), 0u);
}

TEST(CollectiveWatchdog, RefusesANonPositiveTimeout) {
  EXPECT_THROW(CollectiveWatchdog(0.0, 0, [](const std::string&) {}), Error);
  EXPECT_THROW(CollectiveWatchdog(-1.0, 0, [](const std::string&) {}), Error);
}

TEST(CommunicatorActivity, KeepsTheFirst95CharactersWithoutAllocating) {
  SelfCommunicator comm;
  EXPECT_STREQ(comm.activity(), "");
  comm.set_activity("MoE layer 7 backward");
  EXPECT_STREQ(comm.activity(), "MoE layer 7 backward");
  const std::string long_text(200, 'x');
  comm.set_activity(long_text);
  EXPECT_EQ(std::string(comm.activity()), std::string(95, 'x'));
}

}  // namespace
}  // namespace occult
