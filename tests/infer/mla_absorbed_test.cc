// Absorbed multi-head latent attention (kv_b folded into the query and the output) against a
// double-precision twin that expands every cached latent into per-head keys and values and
// attends over them; several heads, rows of different lengths, v_head_dim equal to, above and
// below qk_nope_head_dim, and kv_b held in F32 and in BF16.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "model/layers/blocks.h"
#include "occult/model/config.h"

namespace occult {
namespace {

std::uint16_t to_bf16(float f) {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &f, sizeof bits);
  return static_cast<std::uint16_t>(bits >> 16);  // truncation: any BF16 value will do
}

ModelConfig mla_config(int heads, int nope, int rope, int v, int kl) {
  ModelConfig c;
  c.hidden_size = 16;
  c.num_attention_heads = heads;
  c.kv_lora_rank = kl;
  c.qk_nope_head_dim = nope;
  c.qk_rope_head_dim = rope;
  c.v_head_dim = v;
  return c;
}

// out [N, NH*V] of query rows q [N, NH*hd] (padded heads) over latents[n][0..len): keys
// [W_UK_h c | k_pe], values W_UV_h c, scores scaled by 1/sqrt(hd), all in double.
std::vector<double> expanded_twin(const ModelConfig& c, WeightRef kv_b, const std::vector<float>& q,
                                  const std::vector<std::vector<float>>& latents) {
  const int NH = c.num_attention_heads, hd = c.head_dim(), NOPE = c.qk_nope_head_dim,
            R = c.qk_rope_head_dim, V = c.v_head_dim, KL = c.kv_lora_rank, LW = KL + R,
            KV = NOPE + V;
  const std::size_t N = latents.size();
  std::vector<double> out(N * NH * V, 0.0);
  for (std::size_t n = 0; n < N; ++n) {
    const int len = static_cast<int>(latents[n].size()) / LW;
    for (int h = 0; h < NH; ++h) {
      std::vector<double> keys(static_cast<std::size_t>(len) * (NOPE + R)),
          values(static_cast<std::size_t>(len) * V);
      for (int t = 0; t < len; ++t) {
        const float* lat = latents[n].data() + t * LW;
        for (int i = 0; i < NOPE + V; ++i) {
          double acc = 0.0;
          for (int j = 0; j < KL; ++j)
            acc += static_cast<double>(kv_b.at(h * KV + i, j, KL)) * lat[j];
          if (i < NOPE)
            keys[t * (NOPE + R) + i] = acc;
          else
            values[t * V + i - NOPE] = acc;
        }
        for (int i = 0; i < R; ++i) keys[t * (NOPE + R) + NOPE + i] = lat[KL + i];
      }
      std::vector<double> p(static_cast<std::size_t>(len));
      double maxv = -1e300, sum = 0.0;
      for (int t = 0; t < len; ++t) {
        double dot = 0.0;
        for (int i = 0; i < NOPE + R; ++i)
          dot += static_cast<double>(q[(n * NH + h) * hd + i]) * keys[t * (NOPE + R) + i];
        p[t] = dot / std::sqrt(static_cast<double>(hd));
        maxv = std::max(maxv, p[t]);
      }
      for (int t = 0; t < len; ++t) sum += (p[t] = std::exp(p[t] - maxv));
      for (int t = 0; t < len; ++t) {
        for (int i = 0; i < V; ++i) out[(n * NH + h) * V + i] += p[t] / sum * values[t * V + i];
      }
    }
  }
  return out;
}

void check_absorbed(const ModelConfig& c, bool bf16) {
  const int NH = c.num_attention_heads, hd = c.head_dim(), KL = c.kv_lora_rank,
            LW = mla_latent_width(c), KV = c.qk_nope_head_dim + c.v_head_dim;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> kv_b(static_cast<std::size_t>(NH) * KV * KL);
  for (float& x : kv_b) x = 0.3f * normal(rng);
  std::vector<std::uint16_t> kv_b16(kv_b.size());
  for (std::size_t i = 0; i < kv_b.size(); ++i) kv_b16[i] = to_bf16(kv_b[i]);
  LayerWeights w;
  w.kv_b = bf16 ? WeightRef::bf16(kv_b16.data()) : WeightRef(kv_b.data());
  const std::vector<int> lengths = {1, 5, 3, 9};
  const std::int64_t N = static_cast<std::int64_t>(lengths.size());
  std::vector<std::vector<float>> latents(lengths.size());
  std::vector<const float*> rows;
  for (std::size_t n = 0; n < lengths.size(); ++n) {
    latents[n].resize(static_cast<std::size_t>(lengths[n]) * LW);
    for (float& x : latents[n]) x = normal(rng);
    rows.push_back(latents[n].data());
  }
  // Padded query heads as mla_project writes them: [nope | rope | zeros].
  std::vector<float> q(static_cast<std::size_t>(N) * NH * hd, 0.0f);
  for (std::int64_t r = 0; r < N * NH; ++r) {
    for (int i = 0; i < c.qk_head_dim(); ++i) q[r * hd + i] = normal(rng);
  }
  std::vector<float> out(static_cast<std::size_t>(N) * NH * c.v_head_dim, -1.0f);
  std::vector<float> scratch(static_cast<std::size_t>(mla_absorbed_scratch_floats(c, N, 9)));
  mla_attend_absorbed(c, w, q.data(), N, rows.data(), lengths.data(), out.data(), scratch.data());
  const std::vector<double> want = expanded_twin(c, w.kv_b, q, latents);
  double err = 0.0, norm = 0.0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, std::abs(out[i] - want[i]));
    norm = std::max(norm, std::abs(want[i]));
  }
  // F32 sums of at most KL + R + len terms of unit size: a few ulps relative to the output.
  EXPECT_LT(err, 2e-5 * std::max(1.0, norm))
      << "heads " << NH << " v_head_dim " << c.v_head_dim << " bf16 " << bf16;
  EXPECT_GT(norm, 0.1);  // the comparison is not between two near-zero outputs
}

