#include "occult/comm/mpi_communicator.h"

#include <algorithm>
#include <climits>
#include <cstring>

#include "occult/core/error.h"

namespace occult {

void check_mpi(int code, const char* call, const char* file, int line) {
  if (code == MPI_SUCCESS) [[likely]] return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw Error(file, line, fmt::format("MPI call failed: {}: {}", call, std::string(text, length)));
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm) : comm_(comm) {
  int initialized = 0;
  OCCULT_MPI_CHECK(MPI_Initialized(&initialized));
  OCCULT_CHECK(initialized, "MpiCommunicator needs MPI_Init to have been called");
  OCCULT_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  OCCULT_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  OCCULT_MPI_CHECK(MPI_Comm_size(comm_, &size_));
}

std::vector<std::int64_t> MpiCommunicator::all_to_all_counts(std::span<const std::int64_t> send_counts) {
  std::vector<std::int64_t> recv(send_counts.size());
  all_to_all_counts_into(send_counts, recv);
  return recv;
}

void MpiCommunicator::all_to_all_counts_into(std::span<const std::int64_t> send_counts,
                                             std::span<std::int64_t> recv) {
  OCCULT_CHECK(!send_counts.empty() && send_counts.size() % static_cast<std::size_t>(size_) == 0 &&
                   send_counts.size() / size_ <= static_cast<std::size_t>(INT_MAX),
               "all_to_all_counts: {} counts for {} ranks, expected a positive multiple", send_counts.size(), size_);
  OCCULT_CHECK(recv.size() == send_counts.size(), "all_to_all_counts: {} counts sent, room for {}",
               send_counts.size(), recv.size());
  ++collective_calls_;
  const int width = static_cast<int>(send_counts.size() / size_);
  WatchedCollective watched(watchdog_.get(), "MPI_Alltoall", "counts", activity_);
  OCCULT_MPI_CHECK(
      MPI_Alltoall(send_counts.data(), width, MPI_INT64_T, recv.data(), width, MPI_INT64_T, comm_));
}

namespace {
// MPI_Alltoallv takes int counts and displacements: refuse (clearly) what does not fit.
const std::vector<int>& to_int(std::span<const std::int64_t> values, const std::string& exchange, const char* what,
                               std::vector<int>& out) {
  out.resize(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    OCCULT_CHECK(values[i] >= 0 && values[i] <= INT_MAX,
                 "exchange '{}': {} {} bytes for rank {} is outside MPI's int range; use fewer tokens "
                 "per rank", exchange, what, values[i], i);
    out[i] = static_cast<int>(values[i]);
  }
  return out;
}
}  // namespace

void MpiCommunicator::all_to_all_v(const std::string& exchange, std::span<const std::byte> send,
                                   std::span<const std::int64_t> send_counts,
                                   std::span<const std::int64_t> send_offsets, std::span<std::byte> recv,
                                   std::span<const std::int64_t> recv_counts,
                                   std::span<const std::int64_t> recv_offsets) {
  const auto n = static_cast<std::size_t>(size_);
  OCCULT_CHECK(send_counts.size() == n && send_offsets.size() == n && recv_counts.size() == n &&
                   recv_offsets.size() == n,
               "exchange '{}': counts and offsets must have one entry per rank ({})", exchange, size_);
  for (std::size_t d = 0; d < n; ++d) {
    OCCULT_CHECK(send_offsets[d] + send_counts[d] <= static_cast<std::int64_t>(send.size()) &&
                     recv_offsets[d] + recv_counts[d] <= static_cast<std::int64_t>(recv.size()),
                 "exchange '{}': counts and offsets for rank {} exceed the buffers", exchange, d);
  }
  ++collective_calls_;
  const auto& sc = to_int(send_counts, exchange, "send count", counts_scratch_[0]);
  const auto& so = to_int(send_offsets, exchange, "send offset", counts_scratch_[1]);
  const auto& rc = to_int(recv_counts, exchange, "receive count", counts_scratch_[2]);
  const auto& ro = to_int(recv_offsets, exchange, "receive offset", counts_scratch_[3]);
  // MPI wants non-null buffers even for zero counts on some transports.
  std::byte dummy_send{}, dummy_recv{};
  const void* send_ptr = send.empty() ? &dummy_send : send.data();
  void* recv_ptr = recv.empty() ? &dummy_recv : recv.data();
  WatchedCollective watched(watchdog_.get(), "MPI_Alltoallv", exchange.c_str(), activity_);
  OCCULT_MPI_CHECK(MPI_Alltoallv(send_ptr, sc.data(), so.data(), MPI_BYTE, recv_ptr, rc.data(), ro.data(),
                                 MPI_BYTE, comm_));
  std::int64_t to_self = send_counts[rank_], to_peers = 0;
  for (std::size_t d = 0; d < n; ++d) {
    if (static_cast<int>(d) != rank_) to_peers += send_counts[d];
  }
  bytes_.add(exchange, to_self, to_peers);
}

namespace {
template <typename T>
void all_reduce(MPI_Comm comm, std::int64_t& calls, CollectiveWatchdog* watchdog, const char* activity,
                std::span<T> values, MPI_Datatype type, MPI_Op op) {
  ++calls;
  WatchedCollective watched(watchdog, "MPI_Allreduce", "", activity);
  OCCULT_CHECK(values.size() <= static_cast<std::size_t>(INT_MAX), "all_reduce of {} values exceeds MPI's int range",
               values.size());
  if (values.empty()) {
    // Still collective: every rank must call it (sizes agree by contract).
    T dummy{};
    OCCULT_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &dummy, 0, type, op, comm));
    return;
  }
  OCCULT_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()), type, op, comm));
}
}  // namespace

