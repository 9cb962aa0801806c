#include "occult/moe/dispatch_plan.h"

#include <algorithm>
#include <cmath>

#include "occult/core/error.h"

namespace occult {

std::string_view dispatch_kind_name(DispatchKind kind) {
  return kind == DispatchKind::kStandard ? "standard" : "occult";
}

DispatchKind parse_dispatch_kind(std::string_view text, std::string_view flag) {
  if (text == "standard") return DispatchKind::kStandard;
  if (text == "occult") return DispatchKind::kOccult;
  OCCULT_FAIL("{} '{}': expected 'standard' or 'occult'", flag, text);
}

std::vector<int> experts_per_device(std::span<const int> expert_to_device, int num_devices) {
  OCCULT_CHECK(num_devices >= 1, "placement: {} devices, expected at least 1", num_devices);
  std::vector<int> counts(num_devices, 0);
  for (std::size_t e = 0; e < expert_to_device.size(); ++e) {
    const int d = expert_to_device[e];
    OCCULT_CHECK(d >= 0 && d < num_devices, "placement: expert {} is on device {}, outside [0, {})", e, d,
                 num_devices);
    ++counts[d];
  }
  return counts;
}

std::vector<int> local_expert_indices(std::span<const int> expert_to_device, int num_devices) {
  std::vector<int> next(experts_per_device(expert_to_device, num_devices).size(), 0);
  std::vector<int> local(expert_to_device.size());
  for (std::size_t e = 0; e < expert_to_device.size(); ++e) local[e] = next[expert_to_device[e]]++;
  return local;
}

namespace {
// offsets = [0, prefix sums of counts] (reuses offsets' storage).
void prefix(const std::vector<std::int64_t>& counts, std::vector<std::int64_t>& offsets) {
  offsets.assign(counts.size() + 1, 0);
  for (std::size_t i = 0; i < counts.size(); ++i) offsets[i + 1] = offsets[i] + counts[i];
}
}  // namespace

DispatchPlan build_dispatch_plan(DispatchKind kind, std::span<const std::int32_t> topk_ids,
                                 std::span<const float> topk_weights, std::int64_t num_tokens, int top_k,
                                 std::span<const int> expert_to_device, int num_devices,
                                 double capacity_factor) {
  DispatchPlan plan;
  PlanWorkspace ws;
  build_dispatch_plan_into(plan, ws, kind, topk_ids, topk_weights, num_tokens, top_k, expert_to_device, num_devices,
                           capacity_factor);
  return plan;
}

void build_dispatch_plan_into(DispatchPlan& plan, PlanWorkspace& ws, DispatchKind kind,
                              std::span<const std::int32_t> topk_ids, std::span<const float> topk_weights,
                              std::int64_t num_tokens, int top_k, std::span<const int> expert_to_device,
                              int num_devices, double capacity_factor, const SlotRouting* replicas) {
  const int num_experts = static_cast<int>(expert_to_device.size());
  OCCULT_CHECK(num_tokens >= 0, "dispatch plan: {} tokens", num_tokens);
  OCCULT_CHECK(top_k >= 1 && top_k <= num_experts, "dispatch plan: top-k {} outside [1, E={}]", top_k,
               num_experts);
  OCCULT_CHECK(static_cast<std::int64_t>(topk_ids.size()) == num_tokens * top_k,
               "dispatch plan: topk_ids has {} entries, expected T*k = {}*{}", topk_ids.size(), num_tokens,
               top_k);
  OCCULT_CHECK(topk_weights.size() == topk_ids.size(), "dispatch plan: topk_weights has {} entries, expected {}",
               topk_weights.size(), topk_ids.size());
  OCCULT_CHECK(capacity_factor >= 0, "dispatch plan: capacity factor {} is negative", capacity_factor);
  OCCULT_CHECK(capacity_factor == 0 || kind == DispatchKind::kStandard,
               "dispatch plan: a capacity factor applies to standard dispatch only (occult is dropless)");
  OCCULT_CHECK(num_devices >= 1, "placement: {} devices, expected at least 1", num_devices);
  ws.next.assign(num_devices, 0);
  ws.local.resize(expert_to_device.size());
  for (std::size_t e = 0; e < expert_to_device.size(); ++e) {
    const int d = expert_to_device[e];
    OCCULT_CHECK(d >= 0 && d < num_devices, "placement: expert {} is on device {}, outside [0, {})", e, d,
                 num_devices);
    ws.local[e] = ws.next[d]++;
  }
  if (replicas != nullptr) {
    OCCULT_CHECK(static_cast<std::int64_t>(replicas->slot_device.size()) == num_tokens * top_k &&
                     static_cast<std::int64_t>(replicas->local_index.size()) ==
                         static_cast<std::int64_t>(num_devices) * num_experts,
                 "dispatch plan: replica routing holds {} slot devices and {} local indices, expected T*k = {} "
                 "and D*E = {}", replicas->slot_device.size(), replicas->local_index.size(), num_tokens * top_k,
                 static_cast<std::int64_t>(num_devices) * num_experts);
  }
  // The device that serves slot i, and the expert's index among that device's experts.
  auto slot_device = [&](std::int64_t i) {
    return replicas != nullptr ? replicas->slot_device[i] : expert_to_device[topk_ids[i]];
  };
  auto local_of = [&](int d, int e) {
    return replicas != nullptr ? replicas->local_index[static_cast<std::size_t>(d) * num_experts + e] : ws.local[e];
  };

  // Validate ids before any counting so a bad id can never index out of range.
  for (std::int64_t t = 0; t < num_tokens; ++t) {
    const std::int32_t* ids = topk_ids.data() + t * top_k;
    for (int s = 0; s < top_k; ++s) {
      OCCULT_CHECK(ids[s] >= 0 && ids[s] < num_experts, "dispatch plan: token {} slot {} selects expert {}, "
                   "outside [0, E={})", t, s, ids[s], num_experts);
      for (int r = 0; r < s; ++r) {
        OCCULT_CHECK(ids[r] != ids[s], "dispatch plan: token {} selects expert {} twice", t, ids[s]);
      }
      if (replicas != nullptr) {
        const int d = replicas->slot_device[t * top_k + s];
        OCCULT_CHECK(d >= 0 && d < num_devices && local_of(d, ids[s]) >= 0,
                     "dispatch plan: token {} slot {} is routed to device {}, which does not hold expert {}", t, s,
                     d, ids[s]);
      }
    }
  }

  plan.kind = kind;
  plan.num_devices = num_devices;
  plan.num_tokens = num_tokens;
  plan.top_k = top_k;
  plan.dropped.assign(static_cast<std::size_t>(num_tokens * top_k), 0);
  if (capacity_factor > 0) {
    const auto capacity = static_cast<std::int64_t>(
        std::ceil(capacity_factor * static_cast<double>(num_tokens * top_k) / num_experts));
    std::vector<std::int64_t>& used = ws.used;
    used.assign(num_experts, 0);
    for (std::int64_t i = 0; i < num_tokens * top_k; ++i) {
      if (used[topk_ids[i]]++ >= capacity) plan.dropped[i] = 1;
    }
  }

  // Pass 1: counts per destination. Occult: a token's distinct devices (k is small, so a
  // linear scan over the slots beats any set).
  std::vector<std::int64_t>& rows = ws.rows;
  std::vector<std::int64_t>& assigns = ws.assigns;
  std::vector<int>& devices = ws.devices;
  rows.assign(num_devices, 0);
  assigns.assign(num_devices, 0);
  devices.resize(top_k);
  auto token_devices = [&](std::int64_t t) {
    int n = 0;
    for (int s = 0; s < top_k; ++s) {
      if (plan.dropped[t * top_k + s]) continue;
      const int d = slot_device(t * top_k + s);
      if (std::find(devices.begin(), devices.begin() + n, d) == devices.begin() + n) devices[n++] = d;
    }
    std::sort(devices.begin(), devices.begin() + n);
    return n;
  };
  for (std::int64_t t = 0; t < num_tokens; ++t) {
    for (int s = 0; s < top_k; ++s) {
      if (plan.dropped[t * top_k + s]) continue;
      const int d = slot_device(t * top_k + s);
      ++assigns[d];
      if (kind == DispatchKind::kStandard) ++rows[d];
    }
    if (kind == DispatchKind::kOccult) {
      const int n = token_devices(t);
      for (int i = 0; i < n; ++i) ++rows[devices[i]];
    }
  }
  plan.send_row_counts.assign(rows.begin(), rows.end());
  prefix(rows, plan.send_row_offsets);
  plan.send_assignment_counts.assign(assigns.begin(), assigns.end());
  prefix(assigns, plan.send_assignment_offsets);
  plan.row_token.resize(plan.num_send_rows());
  plan.assignments.resize(plan.num_assignments());
  plan.assignment_slot.resize(plan.num_assignments());

  // Pass 2: fill, by destination, in token order.
  std::vector<std::int64_t>& row_fill = ws.row_fill;
  std::vector<std::int64_t>& assign_fill = ws.assign_fill;
  row_fill.assign(num_devices, 0);
  assign_fill.assign(num_devices, 0);
  for (std::int64_t t = 0; t < num_tokens; ++t) {
    if (kind == DispatchKind::kStandard) {
      for (int s = 0; s < top_k; ++s) {
        const std::int64_t slot = t * top_k + s;
        if (plan.dropped[slot]) continue;
        const int e = topk_ids[slot];
        const int d = slot_device(slot);
        const std::int64_t row = row_fill[d]++;
        plan.row_token[plan.send_row_offsets[d] + row] = static_cast<std::int32_t>(t);
        const std::int64_t a = plan.send_assignment_offsets[d] + assign_fill[d]++;
        plan.assignments[a] = Assignment{static_cast<std::int32_t>(row), local_of(d, e), topk_weights[slot]};
        plan.assignment_slot[a] = static_cast<std::int32_t>(slot);
      }
    } else {
      const int n = token_devices(t);
      for (int i = 0; i < n; ++i) {
        const int d = devices[i];
        const std::int64_t row = row_fill[d]++;
        plan.row_token[plan.send_row_offsets[d] + row] = static_cast<std::int32_t>(t);
        for (int s = 0; s < top_k; ++s) {
          const std::int64_t slot = t * top_k + s;
          const int e = topk_ids[slot];
          if (plan.dropped[slot] || slot_device(slot) != d) continue;
          const std::int64_t a = plan.send_assignment_offsets[d] + assign_fill[d]++;
          plan.assignments[a] = Assignment{static_cast<std::int32_t>(row), local_of(d, e), topk_weights[slot]};
          plan.assignment_slot[a] = static_cast<std::int32_t>(slot);
        }
      }
    }
  }
}

ReceivePlan build_receive_plan(std::span<const std::int64_t> recv_row_counts,
                               std::span<const std::int64_t> recv_assignment_counts,
                               std::span<const Assignment> received, int num_local_experts) {
  ReceivePlan plan;
  PlanWorkspace ws;
  build_receive_plan_into(plan, ws, recv_row_counts, recv_assignment_counts, received, num_local_experts);
  return plan;
}

void build_receive_plan_into(ReceivePlan& plan, PlanWorkspace& ws, std::span<const std::int64_t> recv_row_counts,
                             std::span<const std::int64_t> recv_assignment_counts,
                             std::span<const Assignment> received, int num_local_experts) {
  OCCULT_CHECK(recv_row_counts.size() == recv_assignment_counts.size(),
               "receive plan: row counts for {} ranks but assignment counts for {}", recv_row_counts.size(),
               recv_assignment_counts.size());
  plan.num_devices = static_cast<int>(recv_row_counts.size());
  plan.num_local_experts = num_local_experts;
  plan.recv_row_counts.assign(recv_row_counts.begin(), recv_row_counts.end());
  plan.recv_assignment_counts.assign(recv_assignment_counts.begin(), recv_assignment_counts.end());
  prefix(plan.recv_row_counts, plan.recv_row_offsets);
  prefix(plan.recv_assignment_counts, plan.recv_assignment_offsets);
  const std::int64_t total = plan.recv_assignment_offsets.back();
  OCCULT_CHECK(static_cast<std::int64_t>(received.size()) == total,
               "receive plan: {} assignments arrived, the counts announce {}", received.size(), total);

  std::vector<std::int64_t>& per_expert = ws.rows;
  per_expert.assign(num_local_experts, 0);
  for (int s = 0; s < plan.num_devices; ++s) {
    for (std::int64_t a = plan.recv_assignment_offsets[s]; a < plan.recv_assignment_offsets[s + 1]; ++a) {
      const Assignment& as = received[a];
      OCCULT_CHECK(as.row >= 0 && as.row < plan.recv_row_counts[s],
                   "receive plan: an assignment from rank {} names row {}, but that rank sent {} rows", s,
                   as.row, plan.recv_row_counts[s]);
      OCCULT_CHECK(as.local_expert >= 0 && as.local_expert < num_local_experts,
                   "receive plan: an assignment from rank {} names local expert {}, this rank holds {}", s,
                   as.local_expert, num_local_experts);
      ++per_expert[as.local_expert];
    }
  }
  prefix(per_expert, plan.expert_offsets);
  plan.sorted_row.resize(total);
  plan.sorted_weight.resize(total);
  plan.sorted_to_arrival.resize(total);
  std::vector<std::int64_t>& fill = ws.row_fill;
  fill.assign(plan.expert_offsets.begin(), plan.expert_offsets.end() - 1);
  for (int s = 0; s < plan.num_devices; ++s) {
    for (std::int64_t a = plan.recv_assignment_offsets[s]; a < plan.recv_assignment_offsets[s + 1]; ++a) {
      const Assignment& as = received[a];
      const std::int64_t i = fill[as.local_expert]++;
      plan.sorted_row[i] = plan.recv_row_offsets[s] + as.row;
      plan.sorted_weight[i] = as.weight;
      plan.sorted_to_arrival[i] = a;
    }
  }
}

}  // namespace occult
