#include "occult/moe/reference.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "occult/core/error.h"
#include "routing/reference.h"

namespace occult {

float moe_init_value(std::uint64_t seed, std::uint64_t tensor_id, std::uint64_t index, float scale) {
  // splitmix64 of a mix of the three keys: cheap, stateless, identical on every rank.
  std::uint64_t z = seed * 0x9E3779B97F4A7C15ull + tensor_id * 0xD1B54A32D192ED03ull + index + 1;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  const double unit = static_cast<double>(z >> 11) * (1.0 / 9007199254740992.0);  // [0, 1)
  return static_cast<float>((2.0 * unit - 1.0) * scale);
}

ReferenceMoeWeights ReferenceMoeWeights::zeros(const MoeLayerConfig& c) {
  validate_moe_layer_config(c);
  const std::size_t E = c.num_experts, H = c.hidden_size, F = c.ffn_size;
  ReferenceMoeWeights w;
  w.router.assign(E * H, 0.0f);
  w.gate_proj.assign(E * F * H, 0.0f);
  w.up_proj.assign(E * F * H, 0.0f);
  w.down_proj.assign(E * H * F, 0.0f);
  if (c.selection_bias) w.selection_bias.assign(E, 0.0f);
  return w;
}

ReferenceMoeWeights ReferenceMoeWeights::random(const MoeLayerConfig& c, std::uint64_t seed, float scale) {
  ReferenceMoeWeights w = zeros(c);
  const std::size_t FH = static_cast<std::size_t>(c.ffn_size) * c.hidden_size;
  for (std::size_t i = 0; i < w.router.size(); ++i) w.router[i] = moe_init_value(seed, 0, i, scale);
  for (int e = 0; e < c.num_experts; ++e) {
    for (std::size_t i = 0; i < FH; ++i) {
      w.gate_proj[e * FH + i] = moe_init_value(seed, 1 + 3 * e + 0, i, scale);
      w.up_proj[e * FH + i] = moe_init_value(seed, 1 + 3 * e + 1, i, scale);
      w.down_proj[e * FH + i] = moe_init_value(seed, 1 + 3 * e + 2, i, scale);
    }
  }
  return w;
}

namespace {

void check_common(const MoeLayerConfig& c, const ReferenceMoeWeights& w, std::span<const float> x, std::int64_t T) {
  validate_moe_layer_config(c);
  const std::size_t E = c.num_experts, H = c.hidden_size, F = c.ffn_size;
  OCCULT_CHECK(T >= 0 && x.size() == static_cast<std::size_t>(T) * H, "reference MoE: x holds {} floats, expected "
               "T*H = {}*{}", x.size(), T, H);
  OCCULT_CHECK(w.router.size() == E * H && w.gate_proj.size() == E * F * H && w.up_proj.size() == E * F * H &&
                   w.down_proj.size() == E * H * F,
               "reference MoE: weights do not match E={}, H={}, F={}", E, H, F);
}

// Gate weights from scores and weight sources (DESIGN.md): g = p[src], or p[src] / sum.
void gate_weights(const MoeLayerConfig& c, ReferenceMoeState& s) {
  const int E = c.num_experts, k = c.top_k;
  const bool normalise = c.norm_topk_prob || c.score_function == ScoreFunction::kSigmoid;
  s.topk_weights.assign(static_cast<std::size_t>(s.num_tokens) * k, 0.0f);
  for (std::int64_t t = 0; t < s.num_tokens; ++t) {
    const float* p = s.probs.data() + t * E;
    double z = 0;
    for (int j = 0; j < k; ++j) z += p[s.weight_source[t * k + j]];
    for (int j = 0; j < k; ++j) {
      const double pj = p[s.weight_source[t * k + j]];
      s.topk_weights[t * k + j] = static_cast<float>((normalise ? pj / z : pj) * c.routed_scaling_factor);
    }
  }
}

// Expert e's SwiGLU on one token, in double; keeps a1, a3 for the backward.
void expert_apply(const MoeLayerConfig& c, const ReferenceMoeWeights& w, int e, const float* x,
                  std::vector<double>& a1, std::vector<double>& a3, std::vector<double>& y) {
  const int H = c.hidden_size, F = c.ffn_size;
  const std::size_t base = static_cast<std::size_t>(e) * F * H;
  a1.assign(F, 0.0);
  a3.assign(F, 0.0);
  y.assign(H, 0.0);
  for (int j = 0; j < F; ++j) {
    for (int i = 0; i < H; ++i) {
      a1[j] += static_cast<double>(w.gate_proj[base + static_cast<std::size_t>(j) * H + i]) * x[i];
      a3[j] += static_cast<double>(w.up_proj[base + static_cast<std::size_t>(j) * H + i]) * x[i];
    }
  }
  for (int i = 0; i < H; ++i) {
    for (int j = 0; j < F; ++j) {
      const double h = a1[j] / (1.0 + std::exp(-a1[j])) * a3[j];
      y[i] += static_cast<double>(w.down_proj[base + static_cast<std::size_t>(i) * F + j]) * h;
    }
  }
}

}  // namespace

void reference_route(const MoeLayerConfig& c, std::span<const float> logits, std::int64_t T,
                     std::span<const int> expert_to_device, ReferenceMoeState& s,
                     std::span<const float> selection_bias) {
  const int E = c.num_experts, k = c.top_k;
  OCCULT_CHECK(logits.size() == static_cast<std::size_t>(T) * E, "reference route: logits hold {}, expected {}*{}",
               logits.size(), T, E);
  s.num_tokens = T;
  s.routing_imposed = false;
  s.probs.assign(logits.size(), 0.0f);
  for (std::int64_t t = 0; t < T; ++t) {
    const float* l = logits.data() + t * E;
    float* p = s.probs.data() + t * E;
    if (c.score_function == ScoreFunction::kSoftmax) {
      const double m = *std::max_element(l, l + E);
      double z = 0;
      for (int e = 0; e < E; ++e) z += std::exp(static_cast<double>(l[e]) - m);
      for (int e = 0; e < E; ++e) p[e] = static_cast<float>(std::exp(static_cast<double>(l[e]) - m) / z);
    } else {
      for (int e = 0; e < E; ++e) p[e] = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(l[e]))));
    }
  }
  s.topk_ids.assign(static_cast<std::size_t>(T) * k, 0);
  std::vector<int> order(E), group_order(c.num_groups);
  std::vector<float> key(E), group_score(c.num_groups);
  const int size = E / c.num_groups;
  for (std::int64_t t = 0; t < T; ++t) {
    const float* p = s.probs.data() + t * E;
    for (int e = 0; e < E; ++e) key[e] = selection_bias.empty() ? p[e] : p[e] + selection_bias[e];
    if (c.num_groups > 1) {
      // Group score: the best key, or the sum of the two best; keep the kept_groups best groups
      // (ties to the lower group), and give every other expert the key 0.
      for (int g = 0; g < c.num_groups; ++g) {
        std::vector<float> members(key.begin() + g * size, key.begin() + (g + 1) * size);
        std::sort(members.rbegin(), members.rend());
        group_score[g] = c.group_score == GroupScore::kMax ? members[0] : members[0] + members[1];
      }
      std::iota(group_order.begin(), group_order.end(), 0);
      std::stable_sort(group_order.begin(), group_order.end(),
                       [&](int a, int b) { return group_score[a] > group_score[b]; });
      std::vector<char> kept(c.num_groups, 0);
      for (int j = 0; j < c.kept_groups; ++j) kept[group_order[j]] = 1;
      for (int e = 0; e < E; ++e) key[e] = kept[e / size] ? key[e] : 0.0f;
    }
    std::iota(order.begin(), order.end(), 0);
    // Descending key, ties to the lower id.
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return key[a] > key[b]; });
    for (int j = 0; j < k; ++j) s.topk_ids[t * k + j] = order[j];
  }
  s.weight_source = s.topk_ids;
  if (c.prune.max_devices > 0) {
    OCCULT_CHECK(static_cast<int>(expert_to_device.size()) == E,
                 "reference route: pruning needs the placement (expert_to_device of E = {} entries)", E);
    const int D = *std::max_element(expert_to_device.begin(), expert_to_device.end()) + 1;
    // The pruning rules are routing's naive twin (written apart from the production
    // prune_routing the layer runs); the reference only needs the pruned ids. Weights are
    // re-derived below from their sources.
    gate_weights(c, s);  // the pre-pruning weights pruning starts from
    std::vector<float> pruned_weights = s.topk_weights;
    reference::prune_routing(s.topk_ids, pruned_weights, s.probs, T, expert_to_device, c.prune.similarity,
                             c.prune_config(D));
    if (c.prune.weights == PruneWeights::kRecompute) s.weight_source = s.topk_ids;
  }
  gate_weights(c, s);
}

