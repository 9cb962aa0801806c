#include "occult/routing/pruning.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <set>
#include <vector>

#include "occult/core/error.h"
#include "occult/routing/gating.h"
#include "routing/reference.h"

// Counts heap allocations in this test binary, to prove the fast path allocates per call
// (validation) but never per token.
// GCC cannot see that these replacements pair malloc with free.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
static std::atomic<std::int64_t> g_allocations{0};
void* operator new(std::size_t size) {
  ++g_allocations;
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace occult {
namespace {

// E = 8 on D = 4 devices, two experts each: device = expert / 2.
const std::vector<int> kPairs = {0, 0, 1, 1, 2, 2, 3, 3};

PruneConfig config_for(PruneScheme scheme, int max_devices, int k = 4) {
  PruneConfig config;
  config.num_experts = 8;
  config.top_k = k;
  config.num_devices = 4;
  config.max_devices = max_devices;
  config.scheme = scheme;
  return config;
}

struct Routing {
  std::vector<std::int32_t> ids;
  std::vector<float> weights;
  std::vector<float> probs;
};

// One token: p over 8 experts; selected 0, 2, 4, 5 (devices 0, 1, 2, 2) with weights = p.
Routing example_token() {
  Routing r;
  r.probs = {0.30f, 0.02f, 0.25f, 0.01f, 0.20f, 0.15f, 0.04f, 0.03f};
  r.ids = {0, 2, 4, 5};
  r.weights = {0.30f, 0.25f, 0.20f, 0.15f};
  return r;
}

// Runs the fast path and the reference twin on copies; requires them to agree exactly.
PruneStats run_both(Routing& r, std::span<const int> placement, const PruneConfig& config,
                    std::span<const float> similarity = {}, bool use_probs = true,
                    bool use_weights = true) {
  Routing ref = r;
  if (!use_probs) r.probs.clear(), ref.probs.clear();
  if (!use_weights) r.weights.clear(), ref.weights.clear();
  const std::int64_t t = static_cast<std::int64_t>(r.ids.size()) / config.top_k;
  PruneWorkspace ws;
  const PruneStats fast = prune_routing(r.ids, r.weights, r.probs, t, placement, similarity, config, ws);
  const PruneStats slow =
      reference::prune_routing(ref.ids, ref.weights, ref.probs, t, placement, similarity, config);
  EXPECT_EQ(r.ids, ref.ids);
  EXPECT_EQ(r.weights, ref.weights);
  EXPECT_EQ(fast.tokens_changed, slow.tokens_changed);
  EXPECT_EQ(fast.devices_after, slow.devices_after);
  EXPECT_EQ(fast.gate_mass_retained, slow.gate_mass_retained);
  return fast;
}

TEST(Pruning, ScoreSchemeHandComputed) {
  Routing r = example_token();
  // Walk 0 (dev 0), 2 (dev 1): kept {0, 1}. Experts 4, 5 (dev 2) are replaced by the best
  // unselected experts on devices 0 and 1: 1 (p 0.02) then 3 (p 0.01); weights are kept.
  const PruneStats stats = run_both(r, kPairs, config_for(PruneScheme::kScore, 2));
  EXPECT_EQ(r.ids, (std::vector<std::int32_t>{0, 2, 1, 3}));
  EXPECT_EQ(r.weights, (std::vector<float>{0.30f, 0.25f, 0.20f, 0.15f}));
  EXPECT_EQ(stats.num_tokens, 1);
  EXPECT_EQ(stats.tokens_changed, 1);
  EXPECT_EQ(stats.selections_replaced, 2);
  EXPECT_EQ(stats.devices_before, 3);
  EXPECT_EQ(stats.devices_after, 2);
  const double total = double{0.30f} + double{0.25f} + double{0.20f} + double{0.15f};
  EXPECT_EQ(stats.gate_mass_total, total);
  EXPECT_EQ(stats.gate_mass_retained, double{0.30f} + double{0.25f});
  EXPECT_DOUBLE_EQ(stats.retained_gate_mass(), (double{0.30f} + double{0.25f}) / total);
  EXPECT_EQ(stats.fraction_selections_replaced(4), 0.5);
}

TEST(Pruning, ScoreSchemeCandidateOrderAndTies) {
  Routing r = example_token();
  r.probs[3] = 0.05f;  // now 3 outranks 1 among the candidates
  run_both(r, kPairs, config_for(PruneScheme::kScore, 2));
  EXPECT_EQ(r.ids, (std::vector<std::int32_t>{0, 2, 3, 1}));

  Routing tie = example_token();
  tie.probs[1] = tie.probs[3] = 0.015f;  // tie: the lower id takes the higher-weight slot
  run_both(tie, kPairs, config_for(PruneScheme::kScore, 2));
  EXPECT_EQ(tie.ids, (std::vector<std::int32_t>{0, 2, 1, 3}));

  // A tie in the walk: experts 2 (dev 1) and 4 (dev 2) both have p 0.25; the lower id is met
  // first, so devices 0 and 1 are kept and 4, 5 are replaced.
  Routing walk = example_token();
  walk.probs[4] = 0.25f;
  walk.weights[2] = 0.25f;
  run_both(walk, kPairs, config_for(PruneScheme::kScore, 2));
  EXPECT_EQ(walk.ids, (std::vector<std::int32_t>{0, 2, 1, 3}));
}

TEST(Pruning, ScoreSchemeRecomputeWeights) {
  Routing r = example_token();
  PruneConfig config = config_for(PruneScheme::kScore, 2);
  config.weights = PruneWeights::kRecompute;
  run_both(r, kPairs, config);
  EXPECT_EQ(r.ids, (std::vector<std::int32_t>{0, 2, 1, 3}));
  EXPECT_EQ(r.weights, (std::vector<float>{0.30f, 0.25f, 0.02f, 0.01f}));

  Routing normed = example_token();
  config.norm_topk_prob = true;
  run_both(normed, kPairs, config);
  const float sum = ((0.30f + 0.25f) + 0.02f) + 0.01f;
  EXPECT_EQ(normed.weights, (std::vector<float>{0.30f / sum, 0.25f / sum, 0.02f / sum, 0.01f / sum}));

  // Recompute re-sorts the row by the new weights: 3 (p 0.05) before 1 (p 0.02).
  Routing resorted = example_token();
  resorted.probs[3] = 0.05f;
  resorted.probs[1] = 0.02f;
  config.norm_topk_prob = false;
  run_both(resorted, kPairs, config);
  EXPECT_EQ(resorted.ids, (std::vector<std::int32_t>{0, 2, 3, 1}));
  EXPECT_EQ(resorted.weights, (std::vector<float>{0.30f, 0.25f, 0.05f, 0.02f}));
}

TEST(Pruning, WeightsOnlyRanksUnrecordedCandidatesById) {
  // No router probabilities: candidates 1 and 3 have no recorded p and go by id.
  Routing r = example_token();
  r.probs[3] = 0.9f;  // ignored: not passed
  run_both(r, kPairs, config_for(PruneScheme::kScore, 2), {}, /*use_probs=*/false);
  EXPECT_EQ(r.ids, (std::vector<std::int32_t>{0, 2, 1, 3}));
  EXPECT_EQ(r.weights, (std::vector<float>{0.30f, 0.25f, 0.20f, 0.15f}));

  // Ids only: every selection has p 1, so the walk goes by id: 0 (dev 0), 2 (dev 1).
  Routing ids_only = example_token();
  ids_only.ids = {5, 4, 2, 0};
  const PruneStats stats =
      run_both(ids_only, kPairs, config_for(PruneScheme::kScore, 2), {}, false, false);
  EXPECT_EQ(ids_only.ids, (std::vector<std::int32_t>{3, 1, 2, 0}));
  EXPECT_EQ(stats.gate_mass_total, 4.0);
  EXPECT_EQ(stats.gate_mass_retained, 2.0);
}

TEST(Pruning, SimilaritySchemeHandComputed) {
  std::vector<float> sim(64, 0.0f);
  auto set = [&](int a, int b, float v) { sim[a * 8 + b] = sim[b * 8 + a] = v; };
  set(4, 3, 0.9f);
  set(4, 1, 0.5f);
  set(5, 1, 0.8f);
  set(5, 3, 0.7f);
  // Kept {0, 1}; 4 (higher p) is replaced first by its most similar candidate 3, then 5 by the
  // remaining candidate 1, though 5 prefers 1 anyway.
  Routing r = example_token();
  run_both(r, kPairs, config_for(PruneScheme::kSimilarity, 2), sim);
  EXPECT_EQ(r.ids, (std::vector<std::int32_t>{0, 2, 3, 1}));
  EXPECT_EQ(r.weights, (std::vector<float>{0.30f, 0.25f, 0.20f, 0.15f}));

  // Tie: 4 is equally similar to 1 and 3 and takes the lower id; 5 then gets 3.
  set(4, 1, 0.9f);
  Routing tie = example_token();
  run_both(tie, kPairs, config_for(PruneScheme::kSimilarity, 2), sim);
  EXPECT_EQ(tie.ids, (std::vector<std::int32_t>{0, 2, 1, 3}));
}

TEST(Pruning, DeviceLimitedHandComputed) {
  // Device scores = sum of the best ceil(4/2) = 2 p: dev0 0.32, dev1 0.26, dev2 0.35, dev3 0.07.
  // Kept {2, 0}; expert 2 (dev 1) is replaced by the best candidate there, 1 (p 0.02).
  Routing r = example_token();
  const PruneStats stats = run_both(r, kPairs, config_for(PruneScheme::kDeviceLimited, 2));
  EXPECT_EQ(r.ids, (std::vector<std::int32_t>{0, 1, 4, 5}));
  EXPECT_EQ(stats.selections_replaced, 1);
  EXPECT_EQ(stats.devices_after, 2);

  // Weights only: scores count recorded weights only: dev0 0.30, dev1 0.25, dev2 0.35: same.
  Routing w = example_token();
  run_both(w, kPairs, config_for(PruneScheme::kDeviceLimited, 2), {}, false);
  EXPECT_EQ(w.ids, (std::vector<std::int32_t>{0, 1, 4, 5}));

  // k = 2, M = 1: device scores (best 2 p) dev0 0.25, dev1 0.2, dev2 0.25: devices 0 and 2
  // tie and the lower id is kept; expert 4 is replaced by 1, the only candidate on device 0.
  Routing tie;
  tie.probs = {0.25f, 0.0f, 0.1f, 0.1f, 0.25f, 0.0f, 0.0f, 0.0f};
  tie.ids = {0, 4};
  tie.weights = {0.25f, 0.25f};
  run_both(tie, kPairs, config_for(PruneScheme::kDeviceLimited, 1, 2));
  EXPECT_EQ(tie.ids, (std::vector<std::int32_t>{0, 1}));
}

TEST(Pruning, NodeBudget) {
  // 2 nodes: devices {0, 1} and {2, 3}. p: 0 0.30 (dev 0), 4 0.25 (dev 2), 2 0.20 (dev 1),
  // 6 0.15 (dev 3). One node, two devices: node 0 is kept at expert 0, expert 4's node is over
  // the budget and skipped, device 1 joins at expert 2.
  Routing r;
  r.probs = {0.30f, 0.02f, 0.20f, 0.01f, 0.25f, 0.04f, 0.15f, 0.03f};
  r.ids = {0, 4, 2, 6};
  r.weights = {0.30f, 0.25f, 0.20f, 0.15f};
  PruneConfig config = config_for(PruneScheme::kScore, 2);
  config.num_nodes = 2;
  config.max_nodes = 1;
  run_both(r, kPairs, config);
  EXPECT_EQ(r.ids, (std::vector<std::int32_t>{0, 1, 2, 3}));

  // Within 2 devices but across 2 nodes: pruned under a node budget of 1, not without one.
  Routing across;
  across.probs = r.probs;
  across.ids = {0, 1, 4, 5};
  across.weights = {0.30f, 0.02f, 0.25f, 0.04f};
  run_both(across, kPairs, config);
  EXPECT_EQ(across.ids, (std::vector<std::int32_t>{0, 1, 2, 3}));
  Routing free_nodes;
  free_nodes.probs = r.probs;
  free_nodes.ids = {0, 1, 4, 5};
  free_nodes.weights = {0.30f, 0.02f, 0.25f, 0.04f};
  config.max_nodes = 0;
  run_both(free_nodes, kPairs, config);
  EXPECT_EQ(free_nodes.ids, (std::vector<std::int32_t>{0, 1, 4, 5}));

  // M = 3 with one node of two devices: the walk keeps only device 0 (its other experts are on
  // node 1), which holds 2 < k experts, so device 1 joins to make room.
  Routing extend;
  extend.probs = {0.30f, 0.01f, 0.02f, 0.03f, 0.25f, 0.15f, 0.20f, 0.04f};
  extend.ids = {0, 4, 6, 5};
  extend.weights = {0.30f, 0.25f, 0.20f, 0.15f};
  config.max_devices = 3;
  config.max_nodes = 1;
  run_both(extend, kPairs, config);
  EXPECT_EQ(extend.ids, (std::vector<std::int32_t>{0, 3, 2, 1}));

  // Device-limited with a node budget: node scores (best 4 p) 0.36 vs 0.64 keep node 1.
  Routing dl;
  dl.probs = extend.probs;
  dl.ids = {0, 4, 6, 5};
  dl.weights = extend.weights;
  config.scheme = PruneScheme::kDeviceLimited;
  config.max_devices = 2;
  run_both(dl, kPairs, config);
  EXPECT_EQ(dl.ids, (std::vector<std::int32_t>{7, 4, 6, 5}));
}

TEST(Pruning, TokensWithinBudgetAreUntouched) {
  Routing r = example_token();
  const PruneStats stats = run_both(r, kPairs, config_for(PruneScheme::kScore, 3));
  EXPECT_EQ(r.ids, (std::vector<std::int32_t>{0, 2, 4, 5}));
  EXPECT_EQ(stats.tokens_changed, 0);
  EXPECT_EQ(stats.devices_after, 3);
  EXPECT_EQ(stats.retained_gate_mass(), 1.0);
}

TEST(Pruning, ClearErrors) {
  Routing r = example_token();
  PruneWorkspace ws;
  auto prune = [&](const PruneConfig& config, std::span<const float> sim = {}) {
    Routing copy = r;
    prune_routing(copy.ids, copy.weights, copy.probs, 1, kPairs, sim, config, ws);
  };
  // One device holds 2 experts < k = 4.
  try {
    prune(config_for(PruneScheme::kScore, 1));
    FAIL() << "expected a capacity error";
  } catch (const Error& error) {
    EXPECT_NE(error.message().find("M=1 cannot hold top_k=4 experts"), std::string::npos)
        << error.message();
  }
  EXPECT_THROW(prune(config_for(PruneScheme::kScore, 0)), Error);
  EXPECT_THROW(prune(config_for(PruneScheme::kScore, 5)), Error);
  EXPECT_THROW(prune(config_for(PruneScheme::kSimilarity, 2)), Error);  // no similarity
  EXPECT_THROW(prune(config_for(PruneScheme::kSimilarity, 2), std::vector<float>(10)), Error);

  Routing dup = example_token();
  dup.ids = {0, 2, 2, 5};
  EXPECT_THROW(prune_routing(dup.ids, dup.weights, dup.probs, 1, kPairs, {},
                             config_for(PruneScheme::kScore, 2), ws),
               Error);
  dup.ids = {0, 2, 9, 5};
  EXPECT_THROW(prune_routing(dup.ids, dup.weights, dup.probs, 1, kPairs, {},
                             config_for(PruneScheme::kScore, 2), ws),
               Error);
  dup.ids = {0, 2, 4, 5};
  PruneConfig recompute = config_for(PruneScheme::kScore, 2);
  recompute.weights = PruneWeights::kRecompute;
  EXPECT_THROW(prune_routing(dup.ids, dup.weights, {}, 1, kPairs, {}, recompute, ws), Error);
  EXPECT_THROW(prune_routing(dup.ids, dup.weights, dup.probs, 2, kPairs, {},
                             config_for(PruneScheme::kScore, 2), ws),
               Error);  // T = 2 but one token of data
  const std::vector<int> bad_placement = {0, 0, 1, 1, 2, 2, 3, 4};
  EXPECT_THROW(prune_routing(dup.ids, dup.weights, dup.probs, 1, bad_placement, {},
                             config_for(PruneScheme::kScore, 2), ws),
               Error);
  EXPECT_EQ(parse_prune_scheme("device-limited"), PruneScheme::kDeviceLimited);
  EXPECT_EQ(parse_prune_scheme("nope"), std::nullopt);
  EXPECT_EQ(parse_prune_weights("recompute"), PruneWeights::kRecompute);
}

TEST(Pruning, NoPerTokenAllocationWithAWarmWorkspace) {
  // 2000 copies of the example token, all pruned; the same call on 2 tokens must allocate
  // exactly as often (per-call validation only).
  const Routing one = example_token();
  auto count_allocations = [&](int tokens, PruneWorkspace& ws) {
    Routing r;
    for (int t = 0; t < tokens; ++t) {
      r.ids.insert(r.ids.end(), one.ids.begin(), one.ids.end());
      r.weights.insert(r.weights.end(), one.weights.begin(), one.weights.end());
      r.probs.insert(r.probs.end(), one.probs.begin(), one.probs.end());
    }
    for (PruneScheme scheme : {PruneScheme::kScore, PruneScheme::kDeviceLimited}) {
      Routing warm = r;
      prune_routing(warm.ids, warm.weights, warm.probs, tokens, kPairs, {}, config_for(scheme, 2), ws);
    }
    std::int64_t total = 0;
    for (PruneScheme scheme : {PruneScheme::kScore, PruneScheme::kDeviceLimited}) {
      Routing copy = r;
      const std::int64_t before = g_allocations.load();
      const PruneStats stats =
          prune_routing(copy.ids, copy.weights, copy.probs, tokens, kPairs, {}, config_for(scheme, 2), ws);
      total += g_allocations.load() - before;
      EXPECT_EQ(stats.tokens_changed, tokens);
    }
    return total;
  };
  PruneWorkspace ws;
  EXPECT_EQ(count_allocations(2000, ws), count_allocations(2, ws));
}

// ---- Property tests over random routing and placements -------------------------------------

struct RandomCase {
  PruneConfig config;
  std::vector<int> placement;
  Routing routing;
  std::vector<float> similarity;
  std::int64_t num_tokens = 0;
};

RandomCase random_case(std::mt19937& rng) {
  RandomCase c;
  for (;;) {
    const int e = 2 + static_cast<int>(rng() % 40);
    const int d = 1 + static_cast<int>(rng() % std::min(e, 8));
    const int k = 1 + static_cast<int>(rng() % std::min(e, 9));
    PruneConfig& config = c.config;
    config = PruneConfig{};
    config.num_experts = e;
    config.top_k = k;
    config.num_devices = d;
    config.max_devices = 1 + static_cast<int>(rng() % d);
    std::vector<int> divisors;
    for (int n = 1; n <= d; ++n) {
      if (d % n == 0) divisors.push_back(n);
    }
    config.num_nodes = divisors[rng() % divisors.size()];
    config.max_nodes = rng() % 2 ? 0 : 1 + static_cast<int>(rng() % config.num_nodes);
    config.scheme = static_cast<PruneScheme>(rng() % 3);
    config.norm_topk_prob = rng() % 2 == 0;
    // A balanced placement: contiguous, then experts shuffled.
    c.placement.resize(e);
    for (int x = 0; x < e; ++x) c.placement[x] = x * d / e;
    std::shuffle(c.placement.begin(), c.placement.end(), rng);
    if (min_kept_capacity(config, c.placement) >= k) break;
  }
  const int e = c.config.num_experts;
  const int k = c.config.top_k;
  c.num_tokens = 1 + rng() % 60;
  // Coarse logits make ties in p, in the walk and among candidates frequent.
  const bool coarse = rng() % 2 == 0;
  std::vector<float> logits(c.num_tokens * e);
  std::uniform_real_distribution<float> uniform(-3.0f, 3.0f);
  for (float& x : logits) x = coarse ? static_cast<float>(rng() % 4) : uniform(rng);
  GatingConfig gating{e, k, ScoreFunction::kSoftmax, c.config.norm_topk_prob};
  c.routing.probs.resize(logits.size());
  router_scores(logits, c.num_tokens, gating, c.routing.probs);
  c.routing.ids.resize(c.num_tokens * k);
  c.routing.weights.resize(c.num_tokens * k);
  select_topk(c.routing.probs, {}, c.num_tokens, gating, c.routing.ids, c.routing.weights);
  const int inputs = static_cast<int>(rng() % 3);  // 0: probs+weights, 1: weights, 2: ids only
  if (inputs >= 1) c.routing.probs.clear();
  if (inputs == 2) c.routing.weights.clear();
  c.config.weights =
      inputs == 0 && rng() % 2 ? PruneWeights::kRecompute : PruneWeights::kKeep;
  c.similarity.assign(static_cast<std::size_t>(e) * e, 0.0f);
  for (int a = 0; a < e; ++a) {
    for (int b = 0; b <= a; ++b) {
      const float v = a == b ? 1.0f : static_cast<float>(rng() % 5) / 4.0f;
      c.similarity[a * e + b] = c.similarity[b * e + a] = v;
    }
  }
  return c;
}

TEST(Pruning, PropertiesOverRandomRoutingMatchTheReferenceTwin) {
  std::mt19937 rng(20250513);
  PruneWorkspace ws;  // one workspace across all shapes: reuse must be safe
  int pruned_tokens = 0;
  for (int trial = 0; trial < 1500; ++trial) {
    RandomCase c = random_case(rng);
    const PruneConfig& config = c.config;
    const int e = config.num_experts;
    const int k = config.top_k;
    SCOPED_TRACE(testing::Message() << "trial " << trial << " E=" << e << " k=" << k
                                    << " D=" << config.num_devices << " M=" << config.max_devices
                                    << " N=" << config.num_nodes << " Mn=" << config.max_nodes
                                    << " scheme=" << prune_scheme_name(config.scheme));
    const Routing original = c.routing;
    Routing fast = c.routing;
    Routing slow = c.routing;
    const PruneStats fs = prune_routing(fast.ids, fast.weights, fast.probs, c.num_tokens, c.placement,
                                        c.similarity, config, ws);
    const PruneStats ss = reference::prune_routing(slow.ids, slow.weights, slow.probs, c.num_tokens,
                                                   c.placement, c.similarity, config);
    // Fast path == reference twin, exactly.
    ASSERT_EQ(fast.ids, slow.ids);
    ASSERT_EQ(fast.weights.size(), slow.weights.size());
    ASSERT_TRUE(fast.weights.empty() ||
                std::memcmp(fast.weights.data(), slow.weights.data(), fast.weights.size() * sizeof(float)) == 0);
    ASSERT_EQ(fs.tokens_changed, ss.tokens_changed);
    ASSERT_EQ(fs.selections_replaced, ss.selections_replaced);
    ASSERT_EQ(fs.devices_before, ss.devices_before);
    ASSERT_EQ(fs.devices_after, ss.devices_after);
    ASSERT_EQ(fs.gate_mass_total, ss.gate_mass_total);
    ASSERT_EQ(fs.gate_mass_retained, ss.gate_mass_retained);

    // Deterministic: a second run from the same input gives the same result.
    Routing again = original;
    prune_routing(again.ids, again.weights, again.probs, c.num_tokens, c.placement, c.similarity,
                  config, ws);
    ASSERT_EQ(again.ids, fast.ids);
    ASSERT_EQ(again.weights, fast.weights);

    std::int64_t changed = 0;
    for (std::int64_t t = 0; t < c.num_tokens; ++t) {
      std::set<int> before_dev, before_node, after_ids, after_dev, after_node;
      for (int j = 0; j < k; ++j) {
        const int dev = c.placement[original.ids[t * k + j]];
        before_dev.insert(dev);
        before_node.insert(dev * config.num_nodes / config.num_devices);
      }
      for (int j = 0; j < k; ++j) {
        const int id = fast.ids[t * k + j];
        after_ids.insert(id);
        after_dev.insert(c.placement[id]);
        after_node.insert(c.placement[id] * config.num_nodes / config.num_devices);
      }
      // k distinct experts on at most M devices (and M_nodes nodes).
      ASSERT_EQ(static_cast<int>(after_ids.size()), k) << "token " << t;
      ASSERT_LE(static_cast<int>(after_dev.size()), config.max_devices) << "token " << t;
      if (config.max_nodes > 0) {
        ASSERT_LE(static_cast<int>(after_node.size()), config.max_nodes);
      }
      const auto row = [&](const Routing& r) {
        return std::vector<std::int32_t>(r.ids.begin() + t * k, r.ids.begin() + (t + 1) * k);
      };
      const auto wrow = [&](const Routing& r) {
        return r.weights.empty() ? std::vector<float>{}
                                 : std::vector<float>(r.weights.begin() + t * k, r.weights.begin() + (t + 1) * k);
      };
      const bool within = static_cast<int>(before_dev.size()) <= config.max_devices &&
                          (config.max_nodes == 0 || static_cast<int>(before_node.size()) <= config.max_nodes);
      if (within) {
        // Tokens already within budget are unchanged.
        ASSERT_EQ(row(fast), row(original)) << "token " << t;
        ASSERT_EQ(wrow(fast), wrow(original)) << "token " << t;
        continue;
      }
      ++changed;
      ++pruned_tokens;
      if (config.weights == PruneWeights::kKeep) {
        // keep: the weights (as a multiset, in fact slot by slot) are unchanged.
        ASSERT_EQ(wrow(fast), wrow(original)) << "token " << t;
      }
      if (config.scheme == PruneScheme::kScore && !original.probs.empty()) {
        // score: no unselected expert on a device in use outranks a replacement.
        const std::set<int> before_ids(original.ids.begin() + t * k, original.ids.begin() + (t + 1) * k);
        for (int x : after_ids) {
          if (before_ids.count(x)) continue;
          const float px = original.probs[t * e + x];
          for (int y = 0; y < e; ++y) {
            if (after_ids.count(y) || !after_dev.count(c.placement[y])) continue;
            const float py = original.probs[t * e + y];
            ASSERT_TRUE(py < px || (py == px && y > x))
                << "token " << t << ": candidate " << y << " (p " << py << ") outranks replacement "
                << x << " (p " << px << ")";
          }
        }
      }
    }
    ASSERT_EQ(fs.tokens_changed, changed);
  }
  // The random cases must actually exercise pruning.
  EXPECT_GT(pruned_tokens, 5000);
}

}  // namespace
}  // namespace occult
