// Routing statistics over one layer's trace: expert load and pairwise co-activation counts.
#pragma once

#include <cstdint>
#include <vector>

#include "occult/routing/trace.h"

namespace occult {

// load[e] = number of tokens that selected expert e.
std::vector<std::int64_t> expert_load(const LayerRouting& layer, int num_experts);

// The pairwise collaboration graph, dense E x E row-major: W[i][j] = number of tokens that
// selected both i and j (i != j); the diagonal is zero. Symmetric.
std::vector<std::int64_t> coactivation_counts(const LayerRouting& layer, int num_experts);

}  // namespace occult
