// The model's naive reference twin: the whole forward pass in double precision with plain
// loops (no BLAS, no communication, every expert in one place). It defines the numbers the
// optimised float model must reproduce, and finite differences of it check every gradient.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "occult/model/config.h"

namespace occult {

// Every parameter of the model by Hugging Face name (all experts included), in double.
using ReferenceParams = std::map<std::string, std::vector<double>>;

// Loss parts of the reference forward (same definitions as LossParts).
struct ReferenceLoss {
  double cross_entropy = 0.0;
  double aux = 0.0;
  double total = 0.0;
  // Smallest gap, over all tokens and layers, between the k-th and (k+1)-th router probability:
  // finite differences are valid only while perturbations stay far below it (no routing flips).
  double min_topk_gap = 1.0;
};

// The loss of tokens/targets[B,T] (one batch, all sequences). `expert_fraction`, when not null,
// overrides the load-balancing f_e [L,E] (with seq_aux f_be [L,B,E]) (so finite differences treat
// it as a constant, like the analytic gradient does); it is filled with the computed f when empty.
ReferenceLoss reference_model_loss(const ModelConfig& config, const ReferenceParams& params,
                                   std::span<const std::int32_t> tokens,
                                   std::span<const std::int32_t> targets, std::int64_t B, int T,
                                   std::vector<double>* expert_fraction = nullptr);

}  // namespace occult
