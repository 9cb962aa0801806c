#include "occult/routing/replicas.h"

#include <array>
#include <bit>
#include <limits>

#include "occult/core/error.h"

namespace occult {

namespace {

// A token's k is bounded so its scratch lives on the stack (the routing rule runs per token).
constexpr int kMaxReplicaTopK = 64;

// Depth-first enumeration of the minimum device covers of one token's experts: branching on
// the holders of the first uncovered expert reaches every minimum cover (each device chosen
// lies in it), and covers larger than the best found so far are cut.
struct CoverSearch {
  const std::uint64_t* masks = nullptr;  // [k] holders of each selection
  int k = 0;
  int best = std::numeric_limits<int>::max();
  // Called with each cover of size best (after a smaller one resets best).
  template <typename OnCover>
  void run(std::uint64_t chosen, OnCover&& on_cover) {
    const int size = std::popcount(chosen);
    if (size > best) return;
    int first = -1;
    for (int j = 0; j < k; ++j) {
      if ((masks[j] & chosen) == 0) {
        first = j;
        break;
      }
    }
    if (first < 0) {
      if (size < best) best = size;
      on_cover(chosen, size);
      return;
    }
    if (size + 1 > best) return;
    for (std::uint64_t rest = masks[first]; rest != 0; rest &= rest - 1) {
      run(chosen | (rest & (~rest + 1)), on_cover);
    }
  }
};

// Holder masks of ids into masks[0, k), checking the ids; returns the devices forced by
// experts with a single holder.
std::uint64_t gather_masks(const ExpertHolders& holders, std::span<const std::int32_t> ids,
                           std::uint64_t* masks) {
  OCCULT_CHECK(static_cast<int>(ids.size()) <= kMaxReplicaTopK,
               "replica routing: top_k = {} exceeds the supported {}", ids.size(), kMaxReplicaTopK);
  std::uint64_t forced = 0;
  for (std::size_t j = 0; j < ids.size(); ++j) {
    const int id = ids[j];
    OCCULT_CHECK(id >= 0 && id < holders.num_experts,
                 "replica routing: expert {} is outside [0, num_experts = {})", id, holders.num_experts);
    masks[j] = holders.masks[id];
    if ((masks[j] & (masks[j] - 1)) == 0) forced |= masks[j];
  }
  return forced;
}

}  // namespace

bool ExpertHolders::replicated() const {
  for (std::uint64_t m : masks) {
    if ((m & (m - 1)) != 0) return true;
  }
  return false;
}

int ExpertHolders::copies(int e) const { return std::popcount(masks.at(e)); }

ExpertHolders holders_from_primary(std::span<const int> expert_to_device, int num_devices) {
  OCCULT_CHECK(num_devices >= 1 && num_devices <= kMaxReplicaDevices,
               "replica routing: num_devices must lie in [1, {}], got {}", kMaxReplicaDevices,
               num_devices);
  ExpertHolders h;
  h.num_experts = static_cast<int>(expert_to_device.size());
  h.num_devices = num_devices;
  h.primary.assign(expert_to_device.begin(), expert_to_device.end());
  h.masks.resize(expert_to_device.size());
  for (std::size_t e = 0; e < expert_to_device.size(); ++e) {
    const int d = expert_to_device[e];
    OCCULT_CHECK(d >= 0 && d < num_devices, "replica routing: expert {} is on device {}, outside [0, {})",
                 e, d, num_devices);
    h.masks[e] = std::uint64_t{1} << d;
  }
  return h;
}

ExpertHolders holders_from_device_experts(const std::vector<std::vector<int>>& device_experts,
                                          std::span<const int> expert_to_device) {
  const int d_count = static_cast<int>(device_experts.size());
  ExpertHolders h = holders_from_primary(expert_to_device, d_count);
  const int e_count = h.num_experts;
  std::vector<std::uint64_t> masks(e_count, 0);
  for (int d = 0; d < d_count; ++d) {
    for (int x : device_experts[d]) {
      OCCULT_CHECK(x >= 0 && x < e_count, "replica routing: device {} holds expert {}, outside [0, {})", d,
                   x, e_count);
      const std::uint64_t bit = std::uint64_t{1} << d;
      OCCULT_CHECK((masks[x] & bit) == 0, "replica routing: device {} lists expert {} twice", d, x);
      masks[x] |= bit;
    }
  }
  for (int x = 0; x < e_count; ++x) {
    OCCULT_CHECK((masks[x] & h.masks[x]) != 0,
                 "replica routing: expert {}'s primary device {} does not hold it", x, h.primary[x]);
  }
  h.masks = std::move(masks);
  return h;
}

int min_cover_devices(const ExpertHolders& holders, std::span<const std::int32_t> ids) {
  std::array<std::uint64_t, kMaxReplicaTopK> masks{};
  const std::uint64_t forced = gather_masks(holders, ids, masks.data());
  CoverSearch search{masks.data(), static_cast<int>(ids.size())};
  search.run(forced, [](std::uint64_t, int) {});
  return search.best;
}

int route_token(const ExpertHolders& holders, std::span<const std::int32_t> ids, int home,
                std::span<const std::int64_t> load, std::span<int> devices) {
  const int k = static_cast<int>(ids.size());
  OCCULT_CHECK(devices.size() == ids.size(), "replica routing: devices has {} entries for {} experts",
               devices.size(), ids.size());
  OCCULT_CHECK(static_cast<int>(load.size()) == holders.num_devices,
               "replica routing: load has {} entries, expected num_devices = {}", load.size(),
               holders.num_devices);
  std::array<std::uint64_t, kMaxReplicaTopK> masks{};
  const std::uint64_t forced = gather_masks(holders, ids, masks.data());
  const std::uint64_t home_bit = home >= 0 && home < 64 ? std::uint64_t{1} << home : 0;

  // Best assignment so far: (home flag, load sum, devices) compared lexicographically.
  int best_size = std::numeric_limits<int>::max();
  int best_away = 2;
  std::int64_t best_sum = 0;
  std::array<int, kMaxReplicaTopK> candidate{};
  CoverSearch search{masks.data(), k};
  search.run(forced, [&](std::uint64_t cover, int size) {
    // Within a fixed cover each selection independently takes its lightest holder (lower id on
    // ties): that minimises the load sum, then the device vector.
    std::int64_t sum = 0;
    for (int j = 0; j < k; ++j) {
      int pick = -1;
      for (std::uint64_t rest = masks[j] & cover; rest != 0; rest &= rest - 1) {
        const int d = std::countr_zero(rest);
        if (pick < 0 || load[d] < load[pick]) pick = d;
      }
      candidate[j] = pick;
      sum += load[pick];
    }
    const int away = (cover & home_bit) != 0 ? 0 : 1;
    bool better = size < best_size;
    if (!better && size == best_size) {
      if (away != best_away) {
        better = away < best_away;
      } else if (sum != best_sum) {
        better = sum < best_sum;
      } else {
        for (int j = 0; j < k; ++j) {
          if (candidate[j] != devices[j]) {
            better = candidate[j] < devices[j];
            break;
          }
        }
      }
    }
    if (better) {
      best_size = size;
      best_away = away;
      best_sum = sum;
      for (int j = 0; j < k; ++j) devices[j] = candidate[j];
    }
  });
  return best_size;
}

std::vector<std::int64_t> route_tokens(const ExpertHolders& holders, std::span<const std::int32_t> ids,
                                       std::int64_t num_tokens, int top_k, std::span<const int> homes,
                                       std::span<int> devices) {
  const int d = holders.num_devices;
  OCCULT_CHECK(num_tokens >= 0 && top_k >= 1, "replica routing: need num_tokens >= 0 and top_k >= 1");
  const std::size_t n = static_cast<std::size_t>(num_tokens) * top_k;
  OCCULT_CHECK(ids.size() == n && devices.size() == n,
               "replica routing: ids has {} and devices {} entries, expected num_tokens * top_k = {}",
               ids.size(), devices.size(), n);
  OCCULT_CHECK(homes.empty() || homes.size() == static_cast<std::size_t>(num_tokens),
               "replica routing: homes has {} entries, expected 0 or num_tokens = {}", homes.size(),
               num_tokens);
  std::vector<std::int64_t> load(d, 0);
  for (std::int64_t t = 0; t < num_tokens; ++t) {
    const int home = homes.empty() ? static_cast<int>(t * d / num_tokens) : homes[t];
    const std::size_t at = static_cast<std::size_t>(t) * top_k;
    route_token(holders, ids.subspan(at, top_k), home, load, devices.subspan(at, top_k));
    for (int j = 0; j < top_k; ++j) ++load[devices[at + j]];
  }
  return load;
}

}  // namespace occult
