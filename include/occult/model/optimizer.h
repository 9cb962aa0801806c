// AdamW with decoupled weight decay, the warm-up + cosine learning-rate schedule and global-norm
// gradient clipping across expert-parallel ranks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "occult/model/model.h"

namespace occult {

// Hyper-parameters of AdamW (Loshchilov & Hutter) and of the schedule.
struct AdamWOptions {
  float lr = 1e-3f;             // peak learning rate
  float min_lr_ratio = 0.1f;    // the cosine decays to lr * min_lr_ratio at the last step
  int warmup_steps = 0;         // linear warm-up from lr/warmup_steps to lr
  int total_steps = 1;          // length of the schedule
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;    // decoupled; only tensors with ParamTensor::decay
  float grad_clip = 1.0f;       // max global L2 norm (0 disables clipping)
};

// Learning rate of 1-based step `step`: linear warm-up, then cosine from lr to lr*min_lr_ratio.
float learning_rate(const AdamWOptions& options, int step);

// Collective. The L2 norm of every gradient of the model: dense gradients are identical on
// every rank (already all-reduced) so they count once; each expert's gradient lives on one
// rank only, so their squares are summed over ranks.
// `trainable` (one flag per model.tensors() entry; empty = all) restricts it to trained tensors.
double global_grad_norm(MoeTransformer& model, const std::vector<bool>& trainable = {});

// Which tensors a fine-tuning run trains: `groups` is a subset of experts, router, shared,
// attention, norms, embeddings (empty = everything). Throws naming an unknown group.
std::vector<bool> trainable_tensors(const MoeTransformer& model, const std::vector<std::string>& groups);

// AdamW state for one model instance (first and second moments mirror the model's tensors).
class AdamW {
 public:
  // `trainable` (one flag per model.tensors() entry; empty = all): frozen tensors are neither
  // updated nor decayed, and their gradients do not count in the clipping norm.
  AdamW(MoeTransformer& model, const AdamWOptions& options, std::vector<bool> trainable = {});
  // Collective. Clips to options.grad_clip, updates every parameter with the lr of step()+1,
  // advances the step. Returns the gradient norm before clipping.
  double step();
  // Number of updates done so far.
  int step_count() const { return step_; }
  // Restores the update count (resume), so bias correction and the schedule continue.
  void set_step_count(int step) { step_ = step; }
  // First/second moments of tensor i of model.tensors().
  std::vector<float>& exp_avg(std::size_t i) { return m_[i]; }
  std::vector<float>& exp_avg_sq(std::size_t i) { return v_[i]; }
  // The hyper-parameters this optimizer was built with.
  const AdamWOptions& options() const { return options_; }
  // The learning rate the last step() used.
  float last_lr() const { return last_lr_; }

 private:
  MoeTransformer& model_;
  AdamWOptions options_;
  int step_ = 0;
  float last_lr_ = 0.0f;
  std::vector<bool> trainable_;
  std::vector<std::vector<float>> m_, v_;
};

}  // namespace occult
