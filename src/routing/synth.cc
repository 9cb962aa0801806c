#include "occult/routing/synth.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "occult/core/error.h"

namespace occult {

namespace {

// xoshiro256** seeded by SplitMix64: tiny, fast and fully specified, so a seed gives the same
// trace with every compiler and standard library (std:: distributions are not portable).
class Rng {
 public:
  Rng(std::uint64_t seed, std::uint64_t stream) {
    std::uint64_t x = seed ^ (0x9e3779b97f4a7c15ull * (stream + 1));
    for (auto& word : state_) word = splitmix(x);
  }

  std::uint64_t next() {
    const std::uint64_t result = rotl(state_[1] * 5, 7) * 9;
    const std::uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = rotl(state_[3], 45);
    return result;
  }

  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1p-53; }

  // Uniform in [0, n), n >= 1 (rejection removes the modulo bias).
  std::uint64_t below(std::uint64_t n) {
    const std::uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    std::uint64_t x = next();
    while (x >= limit) x = next();
    return x % n;
  }

  // Standard normal (Box-Muller; one value per call keeps the stream simple).
  double normal() {
    const double u1 = 1.0 - uniform();  // (0, 1]: log is finite
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static std::uint64_t splitmix(std::uint64_t& x) {
    std::uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  std::uint64_t state_[4];
};

// Independent RNG streams, so changing one option (e.g. router_probs) does not reshuffle the
// routing drawn from the others. Layer l uses kLayerBase + 2l (structure, picks) and
// kLayerBase + 2l + 1 (logits).
enum Stream : std::uint64_t { kTokenGroups = 0, kSequences = 1, kLayerBase = 16 };

template <typename T>
void shuffle(std::vector<T>& values, Rng& rng) {
  for (std::size_t i = values.size(); i > 1; --i) std::swap(values[i - 1], values[rng.below(i)]);
}

// A pool of experts to pick from, with cumulative popularity weights for O(log n) sampling.
struct Pool {
  std::vector<int> experts;
  std::vector<double> cumulative;  // cumulative[i] = sum of weights of experts[0..i]

  void build(const std::vector<int>& members, const std::vector<double>& popularity) {
    experts = members;
    cumulative.resize(members.size());
    double sum = 0.0;
    for (std::size_t i = 0; i < members.size(); ++i) cumulative[i] = sum += popularity[members[i]];
  }

  // An expert of the pool not in `taken`, drawn with probability proportional to popularity
  // among the untaken ones. The pool must still hold an untaken expert.
  int draw(Rng& rng, const std::vector<int>& taken, const std::vector<double>& popularity) const {
    auto is_taken = [&](int e) { return std::find(taken.begin(), taken.end(), e) != taken.end(); };
    // Rejection is exact (it conditions on "not taken") and cheap while k is small next to the
    // pool; the bounded loop falls back to an exact scan when most of the mass is taken.
    constexpr int kMaxRejections = 32;
    for (int attempt = 0; attempt < kMaxRejections; ++attempt) {
      const double x = rng.uniform() * cumulative.back();
      const auto it = std::upper_bound(cumulative.begin(), cumulative.end(), x);
      const int e = experts[std::min<std::size_t>(it - cumulative.begin(), experts.size() - 1)];
      if (!is_taken(e)) return e;
    }
    double remaining = 0.0;
    for (int e : experts) remaining += is_taken(e) ? 0.0 : popularity[e];
    double x = rng.uniform() * remaining;
    int last = -1;
    for (int e : experts) {
      if (is_taken(e)) continue;
      last = e;
      x -= popularity[e];
      if (x < 0.0) return e;
    }
    return last;  // rounding left x >= 0 after the last untaken expert
  }
};

void check_options(const SynthOptions& o) {
  OCCULT_CHECK(o.num_experts >= 1, "--experts is {}, expected at least 1", o.num_experts);
  OCCULT_CHECK(o.top_k >= 1 && o.top_k <= o.num_experts,
               "--top-k is {}, expected 1 <= top-k <= experts={}", o.top_k, o.num_experts);
  OCCULT_CHECK(o.num_layers >= 1, "--layers is {}, expected at least 1", o.num_layers);
  OCCULT_CHECK(o.num_tokens >= 1, "--tokens is {}, expected at least 1", o.num_tokens);
  OCCULT_CHECK(o.num_groups >= 1 && o.num_experts % o.num_groups == 0,
               "--groups is {}, expected a positive divisor of experts={}", o.num_groups,
               o.num_experts);
  OCCULT_CHECK(o.group_affinity >= 0.0 && o.group_affinity <= 1.0,
               "--affinity is {}, expected a probability in [0, 1]", o.group_affinity);
  OCCULT_CHECK(o.hot_experts >= 0 && o.hot_experts <= o.num_experts,
               "--hot-experts is {}, expected 0 <= hot-experts <= experts={}", o.hot_experts,
               o.num_experts);
  OCCULT_CHECK(std::isfinite(o.hot_skew) && o.hot_skew >= 0.0,
               "--hot-skew is {}, expected a finite value >= 0", o.hot_skew);
  OCCULT_CHECK(o.sequence_length >= 0, "--seq-len is {}, expected >= 0 (0: no sequences)",
               o.sequence_length);
  // router_probs is T*E floats per layer; refuse sizes that cannot be meant (over 16 GiB).
  OCCULT_CHECK(!o.router_probs || static_cast<double>(o.num_tokens) * o.num_experts *
                                          o.num_layers * sizeof(float) <= 16.0 * (1ull << 30),
               "--router-probs with tokens={} experts={} layers={} needs more than 16 GiB",
               o.num_tokens, o.num_experts, o.num_layers);
}

// Logit layout: the chosen experts' logits descend by kStep from kLowestChosenLogit +
// kStep*(k-1) (plus a jitter under kStep/2, so their order is strict); the others are standard
// normals conditioned (by rejection) to lie kGap below the lowest chosen logit, so the chosen
// experts are exactly the top-k of the softmax. With the lowest chosen logit at 3, fewer than
// 0.3% of the normals need a redraw, and no unchosen logits tie.
constexpr double kLowestChosenLogit = 3.0;
constexpr double kStep = 0.4;
constexpr double kGap = 0.25;
// E[exp(Z)] for a standard normal Z: the expected softmax mass of one unchosen expert, used
// for the weights when router_probs are not drawn (drawing them costs T*E normals).
const double kMeanUnchosenMass = std::exp(0.5);

}  // namespace

SynthTrace synthesize_trace(const SynthOptions& options,
                            const std::function<void(int)>& on_layer_done) {
  check_options(options);
  const int e = options.num_experts;
  const int k = options.top_k;
  const int g = options.num_groups;
  const int group_size = e / g;
  const std::int64_t t_count = options.num_tokens;

  SynthTrace out;
  Trace& trace = out.trace;
  trace.num_experts = e;
  trace.top_k = k;
  trace.model = options.model;
  trace.dataset = options.dataset;
  trace.extra_metadata["synth"] = fmt::format(
      "experts={} top_k={} layers={} tokens={} groups={} affinity={} hot_experts={} hot_skew={} "
      "seq_len={} router_probs={} seed={}",
      e, k, options.num_layers, t_count, g, options.group_affinity, options.hot_experts,
      options.hot_skew, options.sequence_length, options.router_probs, options.seed);

  Rng token_rng(options.seed, kTokenGroups);
  out.token_group.resize(t_count);
  for (auto& group : out.token_group) group = static_cast<int>(token_rng.below(g));

  if (options.sequence_length > 0) {
    Rng seq_rng(options.seed, kSequences);
    const std::int64_t lo = (options.sequence_length + 1) / 2;
    const std::int64_t hi = std::max(lo, options.sequence_length * 3 / 2);
    std::int64_t remaining = t_count;
    while (remaining > 0) {
      const std::int64_t length =
          std::min<std::int64_t>(remaining, lo + static_cast<std::int64_t>(seq_rng.below(hi - lo + 1)));
      trace.sequence_lengths.push_back(static_cast<std::int32_t>(length));
      remaining -= length;
    }
  }

  out.expert_group.resize(options.num_layers);
  out.hot_experts.resize(options.num_layers);
  trace.layers.resize(options.num_layers);
  std::vector<int> taken;
  std::vector<double> logits(options.router_probs ? e : 0);
  for (int l = 0; l < options.num_layers; ++l) {
    Rng rng(options.seed, kLayerBase + 2 * static_cast<std::uint64_t>(l));
    Rng logit_rng(options.seed, kLayerBase + 2 * static_cast<std::uint64_t>(l) + 1);
    std::vector<int> order(e);
    std::iota(order.begin(), order.end(), 0);
    shuffle(order, rng);
    auto& expert_group = out.expert_group[l];
    expert_group.assign(e, 0);
    for (int i = 0; i < e; ++i) expert_group[order[i]] = i / group_size;

    std::iota(order.begin(), order.end(), 0);
    shuffle(order, rng);
    std::vector<double> popularity(e, 1.0);
    out.hot_experts[l].assign(order.begin(), order.begin() + options.hot_experts);
    for (int r = 0; r < options.hot_experts; ++r) {
      popularity[order[r]] = 1.0 + options.hot_skew / (r + 1);
    }

    std::vector<Pool> own(g), others(g);
    for (int group = 0; group < g; ++group) {
      std::vector<int> in, out_of;
      for (int x = 0; x < e; ++x) (expert_group[x] == group ? in : out_of).push_back(x);
      own[group].build(in, popularity);
      others[group].build(out_of, popularity);
    }

    LayerRouting& layer = trace.layers[l];
    layer.num_tokens = t_count;
    layer.top_k = k;
    layer.topk_ids.resize(static_cast<std::size_t>(t_count) * k);
    layer.topk_weights.resize(layer.topk_ids.size());
    if (options.router_probs) layer.router_probs.resize(static_cast<std::size_t>(t_count) * e);
    std::vector<double> chosen_logits(k);
    for (std::int64_t t = 0; t < t_count; ++t) {
      const int group = out.token_group[t];
      taken.clear();
      int from_own = 0;
      for (int j = 0; j < k; ++j) {
        bool use_own = g == 1 || rng.uniform() < options.group_affinity;
        // A pool with every expert taken cannot give another: use the other one.
        if (use_own && from_own == group_size) use_own = false;
        if (!use_own && j - from_own == e - group_size) use_own = true;
        const int x = (use_own ? own[group] : others[group]).draw(rng, taken, popularity);
        from_own += use_own;
        taken.push_back(x);
      }
      double z = 0.0;
      for (int j = 0; j < k; ++j) {
        chosen_logits[j] = kLowestChosenLogit + kStep * (k - 1 - j) + 0.5 * kStep * logit_rng.uniform();
        z += std::exp(chosen_logits[j]);
      }
      if (options.router_probs) {
        const double cap = chosen_logits[k - 1] - kGap;
        float* probs = layer.router_probs.data() + t * e;
        for (int x = 0; x < e; ++x) {
          double logit = logit_rng.normal();
          while (logit >= cap) logit = logit_rng.normal();
          logits[x] = logit;
        }
        for (int j = 0; j < k; ++j) logits[taken[j]] = chosen_logits[j];
        z = 0.0;
        for (int x = 0; x < e; ++x) z += std::exp(logits[x]);
        for (int x = 0; x < e; ++x) probs[x] = static_cast<float>(std::exp(logits[x]) / z);
      } else {
        z += (e - k) * kMeanUnchosenMass;
      }
      std::int32_t* ids = layer.topk_ids.data() + t * k;
      float* weights = layer.topk_weights.data() + t * k;
      for (int j = 0; j < k; ++j) {
        ids[j] = taken[j];
        weights[j] = static_cast<float>(std::exp(chosen_logits[j]) / z);
      }
    }
    if (on_layer_done) on_layer_done(l);
  }
  validate_trace(trace, "synthetic trace");
  return out;
}

std::vector<int> planted_expert_to_device(const SynthTrace& synth, int layer, int num_devices) {
  OCCULT_CHECK(layer >= 0 && layer < static_cast<int>(synth.expert_group.size()),
               "planted_expert_to_device: layer {} is out of range [0, {})", layer,
               synth.expert_group.size());
  const auto& groups = synth.expert_group[layer];
  const int num_groups = groups.empty() ? 0 : *std::max_element(groups.begin(), groups.end()) + 1;
  OCCULT_CHECK(num_devices == num_groups,
               "planted_expert_to_device: the trace has {} planted groups, so it defines a "
               "placement for {} devices, not {}",
               num_groups, num_groups, num_devices);
  return groups;
}

}  // namespace occult
