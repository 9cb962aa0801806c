// `occult train`'s loop under MPI: standard and occult dispatch give the 1-rank loss sequence at
// every rank count, resume continues exactly, pruning keeps every token within M devices, and
// bad input fails on every rank with one clear message.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "occult/comm/mpi_communicator.h"
#include "occult/core/error.h"
#include "occult/core/safetensors.h"
#include "occult/model/checkpoint.h"
#include "occult/train/data.h"
#include "occult/train/trainer.h"
#include "occult/placement/placement.h"
#include "test_util.h"

namespace occult {
namespace {

namespace fs = std::filesystem;

TrainOptions tiny_options(Dispatch dispatch) {
  TrainOptions o;
  o.config = load_model_config(testing::source_dir() + "/configs/tiny.json");
  o.config_source = "configs/tiny.json";
  o.data_path = testing::source_dir() + "/data/corpus/tinyshakespeare.txt";
  o.dispatch = dispatch;
  o.steps = 20;
  o.batch = 8;
  o.seq_len = 16;
  o.seed = 5;
  o.adamw.lr = 3e-3f;
  o.adamw.warmup_steps = 2;
  o.eval_sequences = 8;
  o.progress = false;
  return o;
}

std::vector<double> losses(const TrainResult& r) {
  std::vector<double> out;
  for (const auto& s : r.steps) out.push_back(s.loss);
  return out;
}

// A directory every rank agrees on: mpirun's process is the common parent.
std::string shared_dir(const std::string& name, int ranks) {
  return (fs::temp_directory_path() / fmt::format("occult_model_{}_{}_{}", name, getppid(), ranks)).string();
}

using testing::expect_error;

class TrainMpiTest : public ::testing::Test {
 protected:
  MpiCommunicator comm{MPI_COMM_WORLD};
};

TEST_F(TrainMpiTest, DispatchersMatchTheOneRankRunFor20Steps) {
  SelfCommunicator self;
  const auto reference = losses(train(tiny_options(Dispatch::kStandard), self));
  ASSERT_EQ(reference.size(), 20u);
  EXPECT_LT(reference.back(), reference.front());
  for (Dispatch d : {Dispatch::kStandard, Dispatch::kOccult}) {
    const TrainOptions o = tiny_options(d);
    const TrainResult r = train(o, comm);
    const auto got = losses(r);
    ASSERT_EQ(got.size(), reference.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      EXPECT_NEAR(got[i], reference[i], 1e-4 * std::abs(reference[i])) << dispatch_name(d) << " step " << i + 1;
    }
    for (const auto& s : r.steps) {
      // Occult moves C_T/k of standard's hidden-state bytes; standard exactly its own.
      const double k = o.config.num_experts_per_tok;
      const double expected = d == Dispatch::kStandard ? s.standard_bytes : s.standard_bytes * s.replicas_per_token / k;
      EXPECT_NEAR(static_cast<double>(s.bytes), expected, 1e-6 * expected) << "step " << s.step;
    }
  }
}

// One forward/backward at D ranks against the same global batch at one rank: every dense
// gradient (all-reduced) and every expert's gradient on its owner equals the 1-rank one.
TEST_F(TrainMpiTest, GradientsAtDRanksEqualTheOneRankGradients) {
  ModelConfig c = testing::tiny_config(true, true, false);
  c.vocab_size = 32;
  const std::int64_t B = 3;  // uneven shares at 2 ranks; at 4 ranks rank 0 has no sequence at all
  const int T = 6;
  std::vector<std::int32_t> tokens(B * T), targets(B * T);
  for (std::int64_t i = 0; i < B * T; ++i) {
    tokens[i] = static_cast<std::int32_t>((i * 7 + 3) % c.vocab_size);
    targets[i] = static_cast<std::int32_t>((i * 11 + 5) % c.vocab_size);
  }
  // Both load-balancing losses: over the global batch, and per sequence (seq_aux), whose mean
  // runs over every rank's sequences.
  for (bool seq_aux : {false, true}) {
    c.aux_loss_per_sequence = seq_aux;
    SelfCommunicator self;
    MoeTransformer one(c, self, ParallelOptions{});
    one.init_weights(21);
    const LossParts l1 = one.forward(tokens, targets, B, T);
    one.backward();
    // And with the MoE exchanges overlapped with expert compute, forward and backward.
    for (const auto& [d, overlap] : {std::pair{Dispatch::kStandard, false}, std::pair{Dispatch::kOccult, false},
                                    std::pair{Dispatch::kStandard, true}, std::pair{Dispatch::kOccult, true}}) {
      ParallelOptions po;
      po.dispatch = d;
      po.overlap = overlap;
      MoeTransformer many(c, comm, po);
      many.init_weights(21);
      const Share share = rank_share(B, comm.rank(), comm.size());
      const std::vector<std::int32_t> my_tokens(tokens.begin() + share.begin * T, tokens.begin() + share.end * T);
      const std::vector<std::int32_t> my_targets(targets.begin() + share.begin * T, targets.begin() + share.end * T);
      const LossParts ld = many.forward(my_tokens, my_targets, share.end - share.begin, T);
      many.backward();
      EXPECT_NEAR(ld.total, l1.total, 1e-6 * l1.total) << dispatch_name(d) << " seq_aux " << seq_aux << " overlap "
                                                       << overlap;
      EXPECT_NEAR(ld.aux, l1.aux, 1e-6 * l1.aux) << dispatch_name(d) << " seq_aux " << seq_aux << " overlap "
                                                 << overlap;
      for (const auto& t : many.tensors()) {
        const ParamTensor* ref = one.find(t.name);
        ASSERT_NE(ref, nullptr) << t.name;
        double maxabs = 0.0;
        for (float g : ref->grad) maxabs = std::max(maxabs, static_cast<double>(std::abs(g)));
        for (std::int64_t i = 0; i < t.numel; ++i) {
          // Same sums in another order: float rounding of ~1e-7 relative to the largest term.
          ASSERT_NEAR(t.grad[i], ref->grad[i], 1e-5 * maxabs + 1e-9)
              << dispatch_name(d) << " seq_aux " << seq_aux << " overlap " << overlap << " " << t.name << " " << i;
        }
      }
    }
  }
}

TEST_F(TrainMpiTest, InterleavedPlacementGivesTheSameLossAsTheOneRankRun) {
  SelfCommunicator self;
  TrainOptions o = tiny_options(Dispatch::kOccult);
  o.steps = 10;
  const auto reference = losses(train(o, self));
  // Expert e on device e % D: non-contiguous, every device still holds floor or ceil(E/D).
  const int D = comm.size(), E = o.config.num_experts;
  Placement p = contiguous_placement(E, D, o.config.num_hidden_layers);
  p.strategy = "interleaved";
  for (auto& layer : p.layers) {
    for (int e = 0; e < E; ++e) layer.expert_to_device[e] = e % D;
  }
  const std::string path = shared_dir("interleaved", D) + ".json";
  if (comm.rank() == 0) save_placement(p, path);
  comm.barrier();
  o.placement_path = path;
  for (Dispatch d : {Dispatch::kStandard, Dispatch::kOccult}) {
    o.dispatch = d;
    const auto got = losses(train(o, comm));
    ASSERT_EQ(got.size(), reference.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      EXPECT_NEAR(got[i], reference[i], 1e-4 * std::abs(reference[i])) << dispatch_name(d) << " step " << i + 1;
    }
  }
  comm.barrier();
  if (comm.rank() == 0) fs::remove(path);
}

// Replicas change where experts run, not what the model computes: the loss sequence is the
// 1-rank run's, every copy of a replicated expert stays equal to the others, and the
// checkpoint holds each expert once with the 1-rank run's values.
TEST_F(TrainMpiTest, ReplicatedPlacementTrainsLikeTheOneRankRunAndSavesEachExpertOnce) {
  SelfCommunicator self;
  TrainOptions o = tiny_options(Dispatch::kOccult);
  o.steps = 8;
  const int D = comm.size(), E = o.config.num_experts;
  const std::string dir = shared_dir("replicas", D);
  o.save_dir = comm.rank() == 0 ? dir + "_reference" : "";  // every rank runs it; one saves
  const auto reference = losses(train(o, self));
  Placement p = contiguous_placement(E, D, o.config.num_hidden_layers);
  p.strategy = "replicated";
  std::size_t most = 0;
  for (auto& layer : p.layers) {
    layer.device_experts.assign(D, {});
    for (int e = 0; e < E; ++e) {
      layer.expert_to_device[e] = e % D;
      for (int d = 0; d < D; ++d) {
        if (e % D == d || e < 2) layer.device_experts[d].push_back(e);
      }
    }
    for (const auto& held : layer.device_experts) most = std::max(most, held.size());
  }
  p.slots_per_device = static_cast<int>(most);
  const std::string path = dir + ".json";
  if (comm.rank() == 0) save_placement(p, path);
  comm.barrier();
  o.placement_path = path;
  o.save_dir = dir;
  const auto got = losses(train(o, comm));
  ASSERT_EQ(got.size(), reference.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], reference[i], 1e-4 * std::abs(reference[i])) << "step " << i + 1;
  }
  if (comm.rank() == 0) {
    const SafetensorsReader saved = SafetensorsReader::open(dir + "/model.safetensors");
    const SafetensorsReader want = SafetensorsReader::open(dir + "_reference/model.safetensors");
    ASSERT_EQ(saved.tensors().size(), want.tensors().size());
    for (const TensorInfo& info : want.tensors()) {
      const auto a = saved.read_f32(info.name), b = want.read_f32(info.name);
      double diff = 0, norm = 0;
      for (std::size_t i = 0; i < b.size(); ++i) {
        diff += (a[i] - b[i]) * double(a[i] - b[i]);
        norm += b[i] * double(b[i]);
      }
      EXPECT_LT(std::sqrt(diff / std::max(norm, 1e-30)), 1e-3) << info.name;
    }
  }
  comm.barrier();
  if (comm.rank() == 0) {
    fs::remove(path);
    fs::remove_all(dir);
    fs::remove_all(dir + "_reference");
  }
}

