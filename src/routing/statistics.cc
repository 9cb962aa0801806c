#include "occult/routing/statistics.h"

#include "occult/core/error.h"

namespace occult {

std::vector<std::int64_t> expert_load(const LayerRouting& layer, int num_experts) {
  std::vector<std::int64_t> load(num_experts, 0);
  for (std::int32_t id : layer.topk_ids) {
    OCCULT_CHECK(id >= 0 && id < num_experts, "expert id {} out of range [0, {})", id, num_experts);
    ++load[id];
  }
  return load;
}

std::vector<std::int64_t> coactivation_counts(const LayerRouting& layer, int num_experts) {
  const std::size_t e = static_cast<std::size_t>(num_experts);
  std::vector<std::int64_t> w(e * e, 0);
  const int k = layer.top_k;
  for (std::int64_t t = 0; t < layer.num_tokens; ++t) {
    const std::int32_t* ids = layer.ids_of(t);
    for (int a = 0; a < k; ++a) {
      OCCULT_CHECK(ids[a] >= 0 && ids[a] < num_experts, "token {}: expert id {} out of range [0, {})",
                   t, ids[a], num_experts);
      for (int b = a + 1; b < k; ++b) {
        ++w[ids[a] * e + ids[b]];
        ++w[ids[b] * e + ids[a]];
      }
    }
  }
  return w;
}

}  // namespace occult
