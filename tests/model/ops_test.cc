// The transformer ops on tiny inputs with values computed by hand (in the comments).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "occult/linalg/linear.h"
#include "occult/model/ops.h"

namespace occult {
namespace {

TEST(OpsTest, RmsnormByHand) {
  // x = [3, 4]: mean square 12.5, rstd = 1/sqrt(12.5) (eps 0); weight [1, 2].
  const std::vector<float> x{3, 4}, w{1, 2};
  std::vector<float> y(2), rstd(1);
  rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), 1, 2, 0.0f);
  const float r = 1.0f / std::sqrt(12.5f);
  EXPECT_FLOAT_EQ(rstd[0], r);
  EXPECT_FLOAT_EQ(y[0], 3 * r);
  EXPECT_FLOAT_EQ(y[1], 8 * r);
  // dy = [1, 0]: dx_c = r w_c dy_c - x_c r^3/C * (dy.w.x) = [r - 3*3 r^3/2, -4*3 r^3/2].
  const std::vector<float> dy{1, 0};
  std::vector<float> dx(2, 0.0f), dw(2, 0.0f);
  rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), 1, 2);
  EXPECT_NEAR(dx[0], r - 4.5f * r * r * r, 1e-6f);
  EXPECT_NEAR(dx[1], -6.0f * r * r * r, 1e-6f);
  EXPECT_FLOAT_EQ(dw[0], 3 * r);
  EXPECT_FLOAT_EQ(dw[1], 0.0f);
}

TEST(OpsTest, RopeRotatesPairsByPositionAndBackwardUndoesIt) {
  // hs = 2 (one pair, frequency 1): position 0 unchanged, position 1 rotated by 1 radian.
  std::vector<float> x{1, 0, 1, 0};  // [B=1, T=2, NH=1, hs=2]
  rope_forward(x.data(), 1, 2, 1, 2, 10000.0f);
  EXPECT_FLOAT_EQ(x[0], 1.0f);
  EXPECT_FLOAT_EQ(x[1], 0.0f);
  EXPECT_NEAR(x[2], std::cos(1.0f), 1e-7f);
  EXPECT_NEAR(x[3], std::sin(1.0f), 1e-7f);
  rope_backward(x.data(), 1, 2, 1, 2, 10000.0f);  // the inverse rotation
  EXPECT_NEAR(x[2], 1.0f, 1e-7f);
  EXPECT_NEAR(x[3], 0.0f, 1e-7f);
}

TEST(OpsTest, CausalAttentionByHand) {
  // T = 2, one head of size 2. Token 0 sees only itself: out0 = v0. Token 1: scores
  // q1.k0/sqrt2 = 0 and q1.k1/sqrt2 = sqrt2 -> weights 1/(1+e^sqrt2), e^sqrt2/(1+e^sqrt2).
  const std::vector<float> q{0, 0, 1, 1}, k{0, 0, 1, 1}, v{1, 2, 3, 4};
  std::vector<float> out(4), att(4);
  attention_forward(out.data(), att.data(), q.data(), k.data(), v.data(), 1, 2, 1, 1, 2);
  const float e = std::exp(std::sqrt(2.0f));
  const float a0 = 1 / (1 + e), a1 = e / (1 + e);
  EXPECT_FLOAT_EQ(att[0], 1.0f);
  EXPECT_FLOAT_EQ(att[1], 0.0f);  // masked
  EXPECT_NEAR(att[2], a0, 1e-6f);
  EXPECT_NEAR(att[3], a1, 1e-6f);
  EXPECT_FLOAT_EQ(out[0], 1.0f);
  EXPECT_FLOAT_EQ(out[1], 2.0f);
  EXPECT_NEAR(out[2], a0 * 1 + a1 * 3, 1e-5f);
  EXPECT_NEAR(out[3], a0 * 2 + a1 * 4, 1e-5f);
  // dout only on token 0: dv0 = dout0 (weight 1), nothing reaches token 1's value or any q/k
  // (a softmax over one element has zero gradient).
  const std::vector<float> dout{1, 1, 0, 0};
  std::vector<float> dq(4), dk(4), dv(4), scratch(4);
  attention_backward(dq.data(), dk.data(), dv.data(), scratch.data(), dout.data(), att.data(), q.data(), k.data(),
                     v.data(), 1, 2, 1, 1, 2);
  EXPECT_FLOAT_EQ(dv[0], 1.0f);
  EXPECT_FLOAT_EQ(dv[2], 0.0f);
  for (float g : dq) EXPECT_FLOAT_EQ(g, 0.0f);
  for (float g : dk) EXPECT_FLOAT_EQ(g, 0.0f);
}

