// MpiCommunicator at 1-4 ranks: all-to-all-v with payloads that name their sender and
// receiver, exact byte accounting, non-blocking exchanges (against the blocking one, and under
// the watchdog), reductions, broadcast and collective error agreement.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <new>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "occult/comm/mpi_communicator.h"
#include "occult/core/error.h"

namespace occult {
namespace {

// Rank s sends (s + d + 1) rows to rank d (so counts differ per pair); rows are 3 wide.
std::int64_t rows_between(int s, int d) { return s + d + 1; }

TEST(MpiCommunicator, AllToAllRowsDeliversEveryRowFromItsSender) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int D = comm.size(), r = comm.rank();
  std::vector<std::int64_t> send_rows(D), recv_rows(D);
  std::vector<std::int32_t> send;
  for (int d = 0; d < D; ++d) {
    send_rows[d] = rows_between(r, d);
    for (std::int64_t i = 0; i < send_rows[d]; ++i) {
      send.insert(send.end(), {r, d, static_cast<std::int32_t>(i)});
    }
  }
  EXPECT_EQ(comm.all_to_all_counts(send_rows), [&] {
    std::vector<std::int64_t> v(D);
    for (int s = 0; s < D; ++s) v[s] = rows_between(s, r);
    return v;
  }());
  std::int64_t total = 0;
  for (int s = 0; s < D; ++s) total += (recv_rows[s] = rows_between(s, r));
  std::vector<std::int32_t> recv(total * 3, -1);
  comm.bytes().reset();
  all_to_all_rows<std::int32_t>(comm, "test", send, send_rows, recv, recv_rows, 3);
  std::int64_t row = 0;
  for (int s = 0; s < D; ++s) {
    for (std::int64_t i = 0; i < recv_rows[s]; ++i, ++row) {
      EXPECT_EQ(recv[row * 3 + 0], s);
      EXPECT_EQ(recv[row * 3 + 1], r);
      EXPECT_EQ(recv[row * 3 + 2], i);
    }
  }
  const ExchangeBytes b = comm.bytes().get("test");
  EXPECT_EQ(b.local_bytes, rows_between(r, r) * 12);
  std::int64_t remote = 0;
  for (int d = 0; d < D; ++d) remote += d == r ? 0 : rows_between(r, d) * 12;
  EXPECT_EQ(b.remote_bytes, remote);
}

// Rank s sends a pruned pattern to rank d: no bytes where (s + 2d) % 3 == 0 (zero counts are
// common under pruned routing and get no message), else 4 * (s + d + 1) bytes, the first
// (s + 1) of them metadata, each byte naming (sender, receiver, position).
std::int64_t pruned_bytes(int s, int d) { return (s + 2 * d) % 3 == 0 ? 0 : 4 * (s + d + 1); }
std::byte payload(int s, int d, std::int64_t i) { return static_cast<std::byte>((s * 37 + d * 11 + i) & 0xff); }

struct Layout {
  std::vector<std::int64_t> send_counts, send_offsets, metadata, recv_counts, recv_offsets;
  std::vector<std::byte> send;
  std::int64_t recv_total = 0;
};

Layout pruned_layout(int D, int r) {
  Layout l;
  std::int64_t send_total = 0;
  for (int d = 0; d < D; ++d) {
    l.send_counts.push_back(pruned_bytes(r, d));
    l.send_offsets.push_back(send_total);
    l.metadata.push_back(std::min<std::int64_t>(r + 1, pruned_bytes(r, d)));
    for (std::int64_t i = 0; i < pruned_bytes(r, d); ++i) l.send.push_back(payload(r, d, i));
    send_total += pruned_bytes(r, d);
    l.recv_counts.push_back(pruned_bytes(d, r));
    l.recv_offsets.push_back(l.recv_total);
    l.recv_total += pruned_bytes(d, r);
  }
  return l;
}

// The non-blocking exchange delivers what the blocking one does, reports each source once
// (only after its block is complete), counts the same bytes under the same names, and keeps
// two exchanges in flight apart, one of them with deferred sends made in reverse rank order.
TEST(MpiCommunicator, NonBlockingExchangeMatchesTheBlockingOne) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int D = comm.size(), r = comm.rank();
  const Layout l = pruned_layout(D, r);
  std::vector<std::byte> blocking(l.recv_total), first(l.recv_total), second(l.recv_total);
  comm.bytes().reset();
  comm.all_to_all_v_with_metadata("a", l.send, l.send_counts, l.send_offsets, l.metadata, blocking, l.recv_counts,
                                  l.recv_offsets);
  comm.all_to_all_v("b", l.send, l.send_counts, l.send_offsets, blocking, l.recv_counts, l.recv_offsets);
  const auto blocking_bytes = comm.bytes().all();
  for (int s = 0; s < D; ++s) {
    for (std::int64_t i = 0; i < l.recv_counts[s]; ++i) {
      ASSERT_EQ(blocking[l.recv_offsets[s] + i], payload(s, r, i)) << "source " << s << " byte " << i;
    }
  }

