#include "occult/comm/communicator.h"

#include <algorithm>
#include <cstring>

#include "occult/core/error.h"

namespace occult {

void Communicator::set_activity(std::string_view activity) {
  const std::size_t n = std::min(activity.size(), sizeof(activity_) - 1);
  std::memcpy(activity_, activity.data(), n);
  activity_[n] = '\0';
}

Share rank_share(std::int64_t global, int rank, int ranks) {
  return {global * rank / ranks, global * (rank + 1) / ranks};
}

void ByteCounter::add(const std::string& name, std::int64_t bytes_to_self, std::int64_t bytes_to_peers,
                      std::int64_t calls) {
  ExchangeBytes& entry = counters_[name];
  entry.local_bytes += bytes_to_self;
  entry.remote_bytes += bytes_to_peers;
  entry.calls += calls;
}

void Communicator::all_to_all_v_with_metadata(const std::string& exchange, std::span<const std::byte> send,
                                              std::span<const std::int64_t> send_counts,
                                              std::span<const std::int64_t> send_offsets,
                                              std::span<const std::int64_t> metadata_bytes,
                                              std::span<std::byte> recv, std::span<const std::int64_t> recv_counts,
                                              std::span<const std::int64_t> recv_offsets) {
  OCCULT_CHECK(metadata_bytes.size() == send_counts.size(),
               "exchange '{}': metadata sizes for {} ranks, counts for {}", exchange, metadata_bytes.size(),
               send_counts.size());
  all_to_all_v(exchange, send, send_counts, send_offsets, recv, recv_counts, recv_offsets);
  std::int64_t to_self = 0, to_peers = 0;
  for (std::size_t d = 0; d < metadata_bytes.size(); ++d) {
    OCCULT_CHECK(metadata_bytes[d] >= 0 && metadata_bytes[d] <= send_counts[d],
                 "exchange '{}': {} metadata bytes in a {}-byte block for rank {}", exchange, metadata_bytes[d],
                 send_counts[d], d);
    (static_cast<int>(d) == rank() ? to_self : to_peers) += metadata_bytes[d];
  }
  bytes_.add(exchange, -to_self, -to_peers, 0);
  bytes_.add(kExchangeMetadata, to_self, to_peers, 0);
}

void Communicator::count_exchange_bytes(const std::string& exchange, std::span<const std::int64_t> send_counts,
                                        std::span<const std::int64_t> metadata_bytes) {
  OCCULT_CHECK(metadata_bytes.empty() || metadata_bytes.size() == send_counts.size(),
               "exchange '{}': metadata sizes for {} ranks, counts for {}", exchange, metadata_bytes.size(),
               send_counts.size());
  std::int64_t to_self = 0, to_peers = 0, meta_self = 0, meta_peers = 0;
  for (std::size_t d = 0; d < send_counts.size(); ++d) {
    const bool self = static_cast<int>(d) == rank();
    (self ? to_self : to_peers) += send_counts[d];
    if (metadata_bytes.empty()) continue;
    OCCULT_CHECK(metadata_bytes[d] >= 0 && metadata_bytes[d] <= send_counts[d],
                 "exchange '{}': {} metadata bytes in a {}-byte block for rank {}", exchange, metadata_bytes[d],
                 send_counts[d], d);
    (self ? meta_self : meta_peers) += metadata_bytes[d];
  }
  bytes_.add(exchange, to_self - meta_self, to_peers - meta_peers);
  if (!metadata_bytes.empty()) bytes_.add(kExchangeMetadata, meta_self, meta_peers, 0);
}

int Communicator::start_exchange(const std::string& exchange, std::span<const std::byte>, std::span<const std::int64_t>,
                                 std::span<const std::int64_t>, std::span<const std::int64_t>, std::span<std::byte>,
                                 std::span<const std::int64_t>, std::span<const std::int64_t>, bool) {
  OCCULT_FAIL("exchange '{}': this communicator has no non-blocking exchanges (turn the MoE layer's overlap off)",
              exchange);
}
void Communicator::exchange_send(int, int) { OCCULT_FAIL("exchange_send: no non-blocking exchanges here"); }
bool Communicator::exchange_test(int, std::vector<int>&) {
  OCCULT_FAIL("exchange_test: no non-blocking exchanges here");
}
void Communicator::exchange_wait_some(int, std::vector<int>&) {
  OCCULT_FAIL("exchange_wait_some: no non-blocking exchanges here");
}
void Communicator::exchange_finish(int) { OCCULT_FAIL("exchange_finish: no non-blocking exchanges here"); }

ExchangeBytes ByteCounter::get(const std::string& name) const {
  auto it = counters_.find(name);
  return it == counters_.end() ? ExchangeBytes{} : it->second;
}

void Communicator::all_to_all_counts_into(std::span<const std::int64_t> send_counts, std::span<std::int64_t> recv) {
  OCCULT_CHECK(recv.size() == send_counts.size(), "all_to_all_counts: {} counts sent, room for {}", send_counts.size(),
               recv.size());
  const std::vector<std::int64_t> got = all_to_all_counts(send_counts);
  std::copy(got.begin(), got.end(), recv.begin());
}

void SelfCommunicator::all_to_all_counts_into(std::span<const std::int64_t> send_counts,
                                              std::span<std::int64_t> recv) {
  OCCULT_CHECK(!send_counts.empty() && recv.size() == send_counts.size(),
               "all_to_all_counts: {} counts sent, room for {}", send_counts.size(), recv.size());
  ++collective_calls_;
  std::copy(send_counts.begin(), send_counts.end(), recv.begin());
}

std::vector<std::int64_t> SelfCommunicator::all_to_all_counts(std::span<const std::int64_t> send_counts) {
  OCCULT_CHECK(!send_counts.empty(), "all_to_all_counts: no counts for 1 rank");
  ++collective_calls_;
  return std::vector<std::int64_t>(send_counts.begin(), send_counts.end());
}

namespace {

// The shapes one rank's exchange with itself must have: one count and offset each, what it sends
// is what it expects, and both fit their buffers.
void check_self_exchange(const std::string& exchange, std::span<const std::byte> send,
                         std::span<const std::int64_t> send_counts, std::span<const std::int64_t> send_offsets,
                         std::span<std::byte> recv, std::span<const std::int64_t> recv_counts,
                         std::span<const std::int64_t> recv_offsets) {
  OCCULT_CHECK(send_counts.size() == 1 && send_offsets.size() == 1 && recv_counts.size() == 1 &&
                   recv_offsets.size() == 1,
               "exchange '{}': counts and offsets must have one entry per rank (1)", exchange);
  OCCULT_CHECK(send_counts[0] == recv_counts[0], "exchange '{}': sends {} bytes to itself but expects {}",
               exchange, send_counts[0], recv_counts[0]);
  OCCULT_CHECK(send_offsets[0] >= 0 && send_offsets[0] + send_counts[0] <= static_cast<std::int64_t>(send.size()) &&
                   recv_offsets[0] >= 0 &&
                   recv_offsets[0] + recv_counts[0] <= static_cast<std::int64_t>(recv.size()),
               "exchange '{}': counts and offsets exceed the buffers", exchange);
}

}  // namespace

void SelfCommunicator::all_to_all_v(const std::string& exchange, std::span<const std::byte> send,
                                    std::span<const std::int64_t> send_counts,
                                    std::span<const std::int64_t> send_offsets, std::span<std::byte> recv,
                                    std::span<const std::int64_t> recv_counts,
                                    std::span<const std::int64_t> recv_offsets) {
  ++collective_calls_;
  check_self_exchange(exchange, send, send_counts, send_offsets, recv, recv_counts, recv_offsets);
  if (send_counts[0] > 0) {
    std::memcpy(recv.data() + recv_offsets[0], send.data() + send_offsets[0], send_counts[0]);
  }
  bytes_.add(exchange, send_counts[0], 0);
}

int SelfCommunicator::start_exchange(const std::string& exchange, std::span<const std::byte> send,
                                     std::span<const std::int64_t> send_counts,
                                     std::span<const std::int64_t> send_offsets,
                                     std::span<const std::int64_t> metadata_bytes, std::span<std::byte> recv,
                                     std::span<const std::int64_t> recv_counts,
                                     std::span<const std::int64_t> recv_offsets, bool defer_sends) {
  check_self_exchange(exchange, send, send_counts, send_offsets, recv, recv_counts, recv_offsets);
  const int handle = pending_.acquire(exchange);
  count_exchange_bytes(exchange, send_counts, metadata_bytes);
  ++collective_calls_;
  pending_.slot(handle) = Pending{true, false, false, send.data(), recv.data(), send_counts[0], send_offsets[0],
                             recv_offsets[0]};
  if (!defer_sends) exchange_send(handle, 0);
  return handle;
}

void SelfCommunicator::exchange_send(int handle, int peer) {
  Pending& p = pending_.in_flight(handle, "exchange_send");
  OCCULT_CHECK(peer == 0 && !p.sent, "exchange_send: rank {} is not an unsent destination of the 1 rank", peer);
  if (p.bytes > 0) std::memcpy(p.recv + p.recv_offset, p.send + p.send_offset, static_cast<std::size_t>(p.bytes));
  p.sent = true;
}

bool SelfCommunicator::exchange_test(int handle, std::vector<int>& landed) {
  Pending& p = pending_.in_flight(handle, "exchange_test");
  if (p.sent && !p.reported) {
    landed.push_back(0);
    p.reported = true;
  }
  return p.reported;
}

void SelfCommunicator::exchange_wait_some(int handle, std::vector<int>& landed) {
  Pending& p = pending_.in_flight(handle, "exchange_wait_some");
  // With one rank, only this rank's own deferred send can complete the receive.
  OCCULT_CHECK(p.sent || p.reported, "exchange_wait_some: waiting for a block this rank has not sent to itself");
  exchange_test(handle, landed);
}

void SelfCommunicator::exchange_finish(int handle) {
  Pending& p = pending_.in_flight(handle, "exchange_finish");
  OCCULT_CHECK(p.sent, "exchange_finish: the block to itself was never sent");
  p = Pending{};
}

void SelfCommunicator::broadcast(std::span<std::byte>, int root) {
  ++collective_calls_;
  OCCULT_CHECK(root == 0, "broadcast: root {} outside the 1 rank", root);
}

std::map<std::string, ExchangeBytes> sum_over_ranks(Communicator& comm) {
  // A fixed name list keeps the all-reduce the same length on every rank, even on a rank
  // whose counters never saw an exchange.
  std::vector<std::string> names = {kExchangeDispatch, kExchangeCombine, kExchangeBackwardDispatch,
                                    kExchangeBackwardCombine, kExchangeMetadata, kExchangeReplicaGradients};
  std::vector<std::int64_t> values;
  for (const auto& name : names) {
    ExchangeBytes b = comm.bytes().get(name);
    values.push_back(b.local_bytes);
    values.push_back(b.remote_bytes);
    values.push_back(b.calls);
  }
  comm.all_reduce_sum(values);
  std::map<std::string, ExchangeBytes> result;
  for (std::size_t i = 0; i < names.size(); ++i) {
    result[names[i]] = ExchangeBytes{values[3 * i], values[3 * i + 1], values[3 * i + 2]};
  }
  return result;
}

void agree_on_error_message(Communicator& comm, bool failed, const std::string& message) {
  const int size = comm.size();
  // One reduction: the number of failing ranks, and the lowest failing rank as -max(-rank).
  std::vector<std::int64_t> failing = {failed ? 1 : 0};
  std::vector<std::int64_t> first_failing = {failed ? -comm.rank() : -size};
  comm.all_reduce_sum(failing);
  comm.all_reduce_max(first_failing);
  const int root = static_cast<int>(-first_failing[0]);
  if (root >= size) return;
  std::vector<std::int64_t> length = {comm.rank() == root ? static_cast<std::int64_t>(message.size()) : 0};
  comm.all_reduce_max(length);
  std::string text(static_cast<std::size_t>(length[0]), '\0');
  if (comm.rank() == root) text = message;
  comm.broadcast(std::as_writable_bytes(std::span<char>(text.data(), text.size())), root);
  // Name the rank only when it matters: when every rank failed, they failed alike.
  if (failing[0] < size) text = fmt::format("rank {}: {}", root, text);
  throw AgreedError(__FILE__, __LINE__, text);
}

}  // namespace occult
