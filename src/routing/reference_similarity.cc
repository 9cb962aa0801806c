#include <cmath>

#include "occult/core/error.h"
#include "routing/reference.h"

namespace occult::reference {

std::vector<float> probability_similarity(std::span<const float> router_probs, std::int64_t num_tokens,
                                          int num_experts) {
  const int e = num_experts;
  OCCULT_CHECK(router_probs.size() == static_cast<std::size_t>(num_tokens) * e,
               "reference probability_similarity: shape");
  std::vector<float> out(static_cast<std::size_t>(e) * e, 0.0f);
  for (int i = 0; i < e; ++i) {
    for (int j = 0; j < e; ++j) {
      double dot = 0, ni = 0, nj = 0;
      for (std::int64_t t = 0; t < num_tokens; ++t) {
        const double a = router_probs[t * e + i];
        const double b = router_probs[t * e + j];
        dot += a * b;
        ni += a * a;
        nj += b * b;
      }
      if (ni > 0 && nj > 0) out[static_cast<std::size_t>(i) * e + j] = static_cast<float>(dot / (std::sqrt(ni) * std::sqrt(nj)));
    }
  }
  return out;
}

}  // namespace occult::reference
