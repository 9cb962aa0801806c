// The Communicator: the only thing in occult that moves bytes between EP ranks (DESIGN.md,
// "Architecture"). Planning code never sees it; exchanges take it as their last argument.
// Every all-to-all is named (dispatch, combine, backward_dispatch, backward_combine, ...) and
// its bytes are counted exactly, rows a rank keeps for itself apart from rows sent to peers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace occult {

// The items [begin, end) of `global` items (sequences, rows) that rank `rank` of `ranks` takes:
// begin = floor(rank*global/ranks), so ranks hold consecutive shares in rank order.
struct Share {
  std::int64_t begin = 0;
  std::int64_t end = 0;
};
Share rank_share(std::int64_t global, int rank, int ranks);

// Exchange names used by the MoE layer; byte accounting and reports use these spellings.
inline constexpr const char* kExchangeDispatch = "dispatch";
inline constexpr const char* kExchangeCombine = "combine";
inline constexpr const char* kExchangeBackwardDispatch = "backward_dispatch";
inline constexpr const char* kExchangeBackwardCombine = "backward_combine";
// The gradients of replicated experts, exchanged among each expert's holders in backward.
inline constexpr const char* kExchangeReplicaGradients = "replica_gradients";
// Routing metadata (counts, (local expert, weight) records, gate gradients): reported apart
// from the hidden-state bytes so that those compare exactly between dispatchers.
inline constexpr const char* kExchangeMetadata = "metadata";

// Bytes one exchange moved, seen from the sender: `local_*` is what a rank sent to itself
// (a copy, no network), `remote_*` what it sent to other ranks.
struct ExchangeBytes {
  std::int64_t local_bytes = 0;
  std::int64_t remote_bytes = 0;
  std::int64_t calls = 0;

  std::int64_t total_bytes() const { return local_bytes + remote_bytes; }
};

// Per-exchange byte counters of one rank (not summed over ranks; see sum_over_ranks).
class ByteCounter {
 public:
  // Adds `bytes_to_self` and `bytes_to_peers` to exchange `name` and `calls` to its calls.
  void add(const std::string& name, std::int64_t bytes_to_self, std::int64_t bytes_to_peers,
           std::int64_t calls = 1);
  // The counters of `name` (zeros when it never ran).
  ExchangeBytes get(const std::string& name) const;
  // All named counters, in name order.
  const std::map<std::string, ExchangeBytes>& all() const { return counters_; }
  // Forgets every counter.
  void reset() { counters_.clear(); }

 private:
  std::map<std::string, ExchangeBytes> counters_;
};

// A group of EP ranks. Every method marked "collective" must be called by every rank of the
// group, in the same order, or the program hangs; sizes passed to a collective must agree
// between ranks as its comment states. Errors from the transport throw occult::Error.
class Communicator {
 public:
  virtual ~Communicator() = default;

  // This process's rank in [0, size()).
  virtual int rank() const = 0;
  // Number of ranks (D, the EP devices).
  virtual int size() const = 0;

  // Collective: send_counts holds w values per rank (w * size() in all, the same w on every
  // rank); values [d*w, (d+1)*w) go to rank d. Returns recv, where [s*w, (s+1)*w) is what rank
  // s sent here. Exchanges the counts (and status flags) that precede an all_to_all_v.
  virtual std::vector<std::int64_t> all_to_all_counts(std::span<const std::int64_t> send_counts) = 0;
  // Collective: as all_to_all_counts, into `recv` (the same size as send_counts), so that a
  // caller exchanging counts every step need not allocate.
  virtual void all_to_all_counts_into(std::span<const std::int64_t> send_counts, std::span<std::int64_t> recv);

  // Collective: rank d receives send[send_offsets[d] .. + send_counts[d]) (bytes) into its
  // recv buffer at recv_offsets[this rank]; recv_counts[s] must equal what rank s sends here.
  // Bytes are recorded under `exchange` (self vs peers). Offsets and counts are in bytes.
  virtual void all_to_all_v(const std::string& exchange, std::span<const std::byte> send,
                            std::span<const std::int64_t> send_counts,
                            std::span<const std::int64_t> send_offsets, std::span<std::byte> recv,
                            std::span<const std::int64_t> recv_counts,
                            std::span<const std::int64_t> recv_offsets) = 0;

