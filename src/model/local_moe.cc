// The single-process MoE block: plain loops, written for clarity (it is the reference the
// expert-parallel layer is compared against inside the model), not speed.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "model/moe_block.h"
#include "occult/core/error.h"

namespace occult {

namespace {

class LocalMoeBlock final : public MoeBlock {
 public:
  explicit LocalMoeBlock(const ModelConfig& config) : config_(config) {
    const std::int64_t size = static_cast<std::int64_t>(config.num_experts) * config.moe_intermediate_size *
                              config.hidden_size;
    for (int kind = 0; kind < 3; ++kind) {
      weights_[kind].assign(size, 0.0f);
      grads_[kind].assign(size, 0.0f);
    }
    for (int e = 0; e < config.num_experts; ++e) local_.push_back(e);
    w_.gate_proj = weights_[0].data();
    w_.up_proj = weights_[1].data();
    w_.down_proj = weights_[2].data();
    w_.d_gate_proj = grads_[0].data();
    w_.d_up_proj = grads_[1].data();
    w_.d_down_proj = grads_[2].data();
  }
  void forward(const float* router, const float* selection_bias, const float* x, std::int64_t N,
               float* y) override;
  void backward(const float* dy, const float* d_probs, float* dx, float* d_router) override;
  const float* router_probs() const override { return probs_.data(); }
  const std::int32_t* topk_ids() const override { return ids_.data(); }
  const std::vector<int>& local_experts() const override { return local_; }
  // One device holds every expert: each token touches exactly it.
  std::int64_t token_device_pairs() const override { return N_; }
  std::span<float> expert_weight(int e, int kind) override { return slice(weights_[kind], e); }
  std::span<float> expert_grad(int e, int kind) override { return slice(grads_[kind], e); }
  std::span<std::uint16_t> expert_weight_bf16(int, int) override {
    OCCULT_FAIL("the single-process reference MoE block holds its experts in F32 only");
  }

 private:
  std::span<float> slice(std::vector<float>& v, int e) {
    const std::int64_t n = static_cast<std::int64_t>(config_.moe_intermediate_size) * config_.hidden_size;
    return std::span<float>(v).subspan(e * n, n);
  }
  struct Pointers {
    const float* router = nullptr;
    float *gate_proj, *up_proj, *down_proj, *d_gate_proj, *d_up_proj, *d_down_proj;
  };

