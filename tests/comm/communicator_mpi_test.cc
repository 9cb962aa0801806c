// MpiCommunicator at 1-4 ranks: all-to-all-v with payloads that name their sender and
// receiver, exact byte accounting, reductions, broadcast and collective error agreement.
#include <gtest/gtest.h>
#include <mpi.h>

#include <new>
#include <nlohmann/json.hpp>
#include <string>

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