  // Collective: element-wise sum (in place) over all ranks; every rank passes the same length.
  virtual void all_reduce_sum(std::span<float> values) = 0;
  virtual void all_reduce_sum(std::span<double> values) = 0;
  virtual void all_reduce_sum(std::span<std::int64_t> values) = 0;
  // Collective: element-wise maximum (in place) over all ranks.
  virtual void all_reduce_max(std::span<double> values) = 0;
  virtual void all_reduce_max(std::span<std::int64_t> values) = 0;
  // Collective: copies `root`'s bytes into every rank's `data` (same length everywhere).
  virtual void broadcast(std::span<std::byte> data, int root) = 0;
  // Collective: returns when every rank has entered it.
  virtual void barrier() = 0;

  // Collective: all_to_all_v whose first metadata_bytes[d] bytes of the block sent to rank d
  // are recorded under kExchangeMetadata (without a call) instead of `exchange`, so that one
  // message can carry routing metadata and hidden-state rows and both are still counted apart.
  void all_to_all_v_with_metadata(const std::string& exchange, std::span<const std::byte> send,
                                  std::span<const std::int64_t> send_counts,
                                  std::span<const std::int64_t> send_offsets,
                                  std::span<const std::int64_t> metadata_bytes, std::span<std::byte> recv,
                                  std::span<const std::int64_t> recv_counts,
                                  std::span<const std::int64_t> recv_offsets);

  // ---- Non-blocking exchanges -------------------------------------------------------------
  // The same exchange as all_to_all_v_with_metadata, split so that a caller can work on each
  // source's block as it lands and send each destination's block when it is ready (the MoE
  // layer's overlapped forward). Only peers with non-zero counts are messaged; a zero-count
  // source has landed at once. Bytes are recorded at the start, exactly as the blocking call
  // records them (same exchange name, same bytes, one call). Every rank starts its exchanges
  // in the same order (they are collective); up to kMaxPendingExchanges may be in flight.
  // Waits run under the communicator's watchdog like a blocking collective.

  // Collective: starts the exchange and returns its handle. The arguments are those of
  // all_to_all_v_with_metadata (metadata_bytes may be empty: nothing is metadata). With
  // `defer_sends`, no block is sent until exchange_send names its destination; otherwise
  // every block is sent now. send, recv and `exchange` must stay valid, and send unchanged
  // where a send is pending, until exchange_finish; a source's recv block may be read once
  // it was reported landed.
  virtual int start_exchange(const std::string& exchange, std::span<const std::byte> send,
                             std::span<const std::int64_t> send_counts,
                             std::span<const std::int64_t> send_offsets,
                             std::span<const std::int64_t> metadata_bytes, std::span<std::byte> recv,
                             std::span<const std::int64_t> recv_counts,
                             std::span<const std::int64_t> recv_offsets, bool defer_sends);
  // Sends the block for `peer` of an exchange started with defer_sends (once per peer).
  virtual void exchange_send(int handle, int peer);
  // Does not block: appends to `landed` each source whose block has landed since the last
  // report (ascending within one call); returns true when every source has been reported.
  virtual bool exchange_test(int handle, std::vector<int>& landed);
  // Blocks (watched) until at least one more source has landed and appends what exchange_test
  // would; returns at once when every source has already been reported.
  virtual void exchange_wait_some(int handle, std::vector<int>& landed);
  // Blocks (watched) until every send and receive of the exchange completed, then releases
  // the handle; every deferred send must have been made (throws otherwise).
  virtual void exchange_finish(int handle);
  static constexpr int kMaxPendingExchanges = 4;

  // This rank's byte counters (only all_to_all_v records bytes).
  ByteCounter& bytes() { return bytes_; }
  const ByteCounter& bytes() const { return bytes_; }
  // Collective operations this rank has started (every collective method counts one; latency,
  // not bandwidth, is what each costs at small batch).
  std::int64_t collective_calls() const { return collective_calls_; }
  // Names what this rank is doing ("MoE layer 3 forward"), so that a collective that never
  // returns can be reported with it (CollectiveWatchdog); keeps the first 95 characters and
  // does not allocate. activity() is "" until set.
  void set_activity(std::string_view activity);
  const char* activity() const { return activity_; }

 protected:
  // Records the bytes of one exchange as all_to_all_v_with_metadata does: send_counts less
  // the metadata under `exchange` (one call), the metadata under kExchangeMetadata.
  void count_exchange_bytes(const std::string& exchange, std::span<const std::int64_t> send_counts,
                            std::span<const std::int64_t> metadata_bytes);

  ByteCounter bytes_;
  std::int64_t collective_calls_ = 0;
  char activity_[96] = {};
};

