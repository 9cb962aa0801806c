// Fine-tuning a Hugging Face model directory under MPI (ctest runs it at 1, 2, 3 and 4 ranks):
// `train --init DIR` on token ids gives the loss sequence of the one-process run for 20 steps
// with both dispatchers, for every architecture family, and the saved directory reloads as the
// same architecture with the Hugging Face tensor names of its family.
//
// Tolerance: the ranks sum dense gradients in another order than one process, ~1e-7 relative
// per step, which 20 AdamW steps grow to at most ~1e-5; 1e-4 relative leaves a 10x margin while
// a wrong gradient or a lost expert shifts the losses by 1e-2 or more within a few steps.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "hf/hf_fixture_writer.h"
#include "occult/comm/mpi_communicator.h"
#include "occult/core/rng.h"
#include "occult/model/checkpoint.h"
#include "occult/model/model_dir.h"
#include "occult/train/trainer.h"

namespace occult {
namespace {

namespace fs = std::filesystem;

// A directory every rank agrees on: mpirun's process is the common parent.
fs::path shared_dir(const std::string& name) {
  return fs::temp_directory_path() / fmt::format("occult_hf_finetune_{}_{}", name, getppid());
}

std::vector<double> losses(const TrainResult& r) {
  std::vector<double> out;
  for (const auto& s : r.steps) out.push_back(s.loss);
  return out;
}

class HfFinetuneMpiTest : public ::testing::TestWithParam<const char*> {
 protected:
  MpiCommunicator comm{MPI_COMM_WORLD};
};

TEST_P(HfFinetuneMpiTest, TwentyStepsMatchTheOneRankRunAndSaveReloads) {
  const std::string arch = GetParam();
  const fs::path dir = shared_dir(arch);
  const fs::path model_dir = dir / "model", ids_path = dir / "ids.txt", saved = dir / "saved";
  if (comm.rank() == 0) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    hf::FixtureOptions fo;
    fo.arch = arch;
    fo.dtype = "bf16";
    fo.shards = 2;
    hf::write_fixture(fo, model_dir.string());
    // A corpus with structure (a repeated random phrase plus noise) so the loss can fall.
    SplitMix64 rng(17);
    std::ofstream out(ids_path);
    std::vector<int> phrase(23);
    for (int& id : phrase) id = static_cast<int>(rng.below(96));
    for (int i = 0; i < 4000; ++i)
      out << (rng.below(4) == 0 ? static_cast<int>(rng.below(96)) : phrase[i % 23]) << ' ';
  }
  comm.barrier();

  auto options = [&](Dispatch dispatch) {
    TrainOptions o;
    o.init_dir = model_dir.string();
    o.config = load_checkpoint_config(o.init_dir);
    o.config_source = o.init_dir + "/config.json";
    o.data_ids_path = ids_path.string();
    o.dispatch = dispatch;
    o.steps = 20;
    o.batch = 8;
    o.seq_len = 16;
    o.seed = 3;
    o.adamw.lr = 3e-3f;
    o.adamw.warmup_steps = 2;
    o.eval_sequences = 8;
    o.progress = false;
    return o;
  };
  SelfCommunicator self;
  const auto reference = losses(train(options(Dispatch::kStandard), self));
  ASSERT_EQ(reference.size(), 20u);
  EXPECT_LT(reference.back(), reference.front()) << arch << ": fine-tuning did not lower the loss";
  for (Dispatch d : {Dispatch::kStandard, Dispatch::kOccult}) {
    TrainOptions o = options(d);
    if (d == Dispatch::kOccult) o.save_dir = saved.string();
    const auto got = losses(train(o, comm));
    ASSERT_EQ(got.size(), reference.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      EXPECT_NEAR(got[i], reference[i], 1e-4 * std::abs(reference[i]))
          << arch << " " << dispatch_name(d) << " step " << i + 1;
    }
  }
  // The saved directory is the same architecture, in its family's names, with every tensor.
  const ModelConfig original = load_checkpoint_config(model_dir.string());
  const ModelConfig back = load_checkpoint_config(saved.string());
  EXPECT_TRUE(same_architecture(original, back)) << describe_config_difference(back, original);
  const ModelWeights before = ModelWeights::open(model_dir.string());
  const ModelWeights after = ModelWeights::open(saved.string());
  EXPECT_EQ(before.names(), after.names());
  comm.barrier();
  if (comm.rank() == 0) fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Architectures, HfFinetuneMpiTest,
                         ::testing::Values("olmoe", "qwen2_moe", "deepseek", "qwen3_moe",
                                           "mixtral", "deepseek_v2", "deepseek_v3"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace occult
