// The fixture's round-robin placements pass occult's own placement reader, for every
// architecture case and device count the logits script uses.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "hf/hf_fixture_writer.h"
#include "occult/placement/placement.h"

namespace occult::hf {
namespace {

TEST(HfPlacement, RoundRobinPlacementsAreValidForEveryArch) {
  const auto root =
      std::filesystem::temp_directory_path() / ("hf_placement_test_" + std::to_string(::getpid()));
  for (const char* arch : {"olmoe", "qwen2_moe", "deepseek", "qwen3_moe", "mixtral"}) {
    for (const char* variant : {"default", "alt"}) {
      FixtureOptions o;
      o.arch = arch;
      o.variant = variant;
      const std::string dir = (root / (std::string(arch) + variant)).string();
      write_fixture(o, dir);
      for (int devices = 1; devices <= 4; ++devices) {
        const nlohmann::ordered_json doc = round_robin_placement(dir, devices);
        const Placement p = placement_from_json(nlohmann::json::parse(doc.dump()), dir);
        EXPECT_EQ(p.num_devices, devices) << arch << " " << variant;
        EXPECT_EQ(p.num_experts, 8) << arch << " " << variant;
        for (const LayerPlacement& lp : p.layers) {
          for (int e = 0; e < 8; ++e) EXPECT_EQ(lp.expert_to_device[e], e % devices);
        }
      }
    }
  }
  std::filesystem::remove_all(root);
}

}  // namespace
}  // namespace occult::hf
