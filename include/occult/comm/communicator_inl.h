// Template bodies of communicator.h (included from it; not a public entry point).
#pragma once

#include <vector>

#include "occult/core/error.h"

namespace occult {

template <typename Slot>
int PendingExchanges<Slot>::acquire(const std::string& exchange) const {
  int handle = 0;
  while (handle < kSlots && slots_[handle].in_use) ++handle;
  OCCULT_CHECK(handle < kSlots, "exchange '{}': more than {} exchanges in flight", exchange, kSlots);
  return handle;
}

template <typename Slot>
Slot& PendingExchanges<Slot>::in_flight(int handle, const char* what) {
  OCCULT_CHECK(handle >= 0 && handle < kSlots && slots_[handle].in_use, "{}: {} is not an exchange in flight", what,
               handle);
  return slots_[handle];
}

template <typename T>
void all_to_all_rows(Communicator& comm, const std::string& exchange, std::span<const T> send,
                     std::span<const std::int64_t> send_rows, std::span<T> recv,
                     std::span<const std::int64_t> recv_rows, std::int64_t row_width) {
  const int size = comm.size();
  OCCULT_CHECK(static_cast<int>(send_rows.size()) == size && static_cast<int>(recv_rows.size()) == size,
               "exchange '{}': row counts for {} and {} ranks, expected {}", exchange, send_rows.size(),
               recv_rows.size(), size);
  const std::int64_t row_bytes = row_width * static_cast<std::int64_t>(sizeof(T));
  std::vector<std::int64_t> send_counts(size), send_offsets(size), recv_counts(size), recv_offsets(size);
  std::int64_t send_total = 0, recv_total = 0;
  for (int d = 0; d < size; ++d) {
    send_counts[d] = send_rows[d] * row_bytes;
    send_offsets[d] = send_total * row_bytes;
    send_total += send_rows[d];
    recv_counts[d] = recv_rows[d] * row_bytes;
    recv_offsets[d] = recv_total * row_bytes;
    recv_total += recv_rows[d];
  }
  OCCULT_CHECK(static_cast<std::int64_t>(send.size()) == send_total * row_width,
               "exchange '{}': send buffer holds {} elements, the counts need {} rows x {}", exchange,
               send.size(), send_total, row_width);
  OCCULT_CHECK(static_cast<std::int64_t>(recv.size()) == recv_total * row_width,
               "exchange '{}': receive buffer holds {} elements, the counts need {} rows x {}", exchange,
               recv.size(), recv_total, row_width);
  comm.all_to_all_v(exchange, std::as_bytes(send), send_counts, send_offsets, std::as_writable_bytes(recv),
                    recv_counts, recv_offsets);
}

template <typename T>
std::vector<T> gather_rows_to_root(Communicator& comm, std::span<const T> local, std::int64_t rows,
                                   std::int64_t row_width, int root) {
  const int size = comm.size();
  OCCULT_CHECK(root >= 0 && root < size, "gather: root {} outside [0, {})", root, size);
  std::vector<std::int64_t> send_rows(size, 0);
  send_rows[root] = rows;
  const std::vector<std::int64_t> recv_rows = comm.all_to_all_counts(send_rows);
  std::int64_t total = 0;
  for (std::int64_t r : recv_rows) total += r;
  std::vector<T> out(static_cast<std::size_t>(total * row_width));
  all_to_all_rows<T>(comm, "gather", local, send_rows, out, recv_rows, row_width);
  return out;
}

template <typename Check>
void agree_on_errors(Communicator& comm, Check&& check) {
  bool failed = false;
  std::string message;
  try {
    check();
  } catch (...) {
    // Any exception type, so that a std::bad_alloc or a JSON error on one rank still fails
    // every rank instead of leaving the others in the next collective.
    failed = true;
    message = describe_current_exception();
  }
  agree_on_error_message(comm, failed, message);
}

}  // namespace occult
