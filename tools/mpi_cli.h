// How an MPI subcommand runs: MPI is started for the command (MpiSession) and errors are
// reported once. Shared by every subcommand that runs under mpirun.
#pragma once

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>

#include "occult/comm/communicator.h"
#include "occult/comm/mpi_communicator.h"
#include "occult/core/error.h"

namespace occult::cli {

// Runs `body(comm)` on MPI_COMM_WORLD (MPI initialised for the command if nobody has). An
// occult::Error, agreed on by every rank through agree_on_errors (or raised identically on
// every rank), is printed once, by rank 0, and every rank then exits with status 1 (CLI11 prints
// nothing for CLI::RuntimeError).
//
// Rank 0 prints *before* MPI_Finalize: finalize is a fence, so no rank can exit (and make mpirun
// kill the job) before the message is out. Printing after finalize, from main, lost the message
// now and then.
template <typename Body>
void run_on_mpi_world(Body&& body) {
  MpiSession session;
  MpiCommunicator comm(MPI_COMM_WORLD);
  try {
    body(comm);
  } catch (const Error& e) {
    if (comm.rank() == 0) {
      fmt::print(stderr, "occult: error: {}\n", e.message());
      std::fflush(stderr);
    }
    throw CLI::RuntimeError(1);
  }
}

}  // namespace occult::cli
