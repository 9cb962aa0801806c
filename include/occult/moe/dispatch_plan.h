// Dispatch plans: pure planning code (no MPI) that turns one rank's routing and the placement
// into what the exchanges send (DESIGN.md, "The MoE layer"; DeepEP's "handle" idea: dispatch,
// combine and both backward exchanges reuse the same counts, offsets and slot maps).
//
// Vocabulary of a plan:
//  - a *row* is one hidden-state vector [H] sent to a device: standard sends one row per
//    (token, expert), occult one row per (token, device);
//  - an *assignment* is one (token, expert) pair: it names the row (within the destination's
//    block) that carries the token, the expert's local index on that device and the gate weight.
// Rows and assignments are packed by destination device in rank order.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace occult {

// How tokens travel to their experts.
enum class DispatchKind {
  kStandard,  // one row per (token, expert): DeepSpeed-MoE, Tutel, Megatron alltoall
  kOccult,    // one row per (token, device), stage-1 sum on the device, stage-2 at home
};

// "standard" / "occult".
std::string_view dispatch_kind_name(DispatchKind kind);
// Parses "standard" or "occult"; throws naming `flag` and the accepted values otherwise.
DispatchKind parse_dispatch_kind(std::string_view text, std::string_view flag = "--dispatch");

// One (token, expert) pair as its expert's device sees it. 12 bytes on the wire (metadata).
struct Assignment {
  std::int32_t row = 0;           // row index within the block the destination gets from us
  std::int32_t local_expert = 0;  // index of the expert among the destination's experts
  float weight = 0;               // gate weight g, applied on the expert's device
};

// The send side of one rank's dispatch. Built by build_dispatch_plan.
struct DispatchPlan {
  DispatchKind kind = DispatchKind::kOccult;
  int num_devices = 0;
  std::int64_t num_tokens = 0;  // T_local
  int top_k = 0;

  std::vector<std::int64_t> send_row_counts;   // [D] rows to each device
  std::vector<std::int64_t> send_row_offsets;  // [D+1] prefix sums of send_row_counts
  std::vector<std::int32_t> row_token;         // [R] local token index of each send row
  std::vector<std::int64_t> send_assignment_counts;   // [D]
  std::vector<std::int64_t> send_assignment_offsets;  // [D+1]
  std::vector<Assignment> assignments;                // [A] packed by destination
  std::vector<std::int32_t> assignment_slot;  // [A] token * k + slot the assignment came from
  std::vector<std::uint8_t> dropped;          // [T * k] 1 where capacity dropped the slot

  std::int64_t num_send_rows() const { return send_row_offsets.empty() ? 0 : send_row_offsets.back(); }
  std::int64_t num_assignments() const {
    return send_assignment_offsets.empty() ? 0 : send_assignment_offsets.back();
  }
};

// Builds the plan of one rank. topk_ids and topk_weights are [T, k]; expert_to_device [E] in
// [0, D); local_index_of_expert[e] is e's index among its device's experts (see
// local_expert_indices). Standard: for every token in order and every slot in order, one row
// and one assignment to the expert's device. Occult: for every token, one row per distinct
// device (ascending device id) carrying the assignments of the token's experts there (in slot
// order). capacity_factor > 0 (standard only) keeps at most ceil(c * T * k / E) assignments
// per expert in token order and marks the rest dropped. Throws on ids out of range, repeated
// ids within a token, or sizes that disagree.
DispatchPlan build_dispatch_plan(DispatchKind kind, std::span<const std::int32_t> topk_ids,
                                 std::span<const float> topk_weights, std::int64_t num_tokens,
                                 int top_k, std::span<const int> expert_to_device, int num_devices,
                                 double capacity_factor = 0);

// Replicated experts (DESIGN.md, "Replicas"): the device chosen for each (token, slot) by the
// routing rule (route_tokens) and each device's index of each expert it holds. With it, a slot
// goes to slot_device[t * k + s] instead of expert_to_device[id].
struct SlotRouting {
  std::span<const int> slot_device;  // [T * k] in [0, D)
  std::span<const int> local_index;  // [D * E] the expert's index among device d's, -1 if absent
};

// Scratch of the plan builders, kept by a caller that plans every step so that a batch no
// larger than an earlier one plans without allocating.
struct PlanWorkspace {
  std::vector<int> local, next, devices;
  std::vector<std::int64_t> used, rows, assigns, row_fill, assign_fill;
};

// As build_dispatch_plan, into `plan`, reusing its storage and `workspace`'s. With `replicas`,
// each slot goes to the device it names (which must hold the slot's expert; throws otherwise)
// and expert_to_device only gives E.
void build_dispatch_plan_into(DispatchPlan& plan, PlanWorkspace& workspace, DispatchKind kind,
                              std::span<const std::int32_t> topk_ids, std::span<const float> topk_weights,
                              std::int64_t num_tokens, int top_k, std::span<const int> expert_to_device,
                              int num_devices, double capacity_factor = 0, const SlotRouting* replicas = nullptr);

// local[e] = the number of experts e' < e on e's device; expert_to_device entries in [0, D).
std::vector<int> local_expert_indices(std::span<const int> expert_to_device, int num_devices);
// counts[d] = the number of experts on device d.
std::vector<int> experts_per_device(std::span<const int> expert_to_device, int num_devices);

// The receive side: rows and assignments that arrived from every source rank, with the
// assignments regrouped per local expert (stable: source rank, then arrival order), so that
// expert compute walks one expert at a time and backward can return gate gradients in the
// order the sender listed them.
struct ReceivePlan {
  int num_devices = 0;
  int num_local_experts = 0;
  std::vector<std::int64_t> recv_row_counts;          // [D] rows from each source rank
  std::vector<std::int64_t> recv_row_offsets;         // [D+1]
  std::vector<std::int64_t> recv_assignment_counts;   // [D]
  std::vector<std::int64_t> recv_assignment_offsets;  // [D+1]
  std::vector<std::int64_t> expert_offsets;  // [L+1] CSR over the expert-sorted assignments
  std::vector<std::int64_t> sorted_row;      // [A] absolute receive row of each assignment
  std::vector<float> sorted_weight;          // [A]
  std::vector<std::int64_t> sorted_to_arrival;  // [A] index into the received assignment array

  std::int64_t num_rows() const { return recv_row_offsets.empty() ? 0 : recv_row_offsets.back(); }
  std::int64_t num_assignments() const { return sorted_row.size(); }
};

// Builds the receive side from the per-source row and assignment counts and the received
// assignments (packed by source rank). Throws when an assignment names a row outside its
// source's block or a local expert outside [0, num_local_experts).
ReceivePlan build_receive_plan(std::span<const std::int64_t> recv_row_counts,
                               std::span<const std::int64_t> recv_assignment_counts,
                               std::span<const Assignment> received, int num_local_experts);

// As build_receive_plan, into `plan`, reusing its storage and `workspace`'s.
void build_receive_plan_into(ReceivePlan& plan, PlanWorkspace& workspace,
                             std::span<const std::int64_t> recv_row_counts,
                             std::span<const std::int64_t> recv_assignment_counts,
                             std::span<const Assignment> received, int num_local_experts);

}  // namespace occult
