// Collaboration pruning on the shipped real routing (DeepSeek-V2-Lite, E = 64, k = 6, weights
// only) with a hypergraph placement at D = 4: the budget holds, C_T <= M, and the fast path
// equals the reference twin on routing nobody here generated.
#include <gtest/gtest.h>

#include <cstdlib>
#include <set>
#include <string>

#include "occult/placement/place.h"
#include "occult/routing/pruning.h"
#include "occult/routing/similarity.h"
#include "occult/routing/trace.h"
#include "routing/reference.h"

namespace occult {
namespace {

// Three layers of the intent trace (first, middle, last) keep the test under a second.
Trace sample_trace() {
  const char* root = std::getenv("OCCULT_SOURCE_DIR");
  const std::string dir = root ? root : ".";
  const Trace full = load_trace(dir + "/data/traces/dsv2lite-esft-intent.safetensors");
  Trace t = full;
  t.layers = {full.layers[0], full.layers[13], full.layers[25]};
  return t;
}

TEST(PruningRealTrace, HypergraphPlacementAtFourDevicesMeetsEveryBudget) {
  const Trace trace = sample_trace();
  ASSERT_EQ(trace.num_experts, 64);
  ASSERT_EQ(trace.top_k, 6);
  PartitionOptions options;
  options.num_devices = 4;
  const Placement placement = place_experts(trace, "hypergraph", options);
  const std::vector<std::vector<float>> similarity = trace_similarity({trace}, {"intent"});
  PruneWorkspace ws;
  for (PruneScheme scheme : {PruneScheme::kScore, PruneScheme::kSimilarity, PruneScheme::kDeviceLimited}) {
    for (int m = 1; m <= 4; ++m) {
      PruneConfig config;
      config.num_experts = 64;
      config.top_k = 6;
      config.num_devices = 4;
      config.max_devices = m;
      config.scheme = scheme;
      for (int l = 0; l < trace.num_layers(); ++l) {
        SCOPED_TRACE(testing::Message() << prune_scheme_name(scheme) << " M=" << m << " layer " << l);
        LayerRouting fast = trace.layers[l];
        LayerRouting slow = trace.layers[l];
        const std::vector<int>& e2d = placement.layers[l].expert_to_device;
        const PruneStats stats = prune_routing(fast.topk_ids, fast.topk_weights, {}, fast.num_tokens, e2d,
                                               similarity[l], config, ws);
        reference::prune_routing(slow.topk_ids, slow.topk_weights, {}, slow.num_tokens, e2d, similarity[l],
                                 config);
        ASSERT_EQ(fast.topk_ids, slow.topk_ids);
        ASSERT_EQ(fast.topk_weights, slow.topk_weights);
        EXPECT_LE(stats.replicas_per_token_after(), m);
        EXPECT_GT(stats.replicas_per_token_before(), 2.0);  // real routing spreads out
        if (m < 4) {
          EXPECT_GT(stats.tokens_changed, 0);
        } else {
          EXPECT_EQ(stats.tokens_changed, 0);
        }
        // The pruned layer is a valid trace layer whose metrics agree with the stats.
        Trace check = trace;
        check.layers = {fast};
        validate_trace(check, "pruned");
        const PlacementMetrics metrics = compute_placement_metrics(fast, e2d, 4);
        EXPECT_NEAR(metrics.replicas_per_token, stats.replicas_per_token_after(), 1e-12);
        for (std::int64_t t = 0; t < fast.num_tokens; ++t) {
          std::set<int> devices;
          for (int j = 0; j < 6; ++j) devices.insert(e2d[fast.ids_of(t)[j]]);
          ASSERT_LE(static_cast<int>(devices.size()), m) << "token " << t;
        }
      }
    }
  }
}

}  // namespace
}  // namespace occult
