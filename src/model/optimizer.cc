#include "occult/model/optimizer.h"

#include <algorithm>
#include <cmath>
#include <iterator>
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

double global_grad_norm(MoeTransformer& model, const std::vector<bool>& trainable) {
  double dense = 0.0, expert = 0.0;
  const auto& tensors = model.tensors();
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if ((!trainable.empty() && !trainable[i]) || !tensors[i].optimized) continue;
    if (tensors[i].expert && !tensors[i].primary) continue;  // a replica's copy counts once
    double sum = 0.0;
    for (float g : tensors[i].grad) sum += static_cast<double>(g) * g;
    (tensors[i].expert ? expert : dense) += sum;
  }
  model.comm().all_reduce_sum(std::span<double>(&expert, 1));
  return std::sqrt(dense + expert);
}

std::vector<bool> trainable_tensors(const MoeTransformer& model, const std::vector<std::string>& groups) {
  static const char* kGroups[] = {"experts", "router", "shared", "attention", "norms", "embeddings"};
  for (const auto& g : groups) {
    OCCULT_CHECK(std::find(std::begin(kGroups), std::end(kGroups), g) != std::end(kGroups),
                 "--train-only: unknown group \"{}\" (expected experts, router, shared, attention, norms, "
                 "embeddings)",
                 g);
  }
  auto has = [&](const char* g) { return groups.empty() || std::find(groups.begin(), groups.end(), g) != groups.end(); };
  std::vector<bool> out;
  for (const auto& t : model.tensors()) {
    const std::string& n = t.name;
    const char* group = t.expert                              ? "experts"
                        : n.ends_with("mlp.gate.weight")       ? "router"
                        : n.find(".shared_experts.") != std::string::npos ? "shared"
                        : n.find(".self_attn.") != std::string::npos      ? "attention"
                        : t.shape.size() == 1                  ? "norms"
                                                               : "embeddings";
    out.push_back(has(group));
  }
  return out;
}

AdamW::AdamW(MoeTransformer& model, const AdamWOptions& options, std::vector<bool> trainable)
    : model_(model), options_(options), trainable_(std::move(trainable)) {
  OCCULT_CHECK(trainable_.empty() || trainable_.size() == model.tensors().size(),
               "AdamW: {} trainable flags for {} tensors", trainable_.size(), model.tensors().size());
  OCCULT_CHECK(options.lr > 0.0f, "--lr must be > 0, got {}", options.lr);
  OCCULT_CHECK(options.total_steps >= 1, "--steps must be >= 1, got {}", options.total_steps);
  OCCULT_CHECK(options.warmup_steps >= 0, "--warmup must be >= 0, got {}", options.warmup_steps);
  for (const auto& t : model.tensors()) {
    m_.emplace_back(t.numel, 0.0f);
    v_.emplace_back(t.numel, 0.0f);
  }
}

double AdamW::step() {
  const double norm = global_grad_norm(model_, trainable_);
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
    if ((!trainable_.empty() && !trainable_[i]) || !t.optimized) continue;
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
