// evaluate_text (`occult eval`) under MPI at 1, 2 and 4 ranks: the loss is the token-weighted
// mean of the double reference twin's cross-entropy over the same windows, the same for both
// dispatchers and every rank count; hand-computed values on an all-zero model; pruning keeps
// every token within M devices; bad input fails on every rank with one clear message.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <iterator>

#include "model/test_util.h"
#include "occult/comm/mpi_communicator.h"
#include "occult/core/error.h"
#include "occult/train/data.h"
#include "occult/train/eval.h"
#include "occult/model/reference.h"

namespace occult {
namespace {

ModelConfig tiny() {
  return load_model_config(testing::source_dir() + "/configs/tiny.json");
}

// The first `n` bytes of the shipped corpus as tokens.
std::vector<std::int32_t> corpus_prefix(std::size_t n) {
  std::ifstream in(testing::source_dir() + "/data/corpus/tinyshakespeare.txt", std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  text.resize(n);
  return byte_tokenize(text);
}

// The expected loss, computed independently of evaluate_text: walk the text in windows of T
// inputs (the last one shorter), score each with the double reference twin (the training loss's
// cross-entropy part) and weight by the window's predictions.
double reference_text_loss(const ModelConfig& config, const ReferenceParams& params,
                           const std::vector<std::int32_t>& tokens, int T) {
  double sum = 0.0;
  std::int64_t count = 0;
  for (std::size_t start = 0; start + 1 < tokens.size(); start += T) {
    const int len = static_cast<int>(std::min<std::size_t>(T, tokens.size() - 1 - start));
    std::vector<std::int32_t> in(tokens.begin() + start, tokens.begin() + start + len);
    std::vector<std::int32_t> out(tokens.begin() + start + 1, tokens.begin() + start + 1 + len);
    sum += reference_model_loss(config, params, in, out, 1, len).cross_entropy * len;
    count += len;
  }
  return sum / static_cast<double>(count);
}

using testing::expect_error;

class EvalMpiTest : public ::testing::Test {
 protected:
  MpiCommunicator comm{MPI_COMM_WORLD};
  EvalOptions options() const {
    EvalOptions o;
    o.seq_len = 16;
    o.batch = 5;  // 43 full windows = 8 passes of 5 + one of 3, then the 11-token last window
    o.progress = false;
    return o;
  }
};

TEST(EvalWindows, EveryTokenButTheFirstIsPredictedOnce) {
  EXPECT_EQ(eval_window_lengths(700, 16).size(), 44u);
  EXPECT_EQ(eval_window_lengths(700, 16).back(), 11);  // 699 = 43 * 16 + 11
  EXPECT_EQ(eval_window_lengths(33, 16), (std::vector<int>{16, 16}));
  EXPECT_EQ(eval_window_lengths(34, 16), (std::vector<int>{16, 16, 1}));
  EXPECT_EQ(eval_window_lengths(2, 16), (std::vector<int>{1}));
  EXPECT_TRUE(eval_window_lengths(1, 16).empty());
}

TEST_F(EvalMpiTest, LossIsTheReferenceCrossEntropyForBothDispatchersAtEveryRankCount) {
  const ModelConfig config = tiny();
  const auto tokens = corpus_prefix(700);
  // The 1-rank model's weights in double: init_weights is independent of the rank count.
  SelfCommunicator self;
  MoeTransformer one(config, self, ParallelOptions{});
  one.init_weights(11);
  const double expected = reference_text_loss(config, testing::to_reference(one), tokens, 16);
  for (Dispatch d : {Dispatch::kStandard, Dispatch::kOccult}) {
    ParallelOptions p;
    p.dispatch = d;
    MoeTransformer model(config, comm, p);
    model.init_weights(11);
    const EvalResult r = evaluate_text(model, tokens, options());
    EXPECT_EQ(r.tokens, 699);
    EXPECT_EQ(r.windows, 44);
    EXPECT_NEAR(r.loss, expected, 1e-5 * expected) << dispatch_name(d);
    EXPECT_NEAR(r.perplexity, std::exp(expected), 1e-5 * std::exp(expected));
    EXPECT_EQ(r.tokens_changed, 0.0);
    ASSERT_EQ(r.layer_replicas.size(), 2u);
    EXPECT_GE(r.replicas_per_token, 1.0);
    EXPECT_LE(r.max_devices_per_token, std::min(2, comm.size()));  // k = 2
    if (comm.size() == 1) {
      EXPECT_EQ(r.replicas_per_token, 1.0);
    }
  }
}

TEST_F(EvalMpiTest, ReplicasPerTokenIsTheModelsRoutingStatisticOnOnePass) {
  // 4 windows of 16 in one pass: the same tokens the model's own routing_stats() counts.
  const auto tokens = corpus_prefix(65);
  MoeTransformer model(tiny(), comm, ParallelOptions{});
  model.init_weights(3);
  EvalOptions o = options();
  o.batch = 4;
  const EvalResult r = evaluate_text(model, tokens, o);
  EXPECT_EQ(r.tokens, 64);
  EXPECT_NEAR(r.replicas_per_token, model.routing_stats().replicas_per_token, 1e-12);
}

TEST_F(EvalMpiTest, AllZeroModelGivesLogVocabulary) {
  // Every weight 0: the norms output 0, so the logits are 0 and every byte costs ln 256 nats;
  // the router is uniform, so ties pick experts 0 and 1, which the contiguous placement puts
  // on device 0: C_T is exactly 1 at every rank count.
  MoeTransformer model(tiny(), comm, ParallelOptions{});
  for (const auto& t : model.tensors()) std::fill(t.value.begin(), t.value.end(), 0.0f);
  const EvalResult r = evaluate_text(model, corpus_prefix(100), options());
  EXPECT_EQ(r.tokens, 99);
  EXPECT_NEAR(r.loss, std::log(256.0), 1e-6);
  EXPECT_NEAR(r.perplexity, 256.0, 1e-3);
  EXPECT_EQ(r.replicas_per_token, 1.0);
  EXPECT_EQ(r.max_devices_per_token, 1);
  EXPECT_EQ(r.tokens_changed, 0.0);
}

TEST_F(EvalMpiTest, PruningRoutesEveryTokenWithinMDevicesIdenticallyForBothDispatchers) {
  if (comm.size() < 2) GTEST_SKIP() << "pruning needs at least 2 devices";
  const ModelConfig config = tiny();
  const auto tokens = corpus_prefix(400);
  // Unpruned first: how many tokens span more than one device (those pruning must change).
  MoeTransformer plain(config, comm, ParallelOptions{});
  plain.init_weights(7);
  const EvalResult base = evaluate_text(plain, tokens, options());
  ASSERT_GT(base.max_devices_per_token, 1) << "the test needs tokens that span 2 devices";
  for (const char* scheme : {"score", "device-limited"}) {
    double losses[2] = {0, 0};
    for (Dispatch d : {Dispatch::kStandard, Dispatch::kOccult}) {
      ParallelOptions p;
      p.dispatch = d;
      p.prune_devices = 1;
      p.prune_scheme = scheme;
      MoeTransformer model(config, comm, p);
      model.init_weights(7);
      const EvalResult r = evaluate_text(model, tokens, options());
      EXPECT_EQ(r.max_devices_per_token, 1) << scheme;
      EXPECT_EQ(r.replicas_per_token, 1.0) << scheme;
      EXPECT_GT(r.tokens_changed, 0.0) << scheme;
      EXPECT_LT(r.tokens_changed, 1.0) << scheme;
      EXPECT_EQ(r.tokens, 399);
      losses[d == Dispatch::kOccult] = r.loss;
    }
    EXPECT_NEAR(losses[0], losses[1], 1e-6 * losses[0]) << scheme;
  }
  // A budget of all D devices prunes nothing: the unpruned numbers exactly.
  ParallelOptions all;
  all.prune_devices = comm.size();
  MoeTransformer model(config, comm, all);
  model.init_weights(7);
  const EvalResult r = evaluate_text(model, tokens, options());
  EXPECT_EQ(r.tokens_changed, 0.0);
  EXPECT_EQ(r.replicas_per_token, base.replicas_per_token);
  EXPECT_NEAR(r.loss, base.loss, 1e-12 * base.loss);
}

TEST_F(EvalMpiTest, BadInputFailsOnEveryRankNamingTheOption) {
  MoeTransformer model(tiny(), comm, ParallelOptions{});
  model.init_weights(1);
  EvalOptions o = options();
  o.seq_len = 65;  // tiny.json: max_position_embeddings 64
  expect_error([&] { evaluate_text(model, corpus_prefix(100), o); },
               "--seq-len must be in [1, max_position_embeddings = 64], got 65");
  o = options();
  o.batch = 0;
  expect_error([&] { evaluate_text(model, corpus_prefix(100), o); },
               "--batch (windows per forward pass) must be >= 1");
  expect_error([&] { evaluate_text(model, corpus_prefix(1), options()); },
               "the evaluation text has 1 tokens (bytes); it needs at least 2");
  // The model is still usable afterwards (no rank is left inside a collective).
  EXPECT_EQ(evaluate_text(model, corpus_prefix(20), options()).tokens, 19);
}

}  // namespace
}  // namespace occult
