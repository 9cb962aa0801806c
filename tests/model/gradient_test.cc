// The whole model against its double-precision reference twin: forward loss, and every
// parameter's gradient against central finite differences of the reference.
#include <gtest/gtest.h>

#include <cmath>

#include "occult/core/rng.h"
#include "occult/comm/communicator.h"
#include "occult/linalg/linear.h"
#include "occult/model/model.h"
#include "occult/model/reference.h"
#include "test_util.h"

namespace occult {
namespace {

struct Variant {
  const char* name;
  bool shared, norm_topk, tied, local_reference;
  bool seq_aux = false;  // the load-balancing loss per sequence (DeepSeek's seq_aux)
};

class GradientTest : public ::testing::TestWithParam<Variant> {};

void random_batch(std::vector<std::int32_t>& tokens, std::vector<std::int32_t>& targets, std::int64_t n, int V,
                  std::uint64_t seed) {
  SplitMix64 rng(seed);
  tokens.resize(n);
  targets.resize(n);
  for (auto& t : tokens) t = static_cast<std::int32_t>(rng.below(V));
  for (auto& t : targets) t = static_cast<std::int32_t>(rng.below(V));
}

TEST_P(GradientTest, EveryParameterMatchesFiniteDifferences) {
  const Variant variant = GetParam();
  ModelConfig config = testing::tiny_config(variant.shared, variant.norm_topk, variant.tied);
  config.aux_loss_per_sequence = variant.seq_aux;
  SelfCommunicator comm;
  MoeTransformer model(config, comm, ParallelOptions{}, variant.local_reference);
  model.init_weights(7);
  const std::int64_t B = 2;
  const int T = 5;
  std::vector<std::int32_t> tokens, targets;
  random_batch(tokens, targets, B * T, config.vocab_size, 11);

  const LossParts loss = model.forward(tokens, targets, B, T);
  model.backward();
  ReferenceParams params = testing::to_reference(model);
  std::vector<double> fraction;
  const ReferenceLoss ref = reference_model_loss(config, params, tokens, targets, B, T, &fraction);
  // Float forward vs double: relative 1e-5 is ~100 float ulps over a few hundred operations.
  EXPECT_NEAR(loss.cross_entropy, ref.cross_entropy, 1e-5 * std::abs(ref.cross_entropy));
  EXPECT_NEAR(loss.aux, ref.aux, 1e-5 * std::abs(ref.aux) + 1e-9);
  EXPECT_GT(loss.aux, 0.0);
  // A step h moves a router probability by at most h * |dp/dw| = O(h * |x|) with |x| ~ 1 after
  // RMSNorm; a gap 10x that keeps the top-k fixed through every difference.
  const double h = 1e-5;
  ASSERT_GT(ref.min_topk_gap, 1e-4) << "routing too close to a tie for finite differences; change the seed";

  int checked = 0;
  for (const auto& t : model.tensors()) {
    auto& values = params.at(t.name);
    std::vector<double> fd(t.numel);
    double scale = 0.0;  // rms of the true gradient over the tensor
    for (std::int64_t i = 0; i < t.numel; ++i) {
      const double saved = values[i];
      values[i] = saved + h;
      const double plus = reference_model_loss(config, params, tokens, targets, B, T, &fraction).total;
      values[i] = saved - h;
      const double minus = reference_model_loss(config, params, tokens, targets, B, T, &fraction).total;
      values[i] = saved;
      fd[i] = (plus - minus) / (2 * h);
      scale += fd[i] * fd[i];
    }
    scale = std::sqrt(scale / t.numel);
    for (std::int64_t i = 0; i < t.numel; ++i) {
      // Float gradients carry ~1e-6 relative rounding of the terms they sum; the central
      // difference in double is exact to ~1e-9. 1e-3 relative plus 1e-4 of the tensor's rms
      // leaves a 100x margin without hiding a wrong term (those are O(1) relative).
      const double tol = 1e-3 * std::abs(fd[i]) + 1e-4 * scale + 1e-9;
      ASSERT_NEAR(t.grad[i], fd[i], tol) << t.name << " element " << i;
      ++checked;
    }
  }
  EXPECT_EQ(checked, model.num_parameters());
}

INSTANTIATE_TEST_SUITE_P(
    Variants, GradientTest,
    ::testing::Values(Variant{"shared_norm_untied_ep", true, true, false, false},
                      Variant{"plain_tied_ep", false, false, true, false},
                      Variant{"shared_norm_untied_local", true, true, false, true},
                      Variant{"plain_tied_local", false, false, true, true},
                      Variant{"seq_aux_ep", true, true, false, false, true}),
    [](const auto& info) { return std::string(info.param.name); });

// The expert-parallel layer at one rank and the single-process naive block give the same model.
TEST(ModelTest, ExpertParallelLayerMatchesLocalBlock) {
  const ModelConfig config = testing::tiny_config(true, true, false);
  SelfCommunicator comm;
  MoeTransformer ep(config, comm, ParallelOptions{}, false);
  MoeTransformer local(config, comm, ParallelOptions{}, true);
  ep.init_weights(3);
  local.init_weights(3);
  std::vector<std::int32_t> tokens, targets;
  random_batch(tokens, targets, 3 * 7, config.vocab_size, 5);
  const LossParts a = ep.forward(tokens, targets, 3, 7);
  const LossParts b = local.forward(tokens, targets, 3, 7);
  EXPECT_NEAR(a.total, b.total, 1e-6 * std::abs(b.total));
  ep.backward();
  local.backward();
  ASSERT_EQ(ep.tensors().size(), local.tensors().size());
  for (std::size_t i = 0; i < ep.tensors().size(); ++i) {
    const auto& x = ep.tensors()[i];
    const auto& y = local.tensors()[i];
    ASSERT_EQ(x.name, y.name);
    double maxabs = 0.0;
    for (float g : y.grad) maxabs = std::max(maxabs, static_cast<double>(std::abs(g)));
    for (std::int64_t j = 0; j < x.numel; ++j) {
      ASSERT_NEAR(x.grad[j], y.grad[j], 1e-5 * maxabs + 1e-9) << x.name << " element " << j;
    }
  }
}

// BF16 compute trains: every GEMM of the forward and backward (dense, expert, LM head) rounds its
// operands to BF16 and accumulates in F32, the master weights and gradients stay F32. The loss
// and every tensor's gradient must be those of F32 compute (which the test above ties to the
// twin) within BF16 rounding: the loss to 2^-6 relative, each gradient to 2^-3 norm-wise (a
// gradient reaches back through up to a dozen rounded GEMMs of the tiny model, each adding a
// few u16 = 2^-8; measured 0.003-0.03) and the gradients as a whole farther from F32
// than F32 noise (1e-4), so the products really ran in BF16.
TEST(ModelTest, Bf16ComputeTrainsWithinBf16RoundingOfF32) {
  if (!cpu_has_bf16_compute()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  const ModelConfig config = testing::tiny_config(true, true, false);
  SelfCommunicator comm;
  ParallelOptions bf16;
  bf16.gemm.compute = ComputeDType::kBF16;
  MoeTransformer f32_model(config, comm, ParallelOptions{}, false);
  MoeTransformer bf16_model(config, comm, bf16, false);
  f32_model.init_weights(3);
  bf16_model.init_weights(3);
  std::vector<std::int32_t> tokens, targets;
  random_batch(tokens, targets, 3 * 7, config.vocab_size, 5);
  const LossParts a = f32_model.forward(tokens, targets, 3, 7);
  const LossParts b = bf16_model.forward(tokens, targets, 3, 7);
  EXPECT_NEAR(b.total, a.total, 0x1p-6 * std::abs(a.total));
  f32_model.backward();
  bf16_model.backward();
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < f32_model.tensors().size(); ++i) {
    const auto& want = f32_model.tensors()[i];
    const auto& got = bf16_model.tensors()[i];
    double tensor_diff = 0, tensor_norm = 0;
    for (std::int64_t j = 0; j < want.numel; ++j) {
      tensor_diff += (double(got.grad[j]) - want.grad[j]) * (double(got.grad[j]) - want.grad[j]);
      tensor_norm += double(want.grad[j]) * want.grad[j];
    }
    EXPECT_LT(std::sqrt(tensor_diff / tensor_norm), 0x1p-3) << got.name;
    diff += tensor_diff;
    norm += tensor_norm;
  }
  EXPECT_GT(std::sqrt(diff / norm), 1e-4);
}

}  // namespace
}  // namespace occult
