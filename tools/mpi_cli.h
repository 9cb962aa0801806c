// How an MPI subcommand runs: MPI is started for the command (MpiSession) and errors are
// reported once, with every rank ending non-zero. Shared by every subcommand that runs under
// mpirun.
#pragma once

#include <fmt/format.h>
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>

#include "occult/comm/communicator.h"
#include "occult/comm/mpi_communicator.h"
#include "occult/core/error.h"

namespace occult::cli {

// Options every MPI subcommand shares, set by global flags of the `occult` program.
struct MpiRunOptions {
  // --collective-timeout: a collective that lasts longer ends the job (MpiCommunicator::
  // set_collective_timeout); 0 = wait forever. Generous, since a rank may legitimately wait
  // for a peer that loads or saves a large checkpoint.
  double collective_timeout_s = 900;
};

// The process's MpiRunOptions (main fills them while parsing the command line).
inline MpiRunOptions& mpi_run_options() {
  static MpiRunOptions options;
  return options;
}

// A failing rank other than 0 waits a second before it reports or exits, so that when every rank
// failed alike rank 0's message is printed before the launcher ends the job (the first non-zero
// exit, or rank 0's abort, ends the others before they print).
inline void let_rank_zero_report_first() { std::this_thread::sleep_for(std::chrono::seconds(1)); }

// Ends the whole MPI job after an exception that only this rank may have raised (the other ranks
// may be waiting in a collective for it, so MPI_Finalize would hang): prints the message once and
// calls MPI_Abort, rank 0's message first (let_rank_zero_report_first). Returns only when MPI is
// not running or the job has one rank, to let the caller exit normally.
inline void abort_job_after_local_failure(const std::string& message) {
  int initialized = 0, finalized = 0, rank = 0, size = 1;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
  }
  if (size <= 1) {
    fmt::print(stderr, "occult: error: {}\n", message);
    std::fflush(stderr);
    return;
  }
  if (rank != 0) let_rank_zero_report_first();
  fmt::print(stderr, "occult: error: {}{}\n", rank != 0 ? fmt::format("rank {}: ", rank) : "", message);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
}

// Test hook for the reliability suite: OCCULT_TEST_FAULT="RANK:KIND" makes rank RANK throw, as
// the command starts and outside any error agreement, a std::bad_alloc (KIND bad_alloc), a
// std::invalid_argument as std::stoi does (stoi), a std::runtime_error (runtime) or an
// occult::Error (error), or sleep forever (hang), while the other ranks go on into their first
// collective.
inline void inject_test_fault(int rank) {
  const char* spec = std::getenv("OCCULT_TEST_FAULT");
  if (spec == nullptr) return;
  const std::string s(spec);
  const auto colon = s.find(':');
  if (colon == std::string::npos || std::to_string(rank) != s.substr(0, colon)) return;
  const std::string kind = s.substr(colon + 1);
  if (kind == "bad_alloc") throw std::bad_alloc();
  if (kind == "stoi") throw std::invalid_argument("stoi");
  if (kind == "runtime") throw std::runtime_error("injected test fault");
  if (kind == "error") OCCULT_FAIL("injected test fault");
  if (kind == "hang") {
    // A rank that stops answering without exiting, as a stopped or deadlocked process would.
    for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
  }
}

// Runs `body(comm)` on MPI_COMM_WORLD (MPI initialised for the command if nobody has). An
// AgreedError (every rank raised it through agree_on_errors) is printed once, by rank 0, and
// every rank exits with status 1 through MPI_Finalize (CLI11 prints nothing for
// CLI::RuntimeError). Any other exception, of any type, may be this rank's alone while the
// others wait in a collective: abort_job_after_local_failure prints it once and aborts the job.
//
// Rank 0 prints *before* MPI_Finalize: finalize is a fence, so no rank can exit (and make mpirun
// kill the job) before the message is out.
template <typename Body>
void run_on_mpi_world(Body&& body) {
  MpiSession session;
  MpiCommunicator comm(MPI_COMM_WORLD);
  try {
    comm.set_collective_timeout(mpi_run_options().collective_timeout_s);
    comm.set_activity("start-up");
    inject_test_fault(comm.rank());
    body(comm);
  } catch (const AgreedError& e) {
    if (comm.rank() == 0) {
      fmt::print(stderr, "occult: error: {}\n", e.message());
      std::fflush(stderr);
    }
    throw CLI::RuntimeError(1);
  } catch (...) {
    abort_job_after_local_failure(describe_current_exception());
    throw CLI::RuntimeError(1);
  }
}

}  // namespace occult::cli
