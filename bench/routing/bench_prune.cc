// Collaboration-pruning throughput (target: prune 1M tokens x k=8 against a 64-expert,
// 8-device placement in well under a second on one core), each scheme, against the naive
// reference twin in the same run; plus gating (softmax + top-k) for scale. Single-threaded.
//
//   build/bench/routing/bench_prune [--tokens 1000000] [--repeats 5] [--twin-tokens 65536] [--json]
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstring>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "occult/core/error.h"
#include "occult/core/table.h"
#include "occult/routing/gating.h"
#include "occult/routing/pruning.h"
#include "routing/reference.h"

namespace {

using occult::PruneConfig;
using occult::PruneScheme;
using occult::PruneStats;
using occult::PruneWeights;

// This thread's CPU time: the shared 2-core VM runs other jobs, and CPU time (unlike wall
// time) does not count the slices the scheduler gives them.
double thread_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Median thread CPU time of `repeats` runs of `run` after one warm-up; `prepare` (untimed)
// runs before each, e.g. to restore the routing that pruning overwrites in place.
double median_seconds(int repeats, const std::function<void()>& prepare, const std::function<void()>& run) {
  std::vector<double> times;
  for (int r = -1; r < repeats; ++r) {
    prepare();
    const double t0 = thread_seconds();
    run();
    const double s = thread_seconds() - t0;
    if (r >= 0) times.push_back(s);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

struct Routing {
  std::vector<float> probs;  // [T, E]
  std::vector<std::int32_t> ids;
  std::vector<float> weights;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Collaboration-pruning and gating throughput vs the naive reference twins"};
  std::int64_t tokens = 1000000;
  int repeats = 5;
  std::int64_t twin_tokens = 65536;
  int experts = 64, top_k = 8, devices = 8;
  bool json = false;
  app.add_option("--tokens", tokens, "Tokens per pruning call");
  app.add_option("--repeats", repeats, "Timed repeats (median reported), after one warm-up");
  app.add_option("--twin-tokens", twin_tokens, "Tokens the naive twins run on (they are slow)");
  app.add_option("--experts", experts, "E");
  app.add_option("--top-k", top_k, "k");
  app.add_option("--devices", devices, "D");
  app.add_flag("--json", json, "Machine-readable results on stdout");
  CLI11_PARSE(app, argc, argv);

  try {
    const int e = experts, k = top_k, d = devices;
    twin_tokens = std::min(twin_tokens, tokens);
    // Router logits with a per-expert popularity bias and correlated expert groups, so the
    // routing has the skew and co-activation of real routers rather than uniform noise.
    std::mt19937 rng(42);
    std::normal_distribution<float> noise(0.0f, 1.0f);
    std::vector<float> popularity(e);
    for (float& p : popularity) p = 0.5f * noise(rng);
    const int groups = std::max(1, e / 8);
    std::vector<float> logits(static_cast<std::size_t>(tokens) * e);
    for (std::int64_t t = 0; t < tokens; ++t) {
      const int g = static_cast<int>(rng() % groups);
      for (int x = 0; x < e; ++x) {
        logits[t * e + x] = popularity[x] + noise(rng) + (x % groups == g ? 1.5f : 0.0f);
      }
    }
    occult::GatingConfig gating{e, k, occult::ScoreFunction::kSoftmax, false};
    Routing base;
    base.probs.resize(logits.size());
    base.ids.resize(static_cast<std::size_t>(tokens) * k);
    base.weights.resize(base.ids.size());

    occult::TextTable table({"kernel", "inputs", "M", "tokens", "median CPU ms", "tokens/s", "twin tokens/s",
                             "speedup", "C_T before", "C_T after", "twin check"});
    nlohmann::json out = {{"tokens", tokens}, {"experts", e}, {"top_k", k}, {"devices", d},
                          {"repeats", repeats}, {"twin_tokens", twin_tokens}, {"rows", nlohmann::json::array()}};

    // Gating: softmax + top-k, fast vs twin.
    {
      std::vector<float> twin_probs(twin_tokens * e);
      std::vector<std::int32_t> twin_ids(twin_tokens * k);
      std::vector<float> twin_w(twin_tokens * k);
      const double fast_s = median_seconds(repeats, [] {}, [&] {
        occult::router_scores(logits, tokens, gating, base.probs);
        occult::select_topk(base.probs, {}, tokens, gating, base.ids, base.weights);
      });
      const std::span<const float> twin_logits(logits.data(), twin_tokens * e);
      const double twin_s = median_seconds(std::max(1, repeats / 2), [] {}, [&] {
        occult::reference::router_scores(twin_logits, twin_tokens, gating, twin_probs);
        occult::reference::select_topk(twin_probs, {}, twin_tokens, gating, twin_ids, twin_w);
      });
      const bool same = std::equal(twin_ids.begin(), twin_ids.end(), base.ids.begin()) &&
                        std::memcmp(twin_w.data(), base.weights.data(), twin_w.size() * sizeof(float)) == 0;
      const double fast_rate = tokens / fast_s, twin_rate = twin_tokens / twin_s;
      table.add_row({"gating softmax+top-k", "logits", "-", std::to_string(tokens), fmt::format("{:.1f}", 1e3 * fast_s),
                     fmt::format("{:.3g}", fast_rate), fmt::format("{:.3g}", twin_rate),
                     fmt::format("{:.1f}x", fast_rate / twin_rate), "-", "-", same ? "equal" : "DIFFERS"});
      out["rows"].push_back({{"kernel", "gating"}, {"median_seconds", fast_s}, {"tokens_per_second", fast_rate},
                             {"twin_tokens_per_second", twin_rate}, {"twin_equal", same}});
      OCCULT_CHECK(same, "gating fast path differs from its twin");
    }

    // A balanced placement: experts shuffled onto devices (E/D each), as a partitioner leaves them.
    std::vector<int> placement(e);
    for (int x = 0; x < e; ++x) placement[x] = x * d / e;
    std::shuffle(placement.begin(), placement.end(), rng);
    std::vector<float> similarity(static_cast<std::size_t>(e) * e);
    for (int a = 0; a < e; ++a) {
      for (int b = 0; b < e; ++b) similarity[a * e + b] = a == b ? 1.0f : (a % groups == b % groups ? 0.5f : 0.0f) + 0.01f * ((a * 31 + b * 17) % 7);
    }

    struct Case {
      PruneScheme scheme;
      bool probs;
      int max_devices;
    };
    std::vector<Case> cases;
    for (PruneScheme s : {PruneScheme::kScore, PruneScheme::kSimilarity, PruneScheme::kDeviceLimited}) {
      cases.push_back({s, true, 2});
      cases.push_back({s, false, 2});
    }
    cases.push_back({PruneScheme::kScore, true, 1});
    cases.push_back({PruneScheme::kScore, true, 4});
    occult::PruneWorkspace ws;
    for (const Case& c : cases) {
      PruneConfig config;
      config.num_experts = e;
      config.top_k = k;
      config.num_devices = d;
      config.max_devices = c.max_devices;
      config.scheme = c.scheme;
      const std::span<const float> probs = c.probs ? std::span<const float>(base.probs) : std::span<const float>();
      Routing work;
      PruneStats stats;
      const double fast_s = median_seconds(
          repeats, [&] { work.ids = base.ids, work.weights = base.weights; },
          [&] { stats = occult::prune_routing(work.ids, work.weights, probs, tokens, placement, similarity, config, ws); });
      Routing twin;
      twin.ids.assign(base.ids.begin(), base.ids.begin() + twin_tokens * k);
      twin.weights.assign(base.weights.begin(), base.weights.begin() + twin_tokens * k);
      const std::span<const float> twin_probs = c.probs ? probs.first(twin_tokens * e) : std::span<const float>();
      const double twin_s = median_seconds(std::max(1, repeats / 2), [&] {
        twin.ids.assign(base.ids.begin(), base.ids.begin() + twin_tokens * k);
        twin.weights.assign(base.weights.begin(), base.weights.begin() + twin_tokens * k);
      }, [&] {
        occult::reference::prune_routing(twin.ids, twin.weights, twin_probs, twin_tokens, placement, similarity, config);
      });
      const bool same = std::equal(twin.ids.begin(), twin.ids.end(), work.ids.begin()) &&
                        std::memcmp(twin.weights.data(), work.weights.data(), twin.weights.size() * sizeof(float)) == 0;
      const double fast_rate = tokens / fast_s, twin_rate = twin_tokens / twin_s;
      const std::string name = fmt::format("prune {}", occult::prune_scheme_name(c.scheme));
      const std::string inputs = c.probs ? "probs" : "weights";
      table.add_row({name, inputs, std::to_string(c.max_devices), std::to_string(tokens),
                     fmt::format("{:.1f}", 1e3 * fast_s), fmt::format("{:.3g}", fast_rate),
                     fmt::format("{:.3g}", twin_rate), fmt::format("{:.1f}x", fast_rate / twin_rate),
                     fmt::format("{:.3f}", stats.replicas_per_token_before()),
                     fmt::format("{:.3f}", stats.replicas_per_token_after()), same ? "equal" : "DIFFERS"});
      out["rows"].push_back({{"kernel", name}, {"inputs", inputs}, {"max_devices", c.max_devices},
                             {"median_seconds", fast_s}, {"tokens_per_second", fast_rate},
                             {"twin_tokens_per_second", twin_rate}, {"twin_equal", same},
                             {"replicas_per_token_before", stats.replicas_per_token_before()},
                             {"replicas_per_token_after", stats.replicas_per_token_after()},
                             {"fraction_tokens_changed", stats.fraction_tokens_changed()}});
      OCCULT_CHECK(same, "{} fast path differs from its twin", name);
    }
    if (json) {
      std::cout << out.dump(2) << "\n";
    } else {
      fmt::print("{}", table.render());
      fmt::print("E={} k={} D={}, {} tokens, median thread CPU time of {} after 1 warm-up, one thread; twins on the first {} tokens\n",
                 e, k, d, tokens, repeats, twin_tokens);
    }
  } catch (const occult::Error& error) {
    fmt::print(stderr, "bench_prune: error: {}\n", error.message());
    return 1;
  }
  return 0;
}