TEST_F(TrainMpiTest, ResumeAfter10Of20StepsReproducesTheUninterruptedRun) {
  const auto full = losses(train(tiny_options(Dispatch::kOccult), comm));
  const std::string dir = shared_dir("resume", comm.size());
  TrainOptions first = tiny_options(Dispatch::kOccult);
  first.stop_at = 10;
  first.save_dir = dir;
  const auto head = losses(train(first, comm));
  TrainOptions second = tiny_options(Dispatch::kOccult);
  second.resume_dir = dir;
  second.seed.reset();  // inherited from the checkpoint
  const TrainResult tail = train(second, comm);
  EXPECT_EQ(tail.first_step, 11);
  std::vector<double> joined = head;
  for (double l : losses(tail)) joined.push_back(l);
  ASSERT_EQ(joined.size(), full.size());
  for (std::size_t i = 0; i < full.size(); ++i) EXPECT_EQ(joined[i], full[i]) << "step " << i + 1;
  comm.barrier();
  if (comm.rank() == 0) fs::remove_all(dir);
}

TEST_F(TrainMpiTest, PrunedTrainingStaysWithinMDevicesAndLearns) {
  TrainOptions o = tiny_options(Dispatch::kOccult);
  o.prune_devices = 1;
  o.prune_scheme = "score";
  const TrainResult r = train(o, comm);
  for (const auto& s : r.steps) EXPECT_LE(s.max_replicas_per_token, 1.0 + 1e-12) << "step " << s.step;
  EXPECT_LT(r.steps.back().cross_entropy, r.steps.front().cross_entropy - 0.5);
}