void MpiCommunicator::all_reduce_sum(std::span<float> values) {
  all_reduce(comm_, collective_calls_, watchdog_.get(), activity_, values, MPI_FLOAT, MPI_SUM);
}
void MpiCommunicator::all_reduce_sum(std::span<double> values) {
  all_reduce(comm_, collective_calls_, watchdog_.get(), activity_, values, MPI_DOUBLE, MPI_SUM);
}
void MpiCommunicator::all_reduce_sum(std::span<std::int64_t> values) {
  all_reduce(comm_, collective_calls_, watchdog_.get(), activity_, values, MPI_INT64_T, MPI_SUM);
}
void MpiCommunicator::all_reduce_max(std::span<double> values) {
  all_reduce(comm_, collective_calls_, watchdog_.get(), activity_, values, MPI_DOUBLE, MPI_MAX);
}
void MpiCommunicator::all_reduce_max(std::span<std::int64_t> values) {
  all_reduce(comm_, collective_calls_, watchdog_.get(), activity_, values, MPI_INT64_T, MPI_MAX);
}

void MpiCommunicator::broadcast(std::span<std::byte> data, int root) {
  OCCULT_CHECK(root >= 0 && root < size_, "broadcast: root {} outside [0, {})", root, size_);
  OCCULT_CHECK(data.size() <= static_cast<std::size_t>(INT_MAX), "broadcast of {} bytes exceeds MPI's int range",
               data.size());
  ++collective_calls_;
  std::byte dummy{};
  WatchedCollective watched(watchdog_.get(), "MPI_Bcast", "", activity_);
  OCCULT_MPI_CHECK(MPI_Bcast(data.empty() ? &dummy : data.data(), static_cast<int>(data.size()), MPI_BYTE, root,
                             comm_));
}

