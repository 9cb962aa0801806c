// bench_mla_decode: one decode step of multi-head latent attention for one layer at
// DeepSeek-V2-Lite's shapes (16 heads, kv_lora_rank 512, qk_nope 128, qk_rope 64, v_head 128;
// kv_b_proj held in BF16), absorbed (mla_attend_absorbed: kv_b folded into query and output)
// against expanded (mla_expand of every cached latent, then attention over the keys and values,
// the inference engine's reference form), per context length. Medians over --repeats after a
// warm-up; every run also checks that the two outputs agree (max relative difference printed).
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "model/layers/blocks.h"
#include "occult/model/config.h"
#include "occult/model/ops.h"

namespace {

using occult::ModelConfig;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The expanded form for row latents [len, KL+R]: keys/values [len, NH*hd], then per head
// softmax(scale q.k) v, compacted to [NH*V].
void expanded_row(const ModelConfig& c, const occult::LayerWeights& w, const float* q,
                  const float* latents, int len, float* out, std::vector<float>& k,
                  std::vector<float>& v, std::vector<float>& scratch, std::vector<float>& scores) {
  const int NH = c.num_attention_heads, hd = c.head_dim(), V = c.v_head_dim;
  occult::mla_expand(c, w, latents, len, k.data(), v.data(), scratch.data());
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  for (int h = 0; h < NH; ++h) {
    for (int t = 0; t < len; ++t) {
      const float* kt = k.data() + (static_cast<std::int64_t>(t) * NH + h) * hd;
      float dot = 0.0f;
      for (int i = 0; i < hd; ++i) dot += q[h * hd + i] * kt[i];
      scores[t] = scale * dot;
    }
    occult::causal_softmax_row(scores.data(), len - 1, len);
    float* oh = out + h * V;
    std::fill(oh, oh + V, 0.0f);
    for (int t = 0; t < len; ++t) {
      const float* vt = v.data() + (static_cast<std::int64_t>(t) * NH + h) * hd;
      for (int i = 0; i < V; ++i) oh[i] += scores[t] * vt[i];
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "One layer's latent-attention decode step, absorbed against expanded, at DeepSeek-V2-Lite's "
      "shapes."};
  int rows = 8, repeats = 5;
  std::vector<int> contexts = {256, 1024, 4096};
  app.add_option("--rows", rows, "decode rows (sequences) per step")->capture_default_str();
  app.add_option("--contexts", contexts, "cached positions per row")->capture_default_str();
  app.add_option("--repeats", repeats, "measured repeats after one warm-up (median)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  ModelConfig c;
  c.hidden_size = 2048;
  c.num_attention_heads = 16;
  c.kv_lora_rank = 512;
  c.qk_nope_head_dim = 128;
  c.qk_rope_head_dim = 64;
  c.v_head_dim = 128;
  const int NH = c.num_attention_heads, hd = c.head_dim(), LW = occult::mla_latent_width(c),
            KL = c.kv_lora_rank;
  const int KV = c.qk_nope_head_dim + c.v_head_dim, OD = NH * c.v_head_dim;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::uint16_t> kv_b(static_cast<std::size_t>(NH) * KV * KL);
  for (auto& x : kv_b) {
    const float f = 0.02f * normal(rng);
    std::uint32_t bits = 0;
    std::memcpy(&bits, &f, sizeof bits);
    x = static_cast<std::uint16_t>(bits >> 16);
  }
  occult::LayerWeights w;
  w.kv_b = occult::WeightRef::bf16(kv_b.data());
  std::vector<float> q(static_cast<std::size_t>(rows) * NH * hd, 0.0f);
  for (std::int64_t r = 0; r < static_cast<std::int64_t>(rows) * NH; ++r) {
    for (int i = 0; i < c.qk_head_dim(); ++i) q[r * hd + i] = normal(rng);
  }
  fmt::print(
      "latent-attention decode step, one layer: {} rows, H=2048 NH={} KL={} R={} nope={} v={}, "
      "kv_b BF16; "
      "medians of {} after 1 warm-up\n",
      rows, NH, KL, c.qk_rope_head_dim, c.qk_nope_head_dim, c.v_head_dim, repeats);
  fmt::print("{:>8} {:>14} {:>14} {:>9} {:>14}\n", "context", "expanded ms", "absorbed ms",
             "speed-up", "max rel diff");
  for (const int len : contexts) {
    std::vector<float> latents(static_cast<std::size_t>(rows) * len * LW);
    for (auto& x : latents) x = normal(rng);
    std::vector<const float*> row_ptr;
    std::vector<int> lengths(static_cast<std::size_t>(rows), len);
    for (int n = 0; n < rows; ++n)
      row_ptr.push_back(latents.data() + static_cast<std::int64_t>(n) * len * LW);
    std::vector<float> out_abs(static_cast<std::size_t>(rows) * OD), out_exp(out_abs.size());
    std::vector<float> scratch(
        static_cast<std::size_t>(occult::mla_absorbed_scratch_floats(c, rows, len)));
    std::vector<float> k(static_cast<std::size_t>(len) * NH * hd), v(k.size()),
        escratch(static_cast<std::size_t>(occult::mla_scratch_floats(c, len))),
        scores(static_cast<std::size_t>(len));
    std::vector<double> t_abs, t_exp;
    for (int r = 0; r <= repeats; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      occult::mla_attend_absorbed(c, w, q.data(), rows, row_ptr.data(), lengths.data(),
                                  out_abs.data(), scratch.data());
      auto t1 = std::chrono::steady_clock::now();
      for (int n = 0; n < rows; ++n) {
        expanded_row(c, w, q.data() + static_cast<std::int64_t>(n) * NH * hd, row_ptr[n], len,
                     out_exp.data() + static_cast<std::int64_t>(n) * OD, k, v, escratch, scores);
      }
      auto t2 = std::chrono::steady_clock::now();
      if (r > 0) {
        t_abs.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        t_exp.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
      }
    }
    double diff = 0.0, norm = 0.0;
    for (std::size_t i = 0; i < out_abs.size(); ++i) {
      diff = std::max(diff, static_cast<double>(std::abs(out_abs[i] - out_exp[i])));
      norm = std::max(norm, static_cast<double>(std::abs(out_exp[i])));
    }
    const double ma = median(t_abs), me = median(t_exp);
    fmt::print("{:>8} {:>14.3f} {:>14.3f} {:>8.1f}x {:>14.2e}\n", len, me, ma, me / ma,
               diff / norm);
  }
  return 0;
}
