// Contract: for every Hugging Face architecture occult loads (olmoe, qwen2_moe, deepseek,
// qwen3_moe, mixtral, deepseek_v2, deepseek_v3) in both fixture variants ("default" and "alt",
// which between them flip GQA, QK-norm kind, renormalised top-k, dense/sparse layer patterns,
// tied embeddings, q_lora_rank, v_head_dim against the query head, YaRN and the routers), a
// tiny random F32 model directory from the fixture writer is loaded into occult's MoeTransformer
// with load_checkpoint, and on one small random batch (1 process, SelfCommunicator):
//   (a) occult's forward cross-entropy equals the cross-entropy of the double-precision reference
//       twin's logits (tests/hf/hf_reference, written apart from src/model) on the same tokens and
//       targets, to relative 1e-5;
//   (b) occult's backward gradient of EVERY tensor (every name the directory holds, asserted by
//       count and by name) matches central finite differences of that double cross-entropy, on a
//       sample of elements per tensor: the element of largest |gradient| plus random ones, up to
//       kSamplesPerTensor (all of them for smaller tensors), perturbing the reference's double
//       tensor in place.
// This checks the forward AND the backward of every architecture-specific branch (GQA, q/k/v
// biases, whole-projection and per-head QK-norm, gated / fused shared experts, dense MLP layers,
// tied heads) against an implementation that shares no code with them. The fixture's norm
// weights (1 + N(0, 0.1)) and biases (N(0, 0.2)) are random, so a backward that treated a norm
// gain as 1 or dropped a bias gradient would be caught; the test asserts they are non-trivial.
// The router auxiliary loss is switched off (router_aux_loss_coef = 0): the reference has none.
//
// Tolerances:
//  - Forward: relative 1e-5 on the cross-entropy, ~100 float ulps after a few hundred float ops.
//  - Gradients: the finite difference is taken in double with step h = 1e-5 (truncation error
//    O(h^2) ~ 1e-10, rounding ~1e-16 * |loss| / h ~ 1e-11), so it is exact for our purpose;
//    occult's gradient is float and carries ~1e-6 relative rounding of the terms it sums. As in
//    tests/model/gradient_test.cc the bound is 1e-3 * |fd| + 1e-4 * (rms of occult's gradient
//    over the whole tensor) + 1e-9: a 100x margin over rounding, while a wrong or missing term is
//    an O(1) relative error.
//  - Routing: finite differences are meaningless if a step flips a top-k choice (the loss jumps),
//    so the batch is chosen (the clearest of kTokenSeeds random ones) so that the reference's
//    smallest gap between the k-th and (k+1)-th router logit is above kMinTopKGap = 1e-3, and that
//    is asserted. A step h on one weight moves a router logit by h * |d logit / d w|; with O(1)
//    activations after RMSNorm, weights of std <= 0.6 and H = 32 that derivative is O(10) at most
//    (the router row norm is ~0.6 * sqrt(32) ~ 3.4 times O(1) factors upstream), i.e. a move of
//    ~1e-4, 10x below the gap; the test also asserts that no step moved the smallest gap by
//    kMinTopKGap / 4 or more (observed: <= 6e-5 over all ten cases). The same gap (1e3 x float
//    rounding of the logits) makes occult's float forward pick the reference's experts. A flip
//    could only cause a spurious failure, never hide a bug.
// Power, tried on a scratch copy of src/model: scaling the shared-expert gate's input gradient
// by 0.9, or dropping one row from the k_norm weight gradient, fails exactly the qwen2_moe and
// the QK-norm (olmoe, qwen3_moe) cases, by 50x to 3000x the tolerance.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "hf/hf_fixture_writer.h"
#include "hf/hf_reference.h"
#include "occult/comm/communicator.h"
#include "occult/model/checkpoint.h"
#include "occult/model/config.h"
#include "occult/model/model.h"

