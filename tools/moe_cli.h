// Pieces shared by the MoE-layer subcommands (`layer run`, `bench layer`, and the model
// commands' --overlap): flag parsing for dispatch, pruning and overlap (MPI set-up and error reporting live in mpi_cli.h).
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

// Parses an --overlap value: "on" or "off"; throws naming `flag` and the accepted values.
inline bool parse_overlap_flag(const std::string& text, const char* flag = "--overlap") {
  OCCULT_CHECK(text == "on" || text == "off", "{} '{}': expected on or off", flag, text);
  return text == "on";
}

}  // namespace occult::cli
