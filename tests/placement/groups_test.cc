#include "occult/placement/groups.h"

#include <gtest/gtest.h>

#include "occult/core/error.h"
#include "occult/placement/metrics.h"
#include "test_traces.h"

namespace occult {
namespace {

using testing::make_routing;

// Expects `body` to throw occult::Error whose message contains `needle`.
template <typename Body>
void expect_error(Body&& body, const std::string& needle) {
  try {
    body();
    ADD_FAILURE() << "no error; expected one containing: " << needle;
  } catch (const Error& e) {
    EXPECT_NE(e.message().find(needle), std::string::npos) << e.message();
  }
}

TEST(GroupPlacement, WholeGroupsPerDevice) {
  // E = 8 in 4 groups {0,1} {2,3} {4,5} {6,7}; 2 devices hold 2 groups each.
  EXPECT_EQ(group_placement(8, 4, 2), (std::vector<int>{0, 0, 0, 0, 1, 1, 1, 1}));
  EXPECT_EQ(group_placement(8, 4, 4), (std::vector<int>{0, 0, 1, 1, 2, 2, 3, 3}));
  EXPECT_EQ(group_placement(8, 8, 2), (std::vector<int>{0, 0, 0, 0, 1, 1, 1, 1}));
  EXPECT_EQ(group_placement(8, 1, 1), (std::vector<int>(8, 0)));
}

TEST(GroupPlacement, GroupsSplitOverDevices) {
  // 2 groups {0..3} {4..7} on 4 devices: each group over 2 devices, 2 consecutive experts each.
  EXPECT_EQ(group_placement(8, 2, 4), (std::vector<int>{0, 0, 1, 1, 2, 2, 3, 3}));
  // 1 group over 2 devices.
  EXPECT_EQ(group_placement(6, 1, 2), (std::vector<int>{0, 0, 0, 1, 1, 1}));
  EXPECT_EQ(group_placement(8, 2, 8), (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7}));
}

TEST(GroupPlacement, BadCountsNameTheFlags) {
  expect_error([] { group_placement(12, 4, 3); }, "--groups 4 and --devices 3: one must be a multiple");
  expect_error([] { group_placement(8, 3, 2); }, "--groups 3 must be >= 1 and divide the 8 experts");
  expect_error([] { group_placement(6, 2, 4); }, "--devices 4 must be >= 1 and divide the 6 experts");
}

// Group-limited routing (each token inside one group of 2, except the last) on the hand trace:
//   token  experts  devices (G=4, D=4)  devices (G=4, D=2)
//   t0     0 1      {0}                 {0}
//   t1     2 3      {1}                 {0}
//   t2     4 5      {2}                 {1}
//   t3     7 6      {3}                 {1}
//   t4     1 2      {0, 1}              {0}
// C_T = 6/5 at D = 4, 5/5 at D = 2. Device loads at D = 4: 3 3 2 2 (mean 2.5) -> imbalance 1.2.
TEST(GroupPlacement, HandTraceReplicasPerToken) {
  Trace trace;
  trace.num_experts = 8;
  trace.top_k = 2;
  const LayerRouting routing = make_routing(2, {{0, 1}, {2, 3}, {4, 5}, {7, 6}, {1, 2}});
  trace.layers = {routing, routing};
  PartitionOptions four;
  four.num_devices = 4;
  const Placement p4 = place_expert_groups(trace, 4, four);
  EXPECT_EQ(p4.strategy, "groups");
  ASSERT_EQ(p4.layers.size(), 2u);
  for (const LayerPlacement& lp : p4.layers) {
    EXPECT_DOUBLE_EQ(lp.metrics["replicas_per_token"].get<double>(), 6.0 / 5);
    EXPECT_DOUBLE_EQ(lp.metrics["load_imbalance"].get<double>(), 3.0 / 2.5);
  }
  PartitionOptions two;
  two.num_devices = 2;
  EXPECT_DOUBLE_EQ(place_expert_groups(trace, 4, two).layers[1].metrics["replicas_per_token"].get<double>(), 1.0);
  // Spreading each group over devices (experts e on e % 4) doubles it: every token touches 2.
  EXPECT_DOUBLE_EQ(compute_placement_metrics(routing, std::vector<int>{0, 1, 2, 3, 0, 1, 2, 3}, 4).replicas_per_token,
                   2.0);
}

}  // namespace
}  // namespace occult
