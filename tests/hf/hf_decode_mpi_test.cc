// Contract: the KV-cache inference engine reproduces the full forward on Hugging Face
// architectures under MPI (ctest runs this at 1, 2 and 4 ranks). For every architecture's
// default fixture, plus the alt fixtures of olmoe (GQA with a whole-projection QK-norm whose k
// weight is narrower than q's) and qwen3_moe (per-head QK-norm, head_dim != hidden/heads, every
// layer sparse, tied head), every rank loads the same tiny random F32 model directory with
// load_checkpoint into an expert-parallel model, with each dispatcher: standard (contiguous
// placement) and occult (the fixture writer's round-robin placement, non-contiguous). Five
// sequences of different lengths are spread over the ranks (deepseek_v2 and deepseek_v3, default
// and alt: multi-head latent attention, whose cache holds the latent rows; decode attends over
// them in latent space with kv_b absorbed, and a third test checks the reference form that
// expands them at every step); each rank prefills its prompts and
// decodes the rest of each sequence one token per step, and every returned logits row (the
// prompt's last token, then every decoded position) must equal the row of a 1-process full
// forward over the whole sequence (local reference MoE block) at the same position. A second
// test repeats this with blocked prefill attention (2 query rows per block).
//
// Tolerance: max |a - b| / max |b| over a logits row below 1e-5, as tests/infer uses: both paths
// are float, differing only in summation order (cached vs whole-sequence attention, batched
// expert GEMMs), ~1e-6 relative. Routing must agree exactly for that to hold, so each sequence's
// smallest top-k router-logit gap (from the double reference twin) is asserted above 1e-4, ~100x
// the float difference of router logits of size ~3.
// Observed worst row: 4.2e-6 (mixtral default, sequence 1 position 8, every rank count and both
// dispatchers), a row where the float full forward itself is 5.6e-6 from the double twin and the
// cached decode 2e-6: rounding of an ill-conditioned position, not a systematic difference
// (a wrong GQA head mapping in the decode kernel, tried on a scratch copy, fails every GQA case).
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "hf/hf_fixture_writer.h"
#include "hf/hf_reference.h"
#include "infer/cached_decoding.h"
#include "occult/comm/communicator.h"
#include "occult/comm/mpi_communicator.h"
#include "occult/infer/inference.h"
#include "occult/model/checkpoint.h"
#include "occult/model/config.h"
#include "occult/model/model.h"