namespace occult {
namespace {

constexpr int kBatch = 2;
constexpr int kSeq = 5;
constexpr double kStep = 1e-5;        // finite-difference step h
constexpr double kMinTopKGap = 1e-3;  // see the contract: ~10x any router-logit move of a step
constexpr int kSamplesPerTensor = 6;  // elements checked per tensor (all when it has fewer)
constexpr int kTokenSeeds = 20;       // random batches tried; the clearest routing is used

struct Case {
  const char* arch;
  const char* variant;
};

std::string case_name(const Case& c) {
  return std::string(c.arch) + "_" + c.variant;
}

// Failure lines name the case rather than dumping its bytes.
void PrintTo(const Case& c, std::ostream* os) {
  *os << case_name(c);
}

// A temporary directory removed when the test ends (even when an assertion returns early).
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& name)
      : path(std::filesystem::temp_directory_path() /
             fmt::format("occult_hf_gradient_{}_{}", getpid(), name)) {
    std::filesystem::remove_all(path);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
};

// Mean -log softmax(logits)[target] over the rows of logits [rows, V], in double.
double cross_entropy(const std::vector<double>& logits, const std::vector<std::int32_t>& targets,
                     int V) {
  double sum = 0.0;
  for (std::size_t r = 0; r < targets.size(); ++r) {
    const double* row = &logits[r * V];
    const double max = *std::max_element(row, row + V);
    double denom = 0.0;
    for (int v = 0; v < V; ++v) denom += std::exp(row[v] - max);
    sum += max + std::log(denom) - row[targets[r]];
  }
  return sum / static_cast<double>(targets.size());
}

double reference_loss(const hf::HfModel& ref, const std::vector<std::int64_t>& ids,
                      const std::vector<std::int32_t>& targets, hf::ForwardStats* stats) {
  return cross_entropy(hf::hf_forward(ref, ids, kBatch, kSeq, stats), targets,
                       ref.config.vocab_size);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

class HfGradientTest : public ::testing::TestWithParam<Case> {};

TEST_P(HfGradientTest, ForwardLossAndEveryTensorGradientMatchTheReferenceTwin) {
  const Case c = GetParam();
  TempDir dir(case_name(c));
  hf::FixtureOptions fixture;
  fixture.arch = c.arch;
  fixture.variant = c.variant;
  fixture.dtype = "f32";  // exact in both models: the twin reads the same floats as doubles
  fixture.seed = 1;
  hf::write_fixture(fixture, dir.path.string());

  hf::HfModel ref = hf::load_hf_model(dir.path.string());
  ModelConfig config = load_checkpoint_config(dir.path.string());
  config.router_aux_loss_coef = 0.0f;  // the reference has no auxiliary loss
  SelfCommunicator comm;
  MoeTransformer model(config, comm, ParallelOptions{});
  load_checkpoint(dir.path.string(), model, nullptr);
  const int V = config.vocab_size;
  ASSERT_EQ(ref.config.vocab_size, V);

  // Occult holds exactly the directory's tensors, with the same values.
  std::set<std::string> occult_names;
  for (const auto& t : model.tensors()) {
    occult_names.insert(t.name);
    const auto it = ref.tensors.find(t.name);
    ASSERT_NE(it, ref.tensors.end()) << t.name << " is not in the fixture";
    ASSERT_EQ(it->second.shape, t.shape) << t.name;
    for (std::int64_t i = 0; i < t.numel; ++i) {
      ASSERT_EQ(static_cast<double>(t.value[i]), it->second.data[i]) << t.name << " element " << i;
    }
  }
  ASSERT_EQ(occult_names.size(), model.tensors().size()) << "a tensor name appears twice";
  ASSERT_EQ(occult_names.size(), ref.tensors.size())
      << "the fixture holds tensors occult did not load";

  // The norms and biases are non-trivial, so their gradients (and their use in the forward)
  // are really tested: every gain differs from 1 somewhere, every bias from 0.
  int norms = 0, biases = 0, qk_norms = 0;
  for (const auto& [name, t] : ref.tensors) {
    double dev = 0.0;
    if (ends_with(name, "norm.weight")) {
      for (double w : t.data) dev = std::max(dev, std::abs(w - 1.0));
      EXPECT_GT(dev, 0.05) << name << " is (close to) all ones";
      ++norms;
      if (ends_with(name, "q_norm.weight") || ends_with(name, "k_norm.weight")) ++qk_norms;
    } else if (ends_with(name, ".bias")) {
      for (double b : t.data) dev = std::max(dev, std::abs(b));
      EXPECT_GT(dev, 0.05) << name << " is (close to) all zeros";
      ++biases;
    }
  }
  const int L = config.num_hidden_layers;
  // Latent attention adds kv_a_layernorm, and q_a_layernorm with a q_lora_rank, per layer.
  const int latent_norms = config.mla() ? L * (1 + (config.q_lora_rank > 0 ? 1 : 0)) : 0;
  EXPECT_EQ(norms, 2 * L + 1 + qk_norms + latent_norms);
  EXPECT_EQ(qk_norms, config.qk_norm == QkNorm::kNone ? 0 : 2 * L);
  EXPECT_EQ(biases, (config.attention_qkv_bias ? 3 * L : 0) + (config.attention_o_bias ? L : 0));

  // Of kTokenSeeds random batches, the one whose routing is farthest from a tie (see
  // kMinTopKGap); the twin's forward costs well under a millisecond.
  std::vector<std::int64_t> ids(kBatch * kSeq);
  std::vector<std::int32_t> tokens(kBatch * kSeq), targets(kBatch * kSeq);
  hf::ForwardStats stats;
  stats.min_top_k_gap = -1.0;
  for (int seed = 1; seed <= kTokenSeeds; ++seed) {
    std::mt19937_64 rng(static_cast<std::uint64_t>(seed) * 7919);
    std::uniform_int_distribution<int> id(0, V - 1);
    std::vector<std::int64_t> try_ids(kBatch * kSeq);
    std::vector<std::int32_t> try_targets(kBatch * kSeq);
    for (int i = 0; i < kBatch * kSeq; ++i) {
      try_ids[i] = id(rng);
      try_targets[i] = id(rng);
    }
    hf::ForwardStats try_stats;
    reference_loss(ref, try_ids, try_targets, &try_stats);
    if (try_stats.min_top_k_gap > stats.min_top_k_gap) {
      stats = try_stats;
      ids = try_ids;
      targets = try_targets;
    }
  }
  for (int i = 0; i < kBatch * kSeq; ++i) tokens[i] = static_cast<std::int32_t>(ids[i]);
  const double ref_loss = reference_loss(ref, ids, targets, nullptr);
  ASSERT_GT(stats.min_top_k_gap, kMinTopKGap)
      << "no batch of " << kTokenSeeds << " seeds routes clear of a top-k tie";

  const LossParts loss = model.forward(tokens, targets, kBatch, kSeq);
  EXPECT_NEAR(loss.cross_entropy, ref_loss, 1e-5 * std::abs(ref_loss));
  EXPECT_EQ(loss.aux, 0.0);
  EXPECT_NEAR(loss.total, loss.cross_entropy, 1e-12);
  EXPECT_EQ(loss.tokens, kBatch * kSeq);
  model.backward();

  std::mt19937_64 pick(12345);
  int tensors_checked = 0, elements_checked = 0, failures = 0;
  int expert_tensors = 0, nonzero_expert_tensors = 0, nonzero_tensors = 0;
  double gap_move = 0.0;  // largest change of the smallest top-k gap under one step
  double worst = 0.0;     // largest |grad - fd| / tol seen
  std::string worst_where;
  for (const auto& t : model.tensors()) {
    // The gradient scale of the tensor: rms of occult's gradient over all of its elements.
    double scale = 0.0, max_abs = -1.0;
    std::int64_t argmax = 0;
    for (std::int64_t i = 0; i < t.numel; ++i) {
      const double g = t.grad[i];
      scale += g * g;
      if (std::abs(g) > max_abs) {
        max_abs = std::abs(g);
        argmax = i;
      }
    }
    scale = std::sqrt(scale / static_cast<double>(t.numel));
    // The samples: everything for a small tensor, else the largest gradient plus random others.
    std::vector<std::int64_t> samples;
    if (t.numel <= kSamplesPerTensor) {
      for (std::int64_t i = 0; i < t.numel; ++i) samples.push_back(i);
    } else {
      samples.push_back(argmax);
      std::uniform_int_distribution<std::int64_t> any(0, t.numel - 1);
      while (static_cast<int>(samples.size()) < kSamplesPerTensor) {
        const std::int64_t i = any(pick);
        if (std::find(samples.begin(), samples.end(), i) == samples.end()) samples.push_back(i);
      }
    }
    std::vector<double>& values = ref.tensors.at(t.name).data;
    bool nonzero = false;
    for (const std::int64_t i : samples) {
      const double saved = values[i];
      hf::ForwardStats plus_stats, minus_stats;
      values[i] = saved + kStep;
      const double plus = reference_loss(ref, ids, targets, &plus_stats);
      values[i] = saved - kStep;
      const double minus = reference_loss(ref, ids, targets, &minus_stats);
      values[i] = saved;
      gap_move = std::max({gap_move, std::abs(plus_stats.min_top_k_gap - stats.min_top_k_gap),
                           std::abs(minus_stats.min_top_k_gap - stats.min_top_k_gap)});
      const double fd = (plus - minus) / (2 * kStep);
      const double tol = 1e-3 * std::abs(fd) + 1e-4 * scale + 1e-9;
      const double err = std::abs(t.grad[i] - fd);
      if (err / tol > worst) {
        worst = err / tol;
        worst_where = fmt::format("{} element {}", t.name, i);
      }
      if (err > tol && ++failures <= 20) {
        ADD_FAILURE() << t.name << " element " << i << ": occult " << t.grad[i]
                      << ", finite difference " << fd << ", |diff| " << err << " > tol " << tol
                      << " (tensor gradient rms " << scale << ")";
      }
      nonzero = nonzero || std::abs(fd) > 1e-7;
      ++elements_checked;
    }
    // A dense tensor always has a gradient (the samples include occult's largest element): an
    // all-zero sample means occult's gradient is zero where the twin's is not. The selection
    // bias (DeepSeek-V3) is the exception: it only chooses experts, so both are zero.
    if (!t.expert && t.optimized) {
      EXPECT_TRUE(nonzero) << t.name << ": every sampled gradient is zero";
    }
    nonzero_tensors += nonzero ? 1 : 0;
    expert_tensors += t.expert ? 1 : 0;
    nonzero_expert_tensors += t.expert && nonzero ? 1 : 0;
    ++tensors_checked;
  }
  EXPECT_EQ(failures, 0);
  // The steps move the routing margin far less than the margin itself (the bound in the
  // contract, observed): no step came near flipping the closest top-k choice.
  EXPECT_LT(gap_move, kMinTopKGap / 4);
  // Every tensor of the directory was visited.
  EXPECT_EQ(tensors_checked, static_cast<int>(ref.tensors.size()));
  // Only experts no token of the batch picked may have an all-zero gradient, and most experts are
  // picked: the checks above are not comparing zeros.
  EXPECT_GE(2 * nonzero_expert_tensors, expert_tensors);
  std::printf(
      "[ %s ] %d tensors (%d with a nonzero gradient; experts %d of %d), %d elements, min top-k "
      "gap %.3g (moved <= %.2g by a step), worst |diff|/tol %.3g at %s\n",
      case_name(c).c_str(), tensors_checked, nonzero_tensors, nonzero_expert_tensors,
      expert_tensors, elements_checked, stats.min_top_k_gap, gap_move, worst, worst_where.c_str());
}

INSTANTIATE_TEST_SUITE_P(Architectures, HfGradientTest,
                         ::testing::Values(Case{"olmoe", "default"}, Case{"olmoe", "alt"},
                                           Case{"qwen2_moe", "default"}, Case{"qwen2_moe", "alt"},
                                           Case{"deepseek", "default"}, Case{"deepseek", "alt"},
                                           Case{"qwen3_moe", "default"}, Case{"qwen3_moe", "alt"},
                                           Case{"mixtral", "default"}, Case{"mixtral", "alt"},
                                           Case{"deepseek_v2", "default"}, Case{"deepseek_v2", "alt"},
                                           Case{"deepseek_v3", "default"}, Case{"deepseek_v3", "alt"}),
                         [](const auto& info) { return case_name(info.param); });

}  // namespace
}  // namespace occult