int MpiCommunicator::start_exchange(const std::string& exchange, std::span<const std::byte> send,
                                    std::span<const std::int64_t> send_counts,
                                    std::span<const std::int64_t> send_offsets,
                                    std::span<const std::int64_t> metadata_bytes, std::span<std::byte> recv,
                                    std::span<const std::int64_t> recv_counts,
                                    std::span<const std::int64_t> recv_offsets, bool defer_sends) {
  const auto n = static_cast<std::size_t>(size_);
  OCCULT_CHECK(send_counts.size() == n && send_offsets.size() == n && recv_counts.size() == n &&
                   recv_offsets.size() == n,
               "exchange '{}': counts and offsets must have one entry per rank ({})", exchange, size_);
  for (std::size_t d = 0; d < n; ++d) {
    OCCULT_CHECK(send_counts[d] >= 0 && recv_counts[d] >= 0 && send_offsets[d] >= 0 && recv_offsets[d] >= 0 &&
                     send_offsets[d] + send_counts[d] <= static_cast<std::int64_t>(send.size()) &&
                     recv_offsets[d] + recv_counts[d] <= static_cast<std::int64_t>(recv.size()),
                 "exchange '{}': counts and offsets for rank {} exceed the buffers", exchange, d);
    OCCULT_CHECK(send_counts[d] <= INT_MAX && recv_counts[d] <= INT_MAX,
                 "exchange '{}': a block of {} bytes for rank {} is outside MPI's int range; use fewer tokens per "
                 "rank", exchange, std::max(send_counts[d], recv_counts[d]), d);
  }
  OCCULT_CHECK(send_counts[rank_] == recv_counts[rank_], "exchange '{}': sends {} bytes to itself but expects {}",
               exchange, send_counts[rank_], recv_counts[rank_]);
  const int handle = pending_.acquire(exchange);
  count_exchange_bytes(exchange, send_counts, metadata_bytes);
  ++collective_calls_;
  Pending& p = pending_.slot(handle);
  p.in_use = true;
  // Every rank starts its exchanges in the same order, so the sequence number names the same
  // exchange everywhere; a distinct tag per exchange in flight keeps their messages apart.
  p.tag = 1 + static_cast<int>(exchanges_started_++ % 16384);
  p.exchange = exchange.c_str();
  p.send = send.data();
  p.recv = recv.data();
  p.send_counts.assign(send_counts.begin(), send_counts.end());
  p.send_offsets.assign(send_offsets.begin(), send_offsets.end());
  p.recv_counts.assign(recv_counts.begin(), recv_counts.end());
  p.recv_offsets.assign(recv_offsets.begin(), recv_offsets.end());
  p.sends.assign(n, MPI_REQUEST_NULL);
  p.recvs.assign(n, MPI_REQUEST_NULL);
  p.sent.assign(n, 0);
  p.state.assign(n, 0);
  p.indices.resize(n);
  // Receives first, so that a peer's eager send finds its buffer posted.
  for (int s = 0; s < size_; ++s) {
    if (s == rank_) continue;
    if (recv_counts[s] == 0) {
      p.state[s] = 1;
      continue;
    }
    OCCULT_MPI_CHECK(MPI_Irecv(p.recv + recv_offsets[s], static_cast<int>(recv_counts[s]), MPI_BYTE, s, p.tag,
                               comm_, &p.recvs[s]));
  }
  if (!defer_sends) {
    for (int d = 0; d < size_; ++d) exchange_send(handle, d);
  }
  return handle;
}

void MpiCommunicator::exchange_send(int handle, int peer) {
  Pending& p = pending_.in_flight(handle, "exchange_send");
  OCCULT_CHECK(peer >= 0 && peer < size_ && !p.sent[peer], "exchange '{}': rank {} is not an unsent destination",
               p.exchange, peer);
  p.sent[peer] = 1;
  const std::int64_t bytes = p.send_counts[peer];
  if (peer == rank_) {
    // The block to itself needs no message.
    if (bytes > 0) std::memcpy(p.recv + p.recv_offsets[peer], p.send + p.send_offsets[peer], bytes);
    p.state[peer] = 1;
    return;
  }
  if (bytes == 0) return;
  OCCULT_MPI_CHECK(MPI_Isend(p.send + p.send_offsets[peer], static_cast<int>(bytes), MPI_BYTE, peer, p.tag, comm_,
                             &p.sends[peer]));
}

