// The Open MPI implementation of Communicator. The MPI communicator is passed in (the program
// passes MPI_COMM_WORLD at the top); there is no global one. Every MPI call is checked.
#pragma once

#include <mpi.h>

#include <memory>
#include <vector>

#include "occult/comm/communicator.h"
#include "occult/comm/watchdog.h"

namespace occult {

// Throws occult::Error naming the call and MPI's error string unless `code` is MPI_SUCCESS.
void check_mpi(int code, const char* call, const char* file, int line);

}  // namespace occult

// OCCULT_MPI_CHECK(MPI_Xxx(...)): every MPI call goes through it.
#define OCCULT_MPI_CHECK(call) ::occult::check_mpi((call), #call, __FILE__, __LINE__)

namespace occult {

// A Communicator over an MPI communicator. Sets MPI_ERRORS_RETURN on it so failures become
// occult::Error instead of aborting. MPI must be initialised and outlive this object.
class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm comm);

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::vector<std::int64_t> all_to_all_counts(std::span<const std::int64_t> send_counts) override;
  void all_to_all_counts_into(std::span<const std::int64_t> send_counts, std::span<std::int64_t> recv) override;
  void all_to_all_v(const std::string& exchange, std::span<const std::byte> send,
                    std::span<const std::int64_t> send_counts,
                    std::span<const std::int64_t> send_offsets, std::span<std::byte> recv,
                    std::span<const std::int64_t> recv_counts,
                    std::span<const std::int64_t> recv_offsets) override;
  void all_reduce_sum(std::span<float> values) override;
  void all_reduce_sum(std::span<double> values) override;
  void all_reduce_sum(std::span<std::int64_t> values) override;
  void all_reduce_max(std::span<double> values) override;
  void all_reduce_max(std::span<std::int64_t> values) override;
  void broadcast(std::span<std::byte> data, int root) override;
  void barrier() override;
  // MPI_Isend/MPI_Irecv to and from peers with non-zero counts; MPI_Testsome, MPI_Waitsome and
  // MPI_Waitall (the last two watched). A rank's block to itself is copied when sent.
  int start_exchange(const std::string& exchange, std::span<const std::byte> send,
                     std::span<const std::int64_t> send_counts, std::span<const std::int64_t> send_offsets,
                     std::span<const std::int64_t> metadata_bytes, std::span<std::byte> recv,
                     std::span<const std::int64_t> recv_counts, std::span<const std::int64_t> recv_offsets,
                     bool defer_sends) override;
  void exchange_send(int handle, int peer) override;
  bool exchange_test(int handle, std::vector<int>& landed) override;
  void exchange_wait_some(int handle, std::vector<int>& landed) override;
  void exchange_finish(int handle) override;

  MPI_Comm handle() const { return comm_; }
  // Watches every later collective of this communicator: one that lasts longer than
  // `seconds` ends the job with a message naming this rank, the MPI operation, the exchange
  // and the activity (CollectiveWatchdog, kill_job_on_timeout, or `on_timeout` when given).
  // 0 turns the watch off; a negative value throws occult::Error. Not collective.
  void set_collective_timeout(double seconds, CollectiveTimeoutAction on_timeout = kill_job_on_timeout);

 private:
  // One exchange in flight; its vectors keep their storage between exchanges.
  struct Pending {
    bool in_use = false;
    int tag = 0;
    const char* exchange = "";
    const std::byte* send = nullptr;
    std::byte* recv = nullptr;
    std::vector<std::int64_t> send_counts, send_offsets, recv_counts, recv_offsets;
    std::vector<MPI_Request> sends, recvs;  // [D], MPI_REQUEST_NULL where nothing is pending
    std::vector<char> sent;                 // [D] the block for d was sent (or is empty)
    std::vector<char> state;                // [D] 0 in flight, 1 landed, 2 reported
    std::vector<int> indices;               // MPI_Testsome's output
  };
  // Marks the sources MPI reported complete in pending.indices[0, count) as landed.
  void mark_landed(Pending& p, int count);
  // Appends the landed, unreported sources to `landed`; true when all are reported.
  bool report(Pending& p, std::vector<int>& landed);

  MPI_Comm comm_;
  PendingExchanges<Pending> pending_;
  std::int64_t exchanges_started_ = 0;  // the same on every rank: names each exchange's tag
  std::unique_ptr<CollectiveWatchdog> watchdog_;
  std::vector<int> counts_scratch_[4];  // MPI's int counts and displacements, reused per call
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace occult

namespace occult {

// Initialises MPI for the lifetime of a command (if nobody has yet) and finalises it on
// destruction (only if it initialised it). Programs create one at the top and pass
// MPI_COMM_WORLD to an MpiCommunicator; library code never does either.
class MpiSession {
 public:
  MpiSession();
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

 private:
  bool owns_ = false;
};

}  // namespace occult