TEST_F(TrainMpiTest, InitLoadsTheCheckpointAndTrainOnlyFreezesTheRest) {
  const std::string base = shared_dir("init_base", comm.size());
  const std::string tuned = shared_dir("init_tuned", comm.size());
  TrainOptions first = tiny_options(Dispatch::kOccult);
  first.steps = 3;
  first.save_dir = base;
  train(first, comm);
  TrainOptions fine = tiny_options(Dispatch::kOccult);
  fine.steps = 3;
  fine.seed = 99;  // another init seed: only --init can make the frozen tensors equal the base's
  fine.init_dir = base;
  fine.train_only = {"experts", "router"};
  fine.save_dir = tuned;
  train(fine, comm);
  comm.barrier();
  const auto a = SafetensorsReader::open(base + "/model.safetensors");
  const auto b = SafetensorsReader::open(tuned + "/model.safetensors");
  int frozen = 0, moved = 0;
  for (const auto& t : a.tensors()) {
    const auto x = a.read_f32(t.name), y = b.read_f32(t.name);
    const bool trained = t.name.find(".mlp.experts.") != std::string::npos || t.name.ends_with("mlp.gate.weight");
    if (trained) {
      moved += x != y ? 1 : 0;
    } else {
      EXPECT_EQ(x, y) << t.name << " is frozen but moved (or was not loaded from --init)";
      ++frozen;
    }
  }
  EXPECT_GT(frozen, 0);
  EXPECT_GT(moved, 0);
  // The router of every layer and most experts moved (an expert no token chose may not).
  EXPECT_GE(moved, first.config.num_hidden_layers * 2);
  TrainOptions bad = fine;
  bad.train_only = {"experts", "routers"};
  expect_error([&] { train(bad, comm); }, "--train-only: unknown group \"routers\"");
  comm.barrier();
  if (comm.rank() == 0) {
    fs::remove_all(base);
    fs::remove_all(tuned);
  }
}

