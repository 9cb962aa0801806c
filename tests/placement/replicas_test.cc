// Placements with replicas: the JSON format and its validation, the metrics under the replica
// routing rule, and the spare-slot search.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "occult/core/error.h"
#include "occult/placement/graph.h"
#include "occult/placement/metrics.h"
#include "occult/placement/place.h"
#include "occult/placement/placement.h"
#include "occult/placement/replicate.h"
#include "placement/test_traces.h"

namespace occult {
namespace {

// E = 5 on D = 2 with S = 4: device 0 holds 0, 2, 4 and a copy of 1; device 1 holds 1, 3 and
// copies of 0 and 4.
Placement replicated() {
  Placement p;
  p.num_experts = 5;
  p.num_devices = 2;
  p.slots_per_device = 4;
  p.strategy = "hypergraph";
  LayerPlacement l0;
  l0.layer = 0;
  l0.expert_to_device = {0, 1, 0, 1, 0};
  l0.device_experts = {{0, 2, 4, 1}, {1, 3, 0, 4}};
  p.layers = {l0};
  return p;
}

// The error validate_placement raises for `p`, or "" when none.
std::string validation_error(const Placement& p) {
  try {
    validate_placement(p, "p.json");
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

TEST(PlacementReplicas, RoundTripKeepsSlotsAndDeviceExperts) {
  const std::string path = testing::temp_path("roundtrip.json");
  save_placement(replicated(), path);
  const Placement q = load_placement(path, ReplicaPolicy::kAllow);
  EXPECT_EQ(q.slots_per_device, 4);
  EXPECT_TRUE(q.has_replicas());
  EXPECT_EQ(q.layer(0).device_experts, replicated().layers[0].device_experts);
  EXPECT_EQ(q.layer(0).expert_to_device, replicated().layers[0].expert_to_device);
  const nlohmann::json doc = placement_to_json(q);
  EXPECT_EQ(doc["slots_per_device"], 4);
  EXPECT_EQ(doc["layers"][0]["device_experts"][1], (std::vector<int>{1, 3, 0, 4}));
  // The MoE layer's readers refuse it with one sentence naming the file and S.
  try {
    load_placement(path);
    ADD_FAILURE() << "expected the default reader to refuse replicas";
  } catch (const Error& e) {
    EXPECT_EQ(e.message(), "placement " + path +
                               " has replicas (slots_per_device 4); the MoE layer runs placements without replicas");
  }
  std::remove(path.c_str());
}

TEST(PlacementReplicas, OlderFilesAndSlotsWithoutCopiesLoadEverywhere) {
  Placement p = replicated();
  p.layers[0].device_experts.clear();  // no device_experts: each expert on its primary only
  const std::string path = testing::temp_path("plain.json");
  save_placement(p, path);
  const Placement q = load_placement(path);
  EXPECT_FALSE(q.has_replicas());
  EXPECT_EQ(layer_holders(q, q.layer(0)).masks, (std::vector<std::uint64_t>{1, 2, 1, 2, 1}));
  const nlohmann::json doc = placement_to_json(q);
  EXPECT_FALSE(doc["layers"][0].contains("device_experts"));
  std::remove(path.c_str());
}

TEST(PlacementReplicas, BadReplicasAreClearErrors) {
  EXPECT_EQ(validation_error(replicated()), "");
  Placement missing = replicated();
  missing.layers[0].device_experts = {{0, 2, 4}, {1, 0, 4}};  // 3 is nowhere
  EXPECT_NE(validation_error(missing).find("expert 3 is on no device"), std::string::npos);
  Placement overflow = replicated();
  overflow.layers[0].device_experts[1].push_back(2);
  EXPECT_NE(validation_error(overflow).find("device 1 holds 5 experts, over slots_per_device = 4"), std::string::npos);
  Placement duplicate = replicated();
  duplicate.layers[0].device_experts[0] = {0, 2, 4, 2};
  EXPECT_NE(validation_error(duplicate).find("device 0 lists expert 2 twice"), std::string::npos);
  Placement other_e = replicated();
  other_e.layers[0].device_experts[1] = {1, 3, 0, 7};
  const std::string other = validation_error(other_e);
  EXPECT_NE(other.find("layer 0: device 1 holds expert 7, outside [0, num_experts = 5)"), std::string::npos) << other;
  EXPECT_NE(other.find("another number of experts"), std::string::npos) << other;
  Placement primary = replicated();
  primary.layers[0].device_experts = {{0, 2, 4, 3}, {1, 0, 4}};  // 3's primary is device 1
  EXPECT_NE(validation_error(primary).find("expert 3's primary device 1 (expert_to_device) does not list it"),
            std::string::npos);
  Placement devices = replicated();
  devices.layers[0].device_experts.push_back({});
  EXPECT_NE(validation_error(devices).find("device_experts has 3 lists, expected one per device"), std::string::npos);
  Placement small = replicated();
  small.slots_per_device = 2;
  EXPECT_NE(validation_error(small).find("slots_per_device = 2 cannot hold 5 experts on 2 devices"),
            std::string::npos);
  Placement no_slots = replicated();
  no_slots.slots_per_device = 0;
  EXPECT_NE(validation_error(no_slots).find("has \"device_experts\" but the placement has no \"slots_per_device\""),
            std::string::npos);
}

TEST(PlacementReplicas, MetricsHandComputed) {
  // Device 0: 0, 2, 4, +1; device 1: 1, 3, +0, +4. T = 4 tokens, k = 2; homes 0, 0, 1, 1.
  // {0, 1}: covers {0} or {1} -> home 0 -> device 0 for both.
  // {2, 3}: 2 only on 0, 3 only on 1 -> two devices.
  // {0, 4}: {0} or {1} -> home 1 -> device 1.
  // {1, 3}: device 1 holds both (home 1).
  const LayerRouting routing = testing::make_routing(2, {{0, 1}, {2, 3}, {0, 4}, {1, 3}});
  const Placement p = replicated();
  const PlacementMetrics m = compute_replica_metrics(routing, layer_holders(p, p.layer(0)));
  EXPECT_DOUBLE_EQ(m.replicas_per_token, 5.0 / 4);
  // Remote: token 1 (home 0) also touches device 1; the rest stay home.
  EXPECT_DOUBLE_EQ(m.remote_replicas_per_token, 1.0 / 4);
  EXPECT_DOUBLE_EQ(m.intra_collab_ratio, 3.0 / 4);
  // Loads: device 0 = 2 + 1 = 3, device 1 = 1 + 2 + 2 = 5; mean 4.
  EXPECT_DOUBLE_EQ(m.load_imbalance, 5.0 / 4);
  // Primaries alone: {0,1} 2, {2,3} 2, {0,4} 1, {1,3} 1.
  EXPECT_DOUBLE_EQ(compute_placement_metrics(routing, p.layer(0).expert_to_device, 2).replicas_per_token, 6.0 / 4);
}

TEST(PlacementReplicas, MetricsWithoutCopiesEqualThePrimaryMetrics) {
  std::vector<int> group;
  const LayerRouting routing = testing::planted_routing(16, 3, 4, 500, 0.7, 9, &group);
  const std::vector<int> e2d = {0, 1, 2, 3, 0, 1, 2, 3, 3, 2, 1, 0, 3, 2, 1, 0};
  const PlacementMetrics a = compute_placement_metrics(routing, e2d, 4, 2);
  const PlacementMetrics b = compute_replica_metrics(routing, holders_from_primary(e2d, 4), 2);
  EXPECT_EQ(a.replicas_per_token, b.replicas_per_token);
  EXPECT_EQ(a.remote_replicas_per_token, b.remote_replicas_per_token);
  EXPECT_EQ(a.intra_collab_ratio, b.intra_collab_ratio);
  EXPECT_EQ(a.load_imbalance, b.load_imbalance);
  EXPECT_EQ(a.nodes_per_token, b.nodes_per_token);
}

// 50 tokens repeating {0,2} x4, {1,3}: primaries {0, 1} on device 0, {2, 3} on device 1, S = 3.
LayerRouting pairs_routing() {
  LayerRouting r;
  r.top_k = 2;
  for (int t = 0; t < 50; ++t) {
    const bool rare = t % 5 == 4;
    r.topk_ids.push_back(rare ? 1 : 0);
    r.topk_ids.push_back(rare ? 3 : 2);
    ++r.num_tokens;
  }
  return r;
}

PartitionOptions replica_options(double max_imbalance, int chunks) {
  PartitionOptions o;
  o.num_devices = 2;
  o.slots_per_device = 3;
  o.max_imbalance = max_imbalance;
  o.replica_chunks = chunks;
  return o;
}

TEST(PlacementReplicas, SpareSlotsCutDevicesPerToken) {
  // Without a load limit: copying 0 to device 1 puts the 40 {0,2} tokens on one device (ties
  // with copying 2 to device 0 go to the lower expert id); then 3 to device 0 does the same for
  // the ten {1,3} tokens. C_T 2 -> 1.
  const LayerRouting routing = pairs_routing();
  const std::vector<int> primary = {0, 0, 1, 1};
  const auto de = choose_replicas(routing, 4, primary, replica_options(100.0, 1));
  EXPECT_EQ(de, (std::vector<std::vector<int>>{{0, 1, 3}, {2, 3, 0}}));
  EXPECT_DOUBLE_EQ(compute_replica_metrics(routing, holders_from_device_experts(de, primary)).replicas_per_token, 1.0);
}

TEST(PlacementReplicas, TheLoadLimitBlocksCopiesThatOverload) {
  // Loads are 50 / 50. Copying 0 to device 1 would serve 80 + 10 of 100 assignments there
  // (imbalance 1.8); copying 1 or 3 moves the {1,3} tokens onto one device (60 / 40: 1.2). At
  // a limit of 1.1 every copy is worse than none.
  const LayerRouting routing = pairs_routing();
  const std::vector<int> primary = {0, 0, 1, 1};
  const auto de = choose_replicas(routing, 4, primary, replica_options(1.1, 1));
  EXPECT_EQ(de, (std::vector<std::vector<int>>{{0, 1}, {2, 3}}));
}

TEST(PlacementReplicas, CopiesOfTheHotExpertRestoreTheLoadLimit) {
  // k = 1; every 10 tokens: six pick 0, two pick 2, one 1, one 3. Primaries {0,1} | {2,3}:
  // loads 70 / 30 (1.4). A copy of 0 on device 1 lets the second half (home 1) use it:
  // device 0 = 30 + 10 = 40, device 1 = 30 + 20 + 10 = 60 (1.2 <= 1.25). No copy then
  // improves anything (k = 1 saves no devices), so the search stops with device 0's slot free.
  LayerRouting routing;
  routing.top_k = 1;
  const int pattern[10] = {0, 0, 0, 0, 0, 0, 2, 2, 1, 3};
  for (int t = 0; t < 100; ++t) {
    routing.topk_ids.push_back(pattern[t % 10]);
    ++routing.num_tokens;
  }
  const std::vector<int> primary = {0, 0, 1, 1};
  const auto de = choose_replicas(routing, 4, primary, replica_options(1.25, 1));
  EXPECT_EQ(de, (std::vector<std::vector<int>>{{0, 1}, {2, 3, 0}}));
  const ExpertHolders h = holders_from_device_experts(de, primary);
  EXPECT_DOUBLE_EQ(compute_replica_metrics(routing, h).load_imbalance, 1.2);
  EXPECT_DOUBLE_EQ(score_replicas(routing, h, 1, 1.25, 1).chunk_imbalance, 1.2);
}

TEST(PlacementReplicas, GainWeightsHandComputed) {
  // k = 2, E = 4: {0,1} x3, {0,2} x1, {2,3} x4. Loads 4, 3, 5, 4; mean T*k/E = 8*2/4 = 4.
  const LayerRouting routing =
      testing::make_routing(2, {{0, 1}, {0, 1}, {1, 0}, {2, 0}, {2, 3}, {3, 2}, {2, 3}, {2, 3}});
  const CollaborationGraph graph = build_collaboration_graph(routing, 4);
  ASSERT_EQ(graph.num_edges(), 3);  // sets in ascending order: {0,1}, {0,2}, {2,3}
  const std::vector<double> flat0 = replica_gain_weights(graph, 0.0);
  EXPECT_EQ(flat0, (std::vector<double>{3, 1, 4}));
  const std::vector<double> flat1 = replica_gain_weights(graph, 1.0);
  EXPECT_DOUBLE_EQ(flat1[0], 3 * (4.0 / 4) * (4.0 / 3));  // 4
  EXPECT_DOUBLE_EQ(flat1[1], 1 * (4.0 / 4) * (4.0 / 5));  // 0.8
  EXPECT_DOUBLE_EQ(flat1[2], 4 * (4.0 / 5) * (4.0 / 4));  // 3.2
  const std::vector<double> half = replica_gain_weights(graph, 0.5);
  EXPECT_DOUBLE_EQ(half[0], 3 * std::sqrt(4.0 / 3));
  EXPECT_THROW(replica_gain_weights(graph, 1.5), Error);
  EXPECT_THROW(replica_gain_weights(graph, -0.1), Error);

  // Flattened graph: weights scaled to sum to T = 8 and rounded. Flatten 1: 4 + 0.8 + 3.2 = 8,
  // so {4, 1, 3}. Flatten 0.5: 3.464, 0.894, 3.578 (sum 7.936) scaled by 8 / 7.936 -> 3.49,
  // 0.90, 3.61 -> {3, 1, 4}. Loads stay the tokens' own; coactivation follows the new weights.
  const CollaborationGraph flat_one = flatten_collaboration_graph(graph, 1.0);
  EXPECT_EQ(flat_one.edge_weights, (std::vector<std::int64_t>{4, 1, 3}));
  EXPECT_EQ(flat_one.load, graph.load);
  EXPECT_EQ(flat_one.num_tokens, 8);
  EXPECT_EQ(flat_one.coactivation[0 * 4 + 1], 4);
  EXPECT_EQ(flat_one.coactivation[2 * 4 + 0], 1);
  EXPECT_EQ(flat_one.coactivation[3 * 4 + 2], 3);
  EXPECT_EQ(flat_one.coactivation[1 * 4 + 3], 0);
  EXPECT_EQ(flatten_collaboration_graph(graph, 0.5).edge_weights, (std::vector<std::int64_t>{3, 1, 4}));
  EXPECT_EQ(flatten_collaboration_graph(graph, 0.0).edge_weights, graph.edge_weights);
}

TEST(PlacementReplicas, PrimaryFlattenIsCheckedAndNamed) {
  Trace trace;
  trace.num_experts = 16;
  trace.top_k = 3;
  trace.layers.push_back(testing::planted_routing(16, 3, 4, 400, 0.6, 5, nullptr));
  PartitionOptions options;
  options.num_devices = 4;
  options.primary_flatten = 1.5;
  try {
    place_experts(trace, "hypergraph", options);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("--primary-flatten must lie in [0, 1], got 1.5"), std::string::npos) << e.message();
  }
  // Flattened primaries still make a balanced placement within the load limit.
  options.primary_flatten = 0.5;
  const Placement p = place_experts(trace, "hypergraph", options);
  EXPECT_TRUE(is_balanced(p.layer(0).expert_to_device, 4));
  EXPECT_LE(compute_placement_metrics(trace.layers[0], p.layer(0).expert_to_device, 4).load_imbalance,
            options.max_imbalance + 1e-12);
}

// E = 6, k = 2 on D = 2 with S = 4 (one spare slot each): primaries {0, 1, 4} | {2, 3, 5}.
// Tokens: {0,2} x20, {1,3} x8 (both cross devices), {0,4} x60 and {2,5} x60 (each on one
// device). Loads: 0 and 2: 80, 4 and 5: 60, 1 and 3: 8; mean T*k/E = 296/6.
LayerRouting popular_and_rare_routing() {
  LayerRouting r;
  r.top_k = 2;
  const std::pair<std::array<int, 2>, int> runs[] = {{{0, 2}, 20}, {{1, 3}, 8}, {{0, 4}, 60}, {{2, 5}, 60}};
  for (const auto& [set, count] : runs) {
    for (int i = 0; i < count; ++i) {
      r.topk_ids.insert(r.topk_ids.end(), set.begin(), set.end());
      ++r.num_tokens;
    }
  }
  return r;
}

TEST(PlacementReplicas, FlattenRanksCopiesOfRareCoactivationsFirst) {
  const LayerRouting routing = popular_and_rare_routing();
  const std::vector<int> primary = {0, 0, 1, 1, 0, 1};
  PartitionOptions o;
  o.num_devices = 2;
  o.slots_per_device = 4;
  o.max_imbalance = 100.0;
  o.replica_chunks = 1;
  // Flatten 0: copying 0 to device 1 saves 20 devices (ties with 2 to device 0 go to the lower
  // id); device 1 is then full and 3 to device 0 saves the other 8.
  o.replica_flatten = 0.0;
  EXPECT_EQ(choose_replicas(routing, 6, primary, o),
            (std::vector<std::vector<int>>{{0, 1, 4, 3}, {2, 3, 5, 0}}));
  // Flatten 1: a {0,2} token weighs (296/6/80)^2 = 0.38, a {1,3} token (296/6/8)^2 = 38, so the
  // copy of 1 on device 1 (8 * 38 = 304 against 20 * 0.38 = 7.6) comes first, then 2 on device 0.
  o.replica_flatten = 1.0;
  const auto de = choose_replicas(routing, 6, primary, o);
  EXPECT_EQ(de, (std::vector<std::vector<int>>{{0, 1, 4, 2}, {2, 3, 5, 1}}));
  // Both reach one device per token; flatten changes which copies, not whether they help.
  EXPECT_DOUBLE_EQ(compute_replica_metrics(routing, holders_from_device_experts(de, primary)).replicas_per_token, 1.0);
  o.replica_flatten = 2.0;
  try {
    choose_replicas(routing, 6, primary, o);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("--replica-flatten must lie in [0, 1], got 2"), std::string::npos) << e.message();
  }
}

TEST(PlacementReplicas, PlaceExpertsWithSlotsAndNodes) {
  // Two planted layers, E = 16 on D = 4 devices in N = 2 nodes, S = 5: every layer gets valid
  // device_experts; copies never add devices per token (a copy only shrinks minimum covers), on
  // this routing they add no nodes per token either (nodes come before devices in the score), and
  // the calibration load stays within the limit on every chunk.
  Trace trace;
  trace.num_experts = 16;
  trace.top_k = 3;
  for (std::uint64_t seed : {3u, 4u}) {
    trace.layers.push_back(testing::planted_routing(16, 3, 4, 800, 0.6, seed, nullptr));
  }
  PartitionOptions options;
  options.num_devices = 4;
  options.num_nodes = 2;
  options.slots_per_device = 5;
  options.max_imbalance = 1.25;
  const Placement p = place_experts(trace, "hypergraph", options);
  EXPECT_NO_THROW(validate_placement(p, "placed"));
  EXPECT_EQ(p.slots_per_device, 5);
  for (int l = 0; l < 2; ++l) {
    const LayerPlacement& lp = p.layer(l);
    ASSERT_EQ(lp.device_experts.size(), 4u);
    const PlacementMetrics with = compute_replica_metrics(trace.layers[l], layer_holders(p, lp), 2);
    const PlacementMetrics without = compute_placement_metrics(trace.layers[l], lp.expert_to_device, 4, 2);
    EXPECT_LE(with.replicas_per_token, without.replicas_per_token);
    EXPECT_LE(with.nodes_per_token, without.nodes_per_token + 1e-12);
    EXPECT_EQ(lp.metrics["replicas_per_token"].get<double>(), with.replicas_per_token);
    EXPECT_EQ(lp.metrics["primary_replicas_per_token"].get<double>(), without.replicas_per_token);
    EXPECT_LE(score_replicas(trace.layers[l], layer_holders(p, lp), 2, 1.25, options.replica_chunks).excess, 0.0);
  }
  // Too few slots is an error naming the flag.
  options.slots_per_device = 3;
  try {
    place_experts(trace, "hypergraph", options);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("--slots-per-device 3 cannot hold 16 experts on 4 devices"), std::string::npos);
  }
}

}  // namespace
}  // namespace occult
