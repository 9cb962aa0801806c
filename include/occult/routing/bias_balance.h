// Auxiliary-loss-free load balancing (DeepSeek-V3): the per-expert selection bias of a router is
// nudged after each optimizer step towards the experts that received fewer tokens than average.
// The bias changes which experts are chosen, never the gate weights (see select_topk).
#pragma once

#include <cstdint>
#include <span>

namespace occult {

// bias[e] += rate * sign(mean_load - loads[e]) for every expert e, where loads[e] counts the
// top-k assignments expert e received in the step (over every rank) and mean_load is their
// mean over the E = loads.size() experts; an expert exactly at the mean keeps its bias (sign 0).
// The comparison is done in integers (E * loads[e] against the total), so every rank that holds
// the same loads applies the same update. Throws occult::Error unless bias.size() == loads.size()
// >= 1, every load is >= 0 and rate is finite and >= 0.
void update_selection_bias(std::span<const std::int64_t> loads, float rate, std::span<float> bias);

}  // namespace occult
