// Config validation, the data loader's rank independence, the schedule and checkpoints.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "occult/comm/communicator.h"
#include "occult/core/error.h"
#include "occult/core/safetensors.h"
#include "occult/model/checkpoint.h"
#include "occult/model/config.h"
#include "occult/train/data.h"
#include "occult/model/optimizer.h"
#include "test_util.h"

namespace occult {
namespace {

namespace fs = std::filesystem;

nlohmann::json tiny_json() {
  return model_config_to_json(testing::tiny_config(true, true, false));
}

std::string config_error(const nlohmann::json& j) {
  try {
    parse_model_config(j, "cfg.json");
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

TEST(ConfigTest, RoundTripsThroughJson) {
  const ModelConfig c = testing::tiny_config(true, false, true);
  const ModelConfig back = parse_model_config(model_config_to_json(c), "x");
  EXPECT_TRUE(same_architecture(c, back));
  EXPECT_EQ(back.shared_intermediate_size(), 6);
  EXPECT_EQ(back.head_dim(), 4);
}

TEST(ConfigTest, MissingAndWrongKeysNameTheKey) {
  auto j = tiny_json();
  j.erase("num_experts");
  EXPECT_EQ(config_error(j), "cfg.json: config key \"num_experts\" is missing");
  j = tiny_json();
  j["hidden_size"] = "big";
  EXPECT_EQ(config_error(j), "cfg.json: config key \"hidden_size\" must be an integer, got \"big\"");
  j = tiny_json();
  j["norm_topk_prob"] = 1;
  EXPECT_EQ(config_error(j), "cfg.json: config key \"norm_topk_prob\" must be true or false, got 1");
}

TEST(ConfigTest, InconsistentKeysAreRejected) {
  auto j = tiny_json();
  j["num_experts_per_tok"] = 5;
  EXPECT_EQ(config_error(j), "cfg.json: config key \"num_experts_per_tok\" (5) must not exceed \"num_experts\" (4)");
  j = tiny_json();
  j.erase("num_key_value_heads");
  j["num_attention_heads"] = 3;
  EXPECT_EQ(config_error(j), "cfg.json: config key \"hidden_size\" (8) must be divisible by \"num_attention_heads\" (3)");
  j = tiny_json();
  j.erase("num_key_value_heads");
  j["num_attention_heads"] = 8;  // head size 1: RoPE needs pairs
  EXPECT_EQ(config_error(j), "cfg.json: head size hidden_size/num_attention_heads = 1 must be even for RoPE");
  j = tiny_json();
  j["num_key_value_heads"] = 3;
  EXPECT_EQ(config_error(j),
            "cfg.json: config key \"num_key_value_heads\" (3) must divide \"num_attention_heads\" (2)");
}

// Hugging Face configs: model_type picks the family; keys that would change the arithmetic and
// are not implemented, misspelt keys and unknown types are errors naming the key.
nlohmann::json olmoe_json() {
  return nlohmann::json{{"model_type", "olmoe"},       {"hidden_size", 8},         {"num_hidden_layers", 2},
                        {"num_attention_heads", 2},    {"num_key_value_heads", 1}, {"num_experts", 4},
                        {"num_experts_per_tok", 2},    {"intermediate_size", 6},   {"max_position_embeddings", 16},
                        {"vocab_size", 32},            {"rope_scaling", nullptr},  {"torch_dtype", "bfloat16"}};
}

TEST(ArchConfigTest, FamiliesMapTheirKeys) {
  const ModelConfig olmoe = parse_model_config(olmoe_json(), "cfg.json");
  EXPECT_EQ(olmoe.moe_intermediate_size, 6);
  EXPECT_EQ(olmoe.kv_heads(), 1);
  EXPECT_EQ(olmoe.qk_norm, QkNorm::kFull);
  EXPECT_EQ(olmoe.num_moe_layers(), 2);
  auto ds = nlohmann::json{{"model_type", "deepseek"},   {"hidden_size", 8},       {"num_hidden_layers", 4},
                           {"num_attention_heads", 2},   {"n_routed_experts", 4},  {"num_experts_per_tok", 2},
                           {"moe_intermediate_size", 6}, {"n_shared_experts", 2},  {"intermediate_size", 10},
                           {"first_k_dense_replace", 1}, {"moe_layer_freq", 2},    {"max_position_embeddings", 16}};
  const ModelConfig d = parse_model_config(ds, "cfg.json");
  // Layers 0 (below first_k_dense_replace), 1 and 3 (odd, off the moe_layer_freq grid) are dense.
  EXPECT_FALSE(d.is_moe_layer(0));
  EXPECT_FALSE(d.is_moe_layer(1));
  EXPECT_TRUE(d.is_moe_layer(2));
  EXPECT_FALSE(d.is_moe_layer(3));
  EXPECT_EQ(d.num_moe_layers(), 1);
  EXPECT_EQ(d.moe_index(2), 0);
  EXPECT_EQ(d.moe_layer(0), 2);
  EXPECT_EQ(d.shared_intermediate_size(), 12);
  // Saved and read back, the config keeps the family's own key names.
  const nlohmann::json saved = model_config_to_json(d);
  EXPECT_EQ(saved.at("n_routed_experts"), 4);
  EXPECT_FALSE(saved.contains("num_experts"));
  EXPECT_TRUE(same_architecture(parse_model_config(saved, "saved"), d));
}

nlohmann::json deepseek_v2_json() {
  return nlohmann::json{{"model_type", "deepseek_v2"},  {"hidden_size", 8},        {"num_hidden_layers", 3},
                        {"num_attention_heads", 2},     {"num_key_value_heads", 2}, {"n_routed_experts", 8},
                        {"num_experts_per_tok", 2},     {"moe_intermediate_size", 6}, {"n_shared_experts", 1},
                        {"intermediate_size", 10},      {"first_k_dense_replace", 1}, {"max_position_embeddings", 16},
                        {"q_lora_rank", nullptr},       {"kv_lora_rank", 6},       {"qk_nope_head_dim", 3},
                        {"qk_rope_head_dim", 2},        {"v_head_dim", 4},         {"topk_method", "group_limited_greedy"},
                        {"n_group", 4},                 {"topk_group", 2},         {"routed_scaling_factor", 1.5},
                        {"scoring_func", "softmax"},    {"norm_topk_prob", false}};
}

TEST(ArchConfigTest, DeepseekV2AndV3MapLatentAttentionAndTheirRouters) {
  const ModelConfig v2 = parse_model_config(deepseek_v2_json(), "cfg.json");
  EXPECT_TRUE(v2.mla());
  EXPECT_EQ(v2.q_lora_rank, 0);
  EXPECT_EQ(v2.qk_head_dim(), 5);
  EXPECT_EQ(v2.head_dim(), 5);  // the kernels' padded head: max(3 + 2, 4)
  EXPECT_EQ(v2.kv_heads(), 2);
  EXPECT_EQ(v2.attention_out_dim(), 8);
  EXPECT_EQ(v2.n_group, 4);
  EXPECT_EQ(v2.topk_group, 2);
  EXPECT_EQ(v2.group_score, GroupScore::kMax);
  EXPECT_EQ(v2.score_function, ScoreFunction::kSoftmax);
  EXPECT_FLOAT_EQ(v2.routed_scaling_factor, 1.5f);  // not renormalised: the factor applies
  EXPECT_FALSE(v2.router_selection_bias);
  EXPECT_EQ(v2.num_moe_layers(), 2);
  EXPECT_TRUE(same_architecture(parse_model_config(model_config_to_json(v2), "saved"), v2));
  // Renormalised V2 weights are not scaled; greedy top-k reads no groups.
  auto j = deepseek_v2_json();
  j["norm_topk_prob"] = true;
  j["topk_method"] = "greedy";
  const ModelConfig greedy = parse_model_config(j, "cfg.json");
  EXPECT_FLOAT_EQ(greedy.routed_scaling_factor, 1.0f);
  EXPECT_EQ(greedy.n_group, 1);

  j = deepseek_v2_json();
  j["model_type"] = "deepseek_v3";
  j["scoring_func"] = "sigmoid";
  j["topk_method"] = "noaux_tc";
  j["norm_topk_prob"] = true;
  j["q_lora_rank"] = 5;
  j["v_head_dim"] = 7;
  const ModelConfig v3 = parse_model_config(j, "cfg.json");
  EXPECT_EQ(v3.q_lora_rank, 5);
  EXPECT_EQ(v3.head_dim(), 7);
  EXPECT_EQ(v3.score_function, ScoreFunction::kSigmoid);
  EXPECT_EQ(v3.group_score, GroupScore::kTopTwoSum);
  EXPECT_TRUE(v3.router_selection_bias);
  EXPECT_FLOAT_EQ(v3.routed_scaling_factor, 1.5f);  // V3 scales its normalised weights
  EXPECT_TRUE(same_architecture(parse_model_config(model_config_to_json(v3), "saved"), v3));
  EXPECT_FALSE(same_architecture(v2, v3));

  // DeepSeek-MoE (v1) points latent attention at the families that have it.
  j = deepseek_v2_json();
  j["model_type"] = "deepseek";
  j.erase("topk_method");
  j.erase("n_group");
  j.erase("topk_group");
  j.erase("routed_scaling_factor");
  EXPECT_NE(config_error(j).find("\"kv_lora_rank\" = 6 is not supported: multi-head latent attention belongs to "
                                 "model_type deepseek_v2 / deepseek_v3"),
            std::string::npos)
      << config_error(j);
}

TEST(ArchConfigTest, UnsupportedMisspeltAndUnknownKeysNameTheKey) {
  auto j = olmoe_json();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_EQ(config_error(j).rfind("cfg.json: config key \"rope_scaling\" of type \"linear\"", 0), 0u) << config_error(j);
  EXPECT_NE(config_error(j).find("is not supported"), std::string::npos);
  j = olmoe_json();
  j["norm_topk_porb"] = true;
  EXPECT_EQ(config_error(j), "cfg.json: unknown config key \"norm_topk_porb\": did you mean \"norm_topk_prob\"?");
  j = olmoe_json();
  j["model_type"] = "llama";
  EXPECT_EQ(config_error(j).rfind("cfg.json: config key \"model_type\": model_type \"llama\" is not supported", 0),
            0u)
      << config_error(j);
  j = olmoe_json();
  j["model_type"] = "mixtral";
  j["sliding_window"] = 4096;
  j["num_local_experts"] = 4;
  EXPECT_NE(config_error(j).find("\"sliding_window\" = 4096 is not supported"), std::string::npos) << config_error(j);
  // occult's own configs are strict: any unknown key is an error.
  auto own = tiny_json();
  own["n_shared_expert"] = 1;
  EXPECT_EQ(config_error(own), "cfg.json: unknown config key \"n_shared_expert\": did you mean \"n_shared_experts\"?");
  own = tiny_json();
  own["flavour"] = "x";
  EXPECT_EQ(config_error(own), "cfg.json: unknown config key \"flavour\"");
}

// occult's own family reads DeepSeek's router keys (the reader the DeepSeek families share) and
// writes them back only when they differ from plain softmax top-k.
TEST(ArchConfigTest, OccultMoeReadsTheDeepseekRouterKeys) {
  auto j = tiny_json();
  const ModelConfig plain = parse_model_config(j, "cfg.json");
  EXPECT_EQ(plain.score_function, ScoreFunction::kSoftmax);
  EXPECT_EQ(plain.n_group, 1);
  EXPECT_FALSE(plain.router_selection_bias);
  EXPECT_FALSE(j.contains("scoring_func") || j.contains("topk_method") || j.contains("n_group"));
  j["scoring_func"] = "sigmoid";
  j["topk_method"] = "noaux_tc";
  j["n_group"] = 2;
  j["topk_group"] = 1;
  j["routed_scaling_factor"] = 2.5;
  const ModelConfig c = parse_model_config(j, "cfg.json");
  EXPECT_EQ(c.score_function, ScoreFunction::kSigmoid);
  EXPECT_EQ(c.group_score, GroupScore::kTopTwoSum);
  EXPECT_EQ(c.n_group, 2);
  EXPECT_EQ(c.topk_group, 1);
  EXPECT_EQ(c.routed_scaling_factor, 2.5f);
  EXPECT_TRUE(c.router_selection_bias);
  EXPECT_TRUE(same_architecture(parse_model_config(model_config_to_json(c), "saved"), c));
  auto v2 = tiny_json();
  v2["topk_method"] = "group_limited_greedy";
  v2["n_group"] = 2;
  v2["topk_group"] = 1;
  const ModelConfig g = parse_model_config(v2, "cfg.json");
  EXPECT_EQ(g.group_score, GroupScore::kMax);
  EXPECT_FALSE(g.router_selection_bias);
  EXPECT_TRUE(same_architecture(parse_model_config(model_config_to_json(g), "saved"), g));

  auto bad = tiny_json();
  bad["scoring_func"] = "tanh";
  EXPECT_EQ(config_error(bad), "cfg.json: config key \"scoring_func\" = \"tanh\" is not supported (softmax or sigmoid)");
  bad = tiny_json();
  bad["topk_method"] = "aux";
  EXPECT_EQ(config_error(bad),
            "cfg.json: config key \"topk_method\" = \"aux\" is not supported (greedy, group_limited_greedy or "
            "noaux_tc)");
  bad = tiny_json();
  bad["n_group"] = 2;
  EXPECT_NE(config_error(bad).find("config key \"n_group\" = 2 is not supported: topk_method greedy looks at no "
                                   "groups"),
            std::string::npos)
      << config_error(bad);
  bad = v2;
  bad["n_group"] = 3;
  EXPECT_EQ(config_error(bad), "cfg.json: config key \"n_group\" = 3 must be >= 1 and divide num_experts = 4");
}

TEST(ConfigTest, MissingFileNamesThePath) {
  EXPECT_THROW(
      {
        try {
          load_model_config("/nonexistent/config.json");
        } catch (const Error& e) {
          EXPECT_EQ(e.message(), "cannot read model config /nonexistent/config.json: no such file or not readable");
          throw;
        }
      },
      Error);
}

class DataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = (fs::temp_directory_path() / fmt::format("occult_data_test_{}.txt", ::getpid())).string();
    std::ofstream out(path_, std::ios::binary);
    for (int i = 0; i < 1000; ++i) out.put(static_cast<char>('a' + i % 26));
  }
  void TearDown() override { fs::remove(path_); }
  std::string path_;
};

TEST_F(DataTest, SplitsTheLastTenPercentForValidation) {
  TextDataset d(path_);
  EXPECT_EQ(d.train_tokens(), 900);
  EXPECT_EQ(d.val_tokens(), 100);
  const Batch v = d.val_batch(1000, 10, 0, 1);
  EXPECT_EQ(v.sequences, 9);  // (100 - 1) / 10 whole windows with a next-token target
  EXPECT_EQ(v.tokens[0], 'a' + 900 % 26);
  EXPECT_EQ(v.targets[0], 'a' + 901 % 26);
}

TEST_F(DataTest, GlobalBatchIsTheSameForEveryRankCount) {
  TextDataset d(path_);
  const Batch whole = d.train_batch(42, 7, 10, 16, 0, 1);
  ASSERT_EQ(whole.sequences, 10);
  for (int ranks = 2; ranks <= 4; ++ranks) {
    std::vector<std::int32_t> joined, joined_targets;
    for (int r = 0; r < ranks; ++r) {
      const Batch b = d.train_batch(42, 7, 10, 16, r, ranks);
      EXPECT_EQ(b.sequences, rank_share(10, r, ranks).end - rank_share(10, r, ranks).begin);
      joined.insert(joined.end(), b.tokens.begin(), b.tokens.end());
      joined_targets.insert(joined_targets.end(), b.targets.begin(), b.targets.end());
    }
    EXPECT_EQ(joined, whole.tokens) << ranks << " ranks";
    EXPECT_EQ(joined_targets, whole.targets) << ranks << " ranks";
  }
  // Targets are the next byte; another step draws other windows.
  for (std::size_t i = 0; i < whole.tokens.size(); ++i) EXPECT_EQ(whole.targets[i], 'a' + (whole.tokens[i] - 'a' + 1) % 26);
  EXPECT_NE(d.train_batch(42, 8, 10, 16, 0, 1).tokens, whole.tokens);
}

TEST_F(DataTest, ErrorsNameTheFile) {
  try {
    TextDataset d("/nonexistent/x.txt");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.message(), "cannot read corpus /nonexistent/x.txt: no such file or not readable");
  }
  TextDataset d(path_);
  EXPECT_THROW(d.train_batch(1, 1, 2, 900, 0, 1), Error);
}

TEST(ScheduleTest, WarmupThenCosineToTheFloor) {
  AdamWOptions o;
  o.lr = 1.0f;
  o.min_lr_ratio = 0.1f;
  o.warmup_steps = 4;
  o.total_steps = 14;
  EXPECT_FLOAT_EQ(learning_rate(o, 1), 0.25f);
  EXPECT_FLOAT_EQ(learning_rate(o, 4), 1.0f);
  EXPECT_FLOAT_EQ(learning_rate(o, 9), 0.55f);  // half-way through the cosine: (1 + 0.1) / 2
  EXPECT_FLOAT_EQ(learning_rate(o, 14), 0.1f);
}

TEST(OptimizerTest, AdamWFirstStepMovesEachWeightByLrPlusDecay) {
  // Step 1 of Adam: m/(1-b1) = g, v/(1-b2) = g^2, so the update is sign(g) (eps aside).
  const ModelConfig c = testing::tiny_config(false, false, false);
  SelfCommunicator comm;
  MoeTransformer model(c, comm, ParallelOptions{});
  model.init_weights(1);
  AdamWOptions o;
  o.lr = 0.01f;
  o.weight_decay = 0.5f;
  o.grad_clip = 0.0f;
  o.total_steps = 10;
  AdamW adam(model, o);
  const auto& t = *model.find("model.layers.0.self_attn.q_proj.weight");
  const auto& n = *model.find("model.layers.0.input_layernorm.weight");
  const std::vector<float> before(t.value.begin(), t.value.end());
  for (std::size_t i = 0; i < t.grad.size(); ++i) t.grad[i] = (i % 2 == 0) ? 3.0f : -0.5f;
  for (float& g : n.grad) g = 1.0f;
  adam.step();
  const float lr = learning_rate(o, 1);  // no warm-up: the cosine's first step, just below 0.01
  EXPECT_FLOAT_EQ(adam.last_lr(), lr);
  EXPECT_LT(lr, 0.01f);
  for (std::size_t i = 0; i < t.value.size(); ++i) {
    const float sign = (i % 2 == 0) ? 1.0f : -1.0f;
    EXPECT_NEAR(t.value[i], before[i] - lr * (sign + 0.5f * before[i]), 1e-6f);
  }
  for (float v : n.value) EXPECT_NEAR(v, 1.0f - lr, 1e-6f);  // gains are not decayed
}

// The selection bias of a noaux_tc router moves only by the balancing rule: even with a gradient
// and weight decay, AdamW leaves it as it is, and it does not count in the clipping norm.
TEST(OptimizerTest, AdamWLeavesTheSelectionBiasAlone) {
  ModelConfig c = testing::tiny_config(false, false, false);
  c.score_function = ScoreFunction::kSigmoid;
  c.group_score = GroupScore::kTopTwoSum;
  c.router_selection_bias = true;
  SelfCommunicator comm;
  MoeTransformer model(c, comm, ParallelOptions{});
  model.init_weights(1);
  AdamWOptions o;
  o.lr = 0.01f;
  o.weight_decay = 0.5f;
  o.grad_clip = 0.0f;
  o.total_steps = 10;
  AdamW adam(model, o);
  const auto& bias = *model.find("model.layers.0.mlp.gate.e_score_correction_bias");
  EXPECT_FALSE(bias.optimized);
  for (std::size_t i = 0; i < bias.value.size(); ++i) bias.value[i] = 0.25f * static_cast<float>(i);
  const std::vector<float> before(bias.value.begin(), bias.value.end());
  for (float& g : model.dense_grads()) g = 0.0f;
  for (float& g : bias.grad) g = 2.0f;
  EXPECT_EQ(global_grad_norm(model), 0.0);
  adam.step();
  EXPECT_EQ(std::vector<float>(bias.value.begin(), bias.value.end()), before);
}

TEST(CheckpointTest, RoundTripsWeightsAndMomentsInHuggingFaceNames) {
  const ModelConfig c = testing::tiny_config(true, true, false);
  SelfCommunicator comm;
  MoeTransformer a(c, comm, ParallelOptions{});
  a.init_weights(9);
  AdamWOptions o;
  o.total_steps = 5;
  AdamW adam_a(a, o);
  for (std::size_t i = 0; i < a.tensors().size(); ++i) {
    for (std::size_t j = 0; j < adam_a.exp_avg(i).size(); ++j) adam_a.exp_avg(i)[j] = static_cast<float>(i + j);
  }
  adam_a.set_step_count(3);
  const std::string dir = (fs::temp_directory_path() / fmt::format("occult_ckpt_test_{}", ::getpid())).string();
  save_checkpoint(dir, a, &adam_a, {{"step", 3}});
  const auto reader = SafetensorsReader::open(dir + "/model.safetensors");
  for (const char* name : {"model.embed_tokens.weight", "model.layers.1.self_attn.o_proj.weight",
                           "model.layers.0.mlp.gate.weight", "model.layers.1.mlp.experts.3.down_proj.weight",
                           "model.layers.0.mlp.shared_experts.up_proj.weight", "model.norm.weight", "lm_head.weight"}) {
    EXPECT_NE(reader.find(name), nullptr) << name;
  }
  EXPECT_EQ(static_cast<std::int64_t>(reader.tensors().size()), static_cast<std::int64_t>(a.tensors().size()));
  MoeTransformer b(c, comm, ParallelOptions{});
  AdamW adam_b(b, o);
  const auto state = load_checkpoint(dir, b, &adam_b);
  EXPECT_EQ(state.at("step"), 3);
  EXPECT_EQ(adam_b.step_count(), 3);
  for (std::size_t i = 0; i < a.tensors().size(); ++i) {
    const auto& x = a.tensors()[i];
    const auto& y = b.tensors()[i];
    EXPECT_TRUE(std::equal(x.value.begin(), x.value.end(), y.value.begin())) << x.name;
    EXPECT_EQ(adam_a.exp_avg(i), adam_b.exp_avg(i)) << x.name;
  }
  ModelConfig other = c;
  other.hidden_size = 16;
  MoeTransformer wrong(other, comm, ParallelOptions{});
  try {
    load_checkpoint(dir, wrong, nullptr);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("\"hidden_size\" is 8 in the checkpoint but 16 in the model"), std::string::npos)
        << e.message();
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace occult
