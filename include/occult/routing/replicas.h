// Routing to replicated experts (DESIGN.md, "Replicas"): when an expert is held by several
// devices, each of a token's k selections is served by one holder, chosen so the token touches
// the fewest devices. Pure planning code over spans; no communication.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace occult {

// Replica masks are 64-bit words (bit d: device d holds the expert), so replicated placements
// span at most 64 devices.
inline constexpr int kMaxReplicaDevices = 64;

// Which devices hold each expert of one MoE layer.
struct ExpertHolders {
  int num_experts = 0;
  int num_devices = 0;
  std::vector<int> primary;          // [E] the primary holder (expert_to_device)
  std::vector<std::uint64_t> masks;  // [E] bit d set when device d holds the expert

  // True when some expert is held by more than one device.
  bool replicated() const;
  // Number of devices holding expert e.
  int copies(int e) const;
};

// Holders of a placement without replicas: expert e only on expert_to_device[e]. Throws unless
// 1 <= D <= 64 and every device lies in [0, D).
ExpertHolders holders_from_primary(std::span<const int> expert_to_device, int num_devices);

// Holders from device_experts[d] (the experts device d holds) with primary expert_to_device;
// throws unless D <= 64, ids lie in [0, E), no device lists an expert twice, and every expert
// is held by its primary device.
ExpertHolders holders_from_device_experts(const std::vector<std::vector<int>>& device_experts,
                                          std::span<const int> expert_to_device);

// The routing rule for one token with experts ids[0, k) and home device `home`: picks for each
// selection j a device devices[j] holding ids[j], minimising lexicographically (1) the number of
// distinct devices, (2) 0 if the home device is among them else 1, (3) the sum over j of
// load[devices[j]] (the running load before this token), (4) the vector devices[0, k) itself.
// Returns the number of distinct devices. Does not change `load`. Throws on ids outside [0, E).
int route_token(const ExpertHolders& holders, std::span<const std::int32_t> ids, int home,
                std::span<const std::int64_t> load, std::span<int> devices);

// The fewest devices that together hold every expert of ids (an exact minimum cover).
int min_cover_devices(const ExpertHolders& holders, std::span<const std::int32_t> ids);

// Routes num_tokens tokens in order (ids [T, k]) with route_token, starting from zero load and
// adding one to load[devices[t, j]] after each token. Token t's home is homes[t], or
// floor(t*D/T) when homes is empty (DESIGN.md's home device). devices: [T, k] out. Returns the
// final load [D] (token-expert assignments each device serves).
std::vector<std::int64_t> route_tokens(const ExpertHolders& holders, std::span<const std::int32_t> ids,
                                       std::int64_t num_tokens, int top_k, std::span<const int> homes,
                                       std::span<int> devices);

}  // namespace occult
