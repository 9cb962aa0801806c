// Helpers for the placement tests: small hand-built and planted routings, scratch file names.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <random>
#include <string>
#include <vector>

#include "occult/routing/trace.h"

namespace occult::testing {

// A file name in the temporary directory, unique to this process.
inline std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("occult_placement_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

// A routing from explicit tokens, each a list of k expert ids.
inline LayerRouting make_routing(int top_k, std::initializer_list<std::vector<int>> tokens) {
  LayerRouting r;
  r.top_k = top_k;
  for (const auto& token : tokens) {
    for (int id : token) r.topk_ids.push_back(id);
    ++r.num_tokens;
  }
  return r;
}

// A clearly clustered routing: experts are shuffled into num_groups groups of E/G; each token
// picks a group and draws its k experts from it with probability `affinity` each, otherwise
// uniformly from the rest. expert_group receives the planted group of every expert.
inline LayerRouting planted_routing(int num_experts, int top_k, int num_groups,
                                    std::int64_t num_tokens, double affinity, std::uint64_t seed,
                                    std::vector<int>* expert_group) {
  std::mt19937_64 rng(seed);
  std::vector<int> perm(num_experts);
  for (int e = 0; e < num_experts; ++e) perm[e] = e;
  for (int i = num_experts - 1; i > 0; --i) std::swap(perm[i], perm[rng() % (i + 1)]);
  const int size = num_experts / num_groups;
  std::vector<int> group(num_experts);
  for (int i = 0; i < num_experts; ++i) group[perm[i]] = i / size;
  if (expert_group) *expert_group = group;
  LayerRouting r;
  r.top_k = top_k;
  r.num_tokens = num_tokens;
  for (std::int64_t t = 0; t < num_tokens; ++t) {
    const int g = static_cast<int>(rng() % num_groups);
    std::vector<int> chosen;
    while (static_cast<int>(chosen.size()) < top_k) {
      const bool inside = static_cast<double>(rng() % 1000000) / 1e6 < affinity;
      const int candidate = inside ? perm[g * size + static_cast<int>(rng() % size)]
                                   : static_cast<int>(rng() % num_experts);
      bool dup = false;
      for (int c : chosen) dup = dup || c == candidate;
      if (!dup) chosen.push_back(candidate);
    }
    r.topk_ids.insert(r.topk_ids.end(), chosen.begin(), chosen.end());
  }
  return r;
}

}  // namespace occult::testing
