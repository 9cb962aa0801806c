#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "occult/core/error.h"
#include "occult/routing/statistics.h"
#include "occult/routing/synth.h"
#include "occult/routing/trace.h"

namespace occult {
namespace {

using ::testing::HasSubstr;

SynthOptions small_options() {
  SynthOptions o;
  o.num_experts = 16;
  o.top_k = 3;
  o.num_layers = 2;
  o.num_tokens = 2000;
  o.num_groups = 4;
  o.group_affinity = 0.9;
  o.seed = 7;
  return o;
}

TEST(SynthTrace, DeterministicForASeed) {
  const SynthTrace a = synthesize_trace(small_options());
  const SynthTrace b = synthesize_trace(small_options());
  for (int l = 0; l < 2; ++l) {
    EXPECT_EQ(a.trace.layers[l].topk_ids, b.trace.layers[l].topk_ids);
    EXPECT_EQ(a.trace.layers[l].topk_weights, b.trace.layers[l].topk_weights);
  }
  EXPECT_EQ(a.expert_group, b.expert_group);
  EXPECT_EQ(a.token_group, b.token_group);
  SynthOptions other = small_options();
  other.seed = 8;
  EXPECT_NE(synthesize_trace(other).trace.layers[0].topk_ids, a.trace.layers[0].topk_ids);
  // Recording router_probs draws from its own stream: the routing itself does not change.
  SynthOptions with_probs = small_options();
  with_probs.router_probs = true;
  EXPECT_EQ(synthesize_trace(with_probs).trace.layers[1].topk_ids, a.trace.layers[1].topk_ids);
}

TEST(SynthTrace, ValidShapeAndMetadata) {
  const SynthTrace s = synthesize_trace(small_options());
  EXPECT_NO_THROW(validate_trace(s.trace, "synth"));
  EXPECT_EQ(s.trace.num_experts, 16);
  EXPECT_EQ(s.trace.top_k, 3);
  EXPECT_EQ(s.trace.num_layers(), 2);
  EXPECT_EQ(s.trace.num_tokens(), 2000);
  EXPECT_EQ(s.trace.model, "synthetic");
  EXPECT_THAT(s.trace.extra_metadata.at("synth"), HasSubstr("groups=4"));
  ASSERT_EQ(s.token_group.size(), 2000u);
  for (const LayerRouting& layer : s.trace.layers) {
    ASSERT_TRUE(layer.has_weights());
    for (std::int64_t t = 0; t < layer.num_tokens; ++t) {
      double sum = 0.0;
      for (int j = 0; j < 3; ++j) {
        const float w = layer.topk_weights[t * 3 + j];
        EXPECT_GT(w, 0.0f);
        if (j > 0) {
          ASSERT_GT(layer.topk_weights[t * 3 + j - 1], w) << "token " << t;
        }
        sum += w;
      }
      EXPECT_LT(sum, 1.0);
    }
  }
}

TEST(SynthTrace, GroupsHaveEqualSizeAndAreShuffled) {
  const SynthTrace s = synthesize_trace(small_options());
  for (int l = 0; l < 2; ++l) {
    std::vector<int> sizes(4, 0);
    for (int g : s.expert_group[l]) {
      ASSERT_GE(g, 0);
      ASSERT_LT(g, 4);
      ++sizes[g];
    }
    EXPECT_EQ(sizes, (std::vector<int>{4, 4, 4, 4}));
    std::vector<int> contiguous(16);
    for (int e = 0; e < 16; ++e) contiguous[e] = e / 4;
    EXPECT_NE(s.expert_group[l], contiguous) << "groups must not be runs of contiguous ids";
  }
  EXPECT_NE(s.expert_group[0], s.expert_group[1]) << "each layer has its own shuffle";
}

// Fraction of all picks that lie in the picking token's own planted group.
double own_group_fraction(const SynthTrace& s, int layer) {
  const LayerRouting& r = s.trace.layers[layer];
  std::int64_t own = 0;
  for (std::int64_t t = 0; t < r.num_tokens; ++t) {
    for (int j = 0; j < r.top_k; ++j) own += s.expert_group[layer][r.ids_of(t)[j]] == s.token_group[t];
  }
  return static_cast<double>(own) / static_cast<double>(r.topk_ids.size());
}

TEST(SynthTrace, AffinityControlsOwnGroupPicks) {
  SynthOptions o = small_options();
  o.group_affinity = 1.0;
  const SynthTrace all_own = synthesize_trace(o);
  EXPECT_EQ(own_group_fraction(all_own, 0), 1.0);
  EXPECT_EQ(own_group_fraction(all_own, 1), 1.0);

  o.group_affinity = 0.0;
  EXPECT_EQ(own_group_fraction(synthesize_trace(o), 0), 0.0);

  // 6000 Bernoulli(0.9) picks: standard deviation 0.0039; 5 sigma is 0.02.
  o.group_affinity = 0.9;
  EXPECT_NEAR(own_group_fraction(synthesize_trace(o), 0), 0.9, 0.02);
}

TEST(SynthTrace, ExhaustedPoolsStillGiveDistinctExperts) {
  SynthOptions o;
  o.num_experts = 4;
  o.top_k = 4;
  o.num_groups = 2;
  o.group_affinity = 1.0;  // only 2 experts in the own group: the other 2 must come from outside
  o.num_tokens = 50;
  const SynthTrace s = synthesize_trace(o);
  EXPECT_NO_THROW(validate_trace(s.trace, "synth"));
  for (std::int64_t t = 0; t < 50; ++t) {
    const std::int32_t* ids = s.trace.layers[0].ids_of(t);
    // The first two picks are the token's own group, the rest necessarily the other group.
    EXPECT_EQ(s.expert_group[0][ids[0]], s.token_group[t]);
    EXPECT_EQ(s.expert_group[0][ids[1]], s.token_group[t]);
    EXPECT_NE(s.expert_group[0][ids[2]], s.token_group[t]);
  }
  o.num_groups = 1;
  o.top_k = 4;
  EXPECT_NO_THROW(synthesize_trace(o));
}

TEST(SynthTrace, HotExpertsCarrySkewedLoad) {
  SynthOptions o = small_options();
  o.num_groups = 1;
  o.num_tokens = 4000;
  o.hot_experts = 2;
  o.hot_skew = 8.0;  // weights 9 and 5 against 1
  const SynthTrace s = synthesize_trace(o);
  ASSERT_EQ(s.hot_experts[0].size(), 2u);
  const auto load = expert_load(s.trace.layers[0], 16);
  std::vector<std::int64_t> sorted = load;
  std::sort(sorted.begin(), sorted.end());
  const std::int64_t median = sorted[8];
  const int hottest = s.hot_experts[0][0];
  const int second = s.hot_experts[0][1];
  EXPECT_GT(load[hottest], 2 * median);
  EXPECT_GT(load[second], 2 * median);
  EXPECT_GT(load[hottest], load[second]);
  EXPECT_EQ(sorted.back(), load[hottest]);

  o.hot_experts = 0;
  const auto flat = expert_load(synthesize_trace(o).trace.layers[0], 16);
  const auto [lo, hi] = std::minmax_element(flat.begin(), flat.end());
  // 12000 picks over 16 experts: 750 each, standard deviation about 26.
  EXPECT_LT(*hi - *lo, 250);
}

TEST(SynthTrace, RouterProbsAgreeWithTopKAndWeights) {
  SynthOptions o = small_options();
  o.router_probs = true;
  o.num_tokens = 300;
  const SynthTrace s = synthesize_trace(o);
  for (const LayerRouting& layer : s.trace.layers) {
    ASSERT_TRUE(layer.has_router_probs());
    for (std::int64_t t = 0; t < layer.num_tokens; ++t) {
      const float* p = layer.router_probs.data() + t * 16;
      double sum = 0.0;
      for (int e = 0; e < 16; ++e) sum += p[e];
      EXPECT_NEAR(sum, 1.0, 1e-5);
      // The chosen experts are the top-k of p, in order, and their weights are their p.
      std::vector<int> order(16);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
      for (int j = 0; j < 3; ++j) {
        ASSERT_EQ(order[j], layer.ids_of(t)[j]) << "token " << t;
        EXPECT_EQ(layer.topk_weights[t * 3 + j], p[order[j]]);
      }
      EXPECT_GT(p[order[2]], p[order[3]]);  // strict: no tie at the top-k boundary
      // The unchosen probabilities are spread out, not piled up on one capped value.
      std::vector<float> rest(p, p + 16);
      for (int j = 0; j < 3; ++j) rest[layer.ids_of(t)[j]] = -1.0f;
      std::sort(rest.begin(), rest.end());
      EXPECT_EQ(std::unique(rest.begin() + 3, rest.end()) - (rest.begin() + 3), 13) << "token " << t;
    }
  }
}

TEST(SynthTrace, SequenceLengths) {
  SynthOptions o = small_options();
  o.sequence_length = 100;
  const SynthTrace s = synthesize_trace(o);
  ASSERT_FALSE(s.trace.sequence_lengths.empty());
  EXPECT_EQ(std::accumulate(s.trace.sequence_lengths.begin(), s.trace.sequence_lengths.end(), 0), 2000);
  for (std::size_t i = 0; i + 1 < s.trace.sequence_lengths.size(); ++i) {
    EXPECT_GE(s.trace.sequence_lengths[i], 50);
    EXPECT_LE(s.trace.sequence_lengths[i], 150);
  }
  EXPECT_TRUE(synthesize_trace(small_options()).trace.sequence_lengths.empty());
}

TEST(SynthTrace, PlantedPlacementIsBalancedAndOnlyForGDevices) {
  const SynthTrace s = synthesize_trace(small_options());
  const std::vector<int> placement = planted_expert_to_device(s, 1, 4);
  EXPECT_EQ(placement, s.expert_group[1]);
  EXPECT_THROW(planted_expert_to_device(s, 1, 8), Error);
  EXPECT_THROW(planted_expert_to_device(s, 2, 4), Error);
  try {
    planted_expert_to_device(s, 0, 2);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_THAT(e.message(), HasSubstr("4 planted groups"));
  }
}

TEST(SynthTrace, RejectsBadOptionsNamingTheFlag) {
  auto error_for = [](auto mutate) {
    SynthOptions o = small_options();
    mutate(o);
    try {
      synthesize_trace(o);
    } catch (const Error& e) {
      return e.message();
    }
    return std::string("no error");
  };
  EXPECT_THAT(error_for([](SynthOptions& o) { o.num_experts = 0; }), HasSubstr("--experts"));
  EXPECT_THAT(error_for([](SynthOptions& o) { o.top_k = 17; }), HasSubstr("--top-k is 17"));
  EXPECT_THAT(error_for([](SynthOptions& o) { o.num_layers = 0; }), HasSubstr("--layers"));
  EXPECT_THAT(error_for([](SynthOptions& o) { o.num_tokens = 0; }), HasSubstr("--tokens"));
  EXPECT_THAT(error_for([](SynthOptions& o) { o.num_groups = 3; }), HasSubstr("--groups is 3"));
  EXPECT_THAT(error_for([](SynthOptions& o) { o.group_affinity = 1.5; }), HasSubstr("--affinity"));
  EXPECT_THAT(error_for([](SynthOptions& o) { o.hot_experts = 17; }), HasSubstr("--hot-experts"));
  EXPECT_THAT(error_for([](SynthOptions& o) { o.hot_skew = -1; }), HasSubstr("--hot-skew"));
  EXPECT_THAT(error_for([](SynthOptions& o) { o.sequence_length = -1; }), HasSubstr("--seq-len"));
}

}  // namespace
}  // namespace occult
