// YaRN RoPE values computed by tests/hf/yarn_golden.py (float32 torch, as the Hugging Face
// DeepSeek-V2/V3 code computes them), for the production code and the reference twin alike.
#pragma once

#include <vector>

namespace occult::yarn_golden {

struct Case {
  int dim;
  double base, factor;
  int original_context;
  double beta_fast, beta_slow, mscale, mscale_all_dim;
  std::vector<double> inv_freq;  // float32 values, so compare with a relative 1e-6
  double magnitude, softmax_multiplier;
};

// A short ramp (pairs 0..2 of 4) and the cos/sin magnitude away from 1.
inline const Case kSmall{8, 10000.0, 4.0, 64, 8.0, 1.0, 1.0, 0.5,
                         {1.0, 6.25e-02, 2.499999944e-03, 2.500000119e-04},
                         1.0648216253695715, 1.143433966251171};

// DeepSeek-V2-Lite's rope_scaling over its 64-wide rope part.
inline const Case kV2Lite{
    64, 10000.0, 40.0, 4096, 32.0, 1.0, 0.707, 0.707,
    {1.000000000e+00, 7.498942018e-01, 5.623413324e-01, 4.216965139e-01, 3.162277639e-01, 2.371373624e-01,
     1.778279394e-01, 1.333521456e-01, 1.000000015e-01, 7.498941571e-02, 5.623412877e-02, 3.900692612e-02,
     2.687936090e-02, 1.837814413e-02, 1.244795602e-02, 8.334509097e-03, 5.500000436e-03, 3.561997321e-03,
     2.249365207e-03, 1.370513462e-03, 7.905694074e-04, 4.149904125e-04, 1.778279402e-04, 3.333803397e-05,
     2.499999937e-05, 1.874735426e-05, 1.405853254e-05, 1.054241238e-05, 7.905694474e-06, 5.928434348e-06,
     4.445698323e-06, 3.333803534e-06},
    1.0, 1.5896261651208736};

}  // namespace occult::yarn_golden
