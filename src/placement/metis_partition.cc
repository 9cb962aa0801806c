// The `metis` strategy: METIS k-way on the pairwise collaboration graph, then a repair to the
// exact balanced expert counts that METIS's load slack does not guarantee.
#include <metis.h>

#include <algorithm>
#include <limits>
#include <numeric>

#include "occult/core/error.h"
#include "occult/placement/partitioner.h"

namespace occult {

namespace {

// Moves experts from devices holding more than their target count to devices holding fewer,
// each time the move that adds the least pairwise cut (ties: lower expert, lower device).
// Targets: the E % D devices METIS filled most get ceil(E/D), the rest floor(E/D).
void repair_counts(const CollaborationGraph& graph, int num_devices, std::vector<int>& part) {
  const int e = graph.num_experts;
  const std::size_t es = static_cast<std::size_t>(e);
  std::vector<int> count(num_devices, 0);
  for (int dev : part) ++count[dev];
  std::vector<int> by_count(num_devices);
  std::iota(by_count.begin(), by_count.end(), 0);
  std::stable_sort(by_count.begin(), by_count.end(),
                   [&](int a, int b) { return count[a] > count[b]; });
  std::vector<int> target(num_devices, e / num_devices);
  for (int i = 0; i < e % num_devices; ++i) ++target[by_count[i]];

  // weight_to[x][dev] = sum of W[x][y] over experts y on dev.
  std::vector<std::int64_t> weight_to(es * num_devices, 0);
  for (int x = 0; x < e; ++x) {
    for (int y = 0; y < e; ++y) weight_to[x * num_devices + part[y]] += graph.coactivation[x * es + y];
  }
  for (;;) {
    std::int64_t best_delta = std::numeric_limits<std::int64_t>::max();
    int best_x = -1, best_to = -1;
    for (int x = 0; x < e; ++x) {
      const int from = part[x];
      if (count[from] <= target[from]) continue;
      for (int to = 0; to < num_devices; ++to) {
        if (count[to] >= target[to]) continue;
        const std::int64_t delta =
            weight_to[x * num_devices + from] - weight_to[x * num_devices + to];
        if (delta < best_delta) {
          best_delta = delta;
          best_x = x;
          best_to = to;
        }
      }
    }
    if (best_x < 0) break;
    const int from = part[best_x];
    --count[from];
    ++count[best_to];
    part[best_x] = best_to;
    for (int y = 0; y < e; ++y) {
      weight_to[y * num_devices + from] -= graph.coactivation[y * es + best_x];
      weight_to[y * num_devices + best_to] += graph.coactivation[y * es + best_x];
    }
  }
}

}  // namespace

std::vector<int> partition_metis(const CollaborationGraph& graph, const PartitionOptions& options) {
  const int e = graph.num_experts;
  const int d_count = options.num_devices;
  if (d_count == 1) return std::vector<int>(e, 0);
  if (d_count == e) return partition_contiguous(graph, options);  // one expert per device
  const std::size_t es = static_cast<std::size_t>(e);

  // CSR adjacency of the pairwise graph (edges with W > 0).
  std::vector<idx_t> xadj(es + 1, 0);
  std::vector<idx_t> adjncy;
  std::vector<idx_t> adjwgt;
  for (int x = 0; x < e; ++x) {
    for (int y = 0; y < e; ++y) {
      const std::int64_t w = graph.coactivation[x * es + y];
      if (x == y || w == 0) continue;
      OCCULT_CHECK(w <= std::numeric_limits<idx_t>::max(),
                   "metis: co-activation count {} of experts {} and {} exceeds METIS's index range",
                   w, x, y);
      adjncy.push_back(y);
      adjwgt.push_back(static_cast<idx_t>(w));
    }
    xadj[x + 1] = static_cast<idx_t>(adjncy.size());
  }
  // Vertex weight = load; an unused expert weighs 1 so METIS still balances it somewhere.
  std::vector<idx_t> vwgt(es);
  for (int x = 0; x < e; ++x) {
    OCCULT_CHECK(graph.load[x] <= std::numeric_limits<idx_t>::max() / e,
                 "metis: expert {} load {} exceeds METIS's index range", x, graph.load[x]);
    vwgt[x] = static_cast<idx_t>(std::max<std::int64_t>(1, graph.load[x]));
  }

  idx_t nvtxs = e;
  idx_t ncon = 1;
  idx_t nparts = d_count;
  idx_t objval = 0;
  std::vector<idx_t> part(es, 0);
  idx_t metis_options[METIS_NOPTIONS];
  METIS_SetDefaultOptions(metis_options);
  metis_options[METIS_OPTION_SEED] = static_cast<idx_t>(options.seed % 1000003);
  metis_options[METIS_OPTION_NUMBERING] = 0;
  const int status =
      METIS_PartGraphKway(&nvtxs, &ncon, xadj.data(), adjncy.data(), vwgt.data(), nullptr,
                          adjwgt.empty() ? nullptr : adjwgt.data(), &nparts, nullptr, nullptr,
                          metis_options, &objval, part.data());
  OCCULT_CHECK(status == METIS_OK, "metis: METIS_PartGraphKway failed with status {} ({} experts, "
               "{} devices)", status, e, d_count);
  std::vector<int> result(part.begin(), part.end());
  for (int dev : result) {
    OCCULT_CHECK(dev >= 0 && dev < d_count, "metis: METIS returned part {} outside [0, {})", dev,
                 d_count);
  }
  repair_counts(graph, d_count, result);
  return result;
}

}  // namespace occult
