// The naive twin of the replica routing rule: every assignment of holders to a token's
// selections is tried and compared by the rule's keys; minimum covers by trying every subset.
#include <algorithm>
#include <set>
#include <tuple>
#include <vector>

#include "occult/core/error.h"
#include "routing/reference.h"

namespace occult::reference {

namespace {

// holders[e]: the devices that list expert e.
std::vector<std::vector<int>> holders_of(const std::vector<std::vector<int>>& device_experts, int num_experts) {
  std::vector<std::vector<int>> holders(num_experts);
  for (std::size_t d = 0; d < device_experts.size(); ++d) {
    for (int x : device_experts[d]) {
      OCCULT_CHECK(x >= 0 && x < num_experts, "reference replicas: expert {} out of range", x);
      holders[x].push_back(static_cast<int>(d));
    }
  }
  for (auto& h : holders) std::sort(h.begin(), h.end());
  return holders;
}

}  // namespace

std::vector<std::int64_t> route_tokens(const std::vector<std::vector<int>>& device_experts, int num_experts,
                                       std::span<const std::int32_t> ids, std::int64_t num_tokens, int top_k,
                                       std::span<const int> homes, std::span<int> devices) {
  const int d_count = static_cast<int>(device_experts.size());
  const std::vector<std::vector<int>> holders = holders_of(device_experts, num_experts);
  std::vector<std::int64_t> load(d_count, 0);
  for (std::int64_t t = 0; t < num_tokens; ++t) {
    const int home = homes.empty() ? static_cast<int>(t * d_count / num_tokens) : homes[t];
    std::vector<int> sel(ids.begin() + t * top_k, ids.begin() + (t + 1) * top_k);
    // Key of an assignment: (distinct devices, home absent, load sum, the devices).
    using Key = std::tuple<int, int, std::int64_t, std::vector<int>>;
    bool have = false;
    Key best;
    std::vector<int> choice(top_k, -1);
    // Odometer over every combination of holders.
    std::vector<std::size_t> digit(top_k, 0);
    while (true) {
      for (int j = 0; j < top_k; ++j) choice[j] = holders[sel[j]].at(digit[j]);
      const std::set<int> distinct(choice.begin(), choice.end());
      std::int64_t sum = 0;
      for (int dev : choice) sum += load[dev];
      Key key{static_cast<int>(distinct.size()), distinct.count(home) ? 0 : 1, sum, choice};
      if (!have || key < best) {
        best = key;
        have = true;
      }
      int j = 0;
      while (j < top_k && ++digit[j] == holders[sel[j]].size()) digit[j++] = 0;
      if (j == top_k) break;
    }
    const std::vector<int>& chosen = std::get<3>(best);
    for (int j = 0; j < top_k; ++j) {
      devices[t * top_k + j] = chosen[j];
      ++load[chosen[j]];
    }
  }
  return load;
}

int min_cover_devices(const std::vector<std::vector<int>>& device_experts, std::span<const std::int32_t> ids) {
  const int d_count = static_cast<int>(device_experts.size());
  OCCULT_CHECK(d_count <= 20, "reference replicas: subset search needs few devices");
  for (int size = 1; size <= d_count; ++size) {
    for (std::uint32_t subset = 0; subset < (1u << d_count); ++subset) {
      if (__builtin_popcount(subset) != size) continue;
      bool covers = true;
      for (std::int32_t x : ids) {
        bool held = false;
        for (int d = 0; d < d_count; ++d) {
          if ((subset >> d & 1u) != 0 &&
              std::find(device_experts[d].begin(), device_experts[d].end(), x) != device_experts[d].end()) {
            held = true;
          }
        }
        covers = covers && held;
      }
      if (covers) return size;
    }
  }
  OCCULT_FAIL("reference replicas: no cover");
}

}  // namespace occult::reference