namespace {

// y[t] = sum_j g_{t,j} * expert_{id_{t,j}}(x[t]) in double, over the routing in `s`: the mix
// both reference forwards (own router or imposed routing) end with.
void mix_expert_outputs(const MoeLayerConfig& c, const ReferenceMoeWeights& w, std::span<const float> x,
                        std::int64_t T, const ReferenceMoeState& s, std::span<float> y) {
  const int H = c.hidden_size, k = c.top_k;
  std::vector<double> a1, a3, ye;
  for (std::int64_t t = 0; t < T; ++t) {
    std::vector<double> acc(H, 0.0);
    for (int j = 0; j < k; ++j) {
      expert_apply(c, w, s.topk_ids[t * k + j], x.data() + t * H, a1, a3, ye);
      for (int i = 0; i < H; ++i) acc[i] += s.topk_weights[t * k + j] * ye[i];
    }
    for (int i = 0; i < H; ++i) y[t * H + i] = static_cast<float>(acc[i]);
  }
}

}  // namespace

void reference_moe_forward(const MoeLayerConfig& c, const ReferenceMoeWeights& w, std::span<const float> x,
                           std::int64_t T, std::span<const int> expert_to_device, ReferenceMoeState& s,
                           std::span<float> y) {
  check_common(c, w, x, T);
  const int E = c.num_experts, H = c.hidden_size;
  OCCULT_CHECK(y.size() == x.size(), "reference MoE: y holds {} floats, expected {}", y.size(), x.size());
  std::vector<float> logits(static_cast<std::size_t>(T) * E);
  for (std::int64_t t = 0; t < T; ++t) {
    for (int e = 0; e < E; ++e) {
      double acc = 0;
      for (int i = 0; i < H; ++i) acc += static_cast<double>(w.router[static_cast<std::size_t>(e) * H + i]) * x[t * H + i];
      logits[t * E + e] = static_cast<float>(acc);
    }
  }
  reference_route(c, logits, T, expert_to_device, s, w.selection_bias);
  mix_expert_outputs(c, w, x, T, s, y);
}

