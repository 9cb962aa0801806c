// bench_hf_checkpoint: writes a random-weight model directory (config.json, one BF16 safetensors
// shard per decoder layer plus one for the embeddings, and the shard index) with OLMoE-1B-7B's
// shapes (--arch olmoe, the default) or DeepSeek-V2-Lite's (--arch deepseek_v2: multi-head
// latent attention without q_lora_rank, 64 routed experts top-6 with 2 shared, first layer
// dense), for measuring load time, memory and speed on a real model's size without downloading
// it. Weights are N(0, 0.02) (norm gains 1), so the numbers it yields
// are about speed and memory, not about text.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "occult/core/rng.h"
#include "occult/core/safetensors.h"

namespace {

namespace fs = std::filesystem;

struct Shape {
  int vocab = 50304, hidden = 2048, layers = 16, heads = 16, experts = 64, top_k = 8, ffn = 1024;
  int context = 4096;
};

// DeepSeek-V2-Lite's attention and dense shapes (its config.json).
struct MlaShape {
  int kv_lora_rank = 512, qk_nope = 128, qk_rope = 64, v_head = 128;
  int shared_experts = 2, dense_ffn = 10944, first_k_dense = 1;
};

nlohmann::ordered_json olmoe_config(const Shape& s) {
  return {{"architectures", {"OlmoeForCausalLM"}},
          {"model_type", "olmoe"},
          {"vocab_size", s.vocab},
          {"hidden_size", s.hidden},
          {"num_hidden_layers", s.layers},
          {"num_attention_heads", s.heads},
          {"num_key_value_heads", s.heads},
          {"intermediate_size", s.ffn},
          {"num_experts", s.experts},
          {"num_experts_per_tok", s.top_k},
          {"norm_topk_prob", false},
          {"max_position_embeddings", s.context},
          {"rope_theta", 10000.0},
          {"rms_norm_eps", 1e-5},
          {"hidden_act", "silu"},
          {"attention_bias", false},
          {"clip_qkv", nullptr},
          {"tie_word_embeddings", false},
          {"router_aux_loss_coef", 0.01},
          {"torch_dtype", "bfloat16"},
          {"bos_token_id", nullptr},
          {"eos_token_id", 50279},
          {"pad_token_id", 1}};
}

// DeepSeek-V2-Lite's config.json keys, with the shape's layers and sizes.
nlohmann::ordered_json deepseek_v2_config(const Shape& s, const MlaShape& m) {
  return {{"architectures", {"DeepseekV2ForCausalLM"}},
          {"model_type", "deepseek_v2"},
          {"vocab_size", s.vocab},
          {"hidden_size", s.hidden},
          {"intermediate_size", m.dense_ffn},
          {"moe_intermediate_size", s.ffn},
          {"num_hidden_layers", s.layers},
          {"num_attention_heads", s.heads},
          {"num_key_value_heads", s.heads},
          {"n_shared_experts", m.shared_experts},
          {"n_routed_experts", s.experts},
          {"num_experts_per_tok", s.top_k},
          {"routed_scaling_factor", 1.0},
          {"topk_method", "greedy"},
          {"n_group", 1},
          {"topk_group", 1},
          {"scoring_func", "softmax"},
          {"norm_topk_prob", false},
          {"first_k_dense_replace", m.first_k_dense},
          {"moe_layer_freq", 1},
          {"q_lora_rank", nullptr},
          {"kv_lora_rank", m.kv_lora_rank},
          {"qk_nope_head_dim", m.qk_nope},
          {"qk_rope_head_dim", m.qk_rope},
          {"v_head_dim", m.v_head},
          {"aux_loss_alpha", 0.001},
          {"seq_aux", true},
          {"hidden_act", "silu"},
          {"max_position_embeddings", s.context},
          {"rms_norm_eps", 1e-6},
          {"rope_theta", 10000.0},
          // DeepSeek-V2-Lite's own YaRN (160k context from 4k).
          {"rope_scaling",
           {{"beta_fast", 32}, {"beta_slow", 1}, {"factor", 40}, {"mscale", 0.707}, {"mscale_all_dim", 0.707},
            {"original_max_position_embeddings", 4096}, {"type", "yarn"}}},
          {"attention_bias", false},
          {"tie_word_embeddings", false},
          {"torch_dtype", "bfloat16"},
          {"bos_token_id", 100000},
          {"eos_token_id", 100001}};
}

// Adds `name` [rows, cols] of N(0, std) (or ones when std == 0) as BF16.
void add(occult::SafetensorsWriter& w, const std::string& name, std::vector<std::int64_t> shape,
         float std, occult::SplitMix64& rng) {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  std::vector<float> v(static_cast<std::size_t>(n), 1.0f);
  if (std > 0.0f) {
    for (auto& x : v) x = std * static_cast<float>(rng.normal());
  }
  w.add_bf16(name, std::move(shape), v);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Write a random-weight OLMoE or DeepSeek-V2 model directory (BF16, sharded by layer) of real shapes."};
  Shape s;
  MlaShape m;
  std::string out, arch = "olmoe";
  std::uint64_t seed = 1;
  app.add_option("--out", out, "directory to write")->required();
  app.add_option("--arch", arch,
                 "olmoe (OLMoE-1B-7B's shapes) or deepseek_v2 (DeepSeek-V2-Lite's: vocab 102400, 64 experts "
                 "top-6 of width 1408, 2 shared, kv_lora_rank 512, first layer dense of width 10944)")
      ->check(CLI::IsMember({"olmoe", "deepseek_v2"}))
      ->capture_default_str();
  auto* layers = app.add_option("--layers", s.layers, "decoder layers (OLMoE-1B-7B has 16, DeepSeek-V2-Lite 27)");
  auto* top_k = app.add_option("--top-k", s.top_k, "experts per token (default 8, deepseek_v2 6)");
  auto* ffn = app.add_option("--ffn", s.ffn, "expert FFN width (default 1024, deepseek_v2 1408)");
  auto* vocab = app.add_option("--vocab", s.vocab, "vocabulary (default 50304, deepseek_v2 102400)");
  app.add_option("--hidden", s.hidden, "hidden size")->capture_default_str();
  app.add_option("--experts", s.experts, "routed experts per layer")->capture_default_str();
  app.add_option("--seed", seed, "random seed")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  const bool mla = arch == "deepseek_v2";
  if (mla) {
    if (layers->count() == 0) s.layers = 27;
    if (top_k->count() == 0) s.top_k = 6;
    if (ffn->count() == 0) s.ffn = 1408;
    if (vocab->count() == 0) s.vocab = 102400;
    s.context = 4096;
  }
  if (s.layers < 1 || (mla && s.layers <= m.first_k_dense)) {
    fmt::print(stderr, "bench_hf_checkpoint: --layers must be at least {}, got {}\n", mla ? m.first_k_dense + 1 : 1,
               s.layers);
    return 1;
  }

  const auto start = std::chrono::steady_clock::now();
  fs::create_directories(out);
  const nlohmann::ordered_json config = mla ? deepseek_v2_config(s, m) : olmoe_config(s);
  std::ofstream(fs::path(out) / "config.json") << config.dump(2) << "\n";

  const int shards = s.layers + 1;
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  std::uint64_t total = 0;
  for (int shard = 0; shard < shards; ++shard) {
    occult::SplitMix64 rng(seed * 0x9E3779B97F4A7C15ull + static_cast<std::uint64_t>(shard));
    occult::SafetensorsWriter w;
    const std::string file = fmt::format("model-{:05d}-of-{:05d}.safetensors", shard + 1, shards);
    std::vector<std::string> names;
    auto put = [&](const std::string& name, std::vector<std::int64_t> shape, float std) {
      add(w, name, std::move(shape), std, rng);
      names.push_back(name);
    };
    const std::int64_t H = s.hidden, F = s.ffn, E = s.experts, V = s.vocab;
    if (shard == s.layers) {
      put("model.embed_tokens.weight", {V, H}, 0.02f);
      put("model.norm.weight", {H}, 0.0f);
      put("lm_head.weight", {V, H}, 0.02f);
    } else {
      const std::string p = fmt::format("model.layers.{}.", shard);
      put(p + "input_layernorm.weight", {H}, 0.0f);
      put(p + "post_attention_layernorm.weight", {H}, 0.0f);
      if (mla) {
        const std::int64_t NH = s.heads, KL = m.kv_lora_rank, R = m.qk_rope;
        const std::string a = p + "self_attn.";
        put(a + "q_proj.weight", {NH * (m.qk_nope + R), H}, 0.02f);
        put(a + "kv_a_proj_with_mqa.weight", {KL + R, H}, 0.02f);
        put(a + "kv_a_layernorm.weight", {KL}, 0.0f);
        put(a + "kv_b_proj.weight", {NH * (m.qk_nope + m.v_head), KL}, 0.02f);
        put(a + "o_proj.weight", {H, NH * m.v_head}, 0.02f);
        auto swiglu = [&](const std::string& x, std::int64_t width) {
          put(x + "gate_proj.weight", {width, H}, 0.02f);
          put(x + "up_proj.weight", {width, H}, 0.02f);
          put(x + "down_proj.weight", {H, width}, 0.02f);
        };
        if (shard < m.first_k_dense) {
          swiglu(p + "mlp.", m.dense_ffn);
        } else {
          put(p + "mlp.gate.weight", {E, H}, 0.02f);
          for (int e = 0; e < E; ++e) swiglu(fmt::format("{}mlp.experts.{}.", p, e), F);
          swiglu(p + "mlp.shared_experts.", F * m.shared_experts);
        }
      } else {
        for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
          put(p + "self_attn." + proj + ".weight", {H, H}, 0.02f);
        }
        put(p + "self_attn.q_norm.weight", {H}, 0.0f);
        put(p + "self_attn.k_norm.weight", {H}, 0.0f);
        put(p + "mlp.gate.weight", {E, H}, 0.02f);
        for (int e = 0; e < E; ++e) {
          const std::string x = fmt::format("{}mlp.experts.{}.", p, e);
          put(x + "gate_proj.weight", {F, H}, 0.02f);
          put(x + "up_proj.weight", {F, H}, 0.02f);
          put(x + "down_proj.weight", {H, F}, 0.02f);
        }
      }
    }
    w.write((fs::path(out) / file).string());
    total += fs::file_size(fs::path(out) / file);
    for (const auto& n : names) weight_map[n] = file;
    fmt::print(stderr, "\rbench_hf_checkpoint: shard {}/{} ({:.2f} GB so far)", shard + 1, shards,
               total / 1e9);
  }
  const nlohmann::ordered_json index = {{"metadata", {{"total_size", total}}},
                                        {"weight_map", weight_map}};
  std::ofstream(fs::path(out) / "model.safetensors.index.json") << index.dump(2) << "\n";
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  fmt::print(stderr, "\n");
  fmt::print("wrote {} ({}): {} layers, {:.2f} GB BF16 in {} shards, {:.1f} s\n", out, arch, s.layers,
             total / 1e9, shards, seconds);
  return 0;
}
