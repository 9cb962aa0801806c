// RoPE frequencies and magnitudes under a config's rope_scaling (RopeScaling in config.h): plain
// RoPE, or YaRN as the DeepSeek-V2/V3 checkpoints define it.
#pragma once

#include <vector>

#include "occult/model/config.h"

namespace occult {

// The angle per position of rotary pair i (0 <= i < rotary_dim / 2): theta^(-2i/rotary_dim),
// and under YaRN the blend of that and the same divided by `factor`, by a linear ramp over the
// pairs between the correction dimensions of beta_fast and beta_slow.
std::vector<double> rope_inverse_frequencies(const ModelConfig& config, int rotary_dim);

// What cos and sin are multiplied by: mscale(factor, mscale) / mscale(factor, mscale_all_dim)
// under YaRN, 1 otherwise.
double rope_magnitude(const ModelConfig& config);

// What the attention softmax scale 1/sqrt(d) is multiplied by: mscale(factor, mscale_all_dim)^2
// under YaRN with mscale_all_dim != 0, 1 otherwise.
double rope_softmax_scale_multiplier(const ModelConfig& config);

}  // namespace occult
