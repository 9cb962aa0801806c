// How an MPI subcommand runs: MPI is started for the command (MpiSession) and errors are
// reported once. Shared by every subcommand that runs under mpirun.
#pragma once

#include <CLI/CLI.hpp>

#include "occult/comm/communicator.h"
#include "occult/comm/mpi_communicator.h"
#include "occult/core/error.h"

namespace occult::cli {

// Runs `body(comm)` on MPI_COMM_WORLD (MPI initialised for the command if nobody has). An
// occult::Error, agreed on by every rank through agree_on_errors, is reported once by rank 0
// (main prints it); the other ranks exit with status 1 silently (CLI11 prints nothing for
// CLI::RuntimeError).
template <typename Body>
void run_on_mpi_world(Body&& body) {
  MpiSession session;
  MpiCommunicator comm(MPI_COMM_WORLD);
  try {
    body(comm);
  } catch (const Error&) {
    if (comm.rank() == 0) throw;
    throw CLI::RuntimeError(1);
  }
}

}  // namespace occult::cli
