#include "occult/model/reference.h"

#include <algorithm>
#include <cmath>

#include "occult/core/error.h"

namespace occult {

namespace {

using Vec = std::vector<double>;

const Vec& get(const ReferenceParams& params, const std::string& name, std::size_t numel) {
  auto it = params.find(name);
  OCCULT_CHECK(it != params.end(), "reference model: parameter {} is missing", name);
  OCCULT_CHECK(it->second.size() == numel, "reference model: parameter {} has {} values, expected {}", name,
               it->second.size(), numel);
  return it->second;
}

// y[n,o] = sum_i x[n,i] w[o,i].
Vec linear(const Vec& x, const Vec& w, std::int64_t N, int in, int out) {
  Vec y(static_cast<std::size_t>(N) * out, 0.0);
  for (std::int64_t n = 0; n < N; ++n) {
    for (int o = 0; o < out; ++o) {
      double s = 0.0;
      for (int i = 0; i < in; ++i) s += x[n * in + i] * w[static_cast<std::size_t>(o) * in + i];
      y[n * out + o] = s;
    }
  }
  return y;
}

Vec rmsnorm(const Vec& x, const Vec& w, std::int64_t N, int C, double eps) {
  Vec y(x.size());
  for (std::int64_t n = 0; n < N; ++n) {
    double ss = 0.0;
    for (int c = 0; c < C; ++c) ss += x[n * C + c] * x[n * C + c];
    const double r = 1.0 / std::sqrt(ss / C + eps);
    for (int c = 0; c < C; ++c) y[n * C + c] = x[n * C + c] * r * w[c];
  }
  return y;
}

double silu(double a) { return a / (1.0 + std::exp(-a)); }

void rope(Vec& x, std::int64_t B, int T, int NH, int hs, double theta) {
  const int half = hs / 2;
  for (std::int64_t b = 0; b < B; ++b) {
    for (int t = 0; t < T; ++t) {
      for (int h = 0; h < NH; ++h) {
        double* v = x.data() + ((b * T + t) * NH + h) * hs;
        for (int i = 0; i < half; ++i) {
          const double angle = t * std::pow(theta, -2.0 * i / hs);
          const double a = v[i], c = v[i + half];
          v[i] = a * std::cos(angle) - c * std::sin(angle);
          v[i + half] = c * std::cos(angle) + a * std::sin(angle);
        }
      }
    }
  }
}

}  // namespace

ReferenceLoss reference_model_loss(const ModelConfig& cfg, const ReferenceParams& params,
                                   std::span<const std::int32_t> tokens, std::span<const std::int32_t> targets,
                                   std::int64_t B, int T, std::vector<double>* expert_fraction) {
  const int V = cfg.vocab_size, H = cfg.hidden_size, L = cfg.num_hidden_layers, NH = cfg.num_attention_heads,
            E = cfg.num_experts, K = cfg.num_experts_per_tok, F = cfg.moe_intermediate_size,
            S = cfg.shared_intermediate_size(), hs = H / NH;
  // The training twin covers what training runs: no latent attention, the softmax top-k router.
  OCCULT_CHECK(!cfg.mla() && cfg.score_function == ScoreFunction::kSoftmax && cfg.n_group == 1 &&
                   cfg.routed_scaling_factor == 1.0f && !cfg.router_selection_bias,
               "the model's reference twin does not implement model_type {} (latent attention or the DeepSeek-V3 "
               "router)",
               cfg.model_type);
  const std::int64_t N = B * T;
  const double eps = cfg.rms_norm_eps;
  OCCULT_CHECK(static_cast<std::int64_t>(tokens.size()) == N && static_cast<std::int64_t>(targets.size()) == N,
               "reference model: tokens/targets must hold B*T = {} ids", N);
  const auto HH = static_cast<std::size_t>(H) * H;
  const Vec& wte = get(params, "model.embed_tokens.weight", static_cast<std::size_t>(V) * H);
  Vec x(static_cast<std::size_t>(N) * H);
  for (std::int64_t n = 0; n < N; ++n) {
    for (int c = 0; c < H; ++c) x[n * H + c] = wte[static_cast<std::size_t>(tokens[n]) * H + c];
  }
  const bool have_fraction = expert_fraction != nullptr && !expert_fraction->empty();
  // f per layer and expert, or with seq_aux per layer, sequence and expert.
  const bool per_sequence = cfg.aux_loss_per_sequence;
  std::vector<double> fraction(static_cast<std::size_t>(L) * (per_sequence ? B : 1) * E, 0.0);
  if (have_fraction) fraction = *expert_fraction;
  ReferenceLoss out;
  double aux = 0.0;
  for (int l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const Vec ln1 = rmsnorm(x, get(params, p + "input_layernorm.weight", H), N, H, eps);
    Vec q = linear(ln1, get(params, p + "self_attn.q_proj.weight", HH), N, H, H);
    Vec k = linear(ln1, get(params, p + "self_attn.k_proj.weight", HH), N, H, H);
    const Vec v = linear(ln1, get(params, p + "self_attn.v_proj.weight", HH), N, H, H);
    rope(q, B, T, NH, hs, cfg.rope_theta);
    rope(k, B, T, NH, hs, cfg.rope_theta);
    Vec atty(static_cast<std::size_t>(N) * H, 0.0);
    std::vector<double> w(T);
    for (std::int64_t b = 0; b < B; ++b) {
      for (int h = 0; h < NH; ++h) {
        for (int t = 0; t < T; ++t) {
          double maxv = -1e300;
          for (int s = 0; s <= t; ++s) {
            double dot = 0.0;
            for (int i = 0; i < hs; ++i) dot += q[(b * T + t) * H + h * hs + i] * k[(b * T + s) * H + h * hs + i];
            w[s] = dot / std::sqrt(static_cast<double>(hs));
            maxv = std::max(maxv, w[s]);
          }
          double sum = 0.0;
          for (int s = 0; s <= t; ++s) sum += (w[s] = std::exp(w[s] - maxv));
          for (int s = 0; s <= t; ++s) {
            for (int i = 0; i < hs; ++i) atty[(b * T + t) * H + h * hs + i] += w[s] / sum * v[(b * T + s) * H + h * hs + i];
          }
        }
      }
    }
    const Vec o = linear(atty, get(params, p + "self_attn.o_proj.weight", HH), N, H, H);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    const Vec ln2 = rmsnorm(x, get(params, p + "post_attention_layernorm.weight", H), N, H, eps);
    // Router, top-k, experts.
    const Vec logits = linear(ln2, get(params, p + "mlp.gate.weight", static_cast<std::size_t>(E) * H), N, H, E);
    std::vector<double> counts(E, 0.0), psum(E, 0.0);
    // Each token's probabilities and top-k membership, for the sequence-wise loss.
    std::vector<double> token_prob(static_cast<std::size_t>(N) * E), token_chosen(static_cast<std::size_t>(N) * E, 0.0);
    Vec y(static_cast<std::size_t>(N) * H, 0.0);
    for (std::int64_t t = 0; t < N; ++t) {
      std::vector<double> pr(E);
      double maxv = -1e300;
      for (int e = 0; e < E; ++e) maxv = std::max(maxv, logits[t * E + e]);
      double sum = 0.0;
      for (int e = 0; e < E; ++e) sum += (pr[e] = std::exp(logits[t * E + e] - maxv));
      for (int e = 0; e < E; ++e) psum[e] += (token_prob[t * E + e] = (pr[e] /= sum));
      std::vector<int> order(E);
      for (int e = 0; e < E; ++e) order[e] = e;
      std::stable_sort(order.begin(), order.end(), [&](int a, int b2) { return pr[a] > pr[b2]; });
      if (K < E) out.min_topk_gap = std::min(out.min_topk_gap, pr[order[K - 1]] - pr[order[K]]);
      double selected = 0.0;
      for (int j = 0; j < K; ++j) selected += pr[order[j]];
      for (int j = 0; j < K; ++j) {
        const int e = order[j];
        counts[e] += 1.0;
        token_chosen[t * E + e] = 1.0;
        const double g = cfg.norm_topk_prob ? pr[e] / selected : pr[e];
        const std::string ep = p + "mlp.experts." + std::to_string(e) + ".";
        const Vec& w1 = get(params, ep + "gate_proj.weight", static_cast<std::size_t>(F) * H);
        const Vec& w3 = get(params, ep + "up_proj.weight", static_cast<std::size_t>(F) * H);
        const Vec& w2 = get(params, ep + "down_proj.weight", static_cast<std::size_t>(H) * F);
        std::vector<double> hid(F);
        for (int f = 0; f < F; ++f) {
          double a = 0.0, c = 0.0;
          for (int i = 0; i < H; ++i) {
            a += w1[static_cast<std::size_t>(f) * H + i] * ln2[t * H + i];
            c += w3[static_cast<std::size_t>(f) * H + i] * ln2[t * H + i];
          }
          hid[f] = silu(a) * c;
        }
        for (int i = 0; i < H; ++i) {
          double s = 0.0;
          for (int f = 0; f < F; ++f) s += w2[static_cast<std::size_t>(i) * F + f] * hid[f];
          y[t * H + i] += g * s;
        }
      }
    }
    if (S > 0) {
      const Vec a = linear(ln2, get(params, p + "mlp.shared_experts.gate_proj.weight", static_cast<std::size_t>(S) * H), N, H, S);
      const Vec c = linear(ln2, get(params, p + "mlp.shared_experts.up_proj.weight", static_cast<std::size_t>(S) * H), N, H, S);
      Vec hid(a.size());
      for (std::size_t i = 0; i < a.size(); ++i) hid[i] = silu(a[i]) * c[i];
      const Vec d = linear(hid, get(params, p + "mlp.shared_experts.down_proj.weight", static_cast<std::size_t>(H) * S), N, S, H);
      for (std::size_t i = 0; i < y.size(); ++i) y[i] += d[i];
    }
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += y[i];
    double layer_aux = 0.0;
    if (per_sequence) {
      // DeepSeek's seq_aux: the mean over sequences of sum_e (E/(T k) count_be) (mean_t p_te).
      for (std::int64_t b = 0; b < B; ++b) {
        for (int e = 0; e < E; ++e) {
          double chosen = 0.0, prob = 0.0;
          for (std::int64_t t = b * T; t < (b + 1) * T; ++t) {
            chosen += token_chosen[t * E + e];
            prob += token_prob[t * E + e];
          }
          double& f = fraction[(static_cast<std::size_t>(l) * B + b) * E + e];
          if (!have_fraction) f = E * chosen / (static_cast<double>(T) * K);
          layer_aux += f * (prob / T) / static_cast<double>(B);
        }
      }
      aux += layer_aux;
    } else {
      for (int e = 0; e < E; ++e) {
        if (!have_fraction) fraction[static_cast<std::size_t>(l) * E + e] = counts[e] / (static_cast<double>(N) * K);
        layer_aux += fraction[static_cast<std::size_t>(l) * E + e] * psum[e] / static_cast<double>(N);
      }
      aux += E * layer_aux;
    }
  }
  const Vec lnf = rmsnorm(x, get(params, "model.norm.weight", H), N, H, eps);
  const Vec& head = cfg.tie_word_embeddings ? wte : get(params, "lm_head.weight", static_cast<std::size_t>(V) * H);
  const Vec logits = linear(lnf, head, N, H, V);
  double ce = 0.0;
  for (std::int64_t n = 0; n < N; ++n) {
    double maxv = -1e300;
    for (int i = 0; i < V; ++i) maxv = std::max(maxv, logits[n * V + i]);
    double sum = 0.0;
    for (int i = 0; i < V; ++i) sum += std::exp(logits[n * V + i] - maxv);
    ce += std::log(sum) + maxv - logits[n * V + targets[n]];
  }
  out.cross_entropy = ce / static_cast<double>(N);
  out.aux = cfg.router_aux_loss_coef * aux / L;
  out.total = out.cross_entropy + out.aux;
  if (expert_fraction != nullptr && !have_fraction) *expert_fraction = fraction;
  return out;
}

}  // namespace occult
