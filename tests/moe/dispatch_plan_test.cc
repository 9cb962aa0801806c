// Dispatch plans on hand-built routing (exact counts, offsets, slot maps), the receive side,
// and a simulated exchange of every rank's plan against the naive reference deliveries.
#include "occult/moe/dispatch_plan.h"

#include <gtest/gtest.h>

#include <random>

#include "occult/core/error.h"
#include "reference_deliveries.h"

namespace occult {
namespace {

// 6 experts on 3 devices, non-contiguous: device 0 = {0, 3}, device 1 = {1, 4}, device 2 = {2, 5}.
const std::vector<int> kPlacement = {0, 1, 2, 0, 1, 2};

// Token 0 -> experts {0, 3} (both device 0); token 1 -> {1, 2} (devices 1, 2);
// token 2 -> {5, 4} (devices 2, 1).
const std::vector<std::int32_t> kIds = {0, 3, 1, 2, 5, 4};
const std::vector<float> kWeights = {0.6f, 0.4f, 0.7f, 0.3f, 0.9f, 0.1f};

TEST(LocalExpertIndices, CountsEarlierExpertsOnTheSameDevice) {
  EXPECT_EQ(local_expert_indices(kPlacement, 3), (std::vector<int>{0, 0, 0, 1, 1, 1}));
  EXPECT_EQ(experts_per_device(kPlacement, 3), (std::vector<int>{2, 2, 2}));
  EXPECT_THROW(local_expert_indices(std::vector<int>{0, 3}, 3), Error);
}

TEST(StandardPlan, OneRowPerTokenExpertPackedByDevice) {
  DispatchPlan p = build_dispatch_plan(DispatchKind::kStandard, kIds, kWeights, 3, 2, kPlacement, 3);
  EXPECT_EQ(p.send_row_counts, (std::vector<std::int64_t>{2, 2, 2}));
  EXPECT_EQ(p.send_row_offsets, (std::vector<std::int64_t>{0, 2, 4, 6}));
  // Device 0: token 0 twice; device 1: token 1 (expert 1), token 2 (expert 4);
  // device 2: token 1 (expert 2), token 2 (expert 5).
  EXPECT_EQ(p.row_token, (std::vector<std::int32_t>{0, 0, 1, 2, 1, 2}));
  EXPECT_EQ(p.send_assignment_counts, p.send_row_counts);
  ASSERT_EQ(p.assignments.size(), 6u);
  EXPECT_EQ(p.assignments[0].row, 0);
  EXPECT_EQ(p.assignments[0].local_expert, 0);
  EXPECT_EQ(p.assignments[1].row, 1);
  EXPECT_EQ(p.assignments[1].local_expert, 1);
  EXPECT_EQ(p.assignments[3].local_expert, 1);  // expert 4 is device 1's second expert
  EXPECT_FLOAT_EQ(p.assignments[3].weight, 0.1f);
  EXPECT_EQ(p.assignment_slot, (std::vector<std::int32_t>{0, 1, 2, 5, 3, 4}));
}

TEST(OccultPlan, OneRowPerTokenDeviceWithAllItsAssignments) {
  DispatchPlan p = build_dispatch_plan(DispatchKind::kOccult, kIds, kWeights, 3, 2, kPlacement, 3);
  EXPECT_EQ(p.send_row_counts, (std::vector<std::int64_t>{1, 2, 2}));
  EXPECT_EQ(p.send_row_offsets, (std::vector<std::int64_t>{0, 1, 3, 5}));
  EXPECT_EQ(p.row_token, (std::vector<std::int32_t>{0, 1, 2, 1, 2}));
  EXPECT_EQ(p.send_assignment_counts, (std::vector<std::int64_t>{2, 2, 2}));
  // Token 0's two experts share row 0 of device 0's block.
  EXPECT_EQ(p.assignments[0].row, 0);
  EXPECT_EQ(p.assignments[1].row, 0);
  EXPECT_EQ(p.assignments[0].local_expert, 0);
  EXPECT_EQ(p.assignments[1].local_expert, 1);
  EXPECT_FLOAT_EQ(p.assignments[1].weight, 0.4f);
  // Device 1: token 1 row 0 (expert 1), token 2 row 1 (expert 4).
  EXPECT_EQ(p.assignments[2].row, 0);
  EXPECT_EQ(p.assignments[3].row, 1);
  EXPECT_EQ(p.assignment_slot, (std::vector<std::int32_t>{0, 1, 2, 5, 3, 4}));
}

TEST(Plans, ZeroTokensGiveEmptyPlans) {
  for (DispatchKind kind : {DispatchKind::kStandard, DispatchKind::kOccult}) {
    DispatchPlan p = build_dispatch_plan(kind, {}, {}, 0, 2, kPlacement, 3);
    EXPECT_EQ(p.num_send_rows(), 0);
    EXPECT_EQ(p.num_assignments(), 0);
    EXPECT_EQ(p.send_row_offsets, (std::vector<std::int64_t>{0, 0, 0, 0}));
  }
}

TEST(Plans, RejectBadRouting) {
  std::vector<std::int32_t> out_of_range = {0, 6};
  std::vector<std::int32_t> repeated = {2, 2};
  std::vector<float> w = {0.5f, 0.5f};
  EXPECT_THROW(build_dispatch_plan(DispatchKind::kOccult, out_of_range, w, 1, 2, kPlacement, 3), Error);
  EXPECT_THROW(build_dispatch_plan(DispatchKind::kOccult, repeated, w, 1, 2, kPlacement, 3), Error);
  EXPECT_THROW(build_dispatch_plan(DispatchKind::kOccult, kIds, w, 3, 2, kPlacement, 3), Error);  // weights size
  EXPECT_THROW(build_dispatch_plan(DispatchKind::kOccult, kIds, kWeights, 3, 2, kPlacement, 2), Error);  // D
  EXPECT_THROW(build_dispatch_plan(DispatchKind::kOccult, kIds, kWeights, 3, 2, kPlacement, 3, 1.0), Error);
  try {
    build_dispatch_plan(DispatchKind::kStandard, out_of_range, w, 1, 2, kPlacement, 3);
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("selects expert 6, outside [0, E=6)"), std::string::npos) << e.message();
  }
}

TEST(StandardPlan, CapacityFactorDropsInTokenOrder) {
  // 4 tokens, k = 1, E = 2: capacity = ceil(0.5 * 4 / 2) = 1 per expert.
  std::vector<std::int32_t> ids = {0, 0, 1, 0};
  std::vector<float> w = {1, 1, 1, 1};
  DispatchPlan p = build_dispatch_plan(DispatchKind::kStandard, ids, w, 4, 1, std::vector<int>{0, 1}, 2, 0.5);
  EXPECT_EQ(p.dropped, (std::vector<std::uint8_t>{0, 1, 0, 1}));
  EXPECT_EQ(p.send_row_counts, (std::vector<std::int64_t>{1, 1}));
  EXPECT_EQ(p.row_token, (std::vector<std::int32_t>{0, 2}));
}

TEST(ReceivePlan, GroupsAssignmentsPerLocalExpertStably) {
  // Two sources: source 0 sent 2 rows and 3 assignments, source 1 sent 1 row and 1 assignment.
  std::vector<Assignment> received = {{0, 1, 0.5f}, {0, 0, 0.25f}, {1, 1, 0.125f}, {0, 0, 1.0f}};
  ReceivePlan r = build_receive_plan(std::vector<std::int64_t>{2, 1}, std::vector<std::int64_t>{3, 1}, received, 2);
  EXPECT_EQ(r.expert_offsets, (std::vector<std::int64_t>{0, 2, 4}));
  EXPECT_EQ(r.sorted_row, (std::vector<std::int64_t>{0, 2, 0, 1}));
  EXPECT_EQ(r.sorted_weight, (std::vector<float>{0.25f, 1.0f, 0.5f, 0.125f}));
  EXPECT_EQ(r.sorted_to_arrival, (std::vector<std::int64_t>{1, 3, 0, 2}));
  std::vector<Assignment> bad_row = {{2, 0, 1.0f}};
  EXPECT_THROW(build_receive_plan(std::vector<std::int64_t>{2}, std::vector<std::int64_t>{1}, bad_row, 1), Error);
  std::vector<Assignment> bad_expert = {{0, 1, 1.0f}};
  EXPECT_THROW(build_receive_plan(std::vector<std::int64_t>{1}, std::vector<std::int64_t>{1}, bad_expert, 1), Error);
}

// Random routing of `tokens_per_rank[r]` tokens on each rank.
struct Routing {
  std::vector<std::vector<std::int32_t>> ids;
  std::vector<std::vector<float>> weights;
};
Routing random_routing(const std::vector<std::int64_t>& tokens_per_rank, int E, int k, unsigned seed) {
  std::mt19937 rng(seed);
  Routing r;
  for (std::int64_t T : tokens_per_rank) {
    std::vector<std::int32_t> ids;
    std::vector<float> w;
    for (std::int64_t t = 0; t < T; ++t) {
      std::vector<int> experts(E);
      for (int e = 0; e < E; ++e) experts[e] = e;
      std::shuffle(experts.begin(), experts.end(), rng);
      for (int s = 0; s < k; ++s) {
        ids.push_back(experts[s]);
        w.push_back(static_cast<float>(rng() % 1000) / 1000.0f);
      }
    }
    r.ids.push_back(ids);
    r.weights.push_back(w);
  }
  return r;
}

// Runs every rank's plan through an in-memory all-to-all and lists what each device received.
std::vector<std::vector<DeliveredAssignment>> simulate(DispatchKind kind, const Routing& routing, int k,
                                                       const std::vector<int>& placement, int D,
                                                       std::int64_t* total_rows) {
  const int E = static_cast<int>(placement.size());
  std::vector<DispatchPlan> plans;
  for (int s = 0; s < D; ++s) {
    plans.push_back(build_dispatch_plan(kind, routing.ids[s], routing.weights[s],
                                        static_cast<std::int64_t>(routing.ids[s].size()) / k, k, placement, D));
  }
  std::vector<std::vector<int>> experts_of(D);
  for (int e = 0; e < E; ++e) experts_of[placement[e]].push_back(e);
  std::vector<std::vector<DeliveredAssignment>> out(D);
  *total_rows = 0;
  for (int d = 0; d < D; ++d) {
    std::vector<std::int64_t> rows(D), assigns(D);
    std::vector<Assignment> received;
    std::vector<std::pair<int, std::int32_t>> row_source;  // (source rank, source token) per received row
    for (int s = 0; s < D; ++s) {
      rows[s] = plans[s].send_row_counts[d];
      assigns[s] = plans[s].send_assignment_counts[d];
      for (std::int64_t i = plans[s].send_row_offsets[d]; i < plans[s].send_row_offsets[d + 1]; ++i) {
        row_source.emplace_back(s, plans[s].row_token[i]);
      }
      for (std::int64_t a = plans[s].send_assignment_offsets[d]; a < plans[s].send_assignment_offsets[d + 1]; ++a) {
        received.push_back(plans[s].assignments[a]);
      }
    }
    ReceivePlan r = build_receive_plan(rows, assigns, received, static_cast<int>(experts_of[d].size()));
    *total_rows += r.num_rows();
    for (int l = 0; l < r.num_local_experts; ++l) {
      for (std::int64_t i = r.expert_offsets[l]; i < r.expert_offsets[l + 1]; ++i) {
        auto [source, token] = row_source[r.sorted_row[i]];
        out[d].push_back({source, token, experts_of[d][l], r.sorted_weight[i]});
      }
    }
    std::sort(out[d].begin(), out[d].end());
  }
  return out;
}

TEST(Plans, SimulatedExchangeDeliversWhatTheReferenceSays) {
  // 7 experts on 3 ranks (uneven: 3, 2, 2), a non-contiguous placement, one rank with no tokens.
  const std::vector<int> placement = {2, 0, 1, 0, 2, 1, 0};
  Routing routing = random_routing({5, 0, 9}, 7, 3, 1);
  auto expected = reference_deliveries(routing.ids, routing.weights, 3, placement, 3);
  std::int64_t standard_rows = 0, occult_rows = 0;
  EXPECT_EQ(simulate(DispatchKind::kStandard, routing, 3, placement, 3, &standard_rows), expected);
  EXPECT_EQ(simulate(DispatchKind::kOccult, routing, 3, placement, 3, &occult_rows), expected);
  EXPECT_EQ(standard_rows, 14 * 3);
  // Occult rows = sum over tokens of distinct devices among its experts.
  std::int64_t distinct = 0;
  for (const auto& ids : routing.ids) {
    for (std::size_t t = 0; t < ids.size() / 3; ++t) {
      std::vector<int> devices;
      for (int s = 0; s < 3; ++s) devices.push_back(placement[ids[t * 3 + s]]);
      std::sort(devices.begin(), devices.end());
      distinct += std::unique(devices.begin(), devices.end()) - devices.begin();
    }
  }
  EXPECT_EQ(occult_rows, distinct);
}

TEST(Plans, SixtyExpertsOnEightDevices) {
  // Uneven: 60 / 8 = 7.5, so four devices hold 8 and four hold 7 (contiguous floor(e*D/E)).
  std::vector<int> placement(60);
  for (int e = 0; e < 60; ++e) placement[e] = e * 8 / 60;
  EXPECT_EQ(experts_per_device(placement, 8), (std::vector<int>{8, 7, 8, 7, 8, 7, 8, 7}));
  Routing routing = random_routing({10, 3, 0, 7, 12, 1, 5, 9}, 60, 4, 2);
  auto expected = reference_deliveries(routing.ids, routing.weights, 4, placement, 8);
  std::int64_t rows = 0;
  EXPECT_EQ(simulate(DispatchKind::kStandard, routing, 4, placement, 8, &rows), expected);
  EXPECT_EQ(rows, 47 * 4);
  EXPECT_EQ(simulate(DispatchKind::kOccult, routing, 4, placement, 8, &rows), expected);
  EXPECT_LE(rows, 47 * 4);
}

}  // namespace
}  // namespace occult
