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

  MPI_Comm handle() const { return comm_; }
  // Watches every later collective of this communicator: one that lasts longer than
  // `seconds` ends the job with a message naming this rank, the MPI operation, the exchange
  // and the activity (CollectiveWatchdog, kill_job_on_timeout). 0 turns the watch off; a
  // negative value throws occult::Error. Not collective.
  void set_collective_timeout(double seconds);

 private:
  MPI_Comm comm_;
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
