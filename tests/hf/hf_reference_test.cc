// Hand-computed cases for each op of the reference twin, one hand-built model through the whole
// forward, and write/read round trips of every fixture architecture, dtype and sharding.
#include "hf/hf_reference.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <vector>

#include "hf/hf_fixture_writer.h"
#include "hf/yarn_golden.h"
#include "occult/core/safetensors.h"

namespace occult::hf {
namespace {

double silu(double x) {
  return x / (1.0 + std::exp(-x));
}

TEST(HfReferenceOps, RmsNormScalesByRootMeanSquareAndWeight) {
  const std::vector<double> x = {3.0, 4.0}, w = {1.0, 2.0};
  std::vector<double> out(2);
  rms_norm(out, x, w, 0.0);
  const double scale = 1.0 / std::sqrt(12.5);
  EXPECT_NEAR(out[0], 3.0 * scale, 1e-15);
  EXPECT_NEAR(out[1], 8.0 * scale, 1e-15);
}

TEST(HfReferenceOps, RopeRotatesHalvesByPositionTimesInverseFrequency) {
  std::vector<double> head = {1.0, 2.0, 3.0, 4.0};
  apply_rope(head, 0, 10000.0);
  EXPECT_EQ(head, (std::vector<double>{1.0, 2.0, 3.0, 4.0}));
  // head_dim 4: inv_freq = {1, 10000^(-1/2)} = {1, 0.01}; pairs (0, 2) and (1, 3).
  apply_rope(head, 1, 10000.0);
  EXPECT_NEAR(head[0], 1.0 * std::cos(1.0) - 3.0 * std::sin(1.0), 1e-15);
  EXPECT_NEAR(head[2], 3.0 * std::cos(1.0) + 1.0 * std::sin(1.0), 1e-15);
  EXPECT_NEAR(head[1], 2.0 * std::cos(0.01) - 4.0 * std::sin(0.01), 1e-15);
  EXPECT_NEAR(head[3], 4.0 * std::cos(0.01) + 2.0 * std::sin(0.01), 1e-15);
}

TEST(HfReferenceOps, GroupedQueryHeadsReadTheirKvHead) {
  // 4 query heads on 2 kv heads, head_dim 1: heads 0, 1 read kv head 0; heads 2, 3 kv head 1.
  // At t = 0 the only visible value is returned; at t = 1 zero queries average both positions.
  const std::vector<double> q(2 * 4, 0.0), k(2 * 2, 0.0);
  const std::vector<double> v = {10.0, 20.0, 30.0, 40.0};  // [t][kv head]
  std::vector<double> out(2 * 4);
  causal_attention(out, q, k, v, 2, 4, 2, 1);
  EXPECT_EQ(out[0], 10.0);
  EXPECT_EQ(out[1], 10.0);
  EXPECT_EQ(out[2], 20.0);
  EXPECT_EQ(out[3], 20.0);
  EXPECT_NEAR(out[4], 20.0, 1e-12);
  EXPECT_NEAR(out[5], 20.0, 1e-12);
  EXPECT_NEAR(out[6], 30.0, 1e-12);
  EXPECT_NEAR(out[7], 30.0, 1e-12);
}

TEST(HfReferenceOps, CausalMaskHidesLaterPositions) {
  // One head, head_dim 1, q = k = 1: scores are equal, so position t averages v[0..t].
  const std::vector<double> q = {1.0, 1.0, 1.0}, k = {1.0, 1.0, 1.0}, v = {3.0, 6.0, 9.0};
  std::vector<double> out(3);
  causal_attention(out, q, k, v, 3, 1, 1, 1);
  EXPECT_NEAR(out[0], 3.0, 1e-12);
  EXPECT_NEAR(out[1], 4.5, 1e-12);
  EXPECT_NEAR(out[2], 6.0, 1e-12);
}

TEST(HfReferenceOps, TopKTakesLargestProbabilitiesTiesToLowerIndex) {
  // Probabilities {1, 3, 2, 3} / 9: experts 1 and 3 tie, so 1 comes first.
  const std::vector<double> logits = {0.0, std::log(3.0), std::log(2.0), std::log(3.0)};
  const auto top2 = route_top_k(logits, 2, false);
  ASSERT_EQ(top2.size(), 2u);
  EXPECT_EQ(top2[0].expert, 1);
  EXPECT_EQ(top2[1].expert, 3);
  EXPECT_NEAR(top2[0].weight, 3.0 / 9.0, 1e-15);
  EXPECT_NEAR(top2[1].weight, 3.0 / 9.0, 1e-15);
  const auto top3 = route_top_k(logits, 3, true);
  EXPECT_EQ(top3[2].expert, 2);
  EXPECT_NEAR(top3[0].weight, 3.0 / 8.0, 1e-15);
  EXPECT_NEAR(top3[1].weight, 3.0 / 8.0, 1e-15);
  EXPECT_NEAR(top3[2].weight, 2.0 / 8.0, 1e-15);
}

TEST(HfReferenceOps, InterleavedRopeTurnsAdjacentPairs) {
  // dim 4 at position 1, theta 100: pair (0,1) by 1 rad, pair (2,3) by 100^(-1/2) = 0.1 rad.
  std::vector<double> x = {1.0, 0.0, 0.0, 2.0};
  HfConfig c;
  c.rope_theta = 100.0;
  const std::vector<double> rates = rope_pair_rates(c, 4);
  EXPECT_NEAR(rates[1], 0.1, 1e-15);
  apply_interleaved_rope(x, 1, rates);
  EXPECT_NEAR(x[0], std::cos(1.0), 1e-15);
  EXPECT_NEAR(x[1], std::sin(1.0), 1e-15);
  EXPECT_NEAR(x[2], -2.0 * std::sin(0.1), 1e-15);
  EXPECT_NEAR(x[3], 2.0 * std::cos(0.1), 1e-15);
}

// DeepSeek's MoEGate by hand: logits chosen so that softmax / sigmoid scores are simple.
TEST(HfReferenceOps, DeepseekGateGroupsBiasAndScaling) {
  HfConfig v2;
  v2.model_type = "deepseek_v2";
  v2.scoring_func = "softmax";
  v2.topk_method = "group_limited_greedy";
  v2.n_group = 2;
  v2.topk_group = 1;
  v2.top_k = 2;
  v2.routed_scaling_factor = 3.0;
  // Softmax of log([1, 4, 3, 2]) = [0.1, 0.4, 0.3, 0.2]: groups {0,1} (best 0.4) and {2,3}
  // (best 0.3); group 0 is kept, so experts 1 and 0, weights 0.4 and 0.1 times 3 (not
  // renormalised).
  const std::vector<double> logits = {0.0, std::log(4.0), std::log(3.0), std::log(2.0)};
  double gap = 0.0;
  auto r = route_deepseek(logits, {}, v2, &gap);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].expert, 1);
  EXPECT_EQ(r[1].expert, 0);
  EXPECT_NEAR(r[0].weight, 1.2, 1e-12);
  EXPECT_NEAR(r[1].weight, 0.3, 1e-12);
  EXPECT_NEAR(gap, std::log(0.4 / 0.3), 1e-12);  // the kept group against the next one
  // Renormalised: 0.8 and 0.2, and V2 then leaves the scaling factor out.
  v2.norm_topk_prob = true;
  r = route_deepseek(logits, {}, v2, nullptr);
  EXPECT_NEAR(r[0].weight, 0.8, 1e-12);
  EXPECT_NEAR(r[1].weight, 0.2, 1e-12);