TEST_F(TrainMpiTest, PlacementForAnotherExpertCountFailsOnEveryRank) {
  const std::string path = shared_dir("placement", comm.size()) + ".json";
  if (comm.rank() == 0) save_placement(contiguous_placement(16, comm.size(), 2), path);
  comm.barrier();
  TrainOptions o = tiny_options(Dispatch::kOccult);
  o.placement_path = path;
  expect_error([&] { train(o, comm); }, "placement " + path + " is for 16 experts but the model config");
  comm.barrier();
  if (comm.rank() == 0) fs::remove(path);
}

TEST_F(TrainMpiTest, MissingCorpusFailsOnEveryRank) {
  TrainOptions o = tiny_options(Dispatch::kOccult);
  o.data_path = "/nonexistent/corpus.txt";
  expect_error([&] { train(o, comm); }, "--data /nonexistent/corpus.txt does not exist");
}

TEST_F(TrainMpiTest, ResumeFromAnotherConfigsCheckpointFailsOnEveryRank) {
  const std::string dir = shared_dir("otherconfig", comm.size());
  TrainOptions first = tiny_options(Dispatch::kOccult);
  first.steps = 2;
  first.save_dir = dir;
  train(first, comm);
  TrainOptions other = tiny_options(Dispatch::kOccult);
  other.config.moe_intermediate_size = 16;
  other.resume_dir = dir;
  expect_error([&] { train(other, comm); }, "the checkpoint was trained with another model config");
  comm.barrier();
  if (comm.rank() == 0) fs::remove_all(dir);
}

// A trainer_state.json whose manifest entry is consistent but whose seed is negative (a file
// edited by hand) is refused naming the key, and a run diverging from the first step stops naming
// the step and the learning rate, on every rank.
TEST_F(TrainMpiTest, ResumeRefusesANegativeSeedAndDivergenceNamesTheStep) {
  const std::string dir = shared_dir("negative_seed", comm.size());
  TrainOptions first = tiny_options(Dispatch::kOccult);
  first.stop_at = 2;
  first.save_dir = dir;
  train(first, comm);
  comm.barrier();
  if (comm.rank() == 0) {
    const fs::path state_path = fs::path(dir) / "trainer_state.json";
    nlohmann::json state = nlohmann::json::parse(std::ifstream(state_path));
    state["seed"] = -3;
    std::ofstream(state_path) << state.dump(2);
    const fs::path manifest_path = fs::path(dir) / kCheckpointManifestFile;
    nlohmann::json manifest = nlohmann::json::parse(std::ifstream(manifest_path));
    manifest["files"]["trainer_state.json"] = {
        {"bytes", fs::file_size(state_path)},
        {"fnv1a64", fmt::format("{:016x}", file_checksum(state_path.string()))}};
    std::ofstream(manifest_path) << manifest.dump(2);
  }
  comm.barrier();
  TrainOptions second = tiny_options(Dispatch::kOccult);
  second.resume_dir = dir;
  second.seed.reset();
  expect_error([&] { train(second, comm); }, "trainer_state.json: \"seed\" must be a non-negative integer, got -3");
  TrainOptions wild = tiny_options(Dispatch::kOccult);
  wild.adamw.lr = 1e30f;
  wild.adamw.grad_clip = 0.0f;
  wild.adamw.warmup_steps = 0;
  expect_error([&] { train(wild, comm); }, "step 2 (lr ");
  comm.barrier();
  if (comm.rank() == 0) fs::remove_all(dir);
}

}  // namespace
}  // namespace occult
