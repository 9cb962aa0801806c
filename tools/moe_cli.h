// Pieces shared by the MoE-layer subcommands (`layer run`, `bench layer`): flag parsing for
// dispatch and pruning (MPI set-up and error reporting live in mpi_cli.h).
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "mpi_cli.h"
#include "occult/core/error.h"
#include "occult/routing/pruning.h"

namespace occult::cli {

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