  HfConfig v3 = v2;
  v3.model_type = "deepseek_v3";
  v3.scoring_func = "sigmoid";
  v3.topk_method = "noaux_tc";
  v3.routed_scaling_factor = 2.0;
  // Sigmoid scores [0.5, 0.5, 0.5, 0.5] (logits 0); bias [0, 0, 0.1, 0.2] makes group {2,3}
  // (sum 1.3) beat {0,1} (sum 1.0); experts 3 then 2; weights from the unbiased 0.5 each,
  // renormalised to 0.5, times 2.
  const std::vector<double> zeros(4, 0.0), bias = {0.0, 0.0, 0.1, 0.2};
  r = route_deepseek(zeros, bias, v3, &gap);
  EXPECT_EQ(r[0].expert, 3);
  EXPECT_EQ(r[1].expert, 2);
  EXPECT_NEAR(r[0].weight, 1.0, 1e-12);
  EXPECT_NEAR(r[1].weight, 1.0, 1e-12);
}

TEST(HfReferenceOps, SwigluIsDownOfSiluGateTimesUp) {
  const std::vector<double> x = {1.0}, gate = {1.0}, up = {2.0}, down = {3.0};
  std::vector<double> out(1);
  swiglu_mlp(out, x, gate, up, down, 1, 1);
  EXPECT_NEAR(out[0], 3.0 * silu(1.0) * 2.0, 1e-15);
}