// The exchanges of one communicator in flight, by handle: a fixed table of
// Communicator::kMaxPendingExchanges slots, so starting one allocates nothing. Slot must have a
// bool `in_use`.
template <typename Slot>
class PendingExchanges {
 public:
  // The handle of a free slot (not yet marked in use); throws naming `exchange` when all are taken.
  int acquire(const std::string& exchange) const;
  // The slot of `handle`, in use or not (for the start that acquired it).
  Slot& slot(int handle) { return slots_[handle]; }
  // The exchange in flight under `handle`; throws naming the calling method `what` otherwise.
  Slot& in_flight(int handle, const char* what);

 private:
  static constexpr int kSlots = Communicator::kMaxPendingExchanges;
  Slot slots_[kSlots];
};

// A one-rank communicator (size 1, no MPI): for single-process tools and unit tests. Its
// all-to-all is a copy and is still counted (as local bytes).
class SelfCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::vector<std::int64_t> all_to_all_counts(std::span<const std::int64_t> send_counts) override;
  void all_to_all_counts_into(std::span<const std::int64_t> send_counts, std::span<std::int64_t> recv) override;
  void all_to_all_v(const std::string& exchange, std::span<const std::byte> send,
                    std::span<const std::int64_t> send_counts,
                    std::span<const std::int64_t> send_offsets, std::span<std::byte> recv,
                    std::span<const std::int64_t> recv_counts,
                    std::span<const std::int64_t> recv_offsets) override;
  void all_reduce_sum(std::span<float>) override { ++collective_calls_; }
  void all_reduce_sum(std::span<double>) override { ++collective_calls_; }
  void all_reduce_sum(std::span<std::int64_t>) override { ++collective_calls_; }
  void all_reduce_max(std::span<double>) override { ++collective_calls_; }
  void all_reduce_max(std::span<std::int64_t>) override { ++collective_calls_; }
  void broadcast(std::span<std::byte>, int root) override;
  void barrier() override { ++collective_calls_; }
  int start_exchange(const std::string& exchange, std::span<const std::byte> send,
                     std::span<const std::int64_t> send_counts, std::span<const std::int64_t> send_offsets,
                     std::span<const std::int64_t> metadata_bytes, std::span<std::byte> recv,
                     std::span<const std::int64_t> recv_counts, std::span<const std::int64_t> recv_offsets,
                     bool defer_sends) override;
  void exchange_send(int handle, int peer) override;
  bool exchange_test(int handle, std::vector<int>& landed) override;
  void exchange_wait_some(int handle, std::vector<int>& landed) override;
  void exchange_finish(int handle) override;

 private:
  // One pending self-exchange: the block is copied when its send is made.
  struct Pending {
    bool in_use = false, sent = false, reported = false;
    const std::byte* send = nullptr;
    std::byte* recv = nullptr;
    std::int64_t bytes = 0, send_offset = 0, recv_offset = 0;
  };
  PendingExchanges<Pending> pending_;
};

// Collective: typed all-to-all of rows `row_width` elements wide. send_rows[d] rows (packed
// by destination in rank order) go to rank d; recv_rows[s] rows arrive from rank s, packed
// in rank order. Checks the buffers hold exactly sum(rows) * row_width elements.
template <typename T>
void all_to_all_rows(Communicator& comm, const std::string& exchange, std::span<const T> send,
                     std::span<const std::int64_t> send_rows, std::span<T> recv,
                     std::span<const std::int64_t> recv_rows, std::int64_t row_width);

// Collective: gathers every rank's `rows` rows of `row_width` elements to `root`, in rank
// order (exchange name "gather", not an MoE exchange). Returns them on root, empty elsewhere.
template <typename T>
std::vector<T> gather_rows_to_root(Communicator& comm, std::span<const T> local, std::int64_t rows,
                                   std::int64_t row_width, int root = 0);

// Collective: the counters of the kExchange* names summed over every rank (all ranks get the
// same map, zeros for exchanges that never ran).
std::map<std::string, ExchangeBytes> sum_over_ranks(Communicator& comm);

// Collective error agreement, so bad input fails on EVERY rank with one message and no hang:
// runs `check` locally; if any rank's check threw (occult::Error or any other exception, which
// describe_current_exception puts in words), every rank throws an occult::AgreedError carrying
// the message of the lowest failing rank (prefixed "rank r: " unless every rank failed). A
// collective inside `check` hangs when one rank throws before reaching it. Call it before the
// first exchange that depends on the checked input.
template <typename Check>
void agree_on_errors(Communicator& comm, Check&& check);

// Implementation detail of agree_on_errors (non-template part).
void agree_on_error_message(Communicator& comm, bool failed, const std::string& message);

}  // namespace occult

#include "occult/comm/communicator_inl.h"