namespace occult {
namespace {

constexpr double kMaxRelativeError = 1e-5;
constexpr double kMinTopKGap = 1e-4;

struct Case {
  const char* arch;
  const char* variant;
  Dispatch dispatch;
};

std::string case_name(const Case& c) {
  return fmt::format("{}_{}_{}", c.arch, c.variant, dispatch_name(c.dispatch));
}

// Failure lines name the case rather than dumping its bytes.
void PrintTo(const Case& c, std::ostream* os) {
  *os << case_name(c);
}

// The global test sequences (every rank builds the same list) and how many tokens of each are
// the prompt: lengths up to 16, well inside the fixture's 64 positions.
const std::vector<int> kLengths = {9, 12, 5, 16, 7};

std::vector<std::vector<std::int32_t>> test_sequences(int V) {
  std::mt19937_64 rng(2024);
  std::uniform_int_distribution<int> id(0, V - 1);
  std::vector<std::vector<std::int32_t>> seqs;
  for (const int len : kLengths) {
    std::vector<std::int32_t> seq(len);
    for (auto& t : seq) t = id(rng);
    seqs.push_back(std::move(seq));
  }
  return seqs;
}

// The fixture directory of one case, written by this rank into its own temporary directory
// (same options and seed on every rank, hence the same files), removed at the end.
struct Fixture {
  std::filesystem::path dir;
  explicit Fixture(const Case& c, int rank) {
    dir = std::filesystem::temp_directory_path() /
          fmt::format("occult_hf_decode_{}_{}_{}_{}", getpid(), rank, c.arch, c.variant);
    std::filesystem::remove_all(dir);
    hf::FixtureOptions o;
    o.arch = c.arch;
    o.variant = c.variant;
    o.dtype = "f32";
    o.seed = 3;
    hf::write_fixture(o, dir.string());
  }
  ~Fixture() {
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
};

// The round-robin placement of the fixture writer as ParallelOptions::expert_to_device.
std::vector<std::vector<int>> round_robin(const std::string& dir, int devices) {
  const auto doc = hf::round_robin_placement(dir, devices);
  std::vector<std::vector<int>> placement;
  for (const auto& layer : doc.at("layers")) {
    placement.push_back(layer.at("expert_to_device").get<std::vector<int>>());
  }
  return placement;
}

class HfDecodeMpiTest : public ::testing::TestWithParam<Case> {
 protected:
  MpiCommunicator comm{MPI_COMM_WORLD};
};

// testing::check_cached_decoding on the case's fixture (its routing first checked clear of
// top-k ties) against the single-process naive-block model of the same directory.
void check_fixture_decoding(Communicator& comm, const Case& c,
                            const std::vector<int>& prompt_lengths, int attention_block_rows,
                            std::int64_t* rows_checked, bool mla_absorbed_decode = true) {
  const Fixture fixture(c, comm.rank());
  const std::string dir = fixture.dir.string();
  const ModelConfig config = load_checkpoint_config(dir);
  const int V = config.vocab_size;
  const auto seqs = test_sequences(V);

  // The routing of every sequence is clear of top-k ties (see the contract).
  const hf::HfModel twin = hf::load_hf_model(dir);
  for (std::size_t s = 0; s < seqs.size(); ++s) {
    hf::ForwardStats stats;
    const std::vector<std::int64_t> ids(seqs[s].begin(), seqs[s].end());
    hf::hf_forward(twin, ids, 1, static_cast<int>(ids.size()), &stats);
    ASSERT_GT(stats.min_top_k_gap, kMinTopKGap) << "sequence " << s << " routes near a tie";
  }

  SelfCommunicator self;
  // The naive block implements the softmax top-k router only; DeepSeek-V2/V3 routers (groups,
  // sigmoid, bias, scaling) are checked against the twin by the layer and logits tests, so their
  // full forward here runs the expert-parallel block on one rank.
  const bool naive_router = config.score_function == ScoreFunction::kSoftmax && config.n_group == 1 &&
                            config.routed_scaling_factor == 1.0f && !config.router_selection_bias;
  ParallelOptions inference;
  inference.training = false;
  MoeTransformer reference(config, self, inference, /*local_reference=*/naive_router);
  load_checkpoint(dir, reference, nullptr);
  ParallelOptions parallel;
  parallel.training = false;
  parallel.dispatch = c.dispatch;
  if (c.dispatch == Dispatch::kOccult) parallel.expert_to_device = round_robin(dir, comm.size());
  MoeTransformer model(config, comm, parallel);
  load_checkpoint(dir, model, nullptr);

  testing::check_cached_decoding(comm, model, reference, seqs, prompt_lengths, attention_block_rows,
                                 kMaxRelativeError, rows_checked, mla_absorbed_decode);
}

TEST_P(HfDecodeMpiTest, KvCacheDecodeReproducesTheFullForwardAtEveryPosition) {
  // Lengths 9, 12, 5, 16, 7; sequence 2 is all prompt. Decoded: 8 + 8 + 0 + 13 + 1.
  std::int64_t rows = 0;
  check_fixture_decoding(comm, GetParam(), {1, 4, 5, 3, 6}, 0, &rows);
  EXPECT_EQ(rows, 30);
}

TEST_P(HfDecodeMpiTest, BlockedPrefillAttentionMatchesTheFullForward) {
  // Blocks of 2 query rows: every prompt but the 1-token one takes the blocked path, and the
  // decode steps after it read the keys and values it cached.
  std::int64_t rows = 0;
  check_fixture_decoding(comm, GetParam(), {9, 7, 1, 10, 6}, 2, &rows);
  EXPECT_EQ(rows, 0 + 5 + 4 + 6 + 1);
}

TEST_P(HfDecodeMpiTest, ExpandedLatentDecodeMatchesTheFullForward) {
  // The expand-every-step form of latent-attention decode, kept as the absorbed form's reference.
  const std::string arch = GetParam().arch;
  if (arch != "deepseek_v2" && arch != "deepseek_v3") GTEST_SKIP() << "no latent attention";
  std::int64_t rows = 0;
  check_fixture_decoding(comm, GetParam(), {1, 4, 5, 3, 6}, 0, &rows, /*mla_absorbed_decode=*/false);
  EXPECT_EQ(rows, 30);
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  const std::vector<std::pair<const char*, const char*>> fixtures = {
      {"olmoe", "default"},    {"olmoe", "alt"},         {"qwen2_moe", "default"},
      {"deepseek", "default"}, {"qwen3_moe", "default"}, {"qwen3_moe", "alt"},
      {"mixtral", "default"},  {"deepseek_v2", "default"}, {"deepseek_v2", "alt"},
      {"deepseek_v3", "default"}, {"deepseek_v3", "alt"}};
  for (const auto& [arch, variant] : fixtures) {
    for (const Dispatch d : {Dispatch::kStandard, Dispatch::kOccult}) {
      cases.push_back({arch, variant, d});
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Architectures, HfDecodeMpiTest, ::testing::ValuesIn(all_cases()),
                         [](const auto& info) { return case_name(info.param); });

}  // namespace
}  // namespace occult
