// gemm and linear_forward on both backends (oneDNN, BLAS) and both compute precisions (F32,
// BF16) against a double-precision product, for every transpose combination, F32 and BF16
// weights, beta 0 / 1 / 0.5, odd shapes and empty dimensions.
//
// Tolerances come from the rounding of the formats (u = 2^-24, the F32 unit roundoff):
// - F32 compute: each output is beta*C0 plus a sum of K products, each product and partial sum
//   rounded once to F32 in some order, so |got - exact| <= gamma_{K+2} * (S + |beta*C0|) with
//   S = sum_k |a_ik b_kj| and gamma_n = n u / (1 - n u) <= 1.01 n u for the K used here.
// - BF16 compute rounds A (and an F32 B) to BF16 first; products of BF16 values are exact in
//   F32, so against the exact product of the *rounded* operands the F32 bound above holds
//   unchanged. Against the unrounded operands each factor moves by at most 2^-8 relative (BF16
//   keeps 8 significant bits, round to nearest), a product by (1 + 2^-8)^2 - 1, which adds that
//   fraction of S.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "occult/core/error.h"
#include "occult/core/half.h"
#include "occult/linalg/linear.h"

namespace occult {
namespace {

constexpr double kU = 0x1p-24;

double gamma(std::int64_t n) {
  return 1.01 * static_cast<double>(n) * kU;
}

float round_bf16(float v) {
  return bf16_to_float(float_to_bf16(v));
}

struct Case {
  std::int64_t M, N, K;
};

class GemmCases : public ::testing::TestWithParam<Case> {};

TEST_P(GemmCases, BothBackendsBothPrecisionsMatchDoubleProduct) {
  const Case c = GetParam();
  std::mt19937 rng(static_cast<unsigned>(c.M * 1000003 + c.N * 1009 + c.K));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  // Logical operands a [M, K], b [K, N]; stored below in both orientations.
  std::vector<float> a(static_cast<std::size_t>(c.M * c.K)), b(static_cast<std::size_t>(c.K * c.N));
  for (auto& v : a) v = u(rng);
  for (auto& v : b) v = u(rng);
  std::vector<float> c0(static_cast<std::size_t>(c.M * c.N));
  for (auto& v : c0) v = u(rng);
  // Padding of the leading dimensions proves the strides are honoured.
  const std::int64_t pad = 3;
  for (const bool b_bf16 : {false, true}) {
    // The weights as stored: a BF16 B is rounded once, here, and is then exact in every path.
    std::vector<float> bw(b);
    if (b_bf16) {
      for (auto& v : bw) v = round_bf16(v);
    }
    for (const ComputeDType compute : {ComputeDType::kF32, ComputeDType::kBF16}) {
      if (compute == ComputeDType::kBF16 && !cpu_has_bf16_compute()) continue;
      const bool round = compute == ComputeDType::kBF16;
      // Exact products of the operands the precision multiplies, and of the unrounded ones.
      std::vector<double> exact(c0.size()), exact_raw(c0.size()), mag(c0.size());
      for (std::int64_t i = 0; i < c.M; ++i) {
        for (std::int64_t j = 0; j < c.N; ++j) {
          double s = 0, s_raw = 0, m = 0;
          for (std::int64_t k = 0; k < c.K; ++k) {
            const float av = a[i * c.K + k], bv = bw[k * c.N + j];
            s += static_cast<double>(round ? round_bf16(av) : av) * (round ? round_bf16(bv) : bv);
            s_raw += static_cast<double>(av) * bv;
            m += std::abs(static_cast<double>(av) * bv);
          }
          exact[i * c.N + j] = s;
          exact_raw[i * c.N + j] = s_raw;
          mag[i * c.N + j] = m;
        }
      }
      for (const GemmBackend backend : {GemmBackend::kOneDnn, GemmBackend::kBlas}) {
        for (const bool ta : {false, true}) {
          for (const bool tb : {false, true}) {
            const std::int64_t lda = (ta ? c.M : c.K) + pad, ldb = (tb ? c.K : c.N) + pad,
                               ldc = c.N + pad;
            std::vector<float> A(static_cast<std::size_t>((ta ? c.K : c.M) * lda));
            for (std::int64_t i = 0; i < c.M; ++i) {
              for (std::int64_t k = 0; k < c.K; ++k)
                A[ta ? k * lda + i : i * lda + k] = a[i * c.K + k];
            }
            std::vector<float> Bf(static_cast<std::size_t>((tb ? c.N : c.K) * ldb));
            for (std::int64_t k = 0; k < c.K; ++k) {
              for (std::int64_t j = 0; j < c.N; ++j)
                Bf[tb ? j * ldb + k : k * ldb + j] = bw[k * c.N + j];
            }
            std::vector<std::uint16_t> Bb(Bf.size());
            for (std::size_t i = 0; i < Bf.size(); ++i) Bb[i] = float_to_bf16(Bf[i]);
            const WeightRef B = b_bf16 ? WeightRef::bf16(Bb.data()) : WeightRef(Bf.data());
            for (const float beta : {0.0f, 1.0f, 0.5f}) {
              std::vector<float> C(static_cast<std::size_t>(c.M * ldc), 7.0f);
              for (std::int64_t i = 0; i < c.M; ++i) {
                for (std::int64_t j = 0; j < c.N; ++j) C[i * ldc + j] = c0[i * c.N + j];
              }
              gemm({backend, compute}, ta, tb, c.M, c.N, c.K, A.data(), lda, B, ldb, beta, C.data(),
                   ldc);
              for (std::int64_t i = 0; i < c.M; ++i) {
                for (std::int64_t j = 0; j < c.N; ++j) {
                  const std::size_t e = static_cast<std::size_t>(i * c.N + j);
                  const double base = static_cast<double>(beta) * c0[e];
                  // Rounded operands grow a product by at most (1 + 2^-8)^2 < 1.0079.
                  const double tol =
                      gamma(c.K + 2) * (mag[e] * (round ? 1.0079 : 1.0) + std::abs(base));
                  const double raw_tol =
                      tol + (round ? (std::pow(1.0 + 0x1p-8, 2) - 1.0) * mag[e] : 0.0);
                  const auto where = ::testing::Message()
                                     << gemm_backend_name(backend) << " compute "
                                     << compute_dtype_name(compute) << " B "
                                     << (b_bf16 ? "bf16" : "f32") << " ta " << ta << " tb " << tb
                                     << " beta " << beta << " at (" << i << ", " << j << ")";
                  ASSERT_NEAR(C[i * ldc + j], base + exact[e], tol) << where;
                  ASSERT_NEAR(C[i * ldc + j], base + exact_raw[e], raw_tol) << where;
                }
                for (std::int64_t j = c.N; j < ldc; ++j)
                  ASSERT_EQ(C[i * ldc + j], 7.0f) << "padding written";
              }
            }
          }
        }
      }
    }
  }
}

// K = 1100 with a BF16 B spans several widening panels (119 rows each) on the F32 path;
// M = 0, N = 0 and K = 0 are the empty cases (K = 0 leaves beta * C).
INSTANTIATE_TEST_SUITE_P(Shapes, GemmCases,
                         ::testing::Values(Case{1, 1, 1}, Case{3, 5, 7}, Case{17, 65, 33},
                                           Case{2, 300, 1100}, Case{70, 9, 130}, Case{0, 8, 8},
                                           Case{5, 0, 3}, Case{4, 6, 0}));

TEST(GemmTest, ScopeSelectsTheComputePrecision) {
  if (!cpu_has_bf16_compute()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  // x = 1 + 2^-10 is not a BF16 value (8 significant bits): BF16 compute rounds it to 1.
  const std::vector<float> x = {1.0f + 0x1p-10f, 2.0f};
  const std::vector<float> w = {1.0f, 0.5f};  // [1, 2]
  float out = 0;
  linear_forward(&out, x.data(), WeightRef(w.data()), 1, 2, 1);
  EXPECT_EQ(out, 2.0f + 0x1p-10f);
  {
    GemmOptionsScope scope({GemmBackend::kOneDnn, ComputeDType::kBF16});
    linear_forward(&out, x.data(), WeightRef(w.data()), 1, 2, 1);
    EXPECT_EQ(out, 2.0f);
    GemmOptionsScope inner({GemmBackend::kBlas, ComputeDType::kBF16});
    linear_forward(&out, x.data(), WeightRef(w.data()), 1, 2, 1);
    EXPECT_EQ(out, 2.0f);
  }
  linear_forward(&out, x.data(), WeightRef(w.data()), 1, 2, 1);
  EXPECT_EQ(out, 2.0f + 0x1p-10f) << "the scope restores F32";
  EXPECT_EQ(current_gemm_options().compute, ComputeDType::kF32);
}

TEST(GemmTest, ParsesNamesAndRejectsUnknownOnes) {
  EXPECT_EQ(parse_gemm_backend("blas", "--gemm"), GemmBackend::kBlas);
  EXPECT_EQ(parse_gemm_backend("onednn", "--gemm"), GemmBackend::kOneDnn);
  EXPECT_EQ(parse_compute_dtype("bf16", "--compute"), ComputeDType::kBF16);
  EXPECT_EQ(parse_compute_dtype("f32", "--compute"), ComputeDType::kF32);
  try {
    parse_compute_dtype("fp8", "--compute");
    FAIL() << "fp8 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--compute"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_gemm_backend("mkl", "--gemm"), Error);
}

}  // namespace
}  // namespace occult
