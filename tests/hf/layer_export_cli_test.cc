// `occult layer export` on model directories of two families: the exported router and expert
// matrices are the source tensors (looked up by their Hugging Face names, written out here by
// hand), the layer is counted among MoE layers only, and the inputs have the promised shapes.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "hf_fixture_writer.h"
#include "occult/core/safetensors.h"

namespace occult {
namespace {

namespace fs = std::filesystem;

struct Case {
  std::string arch, variant;
  int moe_ordinal;      // --layer
  int model_layer;      // the decoder layer it names
  std::string experts;  // the expert prefix under model.layers.{l}.
  std::string w1, w3, w2, router;
};

// Runs the program; returns its exit status and stderr.
int run(const std::string& args, const fs::path& dir, std::string* err) {
  const fs::path err_path = dir / "stderr.txt";
  const int status = std::system(
      (std::string(OCCULT_BINARY) + " " + args + " > /dev/null 2> " + err_path.string()).c_str());
  std::ifstream in(err_path);
  std::stringstream ss;
  ss << in.rdbuf();
  *err = ss.str();
  return status;
}

void expect_same(const SafetensorsReader& out, const std::string& out_name,
                 const SafetensorsReader& src, const std::string& src_name) {
  ASSERT_NE(src.find(src_name), nullptr) << src_name;
  EXPECT_EQ(out.at(out_name).shape, src.at(src_name).shape) << out_name;
  EXPECT_EQ(out.read_f32(out_name), src.read_f32(src_name)) << out_name << " vs " << src_name;
}

TEST(LayerExport, WritesTheSourceTensorsOfTheNamedMoeLayer) {
  // deepseek alt: only layer 2 is sparse (first_k_dense_replace 1, moe_layer_freq 2), so MoE
  // layer 0 is decoder layer 2. mixtral: every layer is sparse, with its own expert names.
  const Case cases[] = {
      {"deepseek", "alt", 0, 2, "mlp.experts.", "gate_proj", "up_proj", "down_proj",
       "mlp.gate.weight"},
      {"mixtral", "default", 1, 1, "block_sparse_moe.experts.", "w1", "w3", "w2",
       "block_sparse_moe.gate.weight"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.arch);
    const fs::path dir = fs::temp_directory_path() /
                         ("occult_layer_export_" + c.arch + "_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    hf::FixtureOptions options;
    options.arch = c.arch;
    options.variant = c.variant;
    hf::write_fixture(options, (dir / "model").string());
    std::string err;
    ASSERT_EQ(run(fmt::format("layer export --model {} --layer {} --tokens 5 --out {}",
                              (dir / "model").string(), c.moe_ordinal, (dir / "out").string()),
                  dir, &err),
              0)
        << err;
    const SafetensorsReader src =
        SafetensorsReader::open((dir / "model" / "model.safetensors").string());
    const SafetensorsReader out =
        SafetensorsReader::open((dir / "out" / "weights.safetensors").string());
    const std::string layer = fmt::format("model.layers.{}.", c.model_layer);
    expect_same(out, "mlp.gate.weight", src, layer + c.router);
    const int experts = static_cast<int>(out.at("mlp.gate.weight").shape[0]);
    EXPECT_EQ(experts, 8);
    for (int e = 0; e < experts; ++e) {
      const std::string prefix = fmt::format("mlp.experts.{}.", e);
      const std::string source = fmt::format("{}{}{}.", layer, c.experts, e);
      expect_same(out, prefix + "gate_proj.weight", src, source + c.w1 + ".weight");
      expect_same(out, prefix + "up_proj.weight", src, source + c.w3 + ".weight");
      expect_same(out, prefix + "down_proj.weight", src, source + c.w2 + ".weight");
    }
    const auto config = hf::fixture_config(options);
    EXPECT_EQ(out.metadata().at("top_k"), std::to_string(config["num_experts_per_tok"].get<int>()));
    const SafetensorsReader x =
        SafetensorsReader::open((dir / "out" / "input.safetensors").string());
    const SafetensorsReader g =
        SafetensorsReader::open((dir / "out" / "grad_output.safetensors").string());
    EXPECT_EQ(x.at("hidden_states").shape,
              (std::vector<std::int64_t>{5, config["hidden_size"].get<int>()}));
    EXPECT_EQ(g.at("grad_output").shape, x.at("hidden_states").shape);
    EXPECT_NE(x.read_f32("hidden_states"), g.read_f32("grad_output"));

    // A layer past the MoE layers names the range it has.
    ASSERT_NE(run(fmt::format("layer export --model {} --layer 9 --out {}",
                              (dir / "model").string(), (dir / "bad").string()),
                  dir, &err),
              0);
    EXPECT_NE(err.find("--layer 9 is out of range"), std::string::npos) << err;
    fs::remove_all(dir);
  }
}

}  // namespace
}  // namespace occult
