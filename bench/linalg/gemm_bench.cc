// GEMM throughput of occult::gemm per backend (BLAS, oneDNN) and precision (F32, BF16) on the
// shapes the runtime multiplies: expert token tiles, a dense projection, a decode step. Medians
// of thread-CPU time over repeats after warm-up, in GFLOP/s (CPU time, because a shared VM's
// neighbours inflate wall time; the program runs on one thread). The last column times a oneDNN
// F32 matmul primitive created on every call (oneDNN's own primitive cache on, then off), and
// the creation cost in microseconds, which occult's per-shape cache of BF16 matmuls avoids. The
// "onednn f32" column is oneDNN's sgemm, the F32 path occult uses.
//   build/bench/linalg/bench_gemm [--repeats N]
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <oneapi/dnnl/dnnl.hpp>
#include <random>
#include <string>
#include <vector>

#include "occult/core/half.h"
#include "occult/core/table.h"
#include "occult/linalg/linear.h"

namespace {

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Median thread-CPU seconds of one call of `body`, over `repeats` batches of `inner` calls.
double median_seconds(const std::function<void()>& body, int repeats, int inner) {
  for (int i = 0; i < 2; ++i) body();
  std::vector<double> t;
  for (int r = 0; r < repeats; ++r) {
    const double t0 = thread_cpu_seconds();
    for (int i = 0; i < inner; ++i) body();
    t.push_back((thread_cpu_seconds() - t0) / inner);
  }
  std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
  return t[t.size() / 2];
}

struct Shape {
  const char* what;
  std::int64_t M, N, K;  // out [M, N] = x [M, K] @ W^T, W [N, K]
};

}  // namespace

int main(int argc, char** argv) {
  using namespace occult;
  int repeats = 7;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--repeats") repeats = std::max(1, std::atoi(argv[i + 1]));
  }
  const std::vector<Shape> shapes = {
      {"expert tile W1 (256 rows)", 256, 512, 1024},
      {"expert tile W1|W3 fused", 256, 1024, 1024},
      {"expert tile W2 (256 rows)", 256, 1024, 512},
      {"expert tile W1 (96 rows)", 96, 512, 1024},
      {"dense 1024 tokens", 1024, 1024, 1024},
      {"decode step (1 row)", 1, 1024, 1024},
      {"router (1024 x 64)", 1024, 64, 1024},
      // bench/infer/model.json's shapes (H = F = 256): small tiles, where call overhead shows.
      {"small expert tile (32 rows)", 32, 256, 256},
      {"small dense (256 rows)", 256, 768, 256}};
  TextTable table({"shape", "M x N x K", "blas f32", "onednn f32", "onednn f32, bf16 W",
                   "onednn bf16", "matmul f32, new prim", "no oneDNN cache", "creation us"});
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const bool bf16 = cpu_has_bf16_compute();
  for (const Shape& s : shapes) {
    std::vector<float> x(static_cast<std::size_t>(s.M * s.K)),
        w(static_cast<std::size_t>(s.N * s.K)), out(static_cast<std::size_t>(s.M * s.N));
    for (auto& v : x) v = u(rng);
    for (auto& v : w) v = u(rng);
    std::vector<std::uint16_t> wb(w.size());
    for (std::size_t i = 0; i < w.size(); ++i) wb[i] = float_to_bf16(w[i]);
    const double flops = 2.0 * static_cast<double>(s.M) * s.N * s.K;
    const int inner = std::max(1, static_cast<int>(2e8 / flops));
    auto rate = [&](GemmOptions o, WeightRef wr) {
      return flops /
             median_seconds([&] { linear_forward(o, out.data(), x.data(), wr, s.M, s.K, s.N); },
                            repeats, inner) *
             1e-9;
    };
    const double blas = rate({GemmBackend::kBlas, ComputeDType::kF32}, WeightRef(w.data()));
    const double dnn = rate({GemmBackend::kOneDnn, ComputeDType::kF32}, WeightRef(w.data()));
    const double dnn_wb =
        rate({GemmBackend::kOneDnn, ComputeDType::kF32}, WeightRef::bf16(wb.data()));
    const double dnn_bf16 =
        bf16 ? rate({GemmBackend::kOneDnn, ComputeDType::kBF16}, WeightRef::bf16(wb.data())) : 0;
    // A primitive built per call (what the cache avoids).
    dnnl::engine engine(dnnl::engine::kind::cpu, 0);
    dnnl::stream stream(engine);
    using dt = dnnl::memory::data_type;
    const dnnl::memory::desc src_md({s.M, s.K}, dt::f32, dnnl::memory::dims{s.K, 1});
    const dnnl::memory::desc wei_md({s.K, s.N}, dt::f32, dnnl::memory::dims{1, s.K});
    const dnnl::memory::desc dst_md({s.M, s.N}, dt::f32, dnnl::memory::dims{s.N, 1});
    dnnl::memory src(src_md, engine, x.data()), wei(wei_md, engine, w.data()),
        dst(dst_md, engine, out.data());
    auto create_and_run = [&] {
      dnnl::matmul prim(
          dnnl::matmul::primitive_desc(dnnl::matmul::desc(src_md, wei_md, dst_md), engine));
      prim.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}});
    };
    const double per_call = median_seconds(create_and_run, repeats, inner);
    // oneDNN keeps its own primitive cache; without it every creation generates code anew.
    const int capacity = dnnl::get_primitive_cache_capacity();
    dnnl::set_primitive_cache_capacity(0);
    const double per_call_uncached =
        median_seconds(create_and_run, repeats, std::max(1, inner / 10));
    dnnl::set_primitive_cache_capacity(capacity);
    auto gf = [](double v) { return v > 0 ? fmt::format("{:.1f}", v) : std::string("-"); };
    table.add_row({s.what, fmt::format("{} x {} x {}", s.M, s.N, s.K), gf(blas), gf(dnn),
                   gf(dnn_wb), gf(dnn_bf16), gf(flops / per_call * 1e-9),
                   gf(flops / per_call_uncached * 1e-9),
                   fmt::format("{:.0f}", 1e6 * (per_call_uncached - per_call))});
  }
  fmt::print("GFLOP/s per thread (median thread-CPU time of {} repeats); AVX512-BF16: {}\n",
             repeats, bf16 ? "yes" : "no");
  fmt::print("{}", table.render());
  return 0;
}
