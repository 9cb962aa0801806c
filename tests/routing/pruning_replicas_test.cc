// Collaboration pruning with replicated experts: hand-computed tokens and the fast path
// against its naive twin on random replicated placements.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <set>
#include <vector>

#include "occult/core/error.h"
#include "occult/routing/pruning.h"
#include "occult/routing/replicas.h"
#include "routing/reference.h"

namespace occult {
namespace {

using DeviceExperts = std::vector<std::vector<int>>;

// E = 8 on D = 4, primaries device = expert / 2.
const std::vector<int> kPairs = {0, 0, 1, 1, 2, 2, 3, 3};

PruneConfig config_for(PruneScheme scheme, int max_devices) {
  PruneConfig config;
  config.num_experts = 8;
  config.top_k = 4;
  config.num_devices = 4;
  config.max_devices = max_devices;
  config.scheme = scheme;
  return config;
}

struct Token {
  std::vector<std::int32_t> ids;
  std::vector<float> weights;
  std::vector<float> probs;
};

// Prunes with the fast path and the twin; requires them to agree exactly.
PruneStats run_both(Token& token, const DeviceExperts& device_experts, std::span<const int> primary,
                    const PruneConfig& config) {
  Token ref = token;
  const std::int64_t t = static_cast<std::int64_t>(token.ids.size()) / config.top_k;
  PruneWorkspace ws;
  const ExpertHolders holders = holders_from_device_experts(device_experts, primary);
  const PruneStats fast = prune_routing(token.ids, token.weights, token.probs, t, holders, {}, config, ws);
  const PruneStats slow =
      reference::prune_routing(ref.ids, ref.weights, ref.probs, t, device_experts, primary, {}, config);
  EXPECT_EQ(token.ids, ref.ids);
  EXPECT_EQ(token.weights, ref.weights);
  EXPECT_EQ(fast.devices_before, slow.devices_before);
  EXPECT_EQ(fast.devices_after, slow.devices_after);
  EXPECT_EQ(fast.selections_replaced, slow.selections_replaced);
  EXPECT_EQ(fast.gate_mass_retained, slow.gate_mass_retained);
  return fast;
}

TEST(PruningReplicas, AKeptDeviceServesItsReplica) {
  // Device 0 also holds expert 4. Token 0, 2, 4, 5 (p .30 .25 .20 .15): holders {0}, {1},
  // {0, 2}, {2}: three devices. Walk: keep 0, keep 1, 4 is on kept device 0, 5 is not and the
  // budget is spent. Only 5 is replaced, by the best unselected expert on 0 or 1: 1 (p .02).
  const DeviceExperts de = {{0, 1, 4}, {2, 3}, {4, 5}, {6, 7}};
  Token token{{0, 2, 4, 5}, {0.30f, 0.25f, 0.20f, 0.15f}, {0.30f, 0.02f, 0.25f, 0.01f, 0.20f, 0.15f, 0.04f, 0.03f}};
  const PruneStats stats = run_both(token, de, kPairs, config_for(PruneScheme::kScore, 2));
  EXPECT_EQ(token.ids, (std::vector<std::int32_t>{0, 2, 4, 1}));
  EXPECT_EQ(stats.selections_replaced, 1);
  EXPECT_EQ(stats.devices_before, 3);
  EXPECT_EQ(stats.devices_after, 2);
  EXPECT_EQ(stats.gate_mass_retained, double{0.30f} + double{0.25f} + double{0.20f});
}

TEST(PruningReplicas, ATokenThatFitsThroughAReplicaIsUntouched) {
  // 0, 2, 4, 1: three primary devices, but device 0's copy of 4 covers it with {0, 1}.
  const DeviceExperts de = {{0, 1, 4}, {2, 3}, {4, 5}, {6, 7}};
  Token token{{0, 2, 4, 1}, {0.30f, 0.25f, 0.20f, 0.02f}, {}};
  const PruneStats stats = run_both(token, de, kPairs, config_for(PruneScheme::kScore, 2));
  EXPECT_EQ(token.ids, (std::vector<std::int32_t>{0, 2, 4, 1}));
  EXPECT_EQ(stats.tokens_changed, 0);
  EXPECT_EQ(stats.devices_before, 2);
}

TEST(PruningReplicas, KeptHolderIsTheOneHoldingMostOfTheToken) {
  // Expert 0 on devices 0 and 1; device 1 also holds the token's 2, so it is kept for 0. Then
  // 4 keeps device 2, and 6 (device 3) is replaced by the best unselected expert on devices 1
  // and 2: 5 (p .03) over 3 (p .02).
  const DeviceExperts de = {{0, 1}, {2, 3, 0}, {4, 5}, {6, 7}};
  Token token{{0, 2, 4, 6}, {}, {0.30f, 0.01f, 0.25f, 0.02f, 0.20f, 0.03f, 0.15f, 0.04f}};
  const PruneStats stats = run_both(token, de, kPairs, config_for(PruneScheme::kScore, 2));
  EXPECT_EQ(token.ids, (std::vector<std::int32_t>{0, 2, 4, 5}));
  EXPECT_EQ(stats.devices_after, 2);
}

TEST(PruningReplicas, DeviceLimitedScoresEveryCopy) {
  // Device scores (the best ceil(4/2) = 2 p among the experts each holds): device 0 holds 0, 1
  // and a copy of 4: .30 + .20; device 1: .25 + .12; device 2: .20 + .15; device 3: .04 + .03.
  // Kept {0, 1} (without the copy device 0 would score .31 and lose to 1 and 2). 5 is on
  // neither and is replaced by the best unselected expert there: 3 (p .12) over 1 (p .01).
  const DeviceExperts de = {{0, 1, 4}, {2, 3}, {4, 5}, {6, 7}};
  Token token{{0, 2, 4, 5}, {0.30f, 0.25f, 0.20f, 0.15f}, {0.30f, 0.01f, 0.25f, 0.12f, 0.20f, 0.15f, 0.04f, 0.03f}};
  run_both(token, de, kPairs, config_for(PruneScheme::kDeviceLimited, 2));
  EXPECT_EQ(token.ids, (std::vector<std::int32_t>{0, 2, 4, 3}));
}

TEST(PruningReplicas, NodeBudgetWithReplicasIsAClearError) {
  const DeviceExperts de = {{0, 1, 4}, {2, 3}, {4, 5}, {6, 7}};
  PruneConfig config = config_for(PruneScheme::kScore, 2);
  config.num_nodes = 2;
  config.max_nodes = 1;
  Token token{{0, 2, 4, 5}, {}, {}};
  PruneWorkspace ws;
  try {
    prune_routing(token.ids, token.weights, token.probs, 1, holders_from_device_experts(de, kPairs), {}, config, ws);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("node budget (max_nodes = 1) is not supported with replicas"), std::string::npos)
        << e.message();
  }
}

TEST(PruningReplicas, RandomPlacementsMatchTheTwin) {
  std::mt19937_64 rng(77);
  PruneWorkspace ws;
  int pruned = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const int d = 2 + static_cast<int>(rng() % 5);
    const int e = d + static_cast<int>(rng() % 11);
    const int k = 1 + static_cast<int>(rng() % std::min(4, e));
    const int slots = (e + d - 1) / d + static_cast<int>(rng() % 3);
    std::vector<int> primary(e);
    std::vector<int> perm(e);
    for (int x = 0; x < e; ++x) perm[x] = x;
    std::shuffle(perm.begin(), perm.end(), rng);
    DeviceExperts de(d);
    for (int i = 0; i < e; ++i) {
      primary[perm[i]] = i * d / e;
      de[i * d / e].push_back(perm[i]);
    }
    for (int r = 0; r < 3 * d; ++r) {
      const int x = static_cast<int>(rng() % e);
      const int dev = static_cast<int>(rng() % d);
      if (static_cast<int>(de[dev].size()) < slots && std::find(de[dev].begin(), de[dev].end(), x) == de[dev].end()) {
        de[dev].push_back(x);
      }
    }
    PruneConfig config;
    config.num_experts = e;
    config.top_k = k;
    config.num_devices = d;
    config.max_devices = 1 + static_cast<int>(rng() % d);
    config.scheme = static_cast<PruneScheme>(rng() % 3);
    const bool probs = rng() % 4 != 0;
    config.weights = probs && rng() % 2 == 0 ? PruneWeights::kRecompute : PruneWeights::kKeep;
    config.norm_topk_prob = rng() % 2 == 0;
    if (min_kept_capacity(config, primary) < k) continue;
    std::vector<float> similarity;
    if (config.scheme == PruneScheme::kSimilarity) {
      similarity.resize(static_cast<std::size_t>(e) * e);
      for (int a = 0; a < e; ++a) {
        for (int b = 0; b <= a; ++b) {
          similarity[a * e + b] = similarity[b * e + a] = a == b ? 1.0f : static_cast<float>(rng() % 5) / 4.0f;
        }
      }
    }
    const std::int64_t tokens = 30;
    Token fast;
    for (std::int64_t t = 0; t < tokens; ++t) {
      std::vector<float> p(e);
      // Quarter steps: ties in p are common, so the tie rules are exercised.
      for (float& v : p) v = static_cast<float>(1 + rng() % 8) / 8.0f;
      std::vector<int> order(e);
      for (int x = 0; x < e; ++x) order[x] = x;
      std::sort(order.begin(), order.end(), [&](int a, int b) { return p[a] != p[b] ? p[a] > p[b] : a < b; });
      for (int j = 0; j < k; ++j) {
        fast.ids.push_back(order[j]);
        fast.weights.push_back(p[order[j]]);
      }
      if (probs) fast.probs.insert(fast.probs.end(), p.begin(), p.end());
    }
    const ExpertHolders holders = holders_from_device_experts(de, primary);
    const Token original = fast;
    Token slow = fast;
    SCOPED_TRACE(testing::Message() << "trial " << trial << " E=" << e << " D=" << d << " k=" << k
                                    << " M=" << config.max_devices << " scheme " << prune_scheme_name(config.scheme));
    const PruneStats fs =
        prune_routing(fast.ids, fast.weights, fast.probs, tokens, holders, similarity, config, ws);
    const PruneStats ss =
        reference::prune_routing(slow.ids, slow.weights, slow.probs, tokens, de, primary, similarity, config);
    ASSERT_EQ(fast.ids, slow.ids);
    ASSERT_TRUE(std::memcmp(fast.weights.data(), slow.weights.data(), fast.weights.size() * sizeof(float)) == 0);
    ASSERT_EQ(fs.tokens_changed, ss.tokens_changed);
    ASSERT_EQ(fs.selections_replaced, ss.selections_replaced);
    ASSERT_EQ(fs.devices_before, ss.devices_before);
    ASSERT_EQ(fs.devices_after, ss.devices_after);
    ASSERT_EQ(fs.gate_mass_retained, ss.gate_mass_retained);
    for (std::int64_t t = 0; t < tokens; ++t) {
      const std::span<const std::int32_t> row(fast.ids.data() + t * k, k);
      // k distinct experts that fit on M devices; tokens that already fit are unchanged.
      ASSERT_EQ(std::set<int>(row.begin(), row.end()).size(), static_cast<std::size_t>(k));
      ASSERT_LE(min_cover_devices(holders, row), config.max_devices);
      const std::span<const std::int32_t> before(original.ids.data() + t * k, k);
      if (min_cover_devices(holders, before) <= config.max_devices) {
        ASSERT_TRUE(std::equal(row.begin(), row.end(), before.begin()));
      }
    }
    pruned += static_cast<int>(fs.tokens_changed);
  }
  EXPECT_GT(pruned, 500);  // the comparison exercised real pruning, not only untouched tokens
}

}  // namespace
}  // namespace occult