void reference_moe_forward_with_routing(const MoeLayerConfig& c, const ReferenceMoeWeights& w,
                                        std::span<const float> x, std::int64_t T,
                                        std::span<const std::int32_t> topk_ids, std::span<const float> topk_weights,
                                        ReferenceMoeState& s, std::span<float> y) {
  check_common(c, w, x, T);
  const int k = c.top_k;
  OCCULT_CHECK(topk_ids.size() == static_cast<std::size_t>(T) * k && topk_weights.size() == topk_ids.size(),
               "reference MoE: imposed routing holds {} ids and {} weights, expected T*k = {}*{}", topk_ids.size(),
               topk_weights.size(), T, k);
  for (std::int32_t id : topk_ids) {
    OCCULT_CHECK(id >= 0 && id < c.num_experts, "reference MoE: imposed expert id {} outside [0, {})", id,
                 c.num_experts);
  }
  s.num_tokens = T;
  s.routing_imposed = true;
  s.probs.clear();
  s.topk_ids.assign(topk_ids.begin(), topk_ids.end());
  s.weight_source = s.topk_ids;
  s.topk_weights.assign(topk_weights.begin(), topk_weights.end());
  mix_expert_outputs(c, w, x, T, s, y);
}

void reference_moe_backward(const MoeLayerConfig& c, const ReferenceMoeWeights& w, const ReferenceMoeState& s,
                            std::span<const float> x, std::span<const float> dy,
                            std::span<const float> d_router_probs, std::span<float> dx, ReferenceMoeWeights& g) {
  const std::int64_t T = s.num_tokens;
  check_common(c, w, x, T);
  const int E = c.num_experts, H = c.hidden_size, F = c.ffn_size, k = c.top_k;
  OCCULT_CHECK(dy.size() == x.size() && dx.size() == x.size(), "reference MoE backward: dy/dx hold {}/{} floats, "
               "expected {}", dy.size(), dx.size(), x.size());
  OCCULT_CHECK(d_router_probs.empty() || d_router_probs.size() == static_cast<std::size_t>(T) * E,
               "reference MoE backward: d_router_probs holds {}, expected T*E = {}*{}", d_router_probs.size(), T, E);
  OCCULT_CHECK(!(s.routing_imposed && !d_router_probs.empty()),
               "reference MoE backward: d_router_probs given but the routing was imposed (no router)");
  OCCULT_CHECK(g.router.size() == w.router.size() && g.gate_proj.size() == w.gate_proj.size(),
               "reference MoE backward: gradient tensors do not match the weights");
  const bool normalise = c.norm_topk_prob || c.score_function == ScoreFunction::kSigmoid;
  std::vector<double> a1, a3, ye, dg(k), u(F), dxt(H), dp(E), dl(E);
  for (std::int64_t t = 0; t < T; ++t) {
    const float* xt = x.data() + t * H;
    const float* dyt = dy.data() + t * H;
    std::fill(dxt.begin(), dxt.end(), 0.0);
    for (int j = 0; j < k; ++j) {
      const int e = s.topk_ids[t * k + j];
      const double gw = s.topk_weights[t * k + j];
      const std::size_t base = static_cast<std::size_t>(e) * F * H;
      expert_apply(c, w, e, xt, a1, a3, ye);
      dg[j] = 0;
      for (int i = 0; i < H; ++i) dg[j] += dyt[i] * ye[i];
      for (int f = 0; f < F; ++f) {
        u[f] = 0;
        for (int i = 0; i < H; ++i) u[f] += dyt[i] * static_cast<double>(w.down_proj[base + static_cast<std::size_t>(i) * F + f]);
        const double sg = 1.0 / (1.0 + std::exp(-a1[f]));
        const double h = a1[f] * sg * a3[f];
        const double dh = gw * u[f];
        const double da3 = dh * a1[f] * sg;
        const double da1 = dh * a3[f] * sg * (1.0 + a1[f] * (1.0 - sg));
        for (int i = 0; i < H; ++i) {
          g.down_proj[base + static_cast<std::size_t>(i) * F + f] += static_cast<float>(gw * dyt[i] * h);
          g.gate_proj[base + static_cast<std::size_t>(f) * H + i] += static_cast<float>(da1 * xt[i]);
          g.up_proj[base + static_cast<std::size_t>(f) * H + i] += static_cast<float>(da3 * xt[i]);
          dxt[i] += da1 * w.gate_proj[base + static_cast<std::size_t>(f) * H + i] +
                    da3 * w.up_proj[base + static_cast<std::size_t>(f) * H + i];
        }
      }
    }
    if (!s.routing_imposed) {
      const float* p = s.probs.data() + t * E;
      for (int e = 0; e < E; ++e) dp[e] = d_router_probs.empty() ? 0.0 : d_router_probs[t * E + e];
      // g = scale * (normalised) score: the scale reaches the scores' gradient.
      for (int j = 0; j < k; ++j) dg[j] *= c.routed_scaling_factor;
      if (normalise) {
        double z = 0, gdot = 0;
        for (int j = 0; j < k; ++j) z += p[s.weight_source[t * k + j]];
        for (int j = 0; j < k; ++j) gdot += dg[j] * (p[s.weight_source[t * k + j]] / z);
        for (int j = 0; j < k; ++j) dp[s.weight_source[t * k + j]] += (dg[j] - gdot) / z;
      } else {
        for (int j = 0; j < k; ++j) dp[s.weight_source[t * k + j]] += dg[j];
      }
      if (c.score_function == ScoreFunction::kSoftmax) {
        double dot = 0;
        for (int e = 0; e < E; ++e) dot += dp[e] * p[e];
        for (int e = 0; e < E; ++e) dl[e] = p[e] * (dp[e] - dot);
      } else {
        for (int e = 0; e < E; ++e) dl[e] = dp[e] * p[e] * (1.0 - p[e]);
      }
      for (int e = 0; e < E; ++e) {
        for (int i = 0; i < H; ++i) {
          g.router[static_cast<std::size_t>(e) * H + i] += static_cast<float>(dl[e] * xt[i]);
          dxt[i] += dl[e] * w.router[static_cast<std::size_t>(e) * H + i];
        }
      }
    }
    for (int i = 0; i < H; ++i) dx[t * H + i] = static_cast<float>(dxt[i]);
  }
}

}  // namespace occult
