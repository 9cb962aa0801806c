// The KV-cache inference engine under MPI (ctest runs it at 1, 2 and 4 ranks): cached decoding
// reproduces the full forward's logits at every position with both dispatchers, generation is
// deterministic and independent of dispatch and rank count, profiled routing is the training
// forward's routing, and bad input fails on every rank with one message and no hang.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "infer/cached_decoding.h"
#include "model/moe_block.h"
#include "model/test_util.h"
#include "occult/comm/mpi_communicator.h"
#include "occult/core/error.h"
#include "occult/infer/inference.h"
#include "occult/train/data.h"

namespace occult {

// Test names and failure lines print the dispatch by name.
void PrintTo(Dispatch dispatch, std::ostream* os) {
  *os << dispatch_name(dispatch);
}

namespace {

constexpr std::uint64_t kSeed = 11;

ModelConfig test_config() {
  // Shared experts, normalised top-k and an untied head: every branch of the forward runs.
  return testing::tiny_config(/*shared=*/true, /*norm_topk=*/true, /*tied=*/false);
}

// Global test sequences (every rank builds the same list): varied lengths up to the context 16.
std::vector<std::vector<std::int32_t>> test_sequences(int V) {
  const std::vector<int> lengths = {9, 12, 5, 16, 7};
  std::vector<std::vector<std::int32_t>> seqs;
  for (std::size_t s = 0; s < lengths.size(); ++s) {
    std::vector<std::int32_t> seq;
    for (int i = 0; i < lengths[s]; ++i)
      seq.push_back(static_cast<std::int32_t>((7 * i + 3 * s + i * i) % V));
    seqs.push_back(seq);
  }
  return seqs;
}

using testing::expect_error;

class InferenceMpiTest : public ::testing::TestWithParam<Dispatch> {
 protected:
  MpiCommunicator comm{MPI_COMM_WORLD};
};

// testing::check_cached_decoding on the test config's model with `dispatch` against the
// single-process naive-block model of the same weights.
void check_test_model_decoding(Communicator& comm, Dispatch dispatch,
                               const std::vector<int>& prompt_lengths, int attention_block_rows,
                               std::int64_t* rows_checked) {
  const ModelConfig config = test_config();
  SelfCommunicator self;
  MoeTransformer reference(config, self, {}, /*local_reference=*/true);
  reference.init_weights(kSeed);
  ParallelOptions parallel;
  parallel.dispatch = dispatch;
  MoeTransformer model(config, comm, parallel);
  model.init_weights(kSeed);

  testing::check_cached_decoding(comm, model, reference, test_sequences(config.vocab_size),
                                 prompt_lengths, attention_block_rows, 1e-5, rows_checked);
}

TEST_P(InferenceMpiTest, KvCacheDecodeReproducesTheFullForwardAtEveryPosition) {
  // Sequence lengths 9, 12, 5, 16, 7; sequence 2 is all prompt. Every non-prompt position is
  // decoded once: 8 + 8 + 0 + 13 + 1.
  std::int64_t rows = 0;
  check_test_model_decoding(comm, GetParam(), {1, 4, 5, 3, 6}, 0, &rows);
  EXPECT_EQ(rows, 30);
}

TEST_P(InferenceMpiTest, BlockedPrefillAttentionMatchesTheFullForward) {
  // Blocks of 2 query rows: every prompt but the 1-token one takes the blocked path, and the
  // decode steps after it read the keys and values it cached.
  std::int64_t rows = 0;
  check_test_model_decoding(comm, GetParam(), {9, 7, 1, 10, 6}, 2, &rows);
  EXPECT_EQ(rows, 0 + 5 + 4 + 6 + 1);
}

TEST_P(InferenceMpiTest, GenerationIsDeterministicAndMatchesTheOneRankRun) {
  const ModelConfig config = test_config();
  const std::vector<std::vector<std::int32_t>> prompts = {{1, 2, 3}, {4, 5, 6, 7, 8}, {9, 10}};
  for (const float temperature : {0.0f, 0.9f}) {
    GenerateOptions o;
    o.max_new_tokens = 8;
    o.sampling.temperature = temperature;
    o.sampling.top_p = 0.9f;
    o.sampling.seed = 7;
    SelfCommunicator self;
    MoeTransformer one_rank(config, self, {});
    one_rank.init_weights(kSeed);
    const GenerateResult expected = generate(one_rank, prompts, o);
    ASSERT_EQ(expected.tokens.size(), prompts.size());

    ParallelOptions parallel;
    parallel.dispatch = GetParam();
    MoeTransformer model(config, comm, parallel);
    model.init_weights(kSeed);
    int streamed = 0;
    const GenerateResult got =
        generate(model, prompts, o, [&](int step, std::span<const std::int32_t> tokens) {
          EXPECT_EQ(step, streamed);
          ASSERT_EQ(tokens.size(), prompts.size());
          for (std::size_t i = 0; i < prompts.size(); ++i)
            EXPECT_EQ(tokens[i], expected.tokens[i][step]);
          ++streamed;
        });
    EXPECT_EQ(streamed, o.max_new_tokens);
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ(got.tokens[i], expected.tokens[i])
          << "prompt " << i << " temperature " << temperature;
      EXPECT_EQ(got.tokens[i].size(), 8u);
    }
    EXPECT_EQ(got.generated_tokens, 24);
    EXPECT_EQ(got.prompt_tokens, 10);
    EXPECT_EQ(generate(model, prompts, o).tokens, got.tokens);  // same seed, same text
    if (temperature > 0.0f) {
      o.sampling.seed = 8;
      EXPECT_NE(generate(model, prompts, o).tokens, got.tokens);  // the seed matters
    }
  }
}

TEST_P(InferenceMpiTest, PrefillRoutingIsTheTrainingForwardRouting) {
  const ModelConfig config = test_config();
  ParallelOptions parallel;
  parallel.dispatch = GetParam();
  MoeTransformer model(config, comm, parallel);
  model.init_weights(kSeed);
  const int T = 16, E = config.num_experts, K = config.num_experts_per_tok,
            L = config.num_hidden_layers;
  // Five windows of the same length, as training batches them; this rank's share.
  const std::int64_t num_seqs = 5;
  const Share share = rank_share(num_seqs, comm.rank(), comm.size());
  std::vector<std::int32_t> all_tokens;
  for (int i = 0; i < num_seqs * T; ++i)
    all_tokens.push_back(static_cast<std::int32_t>((i * 5 + i / 3) % 16));
  std::vector<std::vector<std::int32_t>> prompts;
  std::vector<std::int32_t> batch;
  for (std::int64_t s = share.begin; s < share.end; ++s) {
    prompts.emplace_back(all_tokens.begin() + s * T, all_tokens.begin() + (s + 1) * T);
    batch.insert(batch.end(), prompts.back().begin(), prompts.back().end());
  }
  const std::int64_t B = share.end - share.begin;
  model.forward(batch, batch, B, T);
  std::vector<std::vector<std::int32_t>> train_ids(L);
  std::vector<std::vector<float>> train_probs(L);
  for (int l = 0; l < L; ++l) {
    const MoeBlock& block = model.moe_block(l);
    train_ids[l].assign(block.topk_ids(), block.topk_ids() + B * T * K);
    train_probs[l].assign(block.router_probs(), block.router_probs() + B * T * E);
  }
  InferenceEngine engine(model, {.max_sequences = B, .max_length = T});
  engine.prefill(prompts);
  for (int l = 0; l < L; ++l) {
    const LayerRouting r = engine.routing(l);
    ASSERT_EQ(r.num_tokens, B * T);
    EXPECT_EQ(r.topk_ids, train_ids[l]) << "layer " << l;
    for (std::size_t i = 0; i < r.router_probs.size(); ++i) {
      ASSERT_NEAR(r.router_probs[i], train_probs[l][i], 1e-6) << "layer " << l << " element " << i;
    }
    for (std::int64_t t = 0; t < r.num_tokens; ++t) {  // normalised top-k weights sum to 1
      float sum = 0.0f;
      for (int j = 0; j < K; ++j) sum += r.topk_weights[t * K + j];
      EXPECT_NEAR(sum, 1.0f, 1e-6f);
    }
  }

  // profile_routing over the same tokens, gathered on rank 0, equals the 1-rank training
  // forward over all five windows; a ragged tail becomes a shorter last sequence.
  SelfCommunicator self;
  MoeTransformer one_rank(config, self, parallel);
  one_rank.init_weights(kSeed);
  one_rank.forward(all_tokens, all_tokens, num_seqs, T);
  ProfileOptions po;
  po.seq_len = T;
  po.sequences_per_batch = 2;
  po.model_name = "tiny";
  po.dataset = "formula";
  const Trace trace = profile_routing(model, all_tokens, po);
  if (comm.rank() == 0) {
    ASSERT_EQ(trace.num_layers(), L);
    EXPECT_EQ(trace.num_tokens(), num_seqs * T);
    EXPECT_EQ(trace.sequence_lengths, std::vector<std::int32_t>(5, T));
    EXPECT_EQ(trace.num_experts, E);
    EXPECT_EQ(trace.top_k, K);
    EXPECT_EQ(trace.model, "tiny");
    for (int l = 0; l < L; ++l) {
      const MoeBlock& block = one_rank.moe_block(l);
      EXPECT_EQ(trace.layers[l].topk_ids,
                std::vector<std::int32_t>(block.topk_ids(), block.topk_ids() + num_seqs * T * K))
          << "layer " << l;
      ASSERT_EQ(trace.layers[l].router_probs.size(), static_cast<std::size_t>(num_seqs * T * E));
      for (std::size_t i = 0; i < trace.layers[l].router_probs.size(); ++i) {
        ASSERT_NEAR(trace.layers[l].router_probs[i], block.router_probs()[i], 1e-5)
            << "layer " << l;
      }
    }
    // It round-trips through the trace format.
    const std::string path =
        (std::filesystem::temp_directory_path() /
         fmt::format("occult_infer_profile_{}_{}.safetensors", getpid(), comm.size()))
            .string();
    save_trace(trace, path);
    const Trace loaded = load_trace(path);
    std::filesystem::remove(path);
    EXPECT_EQ(loaded.layers[1].topk_ids, trace.layers[1].topk_ids);
    EXPECT_EQ(loaded.sequence_lengths, trace.sequence_lengths);
  } else {
    EXPECT_EQ(trace.num_layers(), 0);
  }
  const std::span<const std::int32_t> ragged(all_tokens.data(), 75);
  const Trace tail = profile_routing(model, ragged, po);
  if (comm.rank() == 0) {
    EXPECT_EQ(tail.sequence_lengths, (std::vector<std::int32_t>{16, 16, 16, 16, 11}));
  }
}

TEST_P(InferenceMpiTest, BadInputFailsOnEveryRankWithoutHanging) {
  const ModelConfig config = test_config();
  ParallelOptions parallel;
  parallel.dispatch = GetParam();
  MoeTransformer model(config, comm, parallel);
  model.init_weights(kSeed);
  const int last = comm.size() - 1;

  // A prompt longer than the context.
  expect_error([&] { generate(model, {std::vector<std::int32_t>(17, 1)}, GenerateOptions{}); },
               "context");
  // Prompt + new tokens beyond the context.
  GenerateOptions o;
  o.max_new_tokens = 10;
  expect_error([&] { generate(model, {std::vector<std::int32_t>(8, 1)}, o); },
               "needs 17 positions");
  // 2 (K, V) x L=2 x 3 sequences x 10 positions x H=8 floats.
  EXPECT_EQ(kv_cache_bytes(config, 3, 10), 2 * 2 * 3 * 10 * 8 * 4);
  // A KV cache larger than the memory limit (on the last rank only: every rank fails).
  expect_error(
      [&] {
        InferenceEngine engine(model, {.max_sequences = comm.rank() == last ? 1000 : 1,
                                       .max_length = 16,
                                       .memory_limit_bytes = 1 << 20});
      },
      "needs 2.0 MiB, above the limit of 1.0 MiB");
  InferenceEngine engine(model, {.max_sequences = 2, .max_length = 8});
  // A prompt longer than the cache on the last rank only.
  expect_error([&] { engine.prefill({std::vector<std::int32_t>(comm.rank() == last ? 9 : 3, 1)}); },
               "longer than the KV cache length 8");
  // A token outside the vocabulary on the last rank only.
  expect_error(
      [&] {
        engine.prefill({{1, comm.rank() == last ? 16 : 2}});
      },
      "outside the vocabulary");
  // Decoding a slot that was never prefilled.
  engine.prefill({{1, 2}});
  expect_error(
      [&] {
        const std::vector<int> slots = {comm.rank() == last ? 1 : 0};
        const std::vector<std::int32_t> tokens = {3};
        engine.decode(slots, tokens);
      },
      "not a prefilled sequence");
  // A sequence that is full.
  engine.prefill({std::vector<std::int32_t>(8, 1)});
  expect_error(
      [&] {
        const std::vector<int> slots = {0};
        const std::vector<std::int32_t> tokens = {3};
        engine.decode(slots, tokens);
      },
      "cannot grow");
  // A placement for another model (8 experts for a 4-expert config) fails in the model.
  ParallelOptions other = parallel;
  other.expert_to_device.assign(config.num_hidden_layers, std::vector<int>(8, 0));
  expect_error([&] { MoeTransformer bad(config, comm, other); }, "num_experts = 4");
  // The engine still works afterwards: nobody hung or fell out of step.
  const auto logits = engine.prefill({{1, 2, 3}});
  EXPECT_EQ(logits.size(), static_cast<std::size_t>(config.vocab_size));
}

INSTANTIATE_TEST_SUITE_P(Dispatchers, InferenceMpiTest,
                         ::testing::Values(Dispatch::kStandard, Dispatch::kOccult),
                         [](const auto& info) { return std::string(dispatch_name(info.param)); });

}  // namespace
}  // namespace occult