void put(HfModel& m, const std::string& name, std::vector<std::int64_t> shape,
         std::vector<double> data) {
  m.tensors[name] = Tensor{std::move(shape), std::move(data)};
}

// A one-layer qwen2_moe by hand: zero q/k, so attention returns the v bias at every position;
// o_proj is the identity; the router picks the expert of the larger coordinate; the shared
// expert gate is zero, so the shared expert is scaled by sigmoid(0) = 1/2.
HfModel hand_qwen2_moe() {
  HfModel m;
  HfConfig& c = m.config;
  c.model_type = "qwen2_moe";
  c.vocab_size = 2;
  c.hidden_size = 2;
  c.num_layers = 1;
  c.num_heads = c.num_kv_heads = 1;
  c.head_dim = 2;
  c.rms_norm_eps = 0.0;
  c.rope_theta = 10000.0;
  c.qkv_bias = true;
  c.expert_ffn = 1;
  c.num_experts = 2;
  c.top_k = 1;
  c.shared_ffn = 1;
  c.shared_gate = true;
  c.sparse = {true};
  put(m, "model.embed_tokens.weight", {2, 2}, {1, 0, 0, 1});
  const std::string p = "model.layers.0.";
  put(m, p + "input_layernorm.weight", {2}, {1, 1});
  put(m, p + "post_attention_layernorm.weight", {2}, {1, 1});
  for (const char* w : {"q_proj", "k_proj", "v_proj"}) {
    put(m, p + "self_attn." + w + ".weight", {2, 2}, {0, 0, 0, 0});
  }
  put(m, p + "self_attn.q_proj.bias", {2}, {0, 0});
  put(m, p + "self_attn.k_proj.bias", {2}, {0, 0});
  put(m, p + "self_attn.v_proj.bias", {2}, {1, 1});
  put(m, p + "self_attn.o_proj.weight", {2, 2}, {1, 0, 0, 1});
  put(m, p + "mlp.gate.weight", {2, 2}, {10, 0, 0, 10});
  for (int e = 0; e < 2; ++e) {
    const std::string x = p + "mlp.experts." + std::to_string(e) + ".";
    put(m, x + "gate_proj.weight", {1, 2}, {1, 1});
    put(m, x + "up_proj.weight", {1, 2}, {e == 0 ? 1.0 : 0.0, e == 0 ? 0.0 : 1.0});
    put(m, x + "down_proj.weight", {2, 1}, {e == 0 ? 1.0 : 0.0, e == 0 ? 0.0 : 1.0});
  }
  put(m, p + "mlp.shared_expert.gate_proj.weight", {1, 2}, {1, 1});
  put(m, p + "mlp.shared_expert.up_proj.weight", {1, 2}, {1, 1});
  put(m, p + "mlp.shared_expert.down_proj.weight", {2, 1}, {1, 1});
  put(m, p + "mlp.shared_expert_gate.weight", {1, 2}, {0, 0});
  put(m, "model.norm.weight", {2}, {1, 1});
  put(m, "lm_head.weight", {2, 2}, {1, 0, 0, 1});
  return m;
}

