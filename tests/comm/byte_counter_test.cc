// Byte accounting and the one-rank communicator, without MPI.
#include <gtest/gtest.h>

#include "occult/comm/communicator.h"
#include "occult/core/error.h"

namespace occult {
namespace {

TEST(ByteCounter, SeparatesSelfFromPeersPerExchange) {
  ByteCounter c;
  c.add("dispatch", 10, 30);
  c.add("dispatch", 1, 2);
  c.add("combine", 0, 5);
  EXPECT_EQ(c.get("dispatch").local_bytes, 11);
  EXPECT_EQ(c.get("dispatch").remote_bytes, 32);
  EXPECT_EQ(c.get("dispatch").calls, 2);
  EXPECT_EQ(c.get("dispatch").total_bytes(), 43);
  EXPECT_EQ(c.get("combine").total_bytes(), 5);
  EXPECT_EQ(c.get("never").calls, 0);
  c.reset();
  EXPECT_TRUE(c.all().empty());
}

TEST(SelfCommunicator, CopiesRowsAndCountsThemAsLocal) {
  SelfCommunicator comm;
  std::vector<float> send = {1, 2, 3, 4, 5, 6}, recv(6);
  std::vector<std::int64_t> rows = {3};
  all_to_all_rows<float>(comm, kExchangeDispatch, send, rows, recv, rows, 2);
  EXPECT_EQ(recv, send);
  EXPECT_EQ(comm.bytes().get(kExchangeDispatch).local_bytes, 24);
  EXPECT_EQ(comm.bytes().get(kExchangeDispatch).remote_bytes, 0);
  auto summed = sum_over_ranks(comm);
  EXPECT_EQ(summed[kExchangeDispatch].local_bytes, 24);
  EXPECT_EQ(summed[kExchangeCombine].calls, 0);
}

TEST(SelfCommunicator, RejectsBuffersThatDisagreeWithCounts) {
  SelfCommunicator comm;
  std::vector<float> send = {1, 2, 3}, recv(4);
  std::vector<std::int64_t> rows = {3};
  EXPECT_THROW(all_to_all_rows<float>(comm, kExchangeDispatch, send, rows, recv, rows, 1), Error);
  std::vector<std::int64_t> two_ranks = {1, 2};
  EXPECT_THROW(all_to_all_rows<float>(comm, kExchangeDispatch, send, two_ranks, recv, two_ranks, 1), Error);
}

TEST(AgreeOnErrors, RethrowsTheMessageWithoutRankPrefixOnOneRank) {
  SelfCommunicator comm;
  try {
    agree_on_errors(comm, [] { OCCULT_FAIL("bad shape {}", 3); });
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.message(), "bad shape 3");
  }
  EXPECT_NO_THROW(agree_on_errors(comm, [] {}));
}

}  // namespace
}  // namespace occult
