// `occult bench layer`: standard vs occult (vs pruned occult) dispatch on one MoE layer, per
// wire format, side by side in one mpirun: replicas per token, bytes per exchange, collectives
// per forward and backward, forward/backward medians, speed-up over standard, expert GFLOP/s
// against the same GEMM path (library, precision) on the same shapes alone, peak RSS; then
// decode-like small-batch latency.
#include <fmt/format.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "command_registry.h"
#include "moe_cli.h"
#include "occult/core/half.h"
#include "occult/core/progress.h"
#include "occult/core/table.h"
#include "occult/moe/expert_compute.h"
#include "occult/moe/moe_layer.h"
#include "occult/moe/reference.h"
#include "occult/placement/placement.h"
#include "occult/routing/trace.h"

namespace occult::cli {
namespace bench_layer_command {

struct BenchLayerArgs {
  int experts = 64, top_k = 8, hidden = 1024, ffn = 512, layer = 0, iters = 10, warmup = 2;
  std::int64_t tokens_per_rank = 1024;
  std::string placement, routing_trace, prune_scheme = "score", wire = "f32", decode_tokens = "1,8,64";
  std::string compute = "f32", gemm = "onednn", weights = "f32", overlap = "off";
  std::vector<int> prune_devices;
  bool backward = false, json = false, norm_topk_prob = false;
  std::uint64_t seed = 1;
};

struct Variant {
  std::string name;
  DispatchKind dispatch;
  int prune_devices;
  WireFormat wire;
  bool overlap = false;
};

struct VariantResult {
  Variant variant;
  double replicas_per_token = 0;
  std::map<std::string, ExchangeBytes> bytes;
  double forward_ms = 0, backward_ms = 0, speedup = 0, expert_gflops = 0, backward_expert_gflops = 0;
  double peak_rss_mb = 0;
  // The variant's compute floor (GemmFloor on its own receive plan), measured after each of its
  // iterations; vs_floor is the median over iterations of layer time / floor time (both
  // directions with --backward, slowest rank each).
  double floor_forward_ms = 0, floor_backward_ms = 0, vs_floor = 0;
  std::int64_t forward_collectives = 0, backward_collectives = 0;  // per call, this rank
  std::vector<double> decode_ms;  // forward medians at each --decode-tokens size
};

// Splits "a,b,c" (no empty items).
std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t end = std::min(text.find(',', start), text.size());
    if (end > start) out.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

// This rank's imposed routing from trace layer `layer`: the rank's contiguous block of the
// trace's tokens (as data-parallel ranks hold them, DESIGN.md metrics), cycled to T tokens.
struct ImposedRouting {
  std::vector<std::int32_t> ids;
  std::vector<float> weights;
  std::vector<float> probs;  // [T, E] or empty
};

ImposedRouting routing_from_trace(const Trace& trace, int layer, int rank, int D, std::int64_t T) {
  OCCULT_CHECK(layer >= 0 && layer < trace.num_layers(), "--layer {}: the trace has {} layers", layer,
               trace.num_layers());
  const LayerRouting& lr = trace.layers[layer];
  const std::int64_t total = lr.num_tokens, lo = total * rank / D, hi = total * (rank + 1) / D;
  OCCULT_CHECK(hi > lo, "the trace's {} tokens leave rank {} of {} without any", total, rank, D);
  const int k = lr.top_k, E = trace.num_experts;
  ImposedRouting r;
  for (std::int64_t i = 0; i < T; ++i) {
    const std::int64_t t = lo + i % (hi - lo);
    r.ids.insert(r.ids.end(), lr.ids_of(t), lr.ids_of(t) + k);
    for (int s = 0; s < k; ++s) r.weights.push_back(lr.has_weights() ? lr.topk_weights[t * k + s] : 1.0f / k);
    if (lr.has_router_probs()) r.probs.insert(r.probs.end(), lr.router_probs.begin() + t * E,
                                              lr.router_probs.begin() + (t + 1) * E);
  }
  return r;
}

// The GEMMs alone over the same shapes the experts compute (per local expert, with its own W1,
// W3 and W2 as in the layer: [m,H]x[H,F] twice and [m,F]x[F,H], m = its assignments; the
// backward's six products with the layer's transposes), through the same library and
// precision, on weights already in the dtype the products multiply (the experts convert theirs
// once per call), without gather, activation or scatter: the ceiling the expert kernel is
// measured against and the layer's compute floor. Buffers are allocated once, at construction.
class GemmFloor {
 public:
  GemmFloor(std::vector<std::int64_t> rows_per_expert, int H, int F, const GemmOptions& options)
      : rows_(std::move(rows_per_expert)), H_(H), F_(F), options_(options) {
    std::int64_t max_rows = 1;
    for (std::int64_t m : rows_) {
      max_rows = std::max(max_rows, m);
      total_rows_ += m;
    }
    const std::size_t FH = std::size_t(F) * H, experts = rows_.size();
    x_.assign(max_rows * H, 0.5f);
    w1_.assign(experts * FH, 0.25f);
    w3_.assign(experts * FH, 0.2f);
    w2_.assign(experts * FH, 0.125f);
    a1_.resize(max_rows * F);
    a3_.resize(max_rows * F);
    y_.resize(max_rows * H);
    grad_.resize(FH);
    if (options.compute == ComputeDType::kBF16) {
      for (auto [src, dst] : {std::pair{&w1_, &w1b_}, std::pair{&w3_, &w3b_}, std::pair{&w2_, &w2b_}}) {
        for (float v : *src) dst->push_back(float_to_bf16(v));
      }
    }
  }
  // The forward's FLOPs (0: this rank computes nothing).
  double forward_flops() const { return expert_forward_flops(total_rows_, H_, F_); }
  // Seconds of one run of the forward's products.
  double forward_seconds() {
    const auto t0 = std::chrono::steady_clock::now();
    each_tile([&](std::size_t e, std::int64_t n) {
      linear_forward(options_, a1_.data(), x_.data(), matrix(w1_, w1b_, e), n, H_, F_);
      linear_forward(options_, a3_.data(), x_.data(), matrix(w3_, w3b_, e), n, H_, F_);
      linear_forward(options_, y_.data(), a1_.data(), matrix(w2_, w2b_, e), n, F_, H_);
    });
    return seconds_since(t0);
  }
  // Seconds of one run of the backward's products.
  double backward_seconds() {
    const auto t0 = std::chrono::steady_clock::now();
    const int H = H_, F = F_;
    each_tile([&](std::size_t e, std::int64_t n) {
      gemm(options_, false, false, n, F, H, y_.data(), H, matrix(w2_, w2b_, e), F, 0.0f, a1_.data(), F);     // dy W2
      gemm(options_, true, false, H, F, n, y_.data(), H, WeightRef(a3_.data()), F, 1.0f, grad_.data(), F);   // dW2
      gemm(options_, true, false, F, H, n, a1_.data(), F, WeightRef(x_.data()), H, 1.0f, grad_.data(), H);   // dW1
      gemm(options_, true, false, F, H, n, a3_.data(), F, WeightRef(x_.data()), H, 1.0f, grad_.data(), H);   // dW3
      gemm(options_, false, false, n, H, F, a1_.data(), F, matrix(w1_, w1b_, e), H, 0.0f, y_.data(), H);     // dx
      gemm(options_, false, false, n, H, F, a3_.data(), F, matrix(w3_, w3b_, e), H, 1.0f, y_.data(), H);
    });
    return seconds_since(t0);
  }