TEST(HfReferenceForward, HandBuiltQwen2MoeLayerGivesHandComputedLogits) {
  const HfModel m = hand_qwen2_moe();
  const std::vector<std::int64_t> ids = {0, 1};
  const std::vector<double> logits = hf_forward(m, ids, 1, 2);
  for (int t = 0; t < 2; ++t) {
    // After attention: e_t + v bias (1, 1); the larger coordinate is 2, the smaller 1.
    const double big = 2.0 / std::sqrt(2.5), small = 1.0 / std::sqrt(2.5);
    const double s = big + small;
    const double p_chosen = 1.0 / (1.0 + std::exp(-10.0 * (big - small)));
    const double routed = p_chosen * silu(s) * big;  // on the coordinate of token t
    const double shared = 0.5 * silu(s) * s;         // on both coordinates
    double x[2];
    x[t] = 2.0 + routed + shared;
    x[1 - t] = 1.0 + shared;
    const double rms = std::sqrt((x[0] * x[0] + x[1] * x[1]) / 2.0);
    EXPECT_NEAR(logits[t * 2 + 0], x[0] / rms, 1e-12) << "position " << t;
    EXPECT_NEAR(logits[t * 2 + 1], x[1] / rms, 1e-12) << "position " << t;
  }
}

TEST(HfReferenceForward, SharedExpertGateScalesTheSharedExpert) {
  // Raising the gate logit from 0 to a large value scales the shared expert from 1/2 to ~1.
  HfModel half = hand_qwen2_moe();
  HfModel full = hand_qwen2_moe();
  full.tensors["model.layers.0.mlp.shared_expert_gate.weight"].data = {100.0, 100.0};
  // Zero the router's choice so the MLP output is the shared expert alone.
  for (HfModel* m : {&half, &full}) {
    for (int e = 0; e < 2; ++e) {
      m->tensors["model.layers.0.mlp.experts." + std::to_string(e) + ".down_proj.weight"].data = {
          0.0, 0.0};
    }
    m->tensors["lm_head.weight"].data = {1, 0, 0, 1};
    m->tensors["model.norm.weight"].data = {1, 1};
  }
  const std::vector<std::int64_t> ids = {0};
  const auto a = hf_forward(half, ids, 1, 1);
  const auto b = hf_forward(full, ids, 1, 1);
  const double big = 2.0 / std::sqrt(2.5), small = 1.0 / std::sqrt(2.5);
  const double shared = silu(big + small) * (big + small);
  auto expect = [](double x0, double x1, const std::vector<double>& l) {
    const double rms = std::sqrt((x0 * x0 + x1 * x1) / 2.0);
    EXPECT_NEAR(l[0], x0 / rms, 1e-12);
    EXPECT_NEAR(l[1], x1 / rms, 1e-12);
  };
  expect(2.0 + 0.5 * shared, 1.0 + 0.5 * shared, a);
  expect(2.0 + shared, 1.0 + shared, b);
}

struct ArchCase {
  const char* arch;
  const char* variant;
  std::vector<bool> sparse;
  int moe_layers;
};

const std::vector<ArchCase>& arch_cases() {
  static const std::vector<ArchCase> cases = {
      {"olmoe", "default", {true, true, true}, 3},
      {"olmoe", "alt", {true, true, true}, 3},
      {"qwen2_moe", "default", {true, false, true}, 2},
      {"qwen2_moe", "alt", {false, true, false}, 1},
      {"deepseek", "default", {false, true, true}, 2},
      {"deepseek", "alt", {false, false, true}, 1},
      {"qwen3_moe", "default", {false, true, true}, 2},
      {"qwen3_moe", "alt", {true, true, true}, 3},
      {"mixtral", "default", {true, true, true}, 3},
      {"mixtral", "alt", {true, true, true}, 3},
      {"deepseek_v2", "default", {false, true, true}, 2},
      {"deepseek_v2", "alt", {false, false, true}, 1},
      {"deepseek_v3", "default", {false, true, true}, 2},
      {"deepseek_v3", "alt", {false, true, true}, 2},
  };
  return cases;
}

class HfFixtureRoundTrip : public ::testing::TestWithParam<ArchCase> {
 protected:
  void SetUp() override {
    root_ = std::filesystem::temp_directory_path() /
            ("hf_reference_test_" + std::string(GetParam().arch) + "_" + GetParam().variant + "_" +
             std::to_string(::getpid()));
    std::filesystem::remove_all(root_);
  }
  void TearDown() override { std::filesystem::remove_all(root_); }

