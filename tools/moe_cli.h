// Pieces shared by the MoE-layer subcommands (`layer run`, `bench layer`): MPI setup, the
// rank-0-only error report, flag parsing for dispatch and pruning.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "occult/comm/mpi_communicator.h"
#include "occult/core/error.h"
#include "occult/routing/pruning.h"

namespace occult::cli {

// Runs `body(comm)` on MPI_COMM_WORLD inside an MpiSession. An occult::Error (agreed on by
// every rank through agree_on_errors) is reported once, by rank 0; other ranks exit with
// status 1 silently (CLI11 prints nothing for CLI::RuntimeError).
template <typename Body>
void run_on_world(Body&& body) {
  MpiSession session;
  MpiCommunicator comm(MPI_COMM_WORLD);
  try {
    body(comm);
  } catch (const Error&) {
    if (comm.rank() == 0) throw;
    throw CLI::RuntimeError(1);
  }
}

// Parses --prune-scheme; throws naming the flag and the accepted values.
inline PruneScheme parse_prune_scheme_flag(const std::string& text) {
  auto scheme = parse_prune_scheme(text);
  OCCULT_CHECK(scheme.has_value(), "--prune-scheme '{}': expected score, similarity or device-limited", text);
  return *scheme;
}

// Parses --prune-weights; throws naming the flag and the accepted values.
inline PruneWeights parse_prune_weights_flag(const std::string& text) {
  auto weights = parse_prune_weights(text);
  OCCULT_CHECK(weights.has_value(), "--prune-weights '{}': expected keep or recompute", text);
  return *weights;
}

}  // namespace occult::cli