 private:
  WeightRef matrix(const std::vector<float>& f, const std::vector<std::uint16_t>& b, std::size_t e) const {
    const std::size_t FH = std::size_t(F_) * H_;
    return options_.compute == ComputeDType::kBF16 ? WeightRef::bf16(b.data() + e * FH) : WeightRef(f.data() + e * FH);
  }
  // The layer multiplies a token tile at a time; so does its floor.
  template <typename Body>
  void each_tile(Body&& body) {
    for (std::size_t e = 0; e < rows_.size(); ++e) {
      for (std::int64_t r0 = 0; r0 < rows_[e]; r0 += kExpertTileRows) body(e, std::min(kExpertTileRows, rows_[e] - r0));
    }
  }

  std::vector<std::int64_t> rows_;
  std::int64_t total_rows_ = 0;
  int H_, F_;
  GemmOptions options_;
  std::vector<float> x_, w1_, w3_, w2_, a1_, a3_, y_, grad_;
  std::vector<std::uint16_t> w1b_, w3b_, w2b_;
};

// The rows each local expert of `layer` multiplied in its last forward.
std::vector<std::int64_t> rows_per_local_expert(const MoeLayer& layer) {
  const ReceivePlan& rp = layer.receive_plan();
  std::vector<std::int64_t> rows;
  for (int l = 0; l < rp.num_local_experts; ++l) rows.push_back(rp.expert_offsets[l + 1] - rp.expert_offsets[l]);
  return rows;
}

// The GEMM ceiling of GemmFloor on its own: forward GFLOP/s and both directions' times, medians
// of `iters` after one warm-up.
struct GemmBaseline {
  double gflops = 0;       // forward GEMM rate
  double forward_ms = 0;   // the forward's GEMMs alone
  double backward_ms = 0;  // the backward's GEMMs alone (0 without backward)
};
GemmBaseline gemm_baseline(GemmFloor& floor, int iters, bool backward) {
  if (floor.forward_flops() == 0) return {};
  std::vector<double> rates, forward_ms, backward_ms;
  for (int it = 0; it < iters + 1; ++it) {
    const double s = floor.forward_seconds();
    const double b = backward ? floor.backward_seconds() : 0;
    if (it == 0) continue;  // the first run warms up
    rates.push_back(floor.forward_flops() / s / 1e9);
    forward_ms.push_back(s * 1e3);
    backward_ms.push_back(b * 1e3);
  }
  return {median(rates), median(forward_ms), backward ? median(backward_ms) : 0.0};
}

void run_bench(const BenchLayerArgs& a, Communicator& comm) {
  const int D = comm.size(), rank = comm.rank();
  MoeLayerConfig base;
  std::vector<int> e2d;
  std::vector<std::vector<int>> held;  // device_experts when the placement has replicas
  Trace trace;
  std::vector<float> similarity;
  std::vector<WireFormat> wires;
  std::vector<bool> overlaps;
  std::vector<std::int64_t> decode_sizes;
  agree_on_errors(comm, [&] {
    OCCULT_CHECK(a.iters >= 1, "--iters {}: expected >= 1", a.iters);
    OCCULT_CHECK(a.warmup >= 0, "--warmup {}: expected >= 0", a.warmup);
    OCCULT_CHECK(a.tokens_per_rank >= 0, "--tokens-per-rank {}: expected >= 0", a.tokens_per_rank);
    base.num_experts = a.experts;
    base.top_k = a.top_k;
    if (!a.routing_trace.empty()) {
      trace = load_trace(a.routing_trace);
      OCCULT_CHECK(trace.num_experts == a.experts && trace.top_k == a.top_k,
                   "{}: the trace has E = {}, k = {}; pass --experts {} --top-k {}", a.routing_trace,
                   trace.num_experts, trace.top_k, trace.num_experts, trace.top_k);
    }
    base.hidden_size = a.hidden;
    base.ffn_size = a.ffn;
    base.norm_topk_prob = a.norm_topk_prob;
    base.gemm = {parse_gemm_backend(a.gemm, "--gemm"), parse_compute_dtype(a.compute, "--compute")};
    check_compute_dtype_supported(base.gemm.compute, "--compute");
    OCCULT_CHECK(a.weights == "f32" || a.weights == "bf16", "--weights must be f32 or bf16, got \"{}\"", a.weights);
    base.expert_dtype = a.weights == "bf16" ? WeightDType::kBF16 : WeightDType::kF32;
    const bool inference_only = base.expert_dtype == WeightDType::kBF16;
    OCCULT_CHECK(!(inference_only && a.backward),
                 "--weights bf16 is an inference option (training keeps F32 master weights); drop --backward to "
                 "time it");
    base.with_grads = !inference_only;
    validate_moe_layer_config(base);
    if (!a.placement.empty()) {
      Placement p = load_placement(a.placement, ReplicaPolicy::kAllow);
      OCCULT_CHECK(p.num_devices == D, "{}: the placement is for {} devices, but mpirun started {} ranks", a.placement,
                   p.num_devices, D);
      OCCULT_CHECK(p.num_experts == a.experts, "{}: the placement is for {} experts, --experts is {}", a.placement,
                   p.num_experts, a.experts);
      e2d = p.layer(a.layer).expert_to_device;
      held = p.layer(a.layer).device_experts;
      similarity = p.layer(a.layer).similarity;
    } else {
      e2d.resize(a.experts);
      for (int e = 0; e < a.experts; ++e) e2d[e] = e * D / a.experts;
    }
    for (int m : a.prune_devices) OCCULT_CHECK(m >= 1 && m <= D, "--prune-devices {}: expected in [1, D={}]", m, D);
    parse_prune_scheme_flag(a.prune_scheme);
    OCCULT_CHECK(!split_commas(a.wire).empty(), "--wire '{}': expected f32, bf16, f16 or fp8 (comma-separated)", a.wire);
    for (const std::string& w : split_commas(a.wire)) wires.push_back(parse_wire_format(w, "--wire"));
    OCCULT_CHECK(!split_commas(a.overlap).empty(), "--overlap '{}': expected on, off or off,on", a.overlap);
    for (const std::string& o : split_commas(a.overlap)) overlaps.push_back(parse_overlap_flag(o));
    for (const std::string& n : split_commas(a.decode_tokens)) {
      std::size_t used = 0;
      long long value = -1;
      try {
        value = std::stoll(n, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      OCCULT_CHECK(used == n.size() && value >= 1, "--decode-tokens '{}': expected positive token counts", n);
      decode_sizes.push_back(value);
    }
  });

  std::vector<Variant> variants;
  for (WireFormat w : wires) {
    for (bool o : overlaps) {
      const std::string suffix =
          (wires.size() > 1 ? fmt::format("/{}", wire_format_name(w)) : "") + (o ? "/overlap" : "");
      variants.push_back({"standard" + suffix, DispatchKind::kStandard, 0, w, o});
      variants.push_back({"occult" + suffix, DispatchKind::kOccult, 0, w, o});
      for (int m : a.prune_devices) {
        variants.push_back({fmt::format("occult-pruned-M{}{}", m, suffix), DispatchKind::kOccult, m, w, o});
      }
    }
  }

  const std::int64_t T = a.tokens_per_rank, H = a.hidden, k = a.top_k;
  std::vector<float> x(T * H), dy(T * H), y(T * H), dx(T * H);
  for (std::int64_t i = 0; i < T * H; ++i) {
    x[i] = moe_init_value(a.seed + 1000 + rank, 0, i, 1.0f);
    dy[i] = moe_init_value(a.seed + 2000 + rank, 0, i, 1.0f);
  }
  ImposedRouting imposed;
  if (!a.routing_trace.empty()) {
    agree_on_errors(comm, [&] { imposed = routing_from_trace(trace, a.layer, rank, D, T); });
  }

  const bool show = rank == 0 && !a.json;
  const int decode_iters = std::max(a.iters, 20);
  const int steps_per_variant = a.warmup + 1 + a.iters + static_cast<int>(decode_sizes.size());
  ProgressBar progress("bench layer", static_cast<std::int64_t>(variants.size()) * steps_per_variant, show);
  std::int64_t step = 0;
  std::vector<VariantResult> results;
  double sgemm_gflops = 0;
  std::vector<double> floor_ms = {0, 0};  // the expert GEMMs alone, forward and backward, slowest rank
  for (const Variant& v : variants) {
    MoeLayerConfig config = base;
    config.dispatch = v.dispatch;
    config.wire = v.wire;
    config.overlap = v.overlap;
    ImposedRouting routing = imposed;
    if (v.prune_devices > 0) {
      config.prune.max_devices = v.prune_devices;
      config.prune.scheme = parse_prune_scheme_flag(a.prune_scheme);
      config.prune.similarity = similarity;
      if (!a.routing_trace.empty()) {
        // The imposed routing bypasses the router, so prune it here with the same rules.
        agree_on_errors(comm, [&] {
          const PruneConfig pc = config.prune_config(D);
          PruneWorkspace ws;
          if (held.empty()) {
            prune_routing(routing.ids, routing.weights, routing.probs, T, e2d, similarity, pc, ws);
          } else {
            prune_routing(routing.ids, routing.weights, routing.probs, T, holders_from_device_experts(held, e2d),
                          similarity, pc, ws);
          }
        });
      }
    }
    MoeLayer layer(comm, config, e2d, held);
    layer.init_random(a.seed, 1.0f / std::sqrt(static_cast<float>(H)));
    auto run_once = [&](bool backward) {
      if (a.routing_trace.empty()) {
        layer.forward(x, T, y);
      } else {
        layer.forward_with_routing(x, T, routing.ids, routing.weights, y);
      }
      if (backward) layer.backward(dy, {}, dx);
    };
    for (int w = 0; w < a.warmup; ++w) {
      run_once(a.backward);
      progress.update(++step, v.name + " warm-up");
    }
    comm.bytes().reset();
    VariantResult r;
    r.variant = v;
    const std::int64_t calls_before = comm.collective_calls();
    run_once(false);
    r.forward_collectives = comm.collective_calls() - calls_before;
    if (a.backward) {
      layer.backward(dy, {}, dx);
      r.backward_collectives = comm.collective_calls() - calls_before - r.forward_collectives;
    }
    progress.update(++step, v.name + " bytes");
    r.bytes = sum_over_ranks(comm);
    std::vector<double> distinct = {static_cast<double>(layer.token_device_pairs())};
    comm.all_reduce_sum(distinct);
    r.replicas_per_token = T > 0 ? distinct[0] / (static_cast<double>(T) * D) : 0;

    // This variant's compute floor, measured between its own iterations so that both see the
    // same machine (on shared cores a floor taken once drifts with the load).
    GemmFloor floor(rows_per_local_expert(layer), a.hidden, a.ffn, base.gemm);
    floor.forward_seconds();  // warm-up
    if (a.backward) floor.backward_seconds();
    std::vector<double> fwd, bwd, gflops, bwd_gflops, floor_fwd, floor_bwd, vs_floor;
    for (int it = 0; it < a.iters; ++it) {
      comm.barrier();
      auto t0 = std::chrono::steady_clock::now();
      if (a.routing_trace.empty()) {
        layer.forward(x, T, y);
      } else {
        layer.forward_with_routing(x, T, routing.ids, routing.weights, y);
      }
      // [time, expert flops, expert seconds] of the slowest rank / summed over ranks.
      std::vector<double> slowest = {seconds_since(t0)};
      std::vector<double> work = {layer.forward_expert_flops(), layer.timings().forward_experts, 0, 0};
      if (a.backward) {
        comm.barrier();
        t0 = std::chrono::steady_clock::now();
        layer.backward(dy, {}, dx);
        slowest.push_back(seconds_since(t0));
        work[2] = layer.backward_expert_flops();
        work[3] = layer.timings().backward_experts;
      }
      comm.barrier();
      const double floor_forward = floor.forward_seconds();
      comm.barrier();
      const double floor_backward = a.backward ? floor.backward_seconds() : 0;
      slowest.push_back(floor_forward);
      slowest.push_back(floor_backward);
      comm.all_reduce_max(slowest);
      comm.all_reduce_sum(work);
      fwd.push_back(slowest[0] * 1e3);
      if (a.backward) bwd.push_back(slowest[1] * 1e3);
      const double layer_s = slowest[0] + (a.backward ? slowest[1] : 0);
      const double floor_s = slowest[slowest.size() - 2] + slowest.back();
      floor_fwd.push_back(slowest[slowest.size() - 2] * 1e3);
      floor_bwd.push_back(slowest.back() * 1e3);
      if (floor_s > 0) vs_floor.push_back(layer_s / floor_s);
      if (work[1] > 0) gflops.push_back(work[0] / work[1] / 1e9);
      if (work[3] > 0) bwd_gflops.push_back(work[2] / work[3] / 1e9);
      progress.update(++step, fmt::format("{} fwd {:.2f} ms", v.name, fwd.back()));
    }
    r.forward_ms = median(fwd);
    r.backward_ms = median(bwd);
    r.expert_gflops = median(gflops);
    r.backward_expert_gflops = median(bwd_gflops);
    r.floor_forward_ms = median(floor_fwd);
    r.floor_backward_ms = a.backward ? median(floor_bwd) : 0;
    r.vs_floor = median(vs_floor);
    if (v.dispatch == DispatchKind::kStandard && v.prune_devices == 0) {
      // The GEMM ceiling for the shapes this rank's experts just computed (before the decode-like
      // runs below replace the receive plan with their smaller ones).
      GemmFloor ceiling(rows_per_local_expert(layer), a.hidden, a.ffn, base.gemm);
      const GemmBaseline b = gemm_baseline(ceiling, a.iters, a.backward);
      std::vector<double> rate = {b.gflops}, floor = {b.forward_ms, b.backward_ms};
      comm.all_reduce_sum(rate);
      comm.all_reduce_max(floor);
      sgemm_gflops = rate[0] / D;
      floor_ms = floor;
    }
    // Decode-like steps: a forward over the first n tokens, where latency (the number of
    // collectives and their start-up cost), not bandwidth, dominates.
    for (std::int64_t n : decode_sizes) {
      const std::int64_t m = std::min(n, T);
      std::span<const float> xs(x.data(), m * H);
      std::span<float> ys(y.data(), m * H);
      std::vector<double> times;
      for (int it = 0; it < a.warmup + decode_iters; ++it) {
        comm.barrier();
        const auto t0 = std::chrono::steady_clock::now();
        if (a.routing_trace.empty()) {
          layer.forward(xs, m, ys);
        } else {
          layer.forward_with_routing(xs, m, std::span<const std::int32_t>(routing.ids).first(m * k),
                                     std::span<const float>(routing.weights).first(m * k), ys);
        }
        std::vector<double> slowest = {seconds_since(t0)};
        comm.all_reduce_max(slowest);
        if (it >= a.warmup) times.push_back(slowest[0] * 1e3);
      }
      r.decode_ms.push_back(median(times));
      progress.update(++step, fmt::format("{} decode {} tokens", v.name, m));
    }
    std::vector<double> rss = {peak_rss_mb()};
    comm.all_reduce_max(rss);
    r.peak_rss_mb = rss[0];
    results.push_back(r);
  }
  progress.finish();
  const double base_ms = results[0].forward_ms + results[0].backward_ms;
  for (auto& r : results) r.speedup = (r.forward_ms + r.backward_ms) > 0 ? base_ms / (r.forward_ms + r.backward_ms) : 0;
  if (rank != 0) return;

  if (a.json) {
    nlohmann::json doc;
    doc["num_devices"] = D;
    doc["experts"] = a.experts;
    doc["top_k"] = a.top_k;
    doc["hidden"] = a.hidden;
    doc["ffn"] = a.ffn;
    doc["tokens_per_rank"] = a.tokens_per_rank;
    doc["iters"] = a.iters;
    doc["routing_trace"] = a.routing_trace;
    doc["placement"] = a.placement.empty() ? "contiguous" : a.placement;
    doc["sgemm_gflops"] = sgemm_gflops;  // the GEMM ceiling (same library and precision)
    doc["floor_forward_ms"] = floor_ms[0];  // the compute floor: the expert GEMMs alone, slowest rank
    doc["floor_backward_ms"] = floor_ms[1];
    doc["compute"] = a.compute;
    doc["gemm"] = a.gemm;
    doc["weights"] = a.weights;
    doc["decode_tokens_per_rank"] = decode_sizes;
    doc["variants"] = nlohmann::json::array();
    for (const auto& r : results) {
      nlohmann::json v;
      v["name"] = r.variant.name;
      v["dispatch"] = dispatch_kind_name(r.variant.dispatch);
      v["prune_devices"] = r.variant.prune_devices;
      v["wire"] = wire_format_name(r.variant.wire);
      v["overlap"] = r.variant.overlap;
      v["forward_collectives"] = r.forward_collectives;
      v["backward_collectives"] = r.backward_collectives;
      v["decode_ms"] = r.decode_ms;
      v["replicas_per_token"] = r.replicas_per_token;
      nlohmann::json bytes, remote;
      for (const char* name : {kExchangeDispatch, kExchangeCombine, kExchangeBackwardDispatch, kExchangeBackwardCombine}) {
        bytes[name] = r.bytes.at(name).total_bytes();
        remote[name] = r.bytes.at(name).remote_bytes;
      }
      v["bytes"] = bytes;
      v["remote_bytes"] = remote;
      v["metadata_bytes"] = r.bytes.at(kExchangeMetadata).total_bytes();
      v["replica_gradient_bytes"] = r.bytes.at(kExchangeReplicaGradients).total_bytes();
      v["forward_ms"] = r.forward_ms;
      v["backward_ms"] = r.backward_ms;
      v["speedup"] = r.speedup;
      v["expert_gflops"] = r.expert_gflops;
      v["backward_expert_gflops"] = r.backward_expert_gflops;
      v["expert_vs_sgemm"] = sgemm_gflops > 0 ? r.expert_gflops / sgemm_gflops : 0;
      v["peak_rss_mb"] = r.peak_rss_mb;
      v["floor_forward_ms"] = r.floor_forward_ms;
      v["floor_backward_ms"] = r.floor_backward_ms;
      v["vs_floor"] = r.vs_floor;
      doc["variants"].push_back(v);
    }
    std::cout << doc.dump(2) << "\n";
    return;
  }
  fmt::print("MoE layer: E={} k={} H={} F={}, {} tokens/rank on {} ranks, placement {}, routing {}; {} weights, {} "
             "compute on {}\n",
             a.experts, a.top_k, a.hidden, a.ffn, T, D, a.placement.empty() ? "contiguous" : a.placement,
             a.routing_trace.empty() ? "random router" : a.routing_trace, a.weights, a.compute, a.gemm);
  TextTable table({"variant", "wire", "C_T", "dispatch MB", "remote MB", "combine MB", "bwd disp MB", "bwd comb MB",
                   "meta MB", "coll f/b", "fwd ms", "bwd ms", "speed-up", "vs floor", "expert GF/s", "% GEMM",
                   "RSS MB"});
  auto mb = [](std::int64_t b) { return fmt::format("{:.2f}", b / 1e6); };
  for (const auto& r : results) {
    table.add_row({r.variant.name, std::string(wire_format_name(r.variant.wire)),
                   fmt::format("{:.3f}", r.replicas_per_token),
                   mb(r.bytes.at(kExchangeDispatch).total_bytes()), mb(r.bytes.at(kExchangeDispatch).remote_bytes),
                   mb(r.bytes.at(kExchangeCombine).total_bytes()),
                   mb(r.bytes.at(kExchangeBackwardDispatch).total_bytes()),
                   mb(r.bytes.at(kExchangeBackwardCombine).total_bytes()),
                   mb(r.bytes.at(kExchangeMetadata).total_bytes()),
                   a.backward ? fmt::format("{}/{}", r.forward_collectives, r.backward_collectives)
                              : fmt::format("{}/-", r.forward_collectives),
                   fmt::format("{:.2f}", r.forward_ms),
                   a.backward ? fmt::format("{:.2f}", r.backward_ms) : "-", fmt::format("{:.2f}x", r.speedup),
                   r.vs_floor > 0 ? fmt::format("{:.2f}x", r.vs_floor) : "-",
                   fmt::format("{:.1f}", r.expert_gflops),
                   sgemm_gflops > 0 ? fmt::format("{:.0f}%", 100 * r.expert_gflops / sgemm_gflops) : "-",
                   fmt::format("{:.0f}", r.peak_rss_mb)});
  }
  std::cout << table.render();
  fmt::print("GEMMs alone on the same shapes ({} {}): {:.1f} GFLOP/s per rank, {:.2f} ms forward{} (the compute floor, "
             "slowest rank); vs floor: the variant's time over these GEMMs run between its own iterations (median of the "
             "ratios); bytes summed over ranks, one iteration; times are medians of {} iterations (slowest rank); "
             "coll f/b = collectives per forward/backward on one rank\n",
             a.gemm, a.compute, sgemm_gflops, floor_ms[0],
             a.backward ? fmt::format(" + {:.2f} ms backward", floor_ms[1]) : "", a.iters);
  if (decode_sizes.empty()) return;
  std::vector<std::string> header = {"variant"};
  for (std::int64_t n : decode_sizes) header.push_back(fmt::format("fwd ms @ {} tok/rank", std::min(n, T)));
  TextTable decode(header);
  for (const auto& r : results) {
    std::vector<std::string> row = {r.variant.name};
    for (double ms : r.decode_ms) row.push_back(fmt::format("{:.3f}", ms));
    decode.add_row(row);
  }
  fmt::print("decode-like forward latency (medians of {} iterations, slowest rank):\n", decode_iters);
  std::cout << decode.render();
}

void setup(CLI::App& root) {
  CLI::App& group = command_group(root, "bench", "Benchmarks");
  auto args = std::make_shared<BenchLayerArgs>();
  CLI::App* cmd = group.add_subcommand("layer", "Standard vs occult dispatch on one MoE layer (under mpirun)");
  cmd->add_option("--experts", args->experts, "E")->capture_default_str();
  cmd->add_option("--top-k", args->top_k, "k")->capture_default_str();
  cmd->add_option("--hidden", args->hidden, "H")->capture_default_str();
  cmd->add_option("--ffn", args->ffn, "F, each expert's SwiGLU width")->capture_default_str();
  cmd->add_option("--tokens-per-rank", args->tokens_per_rank, "tokens each rank holds")->capture_default_str();
  cmd->add_option("--placement", args->placement, "placement JSON (default: contiguous)");
  cmd->add_option("--layer", args->layer, "layer of the placement and the trace")->capture_default_str();
  cmd->add_option("--routing-trace", args->routing_trace,
                  "impose a real trace layer's top-k ids and weights instead of the random router");
  cmd->add_flag("--backward", args->backward, "also time the backward pass");
  cmd->add_flag("--norm-topk-prob", args->norm_topk_prob, "normalise the top-k probabilities");
  cmd->add_option("--iters", args->iters, "timed iterations (medians are reported)")->capture_default_str();
  cmd->add_option("--warmup", args->warmup, "untimed iterations first")->capture_default_str();
  cmd->add_option("--prune-devices", args->prune_devices, "add a pruned occult variant per M (repeatable)");
  cmd->add_option("--prune-scheme", args->prune_scheme, "score, similarity or device-limited")->capture_default_str();
  cmd->add_option("--seed", args->seed, "weights and inputs seed")->capture_default_str();
  cmd->add_option("--wire", args->wire, "wire formats to compare, comma-separated: f32, bf16, f16, fp8")
      ->capture_default_str();
  cmd->add_option("--overlap", args->overlap,
                  "overlap the exchanges (forward and backward) with expert compute: on, off, or off,on to compare")
      ->capture_default_str();
  cmd->add_option("--decode-tokens", args->decode_tokens,
                  "tokens per rank of the decode-like latency runs, comma-separated (\"\" = none)")
      ->capture_default_str();
  cmd->add_option("--compute", args->compute,
                  "GEMM precision: f32 | bf16 (operands rounded to BF16, F32 accumulation; forward and backward)")
      ->capture_default_str();
  cmd->add_option("--gemm", args->gemm, "GEMM library: onednn | blas (OpenBLAS, the reference path)")
      ->capture_default_str();
  cmd->add_option("--weights", args->weights, "dtype the experts are held in: f32 | bf16 (forward only)")
      ->capture_default_str();
  cmd->add_flag("--json", args->json, "print JSON on stdout instead of the table");
  cmd->callback([args] { run_on_mpi_world([&](Communicator& comm) { run_bench(*args, comm); }); });
}

OCCULT_REGISTER_COMMAND("bench layer", setup);

}  // namespace bench_layer_command
}  // namespace occult::cli
