// Placement by the model's own expert groups (DeepSeek's n_group): the E experts form G groups of
// E/G consecutive ids, and whole groups are kept together on devices, so that group-limited
// routing (a token picks experts from at most topk_group groups) already bounds the devices a
// token touches, without calibration.
#pragma once

#include <vector>

#include "occult/placement/partitioner.h"
#include "occult/placement/placement.h"
#include "occult/routing/trace.h"

namespace occult {

// expert_to_device[E] of the group placement: with G a multiple of D, device d holds the G/D
// groups [d*G/D, (d+1)*G/D); with D a multiple of G, group g is split into D/G equal runs of
// consecutive experts on devices [g*D/G, (g+1)*D/G). Either way each device holds E/D experts.
// Throws occult::Error naming --groups and --devices unless E >= 1, G >= 1 divides E, D >= 1
// divides E, and G is a multiple of D or D a multiple of G.
std::vector<int> group_placement(int num_experts, int num_groups, int num_devices);

// Every layer of `trace` placed by group_placement (strategy "groups"), each layer's "metrics"
// measured on `trace` as place_experts writes them (options: num_devices, num_nodes).
Placement place_expert_groups(const Trace& trace, int num_groups, const PartitionOptions& options);

}  // namespace occult
