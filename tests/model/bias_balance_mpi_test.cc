// Auxiliary-loss-free balancing in `occult train` under MPI: the selection bias of a sigmoid /
// noaux_tc router follows the update rule on the global loads of every step, is the same on every
// rank and in the checkpoint, lowers the load imbalance, and resumes exactly; bad use is one clear
// error.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "occult/comm/mpi_communicator.h"
#include "occult/core/error.h"
#include "occult/core/safetensors.h"
#include "occult/model/arch.h"
#include "occult/model/config.h"
#include "occult/routing/bias_balance.h"
#include "occult/train/trainer.h"
#include "test_util.h"

namespace occult {
namespace {

namespace fs = std::filesystem;

// configs/tiny.json (8 experts, top-2, 2 layers) with DeepSeek-V3's router: sigmoid scores and
// noaux_tc selection in 4 groups of 2, 2 groups kept per token.
TrainOptions biased_options(float rate) {
  TrainOptions o;
  const std::string path = testing::source_dir() + "/configs/tiny.json";
  nlohmann::json j = nlohmann::json::parse(std::ifstream(path));
  j["scoring_func"] = "sigmoid";
  j["topk_method"] = "noaux_tc";
  j["n_group"] = 4;
  j["topk_group"] = 2;
  o.config = parse_model_config(j, "tiny.json + noaux_tc");
  o.config_source = "tiny.json + noaux_tc";
  o.data_path = testing::source_dir() + "/data/corpus/tinyshakespeare.txt";
  o.dispatch = Dispatch::kOccult;
  o.steps = 30;
  o.batch = 8;
  o.seq_len = 16;
  o.seed = 5;
  // The bias must move about as fast as the router learns: at this learning rate 0.003 per step
  // keeps up (at 3e-3 the router collapses onto a few experts faster than any small rate).
  o.adamw.lr = 3e-4f;
  o.adamw.warmup_steps = 2;
  o.eval_sequences = 8;
  o.progress = false;
  o.bias_update_rate = rate;
  return o;
}

std::string shared_dir(const std::string& name, int ranks) {
  return (fs::temp_directory_path() / fmt::format("occult_bias_{}_{}_{}", name, getppid(), ranks)).string();
}

double mean_load_ratio_of_last(const TrainResult& r, std::size_t n) {
  double sum = 0.0;
  for (std::size_t i = r.steps.size() - n; i < r.steps.size(); ++i) sum += r.steps[i].max_load_ratio;
  return sum / static_cast<double>(n);
}

class BiasBalanceMpiTest : public ::testing::Test {
 protected:
  MpiCommunicator comm{MPI_COMM_WORLD};
};

TEST_F(BiasBalanceMpiTest, BiasFollowsTheRuleIsIdenticalOnEveryRankAndSaved) {
  const float rate = 0.003f;
  TrainOptions o = biased_options(rate);
  const std::string dir = shared_dir("saved", comm.size());
  o.save_dir = dir;
  const TrainResult r = train(o, comm);
  const int E = o.config.num_experts, Lm = o.config.num_moe_layers();
  ASSERT_EQ(r.selection_bias.size(), static_cast<std::size_t>(Lm));
  // Replaying the rule on each step's recorded global loads, from the zero initialisation.
  std::vector<std::vector<float>> replay(Lm, std::vector<float>(E, 0.0f));
  for (const auto& s : r.steps) {
    ASSERT_EQ(s.expert_loads.size(), static_cast<std::size_t>(Lm) * E);
    for (int m = 0; m < Lm; ++m) {
      std::int64_t total = 0;
      for (int e = 0; e < E; ++e) total += s.expert_loads[m * E + e];
      EXPECT_EQ(total, 8 * 16 * o.config.num_experts_per_tok) << "every token's k assignments, step " << s.step;
      update_selection_bias(std::span<const std::int64_t>(s.expert_loads).subspan(m * E, E), rate, replay[m]);
    }
  }
  bool moved = false;
  for (int m = 0; m < Lm; ++m) {
    EXPECT_EQ(r.selection_bias[m], replay[m]) << "MoE layer " << m;
    for (float b : r.selection_bias[m]) moved = moved || b != 0.0f;
    // Every rank holds the same bias: its max over ranks equals its min.
    std::vector<double> most(r.selection_bias[m].begin(), r.selection_bias[m].end()), least(most);
    for (double& v : least) v = -v;
    comm.all_reduce_max(std::span<double>(most));
    comm.all_reduce_max(std::span<double>(least));
    for (int e = 0; e < E; ++e) EXPECT_EQ(most[e], -least[e]) << "layer " << m << " expert " << e;
  }
  EXPECT_TRUE(moved);
  comm.barrier();
  const SafetensorsReader saved = SafetensorsReader::open(dir + "/model.safetensors");
  for (int l = 0, m = 0; l < o.config.num_hidden_layers; ++l, ++m) {
    const std::string name = router_bias_tensor_name(o.config, l);
    EXPECT_EQ(name, fmt::format("model.layers.{}.mlp.gate.e_score_correction_bias", l));
    EXPECT_EQ(saved.read_f32(name), r.selection_bias[m]) << name;
  }
  comm.barrier();
  if (comm.rank() == 0) fs::remove_all(dir);
}

TEST_F(BiasBalanceMpiTest, BiasUpdatesLowerTheLoadImbalance) {
  const TrainResult off = train(biased_options(0.0f), comm);
  const TrainResult on = train(biased_options(0.003f), comm);
  for (const auto& b : off.selection_bias) EXPECT_EQ(b, std::vector<float>(b.size(), 0.0f));
  const double before = mean_load_ratio_of_last(off, 10), after = mean_load_ratio_of_last(on, 10);
  EXPECT_LT(after, before) << "max/mean expert load over the last 10 steps";
}

TEST_F(BiasBalanceMpiTest, ResumeReproducesTheUninterruptedRun) {
  TrainOptions full_options = biased_options(0.01f);
  full_options.steps = 16;
  const TrainResult full = train(full_options, comm);
  const std::string dir = shared_dir("resume", comm.size());
  TrainOptions first = full_options;
  first.stop_at = 8;
  first.save_dir = dir;
  const TrainResult head = train(first, comm);
  TrainOptions second = full_options;
  second.resume_dir = dir;
  const TrainResult tail = train(second, comm);
  ASSERT_EQ(tail.first_step, 9);
  std::vector<double> joined;
  for (const auto* r : {&head, &tail}) {
    for (const auto& s : r->steps) joined.push_back(s.loss);
  }
  ASSERT_EQ(joined.size(), full.steps.size());
  for (std::size_t i = 0; i < joined.size(); ++i) EXPECT_EQ(joined[i], full.steps[i].loss) << "step " << i + 1;
  EXPECT_EQ(tail.selection_bias, full.selection_bias);
  // Another rate is another run: refused on resume like any schedule change.
  TrainOptions other = full_options;
  other.resume_dir = dir;
  other.bias_update_rate = 0.02f;
  testing::expect_error([&] { train(other, comm); }, "--bias-update-rate 0.02 differs from the saved run's 0.01");
  comm.barrier();
  if (comm.rank() == 0) fs::remove_all(dir);
}

TEST_F(BiasBalanceMpiTest, BadRatesAreClearErrors) {
  TrainOptions negative = biased_options(-0.5f);
  testing::expect_error([&] { train(negative, comm); }, "--bias-update-rate must be >= 0 (0 = off), got -0.5");
  TrainOptions plain = biased_options(0.01f);
  plain.config = load_model_config(testing::source_dir() + "/configs/tiny.json");
  plain.config_source = "configs/tiny.json";
  testing::expect_error([&] { train(plain, comm); },
                        "--bias-update-rate 0.01 needs a router with a selection bias, but the model config "
                        "configs/tiny.json has none: set config key \"topk_method\" to \"noaux_tc\"");
}

}  // namespace
}  // namespace occult