TEST(MlaAbsorbed, EqualsExpandedAttentionV2Shapes) {
  // DeepSeek-V2 style: v_head_dim == qk_nope_head_dim.
  const ModelConfig c = mla_config(3, 8, 4, 8, 6);
  check_absorbed(c, false);
  check_absorbed(c, true);
}

TEST(MlaAbsorbed, EqualsExpandedAttentionValueWiderThanQueryHead) {
  // The V3 fixture: v_head_dim 12 above qk_nope + qk_rope = 8, so heads are padded to 12.
  const ModelConfig c = mla_config(2, 4, 4, 12, 10);
  check_absorbed(c, false);
  check_absorbed(c, true);
}

TEST(MlaAbsorbed, EqualsExpandedAttentionValueNarrowerThanNope) {
  const ModelConfig c = mla_config(4, 8, 2, 6, 5);
  check_absorbed(c, false);
  check_absorbed(c, true);
}

TEST(MlaAbsorbed, OnePositionGivesItsValuesByHand) {
  // One head, KL 2, R 2, NOPE 1, V 1: kv_b = [[1, 2], [3, -1]] (key row, value row). With one
  // cached position the softmax is 1, so out = W_UV c = 3*c0 - c1 whatever the query.
  const ModelConfig c = mla_config(1, 1, 2, 1, 2);
  const std::vector<float> kv_b = {1.0f, 2.0f, 3.0f, -1.0f};
  LayerWeights w;
  w.kv_b = WeightRef(kv_b.data());
  const std::vector<float> latent = {0.5f, 2.0f, 7.0f, -3.0f};
  const float* rows[] = {latent.data()};
  const int lengths[] = {1};
  const std::vector<float> q = {0.25f, 1.0f, -1.0f};
  std::vector<float> out(1, 0.0f),
      scratch(static_cast<std::size_t>(mla_absorbed_scratch_floats(c, 1, 1)));
  mla_attend_absorbed(c, w, q.data(), 1, rows, lengths, out.data(), scratch.data());
  EXPECT_FLOAT_EQ(out[0], 3.0f * 0.5f - 2.0f);
}

}  // namespace
}  // namespace occult
