#include "model/layers/rope_scaling.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace occult {

namespace {

// YaRN's attention magnitude for an extension `scale` and a coefficient m.
double yarn_mscale(double scale, double m) { return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; }

// The pair index (fractional) whose wavelength completes `rotations` turns over the original
// context: below it pairs rotate faster and are kept, above it they are interpolated.
double correction_dim(double rotations, int dim, double base, int original_context) {
  return dim * std::log(original_context / (rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(base));
}

}  // namespace

std::vector<double> rope_inverse_frequencies(const ModelConfig& c, int rotary_dim) {
  const int half = rotary_dim / 2;
  const double base = c.rope_theta;
  std::vector<double> inv(static_cast<std::size_t>(half));
  for (int i = 0; i < half; ++i) inv[i] = std::pow(base, -2.0 * i / rotary_dim);
  const RopeScaling& y = c.rope_scaling;
  if (!y.yarn) return inv;
  // The ramp ends are whole pair indices (floor / ceil), clamped to the rotary part; a ramp of
  // zero width is widened by 0.001 so it stays a step.
  double low = std::floor(correction_dim(y.beta_fast, rotary_dim, base, y.original_max_position_embeddings));
  double high = std::ceil(correction_dim(y.beta_slow, rotary_dim, base, y.original_max_position_embeddings));
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(rotary_dim - 1));
  if (low == high) high += 0.001;
  for (int i = 0; i < half; ++i) {
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    const double keep = 1.0 - ramp;  // weight of the unscaled (extrapolated) frequency
    inv[i] = inv[i] / y.factor * (1.0 - keep) + inv[i] * keep;
  }
  return inv;
}

double rope_magnitude(const ModelConfig& c) {
  const RopeScaling& y = c.rope_scaling;
  if (!y.yarn) return 1.0;
  return yarn_mscale(y.factor, y.mscale) / yarn_mscale(y.factor, y.mscale_all_dim);
}

double rope_softmax_scale_multiplier(const ModelConfig& c) {
  const RopeScaling& y = c.rope_scaling;
  if (!y.yarn || y.mscale_all_dim == 0.0f) return 1.0;
  const double m = yarn_mscale(y.factor, y.mscale_all_dim);
  return m * m;
}

}  // namespace occult