  std::string write(const std::string& name, const std::string& dtype, int shards,
                    std::uint64_t seed = 7) {
    FixtureOptions o;
    o.arch = GetParam().arch;
    o.variant = GetParam().variant;
    o.dtype = dtype;
    o.shards = shards;
    o.seed = seed;
    const std::string dir = (root_ / name).string();
    write_fixture(o, dir);
    return dir;
  }

  std::vector<double> logits(const std::string& dir, ForwardStats* stats = nullptr) {
    const HfModel m = load_hf_model(dir);
    return hf_forward(m, ids_, 3, 7, stats);
  }

  std::filesystem::path root_;
  std::vector<std::int64_t> ids_ = {5,  17, 33, 90, 2, 61, 44, 0,  95, 12, 12,
                                    12, 70, 8,  31, 1, 2,  3,  88, 47, 20};
};

double relative_error(const std::vector<double>& a, const std::vector<double>& e) {
  double err = 0.0, ref = 0.0;
  for (std::size_t i = 0; i < e.size(); ++i) {
    err = std::max(err, std::fabs(a[i] - e[i]));
    ref = std::max(ref, std::fabs(e[i]));
  }
  return err / ref;
}

TEST_P(HfFixtureRoundTrip, ConfigSelectsTheExpectedSparseLayers) {
  const std::string dir = write("f32", "f32", 1);
  const HfConfig c = read_hf_config(dir);
  EXPECT_EQ(c.sparse, GetParam().sparse);
  const nlohmann::ordered_json placement = round_robin_placement(dir, 3);
  ASSERT_EQ(placement["layers"].size(), static_cast<std::size_t>(GetParam().moe_layers));
  for (std::size_t i = 0; i < placement["layers"].size(); ++i) {
    EXPECT_EQ(placement["layers"][i]["layer"].get<int>(), static_cast<int>(i));
    const std::vector<int> e2d = placement["layers"][i]["expert_to_device"].get<std::vector<int>>();
    EXPECT_EQ(e2d, (std::vector<int>{0, 1, 2, 0, 1, 2, 0, 1}));
  }
}

TEST_P(HfFixtureRoundTrip, ShardedAndSingleFileGiveBitIdenticalLogits) {
  const auto single = logits(write("single", "f32", 1));
  EXPECT_EQ(logits(write("sharded", "f32", 3)), single);
  EXPECT_EQ(logits(write("bf16_single", "bf16", 1)), logits(write("bf16_sharded", "bf16", 2)));
  // Random weights must give logits that are far from flat.
  double max_abs = 0.0;
  for (double v : single) max_abs = std::max(max_abs, std::fabs(v));
  EXPECT_GT(max_abs, 2.0);
}

TEST_P(HfFixtureRoundTrip, HalfPrecisionDirsAreCloseToF32) {
  // Rounding the weights moves logits by about 1e-3 relative, but can also flip an expert
  // choice on a token, which moves that token's logits much more: hence the loose bound.
  const auto f32 = logits(write("f32", "f32", 1));
  const double f16_err = relative_error(logits(write("f16", "f16", 1)), f32);
  const double bf16_err = relative_error(logits(write("bf16", "bf16", 1)), f32);
  EXPECT_GT(f16_err, 0.0);  // the stored half values, not the float ones, were read
  EXPECT_GT(bf16_err, 0.0);
  EXPECT_LT(f16_err, 0.25);
  // deepseek_v3's sigmoid scores sit close together and a flipped group choice swaps two experts
  // at once, their weights scaled by 2.5: BF16 rounding moves its logits further.
  EXPECT_LT(bf16_err, std::string(GetParam().arch) == "deepseek_v3" ? 1.0 : 0.25);
}