void MpiCommunicator::mark_landed(Pending& p, int count) {
  if (count == MPI_UNDEFINED) return;
  for (int i = 0; i < count; ++i) p.state[p.indices[i]] = 1;
}

bool MpiCommunicator::report(Pending& p, std::vector<int>& landed) {
  bool all = true;
  for (int s = 0; s < size_; ++s) {
    if (p.state[s] == 1) {
      landed.push_back(s);
      p.state[s] = 2;
    }
    all = all && p.state[s] == 2;
  }
  return all;
}

bool MpiCommunicator::exchange_test(int handle, std::vector<int>& landed) {
  Pending& p = pending_.in_flight(handle, "exchange_test");
  int count = 0;
  OCCULT_MPI_CHECK(MPI_Testsome(size_, p.recvs.data(), &count, p.indices.data(), MPI_STATUSES_IGNORE));
  mark_landed(p, count);
  return report(p, landed);
}

void MpiCommunicator::exchange_wait_some(int handle, std::vector<int>& landed) {
  Pending& p = pending_.in_flight(handle, "exchange_wait_some");
  bool waiting = true;
  for (int s = 0; s < size_; ++s) {
    if (p.state[s] == 1) waiting = false;
  }
  if (waiting) {
    // Only a receive still in flight can land; the own block lands when it is sent.
    bool in_flight = false;
    for (int s = 0; s < size_; ++s) in_flight = in_flight || p.recvs[s] != MPI_REQUEST_NULL;
    OCCULT_CHECK(in_flight || p.state[rank_] != 0,
                 "exchange '{}': waiting for a block this rank has not sent to itself", p.exchange);
    if (in_flight) {
      int count = 0;
      WatchedCollective watched(watchdog_.get(), "MPI_Waitsome", p.exchange, activity_);
      OCCULT_MPI_CHECK(MPI_Waitsome(size_, p.recvs.data(), &count, p.indices.data(), MPI_STATUSES_IGNORE));
      mark_landed(p, count);
    }
  }
  report(p, landed);
}

void MpiCommunicator::exchange_finish(int handle) {
  Pending& p = pending_.in_flight(handle, "exchange_finish");
  for (int d = 0; d < size_; ++d) {
    OCCULT_CHECK(p.sent[d], "exchange '{}': finished before its block for rank {} was sent", p.exchange, d);
  }
  {
    WatchedCollective watched(watchdog_.get(), "MPI_Waitall", p.exchange, activity_);
    OCCULT_MPI_CHECK(MPI_Waitall(size_, p.recvs.data(), MPI_STATUSES_IGNORE));
    OCCULT_MPI_CHECK(MPI_Waitall(size_, p.sends.data(), MPI_STATUSES_IGNORE));
  }
  p.in_use = false;
}

void MpiCommunicator::set_collective_timeout(double seconds, CollectiveTimeoutAction on_timeout) {
  OCCULT_CHECK(seconds >= 0, "--collective-timeout must be 0 (off) or a positive number of seconds, got {}",
               seconds);
  watchdog_.reset();
  if (seconds > 0) watchdog_ = std::make_unique<CollectiveWatchdog>(seconds, rank_, std::move(on_timeout));
}

void MpiCommunicator::barrier() {
  ++collective_calls_;
  WatchedCollective watched(watchdog_.get(), "MPI_Barrier", "", activity_);
  OCCULT_MPI_CHECK(MPI_Barrier(comm_));
}

}  // namespace occult

namespace occult {

MpiSession::MpiSession() {
  int initialized = 0;
  OCCULT_MPI_CHECK(MPI_Initialized(&initialized));
  if (!initialized) {
    OCCULT_MPI_CHECK(MPI_Init(nullptr, nullptr));
    owns_ = true;
  }
}

MpiSession::~MpiSession() {
  if (!owns_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();  // a destructor cannot throw; a failed finalize is moot here
}

}  // namespace occult