TEST(OpsTest, CrossEntropyOfUniformLogitsIsLogV) {
  const std::vector<float> logits(8, 0.5f);
  const std::vector<std::int32_t> targets{3, 2};
  std::vector<float> probs(8), d(8);
  EXPECT_NEAR(crossentropy_forward(probs.data(), logits.data(), targets.data(), 2, 4), 2 * std::log(4.0), 1e-6);
  crossentropy_backward(d.data(), probs.data(), targets.data(), 0.5f, 2, 4);
  EXPECT_FLOAT_EQ(d[0], 0.125f);
  EXPECT_FLOAT_EQ(d[3], 0.125f - 0.5f);
  EXPECT_FLOAT_EQ(d[4 + 2], 0.125f - 0.5f);
}

TEST(OpsTest, SwigluByHand) {
  // silu(0) = 0, silu(2) = 2 sigmoid(2); d silu/da at 0 is 1/2.
  const std::vector<float> h1{0, 2}, h3{5, 3};
  std::vector<float> out(2), d1(2), d3(2);
  swiglu_forward(out.data(), h1.data(), h3.data(), 1, 2);
  const float s2 = 1 / (1 + std::exp(-2.0f));
  EXPECT_FLOAT_EQ(out[0], 0.0f);
  EXPECT_FLOAT_EQ(out[1], 2 * s2 * 3);
  const std::vector<float> dout{1, 1};
  swiglu_backward(d1.data(), d3.data(), dout.data(), h1.data(), h3.data(), 1, 2);
  EXPECT_FLOAT_EQ(d1[0], 2.5f);  // h3 * 1/2
  EXPECT_FLOAT_EQ(d3[0], 0.0f);
  EXPECT_NEAR(d1[1], 3 * s2 * (1 + 2 * (1 - s2)), 1e-6f);
  EXPECT_FLOAT_EQ(d3[1], 2 * s2);
}

TEST(OpsTest, MatmulAndEmbeddingByHand) {
  // [1,2] @ [[1,0],[0,1],[1,1]]^T = [1, 2, 3].
  const std::vector<float> x{1, 2}, w{1, 0, 0, 1, 1, 1};
  std::vector<float> y(3);
  linear_forward(y.data(), x.data(), w.data(), 1, 2, 3);
  EXPECT_EQ(y, (std::vector<float>{1, 2, 3}));
  std::vector<float> dx(2, 0.0f), dw(6, 0.0f);
  const std::vector<float> dy{1, 0, 2};
  matmul_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), 1, 2, 3);
  EXPECT_EQ(dx, (std::vector<float>{3, 2}));              // dy @ w
  EXPECT_EQ(dw, (std::vector<float>{1, 2, 0, 0, 2, 4}));  // dy^T @ x
  const std::vector<float> table{0, 1, 10, 11, 20, 21};  // V=3, C=2
  const std::vector<std::int32_t> ids{2, 0, 2};
  std::vector<float> e(6), dtable(6, 0.0f);
  gather_rows(e.data(), table.data(), ids.data(), 3, 2);
  EXPECT_EQ(e, (std::vector<float>{20, 21, 0, 1, 20, 21}));
  const std::vector<float> de{1, 1, 1, 1, 1, 1};
  embedding_backward(dtable.data(), de.data(), ids.data(), 3, 2);
  EXPECT_EQ(dtable, (std::vector<float>{1, 1, 0, 0, 2, 2}));
}

}  // namespace
}  // namespace occult