TEST_P(HfFixtureRoundTrip, ReferenceReadsTheStoredBf16Values) {
  const HfModel f32 = load_hf_model(write("f32", "f32", 1));
  const HfModel bf16 = load_hf_model(write("bf16", "bf16", 2));
  ASSERT_EQ(f32.tensors.size(), bf16.tensors.size());
  for (const auto& [name, t] : f32.tensors) {
    const Tensor& b = bf16.tensors.at(name);
    ASSERT_EQ(b.shape, t.shape) << name;
    for (std::size_t i = 0; i < t.data.size(); ++i) {
      ASSERT_EQ(b.data[i], bf16_to_float(float_to_bf16(static_cast<float>(t.data[i])))) << name;
    }
  }
}

TEST_P(HfFixtureRoundTrip, LogitsAreCausal) {
  const HfModel m = load_hf_model(write("f32", "f32", 1));
  std::vector<std::int64_t> changed = ids_;
  changed[6] = (changed[6] + 1) % 96;  // last token of row 0
  const auto a = hf_forward(m, ids_, 3, 7);
  const auto b = hf_forward(m, changed, 3, 7);
  const std::size_t v = 96;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (i / v == 6) continue;  // the changed position itself
    ASSERT_EQ(a[i], b[i]) << "flat index " << i;
  }
  EXPECT_NE(std::vector<double>(a.begin() + 6 * v, a.begin() + 7 * v),
            std::vector<double>(b.begin() + 6 * v, b.begin() + 7 * v));
}

TEST_P(HfFixtureRoundTrip, ShardIndexMapsEveryTensorToItsFile) {
  const std::string dir = write("sharded", "bf16", 3);
  std::ifstream in(std::filesystem::path(dir) / "model.safetensors.index.json");
  const nlohmann::json index = nlohmann::json::parse(in);
  std::uint64_t bytes = 0;
  std::size_t count = 0;
  for (const auto& [name, file] : index["weight_map"].items()) {
    const SafetensorsReader r =
        SafetensorsReader::open((std::filesystem::path(dir) / file.get<std::string>()).string());
    const TensorInfo& info = r.at(name);
    bytes += info.data_end - info.data_begin;
    ++count;
  }
  EXPECT_EQ(index["metadata"]["total_size"].get<std::uint64_t>(), bytes);
  EXPECT_EQ(count, load_hf_model(dir).tensors.size());
  EXPECT_TRUE(
      std::filesystem::exists(std::filesystem::path(dir) / "model-00003-of-00003.safetensors"));
}

INSTANTIATE_TEST_SUITE_P(AllArchs, HfFixtureRoundTrip, ::testing::ValuesIn(arch_cases()),
                         [](const ::testing::TestParamInfo<ArchCase>& info) {
                           return std::string(info.param.arch) + "_" + info.param.variant;
                         });

TEST(HfFixture, TiedEmbeddingsOmitLmHead) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("hf_reference_test_tied_" + std::to_string(::getpid()));
  FixtureOptions o;
  o.arch = "olmoe";
  o.tied = true;
  write_fixture(o, dir.string());
  const HfModel m = load_hf_model(dir.string());
  EXPECT_TRUE(m.config.tie_word_embeddings);
  EXPECT_EQ(m.tensors.count("lm_head.weight"), 0u);
  EXPECT_EQ(hf_forward(m, std::vector<std::int64_t>{3, 4}, 1, 2).size(), 2u * 96u);
  std::filesystem::remove_all(dir);
}

// The twin's YaRN frequencies against float32 torch (tests/hf/yarn_golden.py).
TEST(HfReferenceOps, YarnRatesMatchTorch) {
  for (const yarn_golden::Case* g : {&yarn_golden::kSmall, &yarn_golden::kV2Lite}) {
    HfConfig c;
    c.rope_theta = g->base;
    c.yarn = true;
    c.yarn_factor = g->factor;
    c.yarn_original_context = g->original_context;
    c.yarn_beta_fast = g->beta_fast;
    c.yarn_beta_slow = g->beta_slow;
    const std::vector<double> rates = rope_pair_rates(c, g->dim);
    ASSERT_EQ(rates.size(), g->inv_freq.size());
    for (std::size_t i = 0; i < rates.size(); ++i) {
      EXPECT_NEAR(rates[i], g->inv_freq[i], 1e-6 * g->inv_freq[i]) << "dim " << g->dim << " pair " << i;
    }
  }
}

}  // namespace
}  // namespace occult::hf