  ModelConfig config_;
  std::vector<int> local_;
  std::vector<float> weights_[3], grads_[3];  // [E,F,H], [E,F,H], [E,H,F]
  Pointers w_;
  std::int64_t N_ = 0;
  const float* x_ = nullptr;
  std::vector<float> probs_;       // [N,E]
  std::vector<std::int32_t> ids_;  // [N,k]
  std::vector<float> gates_;       // [N,k]
  std::vector<float> h1_, h3_;     // [N,k,F]
  std::vector<float> ye_;          // [N,k,H] expert outputs before gating
};

void LocalMoeBlock::forward(const float* router, const float*, const float* x, std::int64_t N, float* y) {
  w_.router = router;
  const int H = config_.hidden_size, E = config_.num_experts, K = config_.num_experts_per_tok,
            F = config_.moe_intermediate_size;
  N_ = N;
  x_ = x;
  probs_.assign(N * E, 0.0f);
  ids_.assign(N * K, 0);
  gates_.assign(N * K, 0.0f);
  h1_.assign(N * K * F, 0.0f);
  h3_.assign(N * K * F, 0.0f);
  ye_.assign(N * K * H, 0.0f);
  std::memset(y, 0, sizeof(float) * N * H);
  std::vector<float> h(F);
  for (std::int64_t t = 0; t < N; ++t) {
    const float* xt = x + t * H;
    float* p = probs_.data() + t * E;
    for (int e = 0; e < E; ++e) {
      const float* wr = w_.router + static_cast<std::int64_t>(e) * H;
      float z = 0.0f;
      for (int c = 0; c < H; ++c) z += wr[c] * xt[c];
      p[e] = z;
    }
    float maxv = p[0];
    for (int e = 1; e < E; ++e) maxv = std::max(maxv, p[e]);
    float sum = 0.0f;
    for (int e = 0; e < E; ++e) sum += (p[e] = std::exp(p[e] - maxv));
    for (int e = 0; e < E; ++e) p[e] /= sum;
    // Top-k by repeated arg-max; strict '>' keeps the lower id on ties.
    std::vector<bool> taken(E, false);
    float selected_sum = 0.0f;
    for (int j = 0; j < K; ++j) {
      int best = -1;
      for (int e = 0; e < E; ++e) {
        if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
      }
      taken[best] = true;
      ids_[t * K + j] = best;
      gates_[t * K + j] = p[best];
      selected_sum += p[best];
    }
    if (config_.norm_topk_prob) {
      for (int j = 0; j < K; ++j) gates_[t * K + j] /= selected_sum;
    }
    for (int j = 0; j < K; ++j) {
      const int e = ids_[t * K + j];
      const float* w1 = w_.gate_proj + static_cast<std::int64_t>(e) * F * H;
      const float* w3 = w_.up_proj + static_cast<std::int64_t>(e) * F * H;
      const float* w2 = w_.down_proj + static_cast<std::int64_t>(e) * H * F;
      float* a1 = h1_.data() + (t * K + j) * F;
      float* a3 = h3_.data() + (t * K + j) * F;
      for (int f = 0; f < F; ++f) {
        float s1 = 0.0f, s3 = 0.0f;
        for (int c = 0; c < H; ++c) {
          s1 += w1[f * H + c] * xt[c];
          s3 += w3[f * H + c] * xt[c];
        }
        a1[f] = s1;
        a3[f] = s3;
        h[f] = s1 / (1.0f + std::exp(-s1)) * s3;
      }
      float* ye = ye_.data() + (t * K + j) * H;
      const float g = gates_[t * K + j];
      for (int c = 0; c < H; ++c) {
        float s = 0.0f;
        for (int f = 0; f < F; ++f) s += w2[c * F + f] * h[f];
        ye[c] = s;
        y[t * H + c] += g * s;
      }
    }
  }
}

void LocalMoeBlock::backward(const float* dy, const float* d_probs, float* dx, float* d_router) {
  for (auto& g : grads_) std::fill(g.begin(), g.end(), 0.0f);
  const int H = config_.hidden_size, E = config_.num_experts, K = config_.num_experts_per_tok,
            F = config_.moe_intermediate_size;
  std::vector<float> h(F), dh(F), dgate(K), dp(E);
  for (std::int64_t t = 0; t < N_; ++t) {
    const float* xt = x_ + t * H;
    const float* dyt = dy + t * H;
    float* dxt = dx + t * H;
    for (int j = 0; j < K; ++j) {
      const int e = ids_[t * K + j];
      const float g = gates_[t * K + j];
      const float* w1 = w_.gate_proj + static_cast<std::int64_t>(e) * F * H;
      const float* w3 = w_.up_proj + static_cast<std::int64_t>(e) * F * H;
      const float* w2 = w_.down_proj + static_cast<std::int64_t>(e) * H * F;
      float* dw1 = w_.d_gate_proj + static_cast<std::int64_t>(e) * F * H;
      float* dw3 = w_.d_up_proj + static_cast<std::int64_t>(e) * F * H;
      float* dw2 = w_.d_down_proj + static_cast<std::int64_t>(e) * H * F;
      const float* a1 = h1_.data() + (t * K + j) * F;
      const float* a3 = h3_.data() + (t * K + j) * F;
      const float* ye = ye_.data() + (t * K + j) * H;
      float dg = 0.0f;
      for (int c = 0; c < H; ++c) dg += dyt[c] * ye[c];
      dgate[j] = dg;
      for (int f = 0; f < F; ++f) h[f] = a1[f] / (1.0f + std::exp(-a1[f])) * a3[f];
      for (int f = 0; f < F; ++f) dh[f] = 0.0f;
      for (int c = 0; c < H; ++c) {
        const float d = g * dyt[c];
        for (int f = 0; f < F; ++f) {
          dw2[c * F + f] += d * h[f];
          dh[f] += d * w2[c * F + f];
        }
      }
      for (int f = 0; f < F; ++f) {
        const float sig = 1.0f / (1.0f + std::exp(-a1[f]));
        const float d3 = dh[f] * a1[f] * sig;
        const float d1 = dh[f] * a3[f] * sig * (1.0f + a1[f] * (1.0f - sig));
        for (int c = 0; c < H; ++c) {
          dw1[f * H + c] += d1 * xt[c];
          dw3[f * H + c] += d3 * xt[c];
          dxt[c] += d1 * w1[f * H + c] + d3 * w3[f * H + c];
        }
      }
    }
    // Gate weights -> probabilities.
    const float* p = probs_.data() + t * E;
    for (int e = 0; e < E; ++e) dp[e] = d_probs != nullptr ? d_probs[t * E + e] : 0.0f;
    if (config_.norm_topk_prob) {
      float s = 0.0f, dot = 0.0f;
      for (int j = 0; j < K; ++j) {
        s += p[ids_[t * K + j]];
      }
      for (int j = 0; j < K; ++j) dot += dgate[j] * gates_[t * K + j];
      for (int j = 0; j < K; ++j) dp[ids_[t * K + j]] += (dgate[j] - dot) / s;
    } else {
      for (int j = 0; j < K; ++j) dp[ids_[t * K + j]] += dgate[j];
    }
    // Softmax backward, then the router matmul.
    float dot = 0.0f;
    for (int e = 0; e < E; ++e) dot += p[e] * dp[e];
    for (int e = 0; e < E; ++e) {
      const float dz = p[e] * (dp[e] - dot);
      float* dwr = d_router + static_cast<std::int64_t>(e) * H;
      const float* wr = w_.router + static_cast<std::int64_t>(e) * H;
      for (int c = 0; c < H; ++c) {
        dwr[c] += dz * xt[c];
        dxt[c] += dz * wr[c];
      }
    }
  }
}

}  // namespace

std::unique_ptr<MoeBlock> make_local_moe_block(const ModelConfig& config) {
  OCCULT_CHECK(config.score_function == ScoreFunction::kSoftmax && config.n_group == 1 &&
                   config.routed_scaling_factor == 1.0f && !config.router_selection_bias,
               "the single-process reference MoE block implements the softmax top-k router only (model_type {} "
               "routes with sigmoid scores, groups, a scaling factor or a selection bias)",
               config.model_type);
  return std::make_unique<LocalMoeBlock>(config);
}

}  // namespace occult
