#include "occult/routing/replicas.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "occult/core/error.h"
#include "routing/reference.h"

namespace occult {
namespace {

using DeviceExperts = std::vector<std::vector<int>>;

// Expert e's first listing device is its primary.
std::vector<int> primaries(const DeviceExperts& device_experts, int num_experts) {
  std::vector<int> primary(num_experts, -1);
  for (std::size_t d = 0; d < device_experts.size(); ++d) {
    for (int x : device_experts[d]) {
      if (primary[x] < 0) primary[x] = static_cast<int>(d);
    }
  }
  return primary;
}

ExpertHolders holders_of(const DeviceExperts& device_experts, int num_experts) {
  return holders_from_device_experts(device_experts, primaries(device_experts, num_experts));
}

// Routes one token with the given running load; returns the chosen devices.
std::vector<int> route_one(const ExpertHolders& h, std::vector<std::int32_t> ids, int home,
                           std::vector<std::int64_t> load, int* distinct = nullptr) {
  std::vector<int> devices(ids.size(), -1);
  const int n = route_token(h, ids, home, load, devices);
  if (distinct) *distinct = n;
  return devices;
}

// D = 3, E = 6: device 0 {0, 1, 4}, device 1 {2, 3, 4}, device 2 {5, 0, 2}.
const DeviceExperts kSmall = {{0, 1, 4}, {2, 3, 4}, {5, 0, 2}};

TEST(ReplicaRouting, HandComputedCovers) {
  const ExpertHolders h = holders_of(kSmall, 6);
  const std::vector<std::int64_t> zero(3, 0);
  int n = 0;
  // 1 and 3 live on one device each: two devices whatever 4 does; 4 joins device 0 (lower id,
  // equal loads, home 2 absent from every minimum cover).
  EXPECT_EQ(route_one(h, {1, 3, 4}, 2, zero, &n), (std::vector<int>{0, 1, 0}));
  EXPECT_EQ(n, 2);
  // {0, 2, 5}: device 2 holds all three.
  EXPECT_EQ(route_one(h, {0, 2, 5}, 0, zero, &n), (std::vector<int>{2, 2, 2}));
  EXPECT_EQ(n, 1);
  // {0, 2}: covers {2} (size 1) beat {0, 1} (size 2) even when home is 0.
  EXPECT_EQ(route_one(h, {0, 2}, 0, zero, &n), (std::vector<int>{2, 2}));
  EXPECT_EQ(n, 1);
  // {4}: devices 0 and 1 both; the home device wins over a lighter one.
  EXPECT_EQ(route_one(h, {4}, 1, {0, 9, 0}), (std::vector<int>{1}));
  // Home 2 holds no copy: the lighter device wins, then the lower id.
  EXPECT_EQ(route_one(h, {4}, 2, {7, 3, 0}), (std::vector<int>{1}));
  EXPECT_EQ(route_one(h, {4}, 2, {3, 3, 0}), (std::vector<int>{0}));
  // {0, 4}: covers {0} and... only {0} has size 1 (device 2 lacks 4).
  EXPECT_EQ(route_one(h, {0, 4}, 2, {100, 0, 0}, &n), (std::vector<int>{0, 0}));
  EXPECT_EQ(n, 1);
  // {1, 2}: size-2 covers {0,1} and {0,2}; home 2 picks {0,2}.
  EXPECT_EQ(route_one(h, {1, 2}, 2, zero), (std::vector<int>{0, 2}));
  // Home 1: {0,1}. Home absent (no home given): loads decide: device 2 lighter than 1.
  EXPECT_EQ(route_one(h, {1, 2}, 1, zero), (std::vector<int>{0, 1}));
  EXPECT_EQ(route_one(h, {1, 2}, -1, {0, 5, 4}), (std::vector<int>{0, 2}));
  EXPECT_EQ(min_cover_devices(h, std::vector<std::int32_t>{1, 3, 5}), 3);
  EXPECT_EQ(min_cover_devices(h, std::vector<std::int32_t>{0, 4}), 1);
}

TEST(ReplicaRouting, GreedyCoverIsNotMinimum) {
  // Every device holds three of the six experts; any cover with device 0 needs all three
  // devices, while {1, 2} covers all six.
  const DeviceExperts de = {{0, 1, 2}, {0, 3, 4}, {1, 2, 5}};
  const ExpertHolders h = holders_of(de, 6);
  int n = 0;
  EXPECT_EQ(route_one(h, {0, 1, 2, 3, 4, 5}, 0, {0, 0, 0}, &n), (std::vector<int>{1, 2, 2, 1, 1, 2}));
  EXPECT_EQ(n, 2);
}

TEST(ReplicaRouting, RunningLoadAndDefaultHome) {
  // Expert 0 on both devices; T = 4 tokens {0}: homes 0, 0, 1, 1 -> each token stays home.
  const DeviceExperts de = {{0, 1}, {0, 2}};
  const ExpertHolders h = holders_of(de, 3);
  const std::vector<std::int32_t> ids = {0, 0, 0, 0};
  std::vector<int> devices(4);
  EXPECT_EQ(route_tokens(h, ids, 4, 1, {}, devices), (std::vector<std::int64_t>{2, 2}));
  EXPECT_EQ(devices, (std::vector<int>{0, 0, 1, 1}));
  // Every token homed on device 3 (no copy there): the running load alternates them.
  const std::vector<int> homes = {3, 3, 3, 3};
  const DeviceExperts four = {{0, 1}, {0, 2}, {3}, {4}};
  const ExpertHolders h4 = holders_of(four, 5);
  EXPECT_EQ(route_tokens(h4, ids, 4, 1, homes, devices), (std::vector<std::int64_t>{2, 2, 0, 0}));
  EXPECT_EQ(devices, (std::vector<int>{0, 1, 0, 1}));
}

TEST(ReplicaRouting, WithoutReplicasEveryExpertGoesToItsPrimary) {
  const std::vector<int> e2d = {2, 0, 1, 1, 0, 2};
  const ExpertHolders h = holders_from_primary(e2d, 3);
  EXPECT_FALSE(h.replicated());
  std::mt19937_64 rng(5);
  for (int t = 0; t < 50; ++t) {
    std::vector<std::int32_t> ids = {0, 1, 2, 3, 4, 5};
    std::shuffle(ids.begin(), ids.end(), rng);
    ids.resize(3);
    const std::vector<int> devices = route_one(h, ids, static_cast<int>(rng() % 3), {1, 2, 3});
    for (int j = 0; j < 3; ++j) EXPECT_EQ(devices[j], e2d[ids[j]]);
  }
}

// Random replicated placements: every device holds a shuffled share of primaries plus random
// replicas; random tokens and homes.
TEST(ReplicaRouting, MatchesBruteForceTwin) {
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 60; ++trial) {
    const int d = 2 + static_cast<int>(rng() % 5);
    const int e = d + static_cast<int>(rng() % 9);
    const int k = 1 + static_cast<int>(rng() % std::min(4, e));
    DeviceExperts de(d);
    std::vector<int> perm(e);
    for (int x = 0; x < e; ++x) perm[x] = x;
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int x = 0; x < e; ++x) de[x * d / e].push_back(perm[x]);
    const int extra = static_cast<int>(rng() % (2 * d + 1));
    for (int r = 0; r < extra; ++r) {
      const int x = static_cast<int>(rng() % e);
      const int dev = static_cast<int>(rng() % d);
      if (std::find(de[dev].begin(), de[dev].end(), x) == de[dev].end()) de[dev].push_back(x);
    }
    const ExpertHolders h = holders_of(de, e);
    const std::int64_t tokens = 40;
    std::vector<std::int32_t> ids;
    std::vector<int> homes;
    for (std::int64_t t = 0; t < tokens; ++t) {
      std::vector<std::int32_t> all(e);
      for (int x = 0; x < e; ++x) all[x] = x;
      std::shuffle(all.begin(), all.end(), rng);
      ids.insert(ids.end(), all.begin(), all.begin() + k);
      homes.push_back(static_cast<int>(rng() % d));
    }
    for (const bool given_homes : {false, true}) {
      const std::span<const int> home_span = given_homes ? std::span<const int>(homes) : std::span<const int>();
      std::vector<int> fast(ids.size()), naive(ids.size());
      const auto fast_load = route_tokens(h, ids, tokens, k, home_span, fast);
      const auto naive_load = reference::route_tokens(de, e, ids, tokens, k, home_span, naive);
      ASSERT_EQ(fast, naive) << "trial " << trial;
      ASSERT_EQ(fast_load, naive_load) << "trial " << trial;
    }
    for (std::int64_t t = 0; t < tokens; ++t) {
      const std::span<const std::int32_t> token(ids.data() + t * k, k);
      ASSERT_EQ(min_cover_devices(h, token), reference::min_cover_devices(de, token)) << "trial " << trial;
    }
  }
}

TEST(ReplicaRouting, BadHoldersAreClearErrors) {
  auto message = [](auto&& fn) {
    try {
      fn();
    } catch (const Error& e) {
      return e.message();
    }
    return std::string("no error");
  };
  EXPECT_NE(message([] { holders_from_device_experts({{0, 1, 1}, {2}}, std::vector<int>{0, 0, 1}); })
                .find("device 0 lists expert 1 twice"),
            std::string::npos);
  EXPECT_NE(message([] { holders_from_device_experts({{0, 1}, {2, 7}}, std::vector<int>{0, 0, 1}); })
                .find("device 1 holds expert 7, outside [0, 3)"),
            std::string::npos);
  EXPECT_NE(message([] { holders_from_device_experts({{0}, {1, 2}}, std::vector<int>{0, 0, 1}); })
                .find("expert 1's primary device 0 does not hold it"),
            std::string::npos);
  EXPECT_NE(message([] { holders_from_primary(std::vector<int>(70, 0), 65); }).find("[1, 64]"),
            std::string::npos);
}

}  // namespace
}  // namespace occult
