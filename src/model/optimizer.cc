#include "occult/model/optimizer.h"

#include <cmath>
#include <span>

#include "occult/comm/communicator.h"
#include "occult/core/error.h"

namespace occult {

float learning_rate(const AdamWOptions& o, int step) {
  if (o.warmup_steps > 0 && step <= o.warmup_steps) {
    return o.lr * static_cast<float>(step) / static_cast<float>(o.warmup_steps);
  }
  const int decay_steps = std::max(1, o.total_steps - o.warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - o.warmup_steps) / decay_steps);
  const double min_lr = static_cast<double>(o.lr) * o.min_lr_ratio;
  return static_cast<float>(min_lr + 0.5 * (o.lr - min_lr) * (1.0 + std::cos(M_PI * progress)));
}

double global_grad_norm(MoeTransformer& model) {
  double dense = 0.0;
  for (float g : model.dense_grads()) dense += static_cast<double>(g) * g;
  double expert = 0.0;
  for (const auto& t : model.tensors()) {
    if (!t.expert) continue;
    for (float g : t.grad) expert += static_cast<double>(g) * g;
  }
  model.comm().all_reduce_sum(std::span<double>(&expert, 1));
  return std::sqrt(dense + expert);
}

AdamW::AdamW(MoeTransformer& model, const AdamWOptions& options) : model_(model), options_(options) {
  OCCULT_CHECK(options.lr > 0.0f, "--lr must be > 0, got {}", options.lr);
  OCCULT_CHECK(options.total_steps >= 1, "--steps must be >= 1, got {}", options.total_steps);
  OCCULT_CHECK(options.warmup_steps >= 0, "--warmup must be >= 0, got {}", options.warmup_steps);
  for (const auto& t : model.tensors()) {
    m_.emplace_back(t.numel, 0.0f);
    v_.emplace_back(t.numel, 0.0f);
  }
}

double AdamW::step() {
  const double norm = global_grad_norm(model_);
  const float clip = options_.grad_clip > 0.0f && norm > options_.grad_clip
                         ? static_cast<float>(options_.grad_clip / norm)
                         : 1.0f;
  ++step_;
  const float lr = learning_rate(options_, step_);
  last_lr_ = lr;
  const float b1 = options_.beta1, b2 = options_.beta2;
  const float c1 = 1.0f - static_cast<float>(std::pow(b1, step_));
  const float c2 = 1.0f - static_cast<float>(std::pow(b2, step_));
  const auto& tensors = model_.tensors();
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    float* p = t.value.data();
    const float* g = t.grad.data();
    float* m = m_[i].data();
    float* v = v_[i].data();
    const float wd = t.decay ? options_.weight_decay : 0.0f;
    for (std::int64_t j = 0; j < t.numel; ++j) {
      const float gj = g[j] * clip;
      m[j] = b1 * m[j] + (1.0f - b1) * gj;
      v[j] = b2 * v[j] + (1.0f - b2) * gj * gj;
      const float update = (m[j] / c1) / (std::sqrt(v[j] / c2) + options_.eps);
      p[j] -= lr * (update + wd * p[j]);
    }
  }
  return norm;
}

}  // namespace occult
