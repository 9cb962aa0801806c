#include "occult/routing/bias_balance.h"

#include <cmath>

#include "occult/core/error.h"

namespace occult {

void update_selection_bias(std::span<const std::int64_t> loads, float rate, std::span<float> bias) {
  OCCULT_CHECK(!loads.empty() && bias.size() == loads.size(),
               "selection bias update: {} loads for a bias of {} experts (one load per expert expected)", loads.size(),
               bias.size());
  OCCULT_CHECK(std::isfinite(rate) && rate >= 0.0f, "selection bias update: the rate must be finite and >= 0, got {}",
               rate);
  std::int64_t total = 0;
  for (std::size_t e = 0; e < loads.size(); ++e) {
    OCCULT_CHECK(loads[e] >= 0, "selection bias update: expert {} has a negative load {}", e, loads[e]);
    total += loads[e];
  }
  const auto E = static_cast<std::int64_t>(loads.size());
  for (std::size_t e = 0; e < loads.size(); ++e) {
    // sign(mean - load) = sign(total - E * load), exact in integers.
    const std::int64_t diff = total - E * loads[e];
    if (diff > 0) {
      bias[e] += rate;
    } else if (diff < 0) {
      bias[e] -= rate;
    }
  }
}

}  // namespace occult