  comm.bytes().reset();
  const std::int64_t calls = comm.collective_calls();
  const std::string a = "a", b = "b";
  const int ha = comm.start_exchange(a, l.send, l.send_counts, l.send_offsets, l.metadata, first, l.recv_counts,
                                     l.recv_offsets, false);
  const int hb = comm.start_exchange(b, l.send, l.send_counts, l.send_offsets, {}, second, l.recv_counts,
                                     l.recv_offsets, true);
  EXPECT_NE(ha, hb);
  EXPECT_EQ(comm.collective_calls() - calls, 2);
  std::vector<int> landed_a, landed_b;
  auto check_landed = [&](const std::vector<int>& landed, const std::vector<std::byte>& recv) {
    for (int s : landed) {
      for (std::int64_t i = 0; i < l.recv_counts[s]; ++i) {
        ASSERT_EQ(recv[l.recv_offsets[s] + i], payload(s, r, i)) << "source " << s << " byte " << i;
      }
    }
  };
  // Deferred sends of b go out only once a's blocks have all landed here.
  while (landed_a.size() < static_cast<std::size_t>(D)) comm.exchange_wait_some(ha, landed_a);
  check_landed(landed_a, first);
  EXPECT_TRUE(comm.exchange_test(ha, landed_a));
  EXPECT_EQ(landed_a.size(), static_cast<std::size_t>(D)) << "a source was reported twice";
  for (int d = D - 1; d >= 0; --d) comm.exchange_send(hb, d);
  while (!comm.exchange_test(hb, landed_b)) {
    if (landed_b.size() < static_cast<std::size_t>(D)) comm.exchange_wait_some(hb, landed_b);
  }
  check_landed(landed_b, second);
  std::sort(landed_a.begin(), landed_a.end());
  std::sort(landed_b.begin(), landed_b.end());
  std::vector<int> all(D);
  for (int s = 0; s < D; ++s) all[s] = s;
  EXPECT_EQ(landed_a, all);
  EXPECT_EQ(landed_b, all);
  comm.exchange_finish(ha);
  comm.exchange_finish(hb);
  EXPECT_EQ(first, blocking);
  EXPECT_EQ(second, blocking);
  const auto& got = comm.bytes().all();
  ASSERT_EQ(got.size(), blocking_bytes.size());
  for (const auto& [name, bytes] : blocking_bytes) {
    EXPECT_EQ(got.at(name).local_bytes, bytes.local_bytes) << name;
    EXPECT_EQ(got.at(name).remote_bytes, bytes.remote_bytes) << name;
    EXPECT_EQ(got.at(name).calls, bytes.calls) << name;
  }
  // Finishing before every deferred send was made is refused (no hang).
  const int hc = comm.start_exchange(b, l.send, l.send_counts, l.send_offsets, {}, second, l.recv_counts,
                                     l.recv_offsets, true);
  EXPECT_THROW(comm.exchange_finish(hc), Error);
  for (int d = 0; d < D; ++d) comm.exchange_send(hc, d);
  comm.exchange_finish(hc);
}

