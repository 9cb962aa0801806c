// Loading Hugging Face model directories the way `occult logits` does (load_checkpoint_config,
// the MoeTransformer, load_checkpoint) on one rank: a sharded BF16 fixture loads with the values
// the independent reader sees; corrupt copies of it (a missing shard, an index naming a tensor
// its shard lacks, a tensor of the wrong shape or of an integer dtype, a tensor missing
// everywhere, an unsupported model_type, an unsupported or misspelt config key, no weights file
// at all) each fail with ONE occult::Error, a single line naming the file and the tensor or key;
// and save_checkpoint writes a directory that loads back bit for bit and that the independent
// reader (hf::load_hf_model) reads with the same config and values, for every architecture, so
// occult writes Hugging Face tensor names and config keys.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "hf/hf_fixture_writer.h"
#include "hf/yarn_golden.h"
#include "model/layers/rope_scaling.h"
#include "hf/hf_reference.h"
#include "occult/comm/communicator.h"
#include "occult/core/error.h"
#include "occult/core/safetensors.h"
#include "occult/model/checkpoint.h"
#include "occult/model/model.h"

namespace occult {
namespace {

namespace fs = std::filesystem;

constexpr const char* kArch = "qwen2_moe";  // biases, a gated shared expert and a dense layer
constexpr const char* kShard1 = "model-00001-of-00003.safetensors";
constexpr const char* kShard2 = "model-00002-of-00003.safetensors";
constexpr const char* kShard3 = "model-00003-of-00003.safetensors";

// The model of `dir` with its weights, loaded as `occult logits` loads it.
std::unique_ptr<MoeTransformer> load(const std::string& dir, Communicator& comm) {
  const ModelConfig config = load_checkpoint_config(dir);
  // Latent-attention families load for inference only (no gradient buffers); the others train.
  ParallelOptions options;
  options.training = !config.mla();
  auto model = std::make_unique<MoeTransformer>(config, comm, options);
  load_checkpoint(dir, *model, nullptr);
  return model;
}

// The message of the one occult::Error loading `dir` throws ("" and a test failure if none).
std::string load_error(const fs::path& dir) {
  SelfCommunicator comm;
  try {
    load(dir.string(), comm);
  } catch (const Error& e) {
    return e.message();
  }
  ADD_FAILURE() << "loading " << dir << " did not throw";
  return "";
}

// Expects one clear message: a single line, not prefixed by a rank, holding every needle.
void expect_names(const std::string& message, const std::vector<std::string>& needles) {
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  EXPECT_NE(message.rfind("rank ", 0), 0u) << message;
  for (const std::string& needle : needles) {
    EXPECT_NE(message.find(needle), std::string::npos)
        << "\"" << needle << "\" is not in: " << message;
  }
}

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

void write_json(const fs::path& path, const nlohmann::json& j) {
  std::ofstream out(path, std::ios::trunc);
  out << j.dump(2) << "\n";
  ASSERT_TRUE(out.good()) << path;
}

// Rewrites the safetensors file `path`: `edit` is called for every tensor with the writer and
// adds what should stand in its place (nothing, to drop it).
using Edit = std::function<void(const TensorInfo&, std::span<const std::byte>, SafetensorsWriter&)>;
void rewrite(const fs::path& path, const Edit& edit) {
  SafetensorsWriter writer;
  {
    const SafetensorsReader reader = SafetensorsReader::open(path.string());
    for (const auto& [key, value] : reader.metadata()) writer.set_metadata(key, value);
    for (const TensorInfo& info : reader.tensors()) edit(info, reader.raw(info), writer);
  }
  writer.write(path.string());
}

// Copies every tensor but `name`, which `replace` handles.
Edit replacing(const std::string& name, const Edit& replace) {
  return [=](const TensorInfo& info, std::span<const std::byte> raw, SafetensorsWriter& w) {
    if (info.name == name) {
      replace(info, raw, w);
    } else {
      w.add(info.name, info.dtype, info.shape, raw);
    }
  };
}

// Every tensor of a model (1 rank: all of them) by name.
std::map<std::string, std::vector<float>> values_of(const MoeTransformer& model) {
  std::map<std::string, std::vector<float>> out;
  for (const ParamTensor& t : model.tensors()) out[t.name].assign(t.value.begin(), t.value.end());
  return out;
}

class ModelDirTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string pattern = (fs::temp_directory_path() / "hf_model_dir_test.XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr) << std::strerror(errno);
    root_ = pattern;
    hf::FixtureOptions o;
    o.arch = kArch;
    o.dtype = "bf16";
    o.shards = 3;
    o.seed = 7;
    hf::write_fixture(o, (root_ / "good").string());
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  // A fresh copy of the valid directory, to corrupt.
  static fs::path copy(const std::string& name) {
    const fs::path dir = root_ / name;
    fs::remove_all(dir);
    fs::copy(root_ / "good", dir, fs::copy_options::recursive);
    return dir;
  }
  // The shard file the index puts `tensor` in.
  static std::string shard_of(const fs::path& dir, const std::string& tensor) {
    return read_json(dir / "model.safetensors.index.json")
        .at("weight_map")
        .at(tensor)
        .get<std::string>();
  }

  static fs::path root_;
};
fs::path ModelDirTest::root_;

TEST_F(ModelDirTest, ValidDirectoryLoadsTheStoredValues) {
  const fs::path dir = root_ / "good";
  ASSERT_TRUE(fs::exists(dir / kShard1) && fs::exists(dir / kShard2) && fs::exists(dir / kShard3));
  SelfCommunicator comm;
  const auto model = load(dir.string(), comm);
  const hf::HfModel reference = hf::load_hf_model(dir.string());
  EXPECT_EQ(model->tensors().size(), reference.tensors.size());
  for (const ParamTensor& t : model->tensors()) {
    SCOPED_TRACE(t.name);
    const auto it = reference.tensors.find(t.name);
    ASSERT_NE(it, reference.tensors.end());
    EXPECT_EQ(it->second.shape, t.shape);
    ASSERT_EQ(it->second.data.size(), t.value.size());
    // BF16 widens exactly to float and double: the values are equal, not close.
    for (std::size_t i = 0; i < t.value.size(); ++i)
      ASSERT_EQ(static_cast<double>(t.value[i]), it->second.data[i]);
  }
}

TEST_F(ModelDirTest, MissingShardNamesTheShardAndATensorInIt) {
  const fs::path dir = copy("missing_shard");
  fs::remove(dir / kShard2);
  expect_names(load_error(dir), {"model.safetensors.index.json", "tensor \"model.layers.1.",
                                 kShard2, "does not exist"});
}

TEST_F(ModelDirTest, IndexEntryTheShardLacksNamesTheIndexTensorAndShard) {
  const fs::path dir = copy("index_lies");
  const std::string tensor = "model.layers.2.self_attn.q_proj.weight";
  ASSERT_EQ(shard_of(dir, tensor), kShard3);
  nlohmann::json index = read_json(dir / "model.safetensors.index.json");
  index["weight_map"][tensor] = kShard1;
  write_json(dir / "model.safetensors.index.json", index);
  expect_names(load_error(dir),
               {"model.safetensors.index.json", "\"" + tensor + "\"", kShard1, "no such tensor"});
}

TEST_F(ModelDirTest, WrongShapeNamesTheShardTensorAndBothShapes) {
  const fs::path dir = copy("wrong_shape");
  const std::string tensor = "model.layers.1.self_attn.o_proj.weight";  // [32, 32]
  ASSERT_EQ(shard_of(dir, tensor), kShard2);
  rewrite(dir / kShard2,
          replacing(tensor, [](const TensorInfo& info, std::span<const std::byte> raw,
                               SafetensorsWriter& w) {
            w.add(info.name, info.dtype, {16, 64}, raw);
          }));
  expect_names(load_error(dir),
               {(dir / kShard2).string(), "'" + tensor + "'", "[16, 64]", "expected [32, 32]"});
}

TEST_F(ModelDirTest, IntegerDtypeNamesTheShardTensorAndDtype) {
  const fs::path dir = copy("integer_dtype");
  const std::string tensor = "model.layers.0.mlp.experts.3.up_proj.weight";
  ASSERT_EQ(shard_of(dir, tensor), kShard1);
  // The same two bytes per element, declared I16 instead of BF16.
  rewrite(dir / kShard1,
          replacing(tensor,
                    [](const TensorInfo& info, std::span<const std::byte> raw,
                       SafetensorsWriter& w) { w.add(info.name, DType::kI16, info.shape, raw); }));
  expect_names(load_error(dir),
               {(dir / kShard1).string(), "'" + tensor + "'", "I16", "float dtype"});
}

TEST_F(ModelDirTest, TensorMissingEverywhereNamesTheIndexAndTheTensor) {
  const fs::path dir = copy("missing_tensor");
  const std::string tensor = "model.layers.2.mlp.experts.5.down_proj.weight";
  ASSERT_EQ(shard_of(dir, tensor), kShard3);
  rewrite(dir / kShard3, replacing(tensor, [](const TensorInfo&, std::span<const std::byte>,
                                              SafetensorsWriter&) {}));
  nlohmann::json index = read_json(dir / "model.safetensors.index.json");
  index["weight_map"].erase(tensor);
  write_json(dir / "model.safetensors.index.json", index);
  expect_names(load_error(dir),
               {(dir / "model.safetensors.index.json").string(), "\"" + tensor + "\"",
                "expected shape [32, 16]", "neither the weight_map nor any of its 3 shards"});
}

TEST_F(ModelDirTest, TensorTheIndexForgetsNamesTheShardThatHoldsIt) {
  const fs::path dir = copy("unlisted_tensor");
  const std::string tensor = "model.norm.weight";
  ASSERT_EQ(shard_of(dir, tensor), kShard3);
  nlohmann::json index = read_json(dir / "model.safetensors.index.json");
  index["weight_map"].erase(tensor);
  write_json(dir / "model.safetensors.index.json", index);
  expect_names(load_error(dir),
               {(dir / "model.safetensors.index.json").string(), "\"" + tensor + "\"",
                "does not list", std::string("shard ") + kShard3 + " holds it"});
}

TEST_F(ModelDirTest, UnsupportedModelTypeNamesTheConfigAndKey) {
  const fs::path dir = copy("model_type");
  nlohmann::json config = read_json(dir / "config.json");
  config["model_type"] = "gpt_oss";
  write_json(dir / "config.json", config);
  expect_names(load_error(dir), {(dir / "config.json").string(), "\"model_type\"",
                                 "\"gpt_oss\" is not supported", "qwen2_moe"});
}

TEST_F(ModelDirTest, UnsupportedKeyNamesTheConfigKeyAndValue) {
  const fs::path dir = copy("rope_scaling");
  nlohmann::json config = read_json(dir / "config.json");
  config["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  write_json(dir / "config.json", config);
  expect_names(load_error(dir),
               {(dir / "config.json").string(), "\"rope_scaling\"", "linear", "not supported"});
}

TEST_F(ModelDirTest, MisspeltKeyNamesTheConfigAndSuggestsTheKey) {
  const fs::path dir = copy("misspelt");
  nlohmann::json config = read_json(dir / "config.json");
  config["rope_thetta"] = config.at("rope_theta");
  config.erase("rope_theta");
  write_json(dir / "config.json", config);
  expect_names(load_error(dir),
               {(dir / "config.json").string(), "unknown config key \"rope_thetta\"",
                "did you mean \"rope_theta\""});
}

TEST_F(ModelDirTest, NoWeightsFileNamesBothFilesAndTheOrphanShards) {
  const fs::path dir = copy("no_weights");
  fs::remove(dir / "model.safetensors.index.json");
  ASSERT_FALSE(fs::exists(dir / "model.safetensors"));
  expect_names(load_error(dir),
               {dir.string(), "neither model.safetensors nor model.safetensors.index.json", kShard1,
                "is the index missing?"});
  for (const char* shard : {kShard1, kShard2, kShard3}) fs::remove(dir / shard);
  const std::string bare = load_error(dir);
  expect_names(bare, {dir.string(), "neither model.safetensors nor model.safetensors.index.json"});
  EXPECT_EQ(bare.find("index missing"), std::string::npos) << bare;
}

TEST_F(ModelDirTest, SavedCheckpointLoadsBackBitForBit) {
  SelfCommunicator comm;
  const auto model = load((root_ / "good").string(), comm);
  const fs::path saved = root_ / "saved_bf16";
  save_checkpoint(saved.string(), *model, nullptr, nlohmann::json::object());
  const auto again = load(saved.string(), comm);
  const auto before = values_of(*model), after = values_of(*again);
  ASSERT_EQ(before.size(), after.size());
  for (const auto& [name, values] : before) {
    SCOPED_TRACE(name);
    ASSERT_EQ(after.count(name), 1u);
    ASSERT_EQ(values.size(), after.at(name).size());
    EXPECT_EQ(std::memcmp(values.data(), after.at(name).data(), values.size() * sizeof(float)), 0);
  }
}

// What the independent reader sees in a saved directory equals what it sees in the original, for
// an F32 fixture of every architecture (and its alternative variant).
TEST_F(ModelDirTest, SavedCheckpointIsAHuggingFaceDirectory) {
  for (const char* arch : {"olmoe", "qwen2_moe", "deepseek", "qwen3_moe", "mixtral", "deepseek_v2", "deepseek_v3"}) {
    for (const char* variant : {"default", "alt"}) {
      SCOPED_TRACE(std::string(arch) + " " + variant);
      hf::FixtureOptions o;
      o.arch = arch;
      o.variant = variant;
      o.dtype = "f32";
      o.shards = 2;
      o.seed = 3;
      const fs::path original = root_ / fmt::format("f32_{}_{}", arch, variant);
      const fs::path saved = root_ / fmt::format("f32_{}_{}_saved", arch, variant);
      hf::write_fixture(o, original.string());
      SelfCommunicator comm;
      const auto model = load(original.string(), comm);
      save_checkpoint(saved.string(), *model, nullptr, nlohmann::json::object());

      const hf::HfModel a = hf::load_hf_model(original.string());
      hf::HfModel b;
      try {
        b = hf::load_hf_model(saved.string());
      } catch (const Error& e) {
        FAIL() << "the reader rejects occult's checkpoint: " << e.message();
      }
      EXPECT_EQ(a.config.model_type, b.config.model_type);
      EXPECT_EQ(a.config.vocab_size, b.config.vocab_size);
      EXPECT_EQ(a.config.hidden_size, b.config.hidden_size);
      EXPECT_EQ(a.config.num_layers, b.config.num_layers);
      EXPECT_EQ(a.config.num_heads, b.config.num_heads);
      EXPECT_EQ(a.config.num_kv_heads, b.config.num_kv_heads);
      EXPECT_EQ(a.config.head_dim, b.config.head_dim);
      EXPECT_NEAR(a.config.rms_norm_eps, b.config.rms_norm_eps, 1e-7 * a.config.rms_norm_eps);
      EXPECT_NEAR(a.config.rope_theta, b.config.rope_theta, 1e-7 * a.config.rope_theta);
      EXPECT_EQ(a.config.tie_word_embeddings, b.config.tie_word_embeddings);
      EXPECT_EQ(a.config.qkv_bias, b.config.qkv_bias);
      EXPECT_EQ(a.config.o_bias, b.config.o_bias);
      EXPECT_EQ(a.config.dense_ffn, b.config.dense_ffn);
      EXPECT_EQ(a.config.expert_ffn, b.config.expert_ffn);
      EXPECT_EQ(a.config.num_experts, b.config.num_experts);
      EXPECT_EQ(a.config.top_k, b.config.top_k);
      EXPECT_EQ(a.config.renormalize, b.config.renormalize);
      EXPECT_EQ(a.config.shared_ffn, b.config.shared_ffn);
      EXPECT_EQ(a.config.shared_gate, b.config.shared_gate);
      EXPECT_EQ(a.config.sparse, b.config.sparse);
      EXPECT_EQ(a.config.mla, b.config.mla);
      EXPECT_EQ(a.config.q_lora_rank, b.config.q_lora_rank);
      EXPECT_EQ(a.config.kv_lora_rank, b.config.kv_lora_rank);
      EXPECT_EQ(a.config.qk_nope_head_dim, b.config.qk_nope_head_dim);
      EXPECT_EQ(a.config.qk_rope_head_dim, b.config.qk_rope_head_dim);
      EXPECT_EQ(a.config.v_head_dim, b.config.v_head_dim);
      EXPECT_EQ(a.config.scoring_func, b.config.scoring_func);
      EXPECT_EQ(a.config.topk_method, b.config.topk_method);
      EXPECT_EQ(a.config.n_group, b.config.n_group);
      EXPECT_EQ(a.config.topk_group, b.config.topk_group);
      EXPECT_EQ(a.config.norm_topk_prob, b.config.norm_topk_prob);
      // DeepSeek-V2 applies routed_scaling_factor only to weights it does not renormalise.
      auto scaling = [](const hf::HfConfig& c) {
        const bool unused = c.model_type == "deepseek_v2" && c.norm_topk_prob && c.top_k > 1;
        return unused ? 1.0 : c.routed_scaling_factor;
      };
      EXPECT_NEAR(scaling(a.config), scaling(b.config), 1e-7);
      ASSERT_EQ(a.tensors.size(), b.tensors.size());
      for (const auto& [name, tensor] : a.tensors) {
        SCOPED_TRACE(name);
        const auto it = b.tensors.find(name);
        ASSERT_NE(it, b.tensors.end()) << "occult did not write " << name;
        EXPECT_EQ(it->second.shape, tensor.shape);
        EXPECT_EQ(it->second.data, tensor.data);
      }
    }
  }
}


// YaRN (rope_scaling of type yarn) on the latent-attention families: production frequencies and
// magnitudes against float32 torch, and one clear error per bad rope_scaling.
TEST(RopeScalingConfig, YarnFrequenciesAndScalesMatchTorch) {
  for (const yarn_golden::Case* g : {&yarn_golden::kSmall, &yarn_golden::kV2Lite}) {
    ModelConfig c;
    c.rope_theta = static_cast<float>(g->base);
    c.rope_scaling.yarn = true;
    c.rope_scaling.factor = static_cast<float>(g->factor);
    c.rope_scaling.original_max_position_embeddings = g->original_context;
    c.rope_scaling.beta_fast = static_cast<float>(g->beta_fast);
    c.rope_scaling.beta_slow = static_cast<float>(g->beta_slow);
    c.rope_scaling.mscale = static_cast<float>(g->mscale);
    c.rope_scaling.mscale_all_dim = static_cast<float>(g->mscale_all_dim);
    const std::vector<double> inv = rope_inverse_frequencies(c, g->dim);
    ASSERT_EQ(inv.size(), g->inv_freq.size());
    for (std::size_t i = 0; i < inv.size(); ++i) {
      EXPECT_NEAR(inv[i], g->inv_freq[i], 1e-6 * g->inv_freq[i]) << "dim " << g->dim << " pair " << i;
    }
    // The config holds floats (0.707f), torch's golden used the double: agree to float rounding.
    EXPECT_NEAR(rope_magnitude(c), g->magnitude, 1e-7);
    EXPECT_NEAR(rope_softmax_scale_multiplier(c), g->softmax_multiplier, 1e-7);
  }
  ModelConfig plain;
  plain.rope_theta = 100.0f;
  const std::vector<double> inv = rope_inverse_frequencies(plain, 4);
  EXPECT_NEAR(inv[1], 0.1, 1e-12);
  EXPECT_EQ(rope_magnitude(plain), 1.0);
  EXPECT_EQ(rope_softmax_scale_multiplier(plain), 1.0);
}

// The deepseek_v2 fixture's config with `edit` applied to its rope_scaling, parsed: the error.
std::string rope_scaling_error(const std::function<void(nlohmann::json&)>& edit,
                               const std::string& arch = "deepseek_v2") {
  hf::FixtureOptions o;
  o.arch = arch;
  nlohmann::json config = nlohmann::json::parse(hf::fixture_config(o).dump());
  if (config["rope_scaling"].is_null()) {
    config["rope_scaling"] = {{"type", "yarn"}, {"factor", 40}, {"original_max_position_embeddings", 4096}};
  }
  edit(config["rope_scaling"]);
  try {
    parse_model_config(config, "dir/config.json");
  } catch (const Error& e) {
    return e.message();
  }
  ADD_FAILURE() << "rope_scaling " << config["rope_scaling"].dump() << " was accepted";
  return "";
}

TEST(RopeScalingConfig, FixturesCarryYarnAndRoundTrip) {
  for (const char* arch : {"deepseek_v2", "deepseek_v3"}) {
    hf::FixtureOptions o;
    o.arch = arch;
    const ModelConfig c = parse_model_config(nlohmann::json::parse(hf::fixture_config(o).dump()), "config.json");
    EXPECT_TRUE(c.rope_scaling.yarn) << arch;
    EXPECT_EQ(c.rope_scaling.factor, 40.0f) << arch;
    EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 4096) << arch;
    const ModelConfig back = parse_model_config(model_config_to_json(c), "written.json");
    EXPECT_EQ(back.rope_scaling, c.rope_scaling) << arch;
    EXPECT_TRUE(same_architecture(back, c)) << arch;
  }
}

TEST(RopeScalingConfig, BadRopeScalingIsOneErrorNamingTheKey) {
  expect_names(rope_scaling_error([](nlohmann::json& r) { r["type"] = "linear"; }),
               {"dir/config.json", "\"rope_scaling\"", "\"linear\"", "not supported", "yarn"});
  expect_names(rope_scaling_error([](nlohmann::json& r) { r.erase("factor"); }),
               {"dir/config.json", "\"rope_scaling\"", "\"factor\"", "missing"});
  expect_names(rope_scaling_error([](nlohmann::json& r) { r["factor"] = 0.5; }),
               {"dir/config.json", "\"rope_scaling\"", "\"factor\"", ">= 1", "0.5"});
  expect_names(rope_scaling_error([](nlohmann::json& r) { r["beta_fats"] = 32; }),
               {"dir/config.json", "\"rope_scaling\"", "\"beta_fats\"", "did you mean", "\"beta_fast\""});
  expect_names(rope_scaling_error([](nlohmann::json& r) { r["attention_factor"] = 1.2; }),
               {"dir/config.json", "\"rope_scaling\"", "\"attention_factor\"", "not supported"});
  expect_names(rope_scaling_error([](nlohmann::json& r) { r["rope_type"] = "dynamic"; }),
               {"dir/config.json", "\"type\"", "\"rope_type\"", "disagree"});
  expect_names(rope_scaling_error([](nlohmann::json& r) { r = 3; }),
               {"dir/config.json", "\"rope_scaling\"", "must be an object"});
  expect_names(rope_scaling_error([](nlohmann::json& r) { r["beta_slow"] = 64; }),
               {"dir/config.json", "\"rope_scaling\"", "beta_fast > beta_slow"});
  // The plain-RoPE families refuse YaRN rather than compute a different model.
  expect_names(rope_scaling_error([](nlohmann::json&) {}, "olmoe"),
               {"dir/config.json", "\"rope_scaling\"", "yarn", "\"olmoe\""});
}

// The released configs (tests/hf/configs, SOURCE.md): DeepSeek-V2-Lite parses with its YaRN;
// DeepSeek-V3's FP8 release is refused naming quantization_config, and its BF16 conversion (the
// same config without it) parses with its groups, bias router and YaRN.
TEST(RopeScalingConfig, ReleasedDeepSeekConfigsParse) {
  const char* root = std::getenv("OCCULT_SOURCE_DIR");
  ASSERT_NE(root, nullptr) << "run under ctest (sets OCCULT_SOURCE_DIR)";
  const std::string dir = std::string(root) + "/tests/hf/configs/";
  const ModelConfig lite = load_model_config(dir + "deepseek-v2-lite.json");
  EXPECT_TRUE(lite.mla());
  EXPECT_EQ(lite.q_lora_rank, 0);
  EXPECT_EQ(lite.num_moe_layers(), 26);
  EXPECT_TRUE(lite.rope_scaling.yarn);
  EXPECT_EQ(lite.rope_scaling.factor, 40.0f);
  EXPECT_EQ(lite.rope_scaling.mscale_all_dim, 0.707f);
  EXPECT_NEAR(rope_softmax_scale_multiplier(lite), yarn_golden::kV2Lite.softmax_multiplier, 1e-7);

  expect_names([&] {
    try {
      load_model_config(dir + "deepseek-v3.json");
    } catch (const Error& e) {
      return e.message();
    }
    return std::string("accepted");
  }(), {"deepseek-v3.json", "\"quantization_config\"", "not supported"});
  std::ifstream in(dir + "deepseek-v3.json");
  nlohmann::json v3 = nlohmann::json::parse(in);
  v3.erase("quantization_config");
  const ModelConfig c = parse_model_config(v3, "deepseek-v3 (bf16)");
  EXPECT_EQ(c.num_experts, 256);
  EXPECT_EQ(c.n_group, 8);
  EXPECT_EQ(c.topk_group, 4);
  EXPECT_TRUE(c.router_selection_bias);
  EXPECT_EQ(c.routed_scaling_factor, 2.5f);
  EXPECT_EQ(c.num_moe_layers(), 58);
  EXPECT_TRUE(c.rope_scaling.yarn);
  EXPECT_EQ(rope_magnitude(c), 1.0);
}

}  // namespace
}  // namespace occult
