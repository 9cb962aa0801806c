#include "occult/placement/metrics.h"

#include <gtest/gtest.h>

#include "occult/core/error.h"
#include "occult/placement/graph.h"
#include "occult/placement/partitioner.h"
#include "occult/placement/place.h"
#include "test_traces.h"

namespace occult {
namespace {

using testing::make_routing;

// E=8, k=3, D=4 (experts {0,1} on device 0, {2,3} on 1, ...), N=2 (devices {0,1}, {2,3}).
// By hand, T=4 so token t's home device is floor(t*4/4) = t:
//   token  experts   devices   #dev  nodes  #nodes  remote(not home)  intra pairs (of 3)
//   t0     0 1 2     0 0 1     2     0      1       {1}      -> 1     (0,1)        -> 1
//   t1     0 4 6     0 2 3     3     0 1    2       {0,2,3}  -> 3     none         -> 0
//   t2     2 3 5     1 1 2     2     0 1    2       {1}      -> 1     (2,3)        -> 1
//   t3     6 7 0     3 3 0     2     1 0    2       {0}      -> 1     (6,7)        -> 1
// replicas = 9/4, remote = 6/4, nodes = 7/4, intra = 3/12.
// Device assignments: d0 = load(0)+load(1) = 3+1 = 4, d1 = 2+1 = 3, d2 = 1+1 = 2,
// d3 = 2+1 = 3; mean = T*k/D = 3, so imbalance = 4/3.
LayerRouting hand_routing() {
  return make_routing(3, {{0, 1, 2}, {0, 4, 6}, {2, 3, 5}, {6, 7, 0}});
}
const std::vector<int> kHandPlacement = {0, 0, 1, 1, 2, 2, 3, 3};

TEST(PlacementMetrics, HandComputedWithNodes) {
  const PlacementMetrics m = compute_placement_metrics(hand_routing(), kHandPlacement, 4, 2);
  EXPECT_DOUBLE_EQ(m.replicas_per_token, 9.0 / 4);
  EXPECT_DOUBLE_EQ(m.remote_replicas_per_token, 6.0 / 4);
  EXPECT_DOUBLE_EQ(m.intra_collab_ratio, 3.0 / 12);
  EXPECT_DOUBLE_EQ(m.load_imbalance, 4.0 / 3);
  EXPECT_DOUBLE_EQ(m.nodes_per_token, 7.0 / 4);
}

TEST(PlacementMetrics, HomeDeviceUsesFloorOfTokenShare) {
  // T=3, D=2: homes are floor(0*2/3)=0, floor(2/3)=0, floor(4/3)=1 (not t % D).
  // Every token has one expert on device 0 (expert 0) and one on device 1 (expert 2).
  const LayerRouting r = make_routing(2, {{0, 2}, {0, 2}, {0, 2}});
  const PlacementMetrics m = compute_placement_metrics(r, std::vector<int>{0, 0, 1, 1}, 2);
  EXPECT_DOUBLE_EQ(m.replicas_per_token, 2.0);
  EXPECT_DOUBLE_EQ(m.remote_replicas_per_token, 1.0);
  EXPECT_DOUBLE_EQ(m.intra_collab_ratio, 0.0);
  EXPECT_DOUBLE_EQ(m.load_imbalance, 1.0);
  EXPECT_DOUBLE_EQ(m.nodes_per_token, 1.0);

  // Tokens that touch only device 1: t0 and t1 (home 0) have 1 remote device, t2 (home 1) 0.
  const LayerRouting r1 = make_routing(2, {{2, 3}, {2, 3}, {2, 3}});
  const PlacementMetrics m1 = compute_placement_metrics(r1, std::vector<int>{0, 0, 1, 1}, 2);
  EXPECT_DOUBLE_EQ(m1.replicas_per_token, 1.0);
  EXPECT_DOUBLE_EQ(m1.remote_replicas_per_token, 2.0 / 3);
  EXPECT_DOUBLE_EQ(m1.intra_collab_ratio, 1.0);
  EXPECT_DOUBLE_EQ(m1.load_imbalance, 2.0);  // all 6 assignments on device 1; mean 3
}

TEST(PlacementMetrics, SingleDevice) {
  const PlacementMetrics m =
      compute_placement_metrics(hand_routing(), std::vector<int>(8, 0), 1);
  EXPECT_DOUBLE_EQ(m.replicas_per_token, 1.0);
  EXPECT_DOUBLE_EQ(m.remote_replicas_per_token, 0.0);
  EXPECT_DOUBLE_EQ(m.intra_collab_ratio, 1.0);
  EXPECT_DOUBLE_EQ(m.load_imbalance, 1.0);
}

TEST(PlacementMetrics, ConnectivityAgreesWithReplicas) {
  const CollaborationGraph g = build_collaboration_graph(hand_routing(), 8);
  std::int64_t nodes = 0;
  EXPECT_EQ(connectivity(g, kHandPlacement, 4, 2, &nodes), 9);
  EXPECT_EQ(nodes, 7);
  // Lexicographic objective: nodes * (T*k + 1) + devices = 7 * 13 + 9.
  EXPECT_EQ(hypergraph_objective(g, kHandPlacement, 4, 2), 7 * 13 + 9);
  EXPECT_EQ(hypergraph_objective(g, kHandPlacement, 4, 1), 9);
  EXPECT_DOUBLE_EQ(load_imbalance(g, kHandPlacement, 4), 4.0 / 3);
  EXPECT_EQ(device_loads(g, kHandPlacement, 4), (std::vector<std::int64_t>{4, 3, 2, 3}));
}

TEST(PlaceExperts, WholeTracePlacementCarriesItsMetrics) {
  Trace trace;
  trace.num_experts = 8;
  trace.top_k = 3;
  trace.layers = {hand_routing(), hand_routing()};
  PartitionOptions o;
  o.num_devices = 4;
  o.num_nodes = 2;
  o.max_imbalance = 2.0;
  const Placement p = place_experts(trace, "contiguous", o);
  ASSERT_EQ(p.layers.size(), 2u);
  EXPECT_EQ(p.layers[1].expert_to_device, kHandPlacement);  // contiguous is floor(e*4/8)
  EXPECT_DOUBLE_EQ(p.layers[1].metrics["replicas_per_token"].get<double>(), 9.0 / 4);
  EXPECT_DOUBLE_EQ(p.layers[1].metrics["nodes_per_token"].get<double>(), 7.0 / 4);
  EXPECT_TRUE(p.layers[1].metrics.contains("seconds"));
  const std::vector<PlacementMetrics> m = evaluate_placement(trace, p);
  EXPECT_DOUBLE_EQ(mean_metrics(m).load_imbalance, 4.0 / 3);
  // A placement for a different expert count, or missing a layer, is refused by name.
  Placement other = p;
  other.num_experts = 9;
  EXPECT_THROW(evaluate_placement(trace, other, "other.json", "t.safetensors"), Error);
  Placement short_one = p;
  short_one.layers.pop_back();
  try {
    evaluate_placement(trace, short_one, "short.json", "t.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("short.json has no placement for layer 1 of t.safetensors"),
              std::string::npos)
        << e.message();
  }
}

TEST(PlacementMetrics, BadInputIsAClearError) {
  const LayerRouting r = hand_routing();
  // Device out of range.
  EXPECT_THROW(compute_placement_metrics(r, std::vector<int>{0, 0, 1, 1, 2, 2, 3, 4}, 4),
               Error);
  // The routing names expert 7 but the placement has only 6 experts.
  try {
    compute_placement_metrics(r, std::vector<int>{0, 0, 1, 1, 2, 2}, 4);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("expert 6"), std::string::npos) << e.message();
  }
  // Nodes must divide devices.
  EXPECT_THROW(compute_placement_metrics(r, kHandPlacement, 4, 3), Error);
  // No tokens.
  LayerRouting empty;
  empty.top_k = 3;
  EXPECT_THROW(compute_placement_metrics(empty, kHandPlacement, 4), Error);
}

}  // namespace
}  // namespace occult