// A rank waiting for a late peer's block is watched like one in a blocking collective: the
// watchdog names the rank, MPI_Waitsome, the exchange and the activity (here it records the
// message instead of ending the job). Rank 1 sends its block to rank 0 a second late.
TEST(MpiCommunicator, NonBlockingWaitsAreWatched) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int D = comm.size(), r = comm.rank();
  if (D < 2) GTEST_SKIP() << "needs a peer to wait for";
  std::mutex mutex;
  std::string message;
  comm.set_collective_timeout(0.2, [&](const std::string& text) {
    std::lock_guard lock(mutex);
    message = text;
  });
  comm.set_activity("the overlap test");
  std::vector<std::int64_t> send_counts(D, 0), offsets(D, 0), recv_counts(D, 0);
  if (r == 1) send_counts[0] = 4;
  if (r == 0) recv_counts[1] = 4;
  std::vector<std::byte> send(4, std::byte{7}), recv(4);
  const std::string exchange = "late";
  const int h = comm.start_exchange(exchange, send, send_counts, offsets, {}, recv, recv_counts, offsets, true);
  if (r == 1) std::this_thread::sleep_for(std::chrono::seconds(1));
  for (int d = 0; d < D; ++d) comm.exchange_send(h, d);
  std::vector<int> landed;
  while (!comm.exchange_test(h, landed)) comm.exchange_wait_some(h, landed);
  comm.exchange_finish(h);
  comm.set_collective_timeout(0);  // joins the watch thread
  if (r == 0) {
    EXPECT_EQ(recv, send);
    EXPECT_NE(message.find("rank 0 waited"), std::string::npos) << message;
    EXPECT_NE(message.find("MPI_Waitsome (exchange 'late')"), std::string::npos) << message;
    EXPECT_NE(message.find("during the overlap test"), std::string::npos) << message;
  } else {
    EXPECT_EQ(message, "") << "only rank 0 waited";
  }
  comm.barrier();
}

TEST(MpiCommunicator, ReductionsAndBroadcast) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int D = comm.size(), r = comm.rank();
  std::vector<float> f = {1.0f, static_cast<float>(r)};
  comm.all_reduce_sum(f);
  EXPECT_EQ(f[0], D);
  EXPECT_EQ(f[1], D * (D - 1) / 2);
  std::vector<std::int64_t> m = {r, -r};
  comm.all_reduce_max(m);
  EXPECT_EQ(m[0], D - 1);
  EXPECT_EQ(m[1], 0);
  std::vector<double> dsum = {0.5};
  comm.all_reduce_sum(dsum);
  EXPECT_DOUBLE_EQ(dsum[0], 0.5 * D);
  std::string text = r == D - 1 ? "hello" : "xxxxx";
  comm.broadcast(std::as_writable_bytes(std::span<char>(text.data(), text.size())), D - 1);
  EXPECT_EQ(text, "hello");
  comm.barrier();
  EXPECT_THROW(comm.broadcast({}, D), Error);
}

TEST(MpiCommunicator, AgreeOnErrorsFailsEveryRankWithTheLowestFailingRanksMessage) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int D = comm.size(), r = comm.rank();
  // Ranks >= D/2 fail, each with its own message; all must see the lowest one's.
  const int lowest = D / 2;
  try {
    agree_on_errors(comm, [&] { OCCULT_CHECK(r < lowest, "rank-specific problem {}", r); });
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string expected = D > 1 ? fmt::format("rank {}: rank-specific problem {}", lowest, lowest)
                                       : "rank-specific problem 0";
    EXPECT_EQ(e.message(), expected);
  }
  EXPECT_NO_THROW(agree_on_errors(comm, [] {}));
}

// Exceptions of other types than occult's (an allocation failure, std::stoi on bad text, a JSON
// type error) on the last rank alone still fail every rank, as an AgreedError that says what
// kind of failure it was.
TEST(MpiCommunicator, AgreeOnErrorsConvertsEveryExceptionType) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int D = comm.size(), r = comm.rank();
  const std::string prefix = D > 1 ? fmt::format("rank {}: ", D - 1) : "";
  const auto expect_agreed = [&](const auto& raise, const std::string& start) {
    try {
      agree_on_errors(comm, [&] {
        if (r == D - 1) raise();
      });
      FAIL() << "no error for " << start;
    } catch (const AgreedError& e) {
      EXPECT_EQ(e.message().rfind(prefix + start, 0), 0u) << e.message();
    }
  };
  expect_agreed([] { throw std::bad_alloc(); }, "out of memory");
  expect_agreed([] { (void)std::stoi("x"); }, "invalid value: stoi");
  expect_agreed([] { (void)nlohmann::json::parse("\"text\"").get<int>(); }, "malformed JSON value: [json.exception");
  expect_agreed([] { throw 7; }, "unexpected internal error");
}

}  // namespace
}  // namespace occult
