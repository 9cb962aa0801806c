#include "occult/placement/placement.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "occult/core/error.h"
#include "placement/test_traces.h"

namespace occult {
namespace {

Placement sample() {
  Placement p;
  p.num_experts = 5;
  p.num_devices = 2;
  p.num_nodes = 1;
  p.strategy = "hypergraph";
  LayerPlacement l0;
  l0.layer = 0;
  l0.expert_to_device = {0, 1, 0, 1, 0};
  l0.metrics = {{"replicas_per_token", 1.25}, {"load_imbalance", 1.0}};
  LayerPlacement l1;
  l1.layer = 3;
  l1.expert_to_device = {1, 1, 0, 0, 1};
  for (int i = 0; i < 25; ++i) l1.similarity.push_back(0.5f * static_cast<float>(i % 5));
  p.layers = {l0, l1};
  return p;
}

// Writes `text` to a file and returns the error message load_placement raises for it.
std::string load_error(const std::string& text) {
  const std::string path = testing::temp_path("bad.json");
  {
    std::ofstream out(path);
    out << text;
  }
  try {
    load_placement(path);
  } catch (const Error& e) {
    std::remove(path.c_str());
    EXPECT_NE(e.message().find(path), std::string::npos) << "error must name the file: " << e.message();
    return e.message();
  }
  std::remove(path.c_str());
  ADD_FAILURE() << "expected an error for: " << text;
  return "";
}

TEST(PlacementJson, RoundTripKeepsEveryField) {
  const std::string path = testing::temp_path("roundtrip.json");
  const Placement p = sample();
  save_placement(p, path);
  const Placement q = load_placement(path);
  std::remove(path.c_str());
  EXPECT_EQ(q.num_experts, 5);
  EXPECT_EQ(q.num_devices, 2);
  EXPECT_EQ(q.num_nodes, 1);
  EXPECT_EQ(q.strategy, "hypergraph");
  ASSERT_EQ(q.layers.size(), 2u);
  EXPECT_EQ(q.layers[0].expert_to_device, p.layers[0].expert_to_device);
  EXPECT_EQ(q.layers[0].metrics, p.layers[0].metrics);
  EXPECT_TRUE(q.layers[0].similarity.empty());
  EXPECT_EQ(q.layer(3).expert_to_device, p.layers[1].expert_to_device);
  EXPECT_EQ(q.layer(3).similarity, p.layers[1].similarity);  // multiples of 0.5: exact in JSON
  EXPECT_THROW(q.layer(1), Error);
}

TEST(PlacementJson, DocumentHasTheDesignFields) {
  const nlohmann::json doc = placement_to_json(sample());
  EXPECT_EQ(doc["format"], "occult-placement/1");
  EXPECT_EQ(doc["layers"][1]["layer"], 3);
  EXPECT_EQ(doc["layers"][1]["similarity"].size(), 5u);
  EXPECT_EQ(doc["layers"][1]["similarity"][1].size(), 5u);
  // A flat row-major similarity list is accepted too.
  nlohmann::json flat = doc;
  std::vector<float> values(25, 0.25f);
  flat["layers"][1]["similarity"] = values;
  EXPECT_EQ(placement_from_json(flat, "flat").layer(3).similarity, values);
}

TEST(PlacementJson, ContiguousIsBalanced) {
  const Placement p = contiguous_placement(60, 8, 2);
  validate_placement(p, "contiguous");
  EXPECT_EQ(p.layers[1].expert_to_device[0], 0);
  EXPECT_EQ(p.layers[1].expert_to_device[59], 7);
  EXPECT_EQ(p.layers[1].expert_to_device[8], 1);  // floor(8*8/60) = 1
}

TEST(PlacementJson, MoreDevicesThanExpertsIsBalancedWithEmptyDevices) {
  // floor(4/8) = 0 and ceil(4/8) = 1: four devices hold one expert, four hold none.
  Placement p;
  p.num_experts = 4;
  p.num_devices = 8;
  p.layers = {LayerPlacement{0, {0, 2, 4, 6}, nlohmann::json::object(), {}}};
  EXPECT_NO_THROW(validate_placement(p, "sparse"));
  p.layers[0].expert_to_device = {0, 0, 4, 6};
  EXPECT_THROW(validate_placement(p, "sparse"), Error);
}

TEST(PlacementJson, MalformedInputNamesFileLayerAndField) {
  const std::string head =
      R"({"format": "occult-placement/1", "num_experts": 4, "num_devices": 2, "num_nodes": 1, )"
      R"("strategy": "x", "layers": )";
  EXPECT_NE(load_error("{ not json").find("not valid JSON"), std::string::npos);
  EXPECT_NE(load_error(R"({"format": "other/2"})").find("expected \"occult-placement/1\""),
            std::string::npos);
  EXPECT_NE(load_error(R"({"format": "occult-placement/1", "num_devices": 2, "layers": []})")
                .find("\"num_experts\""),
            std::string::npos);
  EXPECT_NE(load_error(head + "[]}").find("no layers"), std::string::npos);
  const std::string wrong_count = load_error(head + R"([{"layer": 2, "expert_to_device": [0, 1, 0]}]})");
  EXPECT_NE(wrong_count.find("layer 2"), std::string::npos) << wrong_count;
  EXPECT_NE(wrong_count.find("3 entries"), std::string::npos) << wrong_count;
  const std::string out_of_range =
      load_error(head + R"([{"layer": 0, "expert_to_device": [0, 1, 2, 1]}]})");
  EXPECT_NE(out_of_range.find("expert 2 is on device 2"), std::string::npos) << out_of_range;
  const std::string unbalanced =
      load_error(head + R"([{"layer": 0, "expert_to_device": [0, 0, 0, 1]}]})");
  EXPECT_NE(unbalanced.find("device 0 holds 3 experts"), std::string::npos) << unbalanced;
  EXPECT_NE(load_error(head + R"([{"layer": 0, "expert_to_device": [0, 0, 1, 1]},)"
                              R"({"layer": 0, "expert_to_device": [0, 0, 1, 1]}]})")
                .find("layer 0 appears twice"),
            std::string::npos);
  EXPECT_NE(load_error(head + R"([{"layer": 0, "expert_to_device": [0, 0, 1, "a"]}]})")
                .find("expected integer device ids"),
            std::string::npos);
  EXPECT_NE(load_error(head + R"([{"layer": 1, "expert_to_device": [0, 0, 1, 1], )"
                              R"("similarity": [[1, 0], [0, 1]]}]})")
                .find("similarity has 2 rows, expected 4"),
            std::string::npos);
  EXPECT_NE(load_error(R"({"format": "occult-placement/1", "num_experts": 4, "num_devices": 2, )"
                       R"("num_nodes": 3, "layers": [{"layer": 0, "expert_to_device": [0,0,1,1]}]})")
                .find("num_nodes"),
            std::string::npos);
  EXPECT_NE(load_error(head + R"([{"layer": 0, "expert_to_device": [0, 0, 1, 1], "metrics": 3}]})")
                .find("\"metrics\" must be an object"),
            std::string::npos);
  EXPECT_THROW(load_placement(testing::temp_path("does-not-exist.json")), Error);
}

}  // namespace
}  // namespace occult
