// The MoE layer's steady state allocates nothing: after a first forward + backward has sized
// every plan, exchange buffer and activation, a second identical one makes no call to the global
// operator new on any rank (1-4 ranks, both dispatchers, every wire format, blocking and
// overlapped). The counter replaces operator new for this test binary only.
#include <gtest/gtest.h>
#include <mpi.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <string>

#include "occult/comm/mpi_communicator.h"
#include "occult/moe/moe_layer.h"
#include "test_util.h"

namespace {
std::atomic<long long> g_allocations{0};
}  // namespace

void* operator new(std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) { return ::operator new(size); }
// These replace the global allocation functions, so new's malloc and delete's free do match;
// GCC cannot tell and warns at some optimisation levels.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace occult {
namespace {

using testing_util::random_values;

TEST(MoeLayerSteadyState, SecondIdenticalStepAllocatesNothing) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int D = comm.size(), rank = comm.rank();
  for (bool overlap : {false, true}) {
    for (DispatchKind dispatch : {DispatchKind::kStandard, DispatchKind::kOccult}) {
      for (WireFormat wire : {WireFormat::kF32, WireFormat::kBF16, WireFormat::kF16, WireFormat::kFP8}) {
        MoeLayerConfig c;
        c.num_experts = 8;
        c.top_k = 3;
        c.hidden_size = 16;
        c.ffn_size = 8;
        c.norm_topk_prob = true;
        c.dispatch = dispatch;
        c.wire = wire;
        c.overlap = overlap;
        std::vector<int> placement(8);
        for (int e = 0; e < 8; ++e) placement[e] = (7 - e) % D;
        MoeLayer layer(comm, c, placement);
        layer.init_random(5, 0.5f);
        const std::int64_t n = 9 + rank;
        const std::vector<float> x = random_values(n * 16, 10 + rank), dy = random_values(n * 16, 20 + rank);
        const std::vector<float> dprobs = random_values(n * 8, 30 + rank, 0.1f);
        std::vector<float> y(n * 16), dx(n * 16);
        auto step = [&] {
          layer.zero_grad();
          layer.forward(x, n, y);
          layer.backward(dy, dprobs, dx);
        };
        const long long fresh = g_allocations.load();
        step();
        // The counter is live: the first step sizes the buffers.
        EXPECT_GT(g_allocations.load() - fresh, 0);
        const std::vector<float> first_y = y, first_dx = dx;
        const long long before = g_allocations.load();
        step();
        const long long allocations = g_allocations.load() - before;
        EXPECT_EQ(allocations, 0) << dispatch_kind_name(dispatch) << " " << wire_format_name(wire)
                                  << (overlap ? " overlapped" : "");
        // The second step really ran: the same input gives the same result.
        EXPECT_EQ(y, first_y);
        EXPECT_EQ(dx, first_dx);
        // A larger batch may grow the buffers; going back to the first size allocates nothing.
        const std::int64_t m = 2 * n;
        const std::vector<float> x2 = random_values(m * 16, 40 + rank), dy2 = random_values(m * 16, 50 + rank);
        std::vector<float> y2(m * 16), dx2(m * 16);
        layer.forward(x2, m, y2);
        layer.backward(dy2, {}, dx2);
        const long long before_small = g_allocations.load();
        step();
        EXPECT_EQ(g_allocations.load() - before_small, 0) << "after a larger batch";
      }
    }
  }
}

}  // namespace
}  // namespace occult
