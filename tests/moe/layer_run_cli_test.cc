// `occult layer run` as users call it: mpirun -np D build/occult layer run ... ; the written
// file must hold the reference twin's output, routing and gradients, and bad input must fail
// with exactly one error line.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "occult/core/safetensors.h"
#include "occult/moe/reference.h"
#include "occult/placement/placement.h"
#include "test_util.h"

namespace occult {
namespace {

namespace fs = std::filesystem;
using testing_util::random_values;
using testing_util::relative_error;

constexpr int kE = 6, kK = 2, kH = 5, kF = 3;
constexpr std::int64_t kT = 10;

struct Files {
  fs::path dir;
  std::string weights, input, grad, out, err;
};

MoeLayerConfig config(bool norm) {
  MoeLayerConfig c;
  c.num_experts = kE;
  c.top_k = kK;
  c.hidden_size = kH;
  c.ffn_size = kF;
  c.norm_topk_prob = norm;
  return c;
}

Files write_inputs(const std::string& name) {
  Files f;
  f.dir = fs::temp_directory_path() / ("occult_layer_run_" + name + "_" + std::to_string(::getpid()));
  fs::create_directories(f.dir);
  f.weights = (f.dir / "w.safetensors").string();
  f.input = (f.dir / "x.safetensors").string();
  f.grad = (f.dir / "g.safetensors").string();
  f.out = (f.dir / "out.safetensors").string();
  f.err = (f.dir / "stderr.txt").string();
  ReferenceMoeWeights w = ReferenceMoeWeights::random(config(false), 5, 0.7f);
  SafetensorsWriter ww;
  ww.set_metadata("top_k", std::to_string(kK));
  ww.add_f32("mlp.gate.weight", {kE, kH}, w.router);
  const std::size_t FH = kF * kH;
  for (int e = 0; e < kE; ++e) {
    ww.add_f32("mlp.experts." + std::to_string(e) + ".gate_proj.weight", {kF, kH},
               std::span<const float>(w.gate_proj).subspan(e * FH, FH));
    ww.add_f32("mlp.experts." + std::to_string(e) + ".up_proj.weight", {kF, kH},
               std::span<const float>(w.up_proj).subspan(e * FH, FH));
    ww.add_f32("mlp.experts." + std::to_string(e) + ".down_proj.weight", {kH, kF},
               std::span<const float>(w.down_proj).subspan(e * FH, FH));
  }
  ww.write(f.weights);
  SafetensorsWriter xw;
  xw.add_f32("hidden_states", {kT, kH}, random_values(kT * kH, 6));
  xw.write(f.input);
  SafetensorsWriter gw;
  gw.add_f32("grad_output", {kT, kH}, random_values(kT * kH, 7));
  gw.write(f.grad);
  return f;
}

int run(int ranks, const std::string& args, const Files& f) {
  const std::string cmd = std::string(OCCULT_MPIEXEC_PATH) + " --allow-run-as-root --oversubscribe -np " +
                          std::to_string(ranks) + " " + OCCULT_BINARY + " layer run " + args + " > /dev/null 2> " +
                          f.err;
  const int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct CliCase {
  const char* name;
  int ranks;
  const char* dispatch;
  bool norm;
  bool placement;
  int prune_devices = 0;
  bool overlap = false;
};

class LayerRunCli : public ::testing::TestWithParam<CliCase> {};

TEST_P(LayerRunCli, WritesTheReferenceOutputsAndGradients) {
  const CliCase cc = GetParam();
  Files f = write_inputs(cc.name);
  std::vector<int> e2d(kE);
  for (int e = 0; e < kE; ++e) e2d[e] = (e * 2 + 1) % cc.ranks;  // scattered, balanced for 1 and 3
  std::string args = "--weights " + f.weights + " --input " + f.input + " --dispatch " + cc.dispatch +
                     " --grad-output " + f.grad + " --out " + f.out;
  if (cc.norm) args += " --norm-topk-prob";
  if (cc.prune_devices > 0) args += " --prune-devices " + std::to_string(cc.prune_devices);
  if (cc.overlap) args += " --overlap on";
  if (cc.placement) {
    Placement p;
    p.num_experts = kE;
    p.num_devices = cc.ranks;
    p.strategy = "test";
    p.layers.push_back(LayerPlacement{0, e2d, nlohmann::json::object(), {}});
    const std::string path = (f.dir / "p.json").string();
    save_placement(p, path);
    args += " --placement " + path + " --layer 0";
  } else {
    for (int e = 0; e < kE; ++e) e2d[e] = e * cc.ranks / kE;
  }
  ASSERT_EQ(run(cc.ranks, args, f), 0) << read_text(f.err);

  MoeLayerConfig c = config(cc.norm);
  c.prune.max_devices = cc.prune_devices;
  ReferenceMoeWeights w = ReferenceMoeWeights::random(c, 5, 0.7f);
  const auto x = random_values(kT * kH, 6), dy = random_values(kT * kH, 7);
  ReferenceMoeState s;
  std::vector<float> y(kT * kH), dx(kT * kH);
  reference_moe_forward(c, w, x, kT, e2d, s, y);
  ReferenceMoeWeights g = ReferenceMoeWeights::zeros(c);
  reference_moe_backward(c, w, s, x, dy, {}, dx, g);

  SafetensorsReader out = SafetensorsReader::open(f.out);
  EXPECT_LT(relative_error(out.read_f32("output"), y), 1e-5);
  EXPECT_EQ(out.read_i32("topk_ids"), s.topk_ids);
  EXPECT_EQ(out.at("topk_ids").dtype, DType::kI32);
  EXPECT_LT(relative_error(out.read_f32("topk_weights"), s.topk_weights), 1e-6);
  EXPECT_LT(relative_error(out.read_f32("grad_input"), dx), 1e-5);
  EXPECT_LT(relative_error(out.read_f32("grad.mlp.gate.weight"), g.router), 1e-5);
  const std::size_t FH = kF * kH;
  for (int e = 0; e < kE; ++e) {
    const std::string base = "grad.mlp.experts." + std::to_string(e) + ".";
    EXPECT_LT(relative_error(out.read_f32(base + "gate_proj.weight"), std::span<const float>(g.gate_proj).subspan(e * FH, FH)), 1e-5);
    EXPECT_LT(relative_error(out.read_f32(base + "up_proj.weight"), std::span<const float>(g.up_proj).subspan(e * FH, FH)), 1e-5);
    EXPECT_LT(relative_error(out.read_f32(base + "down_proj.weight"), std::span<const float>(g.down_proj).subspan(e * FH, FH)), 1e-5);
  }
  // Bytes in the metadata: standard moves T*k rows per exchange, occult T*C_T.
  double distinct = 0;
  for (std::int64_t t = 0; t < kT; ++t) {
    const int d0 = e2d[s.topk_ids[t * kK]], d1 = e2d[s.topk_ids[t * kK + 1]];
    distinct += d0 == d1 ? 1 : 2;
  }
  const auto& meta = out.metadata();
  EXPECT_DOUBLE_EQ(std::stod(meta.at("replicas_per_token")), distinct / kT);
  const std::int64_t rows = std::string(cc.dispatch) == "standard" ? kT * kK : static_cast<std::int64_t>(distinct);
  EXPECT_EQ(std::stoll(meta.at("bytes.dispatch")), rows * kH * 4);
  EXPECT_EQ(std::stoll(meta.at("bytes.backward_combine")), rows * kH * 4);
  fs::remove_all(f.dir);
}

INSTANTIATE_TEST_SUITE_P(Runs, LayerRunCli,
                         ::testing::Values(CliCase{"standard_1", 1, "standard", false, false},
                                           CliCase{"occult_3_placement", 3, "occult", true, true},
                                           CliCase{"standard_3", 3, "standard", false, false},
                                           CliCase{"occult_3_pruned", 3, "occult", true, true, 1},
                                           CliCase{"standard_3_overlap", 3, "standard", true, true, 0, true}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(LayerRunCli, PlacementForAnotherDeviceCountFailsWithOneMessage) {
  Files f = write_inputs("bad_placement");
  Placement p = contiguous_placement(kE, 2, 1);
  const std::string path = (f.dir / "p2.json").string();
  save_placement(p, path);
  const std::string args = "--weights " + f.weights + " --input " + f.input + " --dispatch occult --placement " +
                           path + " --out " + f.out;
  EXPECT_EQ(run(3, args, f), 1);
  const std::string err = read_text(f.err);
  EXPECT_NE(err.find("the placement is for 2 devices, but mpirun started 3 ranks"), std::string::npos) << err;
  // One message: rank 0 reports, the others stay silent.
  std::size_t count = 0;
  for (std::size_t pos = err.find("occult: error:"); pos != std::string::npos; pos = err.find("occult: error:", pos + 1))
    ++count;
  EXPECT_EQ(count, 1u) << err;
  EXPECT_FALSE(fs::exists(f.out));
  fs::remove_all(f.dir);
}

TEST(LayerRunCli, BadDispatchAndShapeMismatchFail) {
  Files f = write_inputs("bad_flags");
  EXPECT_EQ(run(2, "--weights " + f.weights + " --input " + f.input + " --dispatch fast --out " + f.out, f), 1);
  EXPECT_NE(read_text(f.err).find("--dispatch 'fast': expected 'standard' or 'occult'"), std::string::npos)
      << read_text(f.err);
  SafetensorsWriter xw;
  xw.add_f32("hidden_states", {2, kH + 1}, random_values(2 * (kH + 1), 1));
  xw.write(f.input);
  EXPECT_EQ(run(2, "--weights " + f.weights + " --input " + f.input + " --dispatch occult --out " + f.out, f), 1);
  EXPECT_NE(read_text(f.err).find("hidden_states must be [T, H=5]"), std::string::npos) << read_text(f.err);
  fs::remove_all(f.dir);
}

// --wire bf16 end to end: the file says which format ran, the hidden-state bytes are exactly 2
// per value, and the output stays near the F32 reference (the rounding bound itself is checked
// in moe_layer_mpi_test); the same for fp8 (1 byte per value and a 4-byte scale per dispatched
// row); a bad value names the flag.
TEST(LayerRunCli, Bf16WireHalvesTheBytes) {
  Files f = write_inputs("wire_bf16");
  const std::string args = "--weights " + f.weights + " --input " + f.input + " --dispatch standard --wire bf16" +
                           " --grad-output " + f.grad + " --out " + f.out;
  ASSERT_EQ(run(3, args, f), 0) << read_text(f.err);
  SafetensorsReader out = SafetensorsReader::open(f.out);
  const auto& meta = out.metadata();
  EXPECT_EQ(meta.at("wire"), "bf16");
  // Standard dispatch: T*k rows per exchange, H values of 2 bytes each.
  EXPECT_EQ(std::stoll(meta.at("bytes.dispatch")), kT * kK * kH * 2);
  EXPECT_EQ(std::stoll(meta.at("bytes.backward_combine")), kT * kK * kH * 2);
  std::vector<int> e2d(kE);
  for (int e = 0; e < kE; ++e) e2d[e] = e * 3 / kE;
  MoeLayerConfig c = config(false);
  ReferenceMoeWeights w = ReferenceMoeWeights::random(c, 5, 0.7f);
  ReferenceMoeState s;
  std::vector<float> y(kT * kH);
  reference_moe_forward(c, w, random_values(kT * kH, 6), kT, e2d, s, y);
  const double err = relative_error(out.read_f32("output"), y);
  EXPECT_LT(err, 0.02);
  EXPECT_GT(err, 1e-6);  // it did round
  // fp8: the forward dispatch in E4M3 with a 4-byte scale per row, everything else BF16.
  ASSERT_EQ(run(3, "--weights " + f.weights + " --input " + f.input + " --dispatch standard --wire fp8" +
                       " --grad-output " + f.grad + " --out " + f.out, f),
            0)
      << read_text(f.err);
  {
    SafetensorsReader fp8 = SafetensorsReader::open(f.out);
    EXPECT_EQ(fp8.metadata().at("wire"), "fp8");
    EXPECT_EQ(std::stoll(fp8.metadata().at("bytes.dispatch")), kT * kK * (kH + 4));
    EXPECT_EQ(std::stoll(fp8.metadata().at("bytes.combine")), kT * kK * kH * 2);
    EXPECT_EQ(std::stoll(fp8.metadata().at("bytes.backward_dispatch")), kT * kK * kH * 2);
    const double fp8_err = relative_error(fp8.read_f32("output"), y);
    EXPECT_LT(fp8_err, 0.1);
    EXPECT_GT(fp8_err, err);  // a coarser rounding than BF16's
  }
  EXPECT_EQ(run(2, "--weights " + f.weights + " --input " + f.input + " --dispatch occult --wire fp4 --out " + f.out, f),
            1);
  EXPECT_NE(read_text(f.err).find("--wire 'fp4': expected f32, bf16, f16 or fp8"), std::string::npos)
      << read_text(f.err);
  EXPECT_EQ(run(2, "--weights " + f.weights + " --input " + f.input + " --dispatch occult --overlap yes --out " + f.out,
                f),
            1);
  EXPECT_NE(read_text(f.err).find("--overlap 'yes': expected on or off"), std::string::npos) << read_text(f.err);
  fs::remove_all(f.dir);
}

}  // namespace
}  // namespace occult
