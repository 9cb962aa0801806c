#include "occult/infer/inference.h"

#include <cblas.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <new>

#include "model/layers/blocks.h"
#include "model/moe_block.h"
#include "occult/comm/communicator.h"
#include "occult/core/error.h"
#include "occult/core/progress.h"
#include "occult/model/ops.h"

namespace occult {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Rotates each row's heads x[n, NH, hs] by RoPE at position positions[n]: the arithmetic of
// ops.cc's rope_forward (angle in double, cos/sin rounded to float, rotate_half pairs).
void rope_at_positions(float* x, const int* positions, std::int64_t N, int NH, int hs,
                       float theta) {
  const int half = hs / 2;
  std::vector<float> cosv(half), sinv(half);
  for (std::int64_t n = 0; n < N; ++n) {
    for (int i = 0; i < half; ++i) {
      const double freq = std::pow(static_cast<double>(theta), -2.0 * i / hs);
      const double angle = positions[n] * freq;
      cosv[i] = static_cast<float>(std::cos(angle));
      sinv[i] = static_cast<float>(std::sin(angle));
    }
    for (int h = 0; h < NH; ++h) {
      float* v = x + (n * NH + h) * hs;
      for (int i = 0; i < half; ++i) {
        const float c = cosv[i], s = sinv[i];
        const float a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
      }
    }
  }
}

// One decode row's attention: q[NH*hs] at position `pos` against the keys/values [pos+1, NKV*hs]
// of its slot; out[NH*hs] (overwrites); query head h reads key/value head h / (NH/NKV). The
// softmax is causal_softmax_row, as in attention_forward.
void attention_decode_row(float* out, float* scores, const float* q, const float* keys,
                          const float* values, int pos, int NH, int NKV, int hs) {
  const int KC = NKV * hs, group = NH / NKV;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  for (int h = 0; h < NH; ++h) {
    const float* qh = q + h * hs;
    const int kvh = h / group;
    for (int s = 0; s <= pos; ++s) {
      const float* kh = keys + static_cast<std::int64_t>(s) * KC + kvh * hs;
      float dot = 0.0f;
      for (int i = 0; i < hs; ++i) dot += qh[i] * kh[i];
      scores[s] = scale * dot;
    }
    causal_softmax_row(scores, pos, pos + 1);
    float* oh = out + h * hs;
    std::fill(oh, oh + hs, 0.0f);
    for (int s = 0; s <= pos; ++s) {
      const float a = scores[s];
      const float* vh = values + static_cast<std::int64_t>(s) * KC + kvh * hs;
      for (int i = 0; i < hs; ++i) oh[i] += a * vh[i];
    }
  }
}

// Causal attention of one prompt in blocks of `block` query rows: q, out [len, NH*hs] and k, v
// [len, NKV*hs] (heads in columns); scratch [block, len]. Per block and head: scores =
// scale * Q K^T over the keys up to the block's last row, causal softmax as attention_forward,
// out = P V.
void attention_prefill_blocked(float* out, float* scratch, const float* q, const float* k,
                               const float* v, int len, int NH, int NKV, int hs, int block) {
  const int QC = NH * hs, KC = NKV * hs, group = NH / NKV;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  for (int h = 0; h < NH; ++h) {
    const int kvh = h / group;
    for (int r0 = 0; r0 < len; r0 += block) {
      const int rows = std::min(block, len - r0);
      const int keys = r0 + rows;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, hs, scale,
                  q + static_cast<std::int64_t>(r0) * QC + h * hs, QC, k + kvh * hs, KC, 0.0f,
                  scratch, keys);
      for (int i = 0; i < rows; ++i) {
        causal_softmax_row(scratch + static_cast<std::int64_t>(i) * keys, r0 + i, keys);
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hs, keys, 1.0f, scratch, keys,
                  v + kvh * hs, KC, 0.0f, out + static_cast<std::int64_t>(r0) * QC + h * hs, QC);
    }
  }
}

template <typename T>
void grow(std::vector<T>& v, std::int64_t n) {
  if (static_cast<std::int64_t>(v.size()) < n) v.resize(static_cast<std::size_t>(n));
}

}  // namespace

std::int64_t kv_cache_bytes(const ModelConfig& config, std::int64_t sequences, int max_length) {
  if (config.mla()) {
    return static_cast<std::int64_t>(config.num_hidden_layers) * sequences * max_length *
           static_cast<std::int64_t>(mla_latent_width(config)) * static_cast<std::int64_t>(sizeof(float));
  }
  return 2 * static_cast<std::int64_t>(config.num_hidden_layers) * sequences * max_length *
         static_cast<std::int64_t>(config.kv_dim()) * static_cast<std::int64_t>(sizeof(float));
}

InferenceEngine::InferenceEngine(MoeTransformer& model, const InferenceOptions& options)
    : model_(model), options_(options) {
  const ModelConfig& c = model_.config();
  if (options_.max_length == 0) options_.max_length = c.max_position_embeddings;
  agree_on_errors(model_.comm(), [&] {
    OCCULT_CHECK(options_.max_sequences >= 0, "the KV cache needs max_sequences >= 0, got {}",
                 options_.max_sequences);
    OCCULT_CHECK(
        options_.max_length >= 1 && options_.max_length <= c.max_position_embeddings,
        "the KV cache length {} is outside [1, the model's context max_position_embeddings = {}]",
        options_.max_length, c.max_position_embeddings);
    const std::int64_t bytes = cache_bytes();
    OCCULT_CHECK(bytes <= options_.memory_limit_bytes,
                 "the KV cache for {} sequences x {} positions x {} layers x hidden {} needs "
                 "{:.1f} MiB, above the "
                 "limit of {:.1f} MiB (--kv-memory-gib {:.4g}) per rank: lower the batch or the "
                 "length, or raise "
                 "the limit",
                 options_.max_sequences, options_.max_length, c.num_hidden_layers, c.hidden_size,
                 static_cast<double>(bytes) / (1 << 20),
                 static_cast<double>(options_.memory_limit_bytes) / (1 << 20),
                 static_cast<double>(options_.memory_limit_bytes) / (1 << 30));
  });
  for (int l = 0; l < c.num_hidden_layers; ++l) layer_weights_.push_back(model_.layer_weights(l));
  auto W = [&](const std::string& name) -> const float* { return model_.param(name).data(); };
  embed_ = model_.weight("model.embed_tokens.weight");
  final_norm_ = W("model.norm.weight");
  lm_head_ = c.tie_word_embeddings ? embed_ : model_.weight("lm_head.weight");
  const std::size_t floats = static_cast<std::size_t>(cache_bytes() / (c.mla() ? 1 : 2) /
                                                       static_cast<std::int64_t>(sizeof(float)));
  // An allocation failure on one rank must fail every rank, not leave the others waiting.
  agree_on_errors(model_.comm(), [&] {
    try {
      k_cache_.assign(floats, 0.0f);
      if (!c.mla()) v_cache_.assign(floats, 0.0f);
    } catch (const std::bad_alloc&) {
      OCCULT_FAIL(
          "cannot allocate the KV cache of {:.1f} MiB on rank {}: lower the batch or the length",
          static_cast<double>(cache_bytes()) / (1 << 20), model_.comm().rank());
    }
  });
}

std::span<const float> InferenceEngine::prefill(
    const std::vector<std::vector<std::int32_t>>& prompts) {
  const ModelConfig& c = model_.config();
  agree_on_errors(model_.comm(), [&] {
    OCCULT_CHECK(static_cast<std::int64_t>(prompts.size()) <= options_.max_sequences,
                 "prefill got {} prompts but the KV cache holds {} sequences on rank {}",
                 prompts.size(), options_.max_sequences, model_.comm().rank());
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      OCCULT_CHECK(!prompts[i].empty(), "prompt {} is empty: a prompt needs at least one token", i);
      OCCULT_CHECK(
          static_cast<std::int64_t>(prompts[i].size()) <= options_.max_length,
          "prompt {} has {} tokens, longer than the KV cache length {} (the model's context is "
          "max_position_embeddings = {})",
          i, prompts[i].size(), options_.max_length, c.max_position_embeddings);
      for (std::size_t t = 0; t < prompts[i].size(); ++t) {
        OCCULT_CHECK(prompts[i][t] >= 0 && prompts[i][t] < c.vocab_size,
                     "token {} of prompt {} is {}, outside the vocabulary [0, {})", t, i,
                     prompts[i][t], c.vocab_size);
      }
    }
  });
  segments_.clear();
  out_rows_.clear();
  tokens_.clear();
  row_slot_.clear();
  row_pos_.clear();
  lengths_.assign(prompts.size(), 0);
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const int len = static_cast<int>(prompts[i].size());
    segments_.push_back({static_cast<int>(i), static_cast<std::int64_t>(tokens_.size()), len});
    for (int t = 0; t < len; ++t) {
      tokens_.push_back(prompts[i][t]);
      row_slot_.push_back(static_cast<int>(i));
      row_pos_.push_back(t);
    }
    out_rows_.push_back(static_cast<std::int64_t>(tokens_.size()) - 1);
    lengths_[i] = len;
  }
  rows_ = static_cast<std::int64_t>(tokens_.size());
  forward_rows(true);
  return {logits_.data(), out_rows_.size() * static_cast<std::size_t>(c.vocab_size)};
}

std::span<const float> InferenceEngine::decode(std::span<const int> slots,
                                               std::span<const std::int32_t> tokens) {
  const ModelConfig& c = model_.config();
  agree_on_errors(model_.comm(), [&] {
    OCCULT_CHECK(slots.size() == tokens.size(), "decode got {} slots but {} tokens", slots.size(),
                 tokens.size());
    std::vector<char> seen(lengths_.size(), 0);
    for (std::size_t i = 0; i < slots.size(); ++i) {
      const int s = slots[i];
      OCCULT_CHECK(s >= 0 && s < num_sequences(),
                   "decode slot {} is not a prefilled sequence (there are {})", s, num_sequences());
      OCCULT_CHECK(!seen[s], "decode got slot {} twice in one step", s);
      seen[s] = 1;
      OCCULT_CHECK(
          lengths_[s] < options_.max_length,
          "sequence {} already holds {} tokens, the KV cache length (context {}): it cannot grow",
          s, lengths_[s], options_.max_length);
      OCCULT_CHECK(tokens[i] >= 0 && tokens[i] < c.vocab_size,
                   "decode token {} is outside the vocabulary [0, {})", tokens[i], c.vocab_size);
    }
  });
  segments_.clear();
  out_rows_.clear();
  tokens_.assign(tokens.begin(), tokens.end());
  row_slot_.assign(slots.begin(), slots.end());
  row_pos_.resize(slots.size());
  for (std::size_t i = 0; i < slots.size(); ++i) {
    row_pos_[i] = lengths_[slots[i]];
    out_rows_.push_back(static_cast<std::int64_t>(i));
  }
  rows_ = static_cast<std::int64_t>(tokens_.size());
  forward_rows(false);
  for (int s : slots) ++lengths_[s];
  return {logits_.data(), out_rows_.size() * static_cast<std::size_t>(c.vocab_size)};
}

InferenceEngine::~InferenceEngine() = default;

void InferenceEngine::forward_rows(bool prefill) {
  const GemmOptionsScope gemm_scope(model_.parallel_options().gemm);
  const ModelConfig& c = model_.config();
  const int L = c.num_hidden_layers, H = c.hidden_size, V = c.vocab_size, NH = c.num_attention_heads,
            NKV = c.kv_heads(), hs = c.head_dim(), QD = c.q_dim(), KD = c.kv_dim();
  const std::int64_t N = rows_;
  const std::int64_t T = options_.max_length;
  int F = 0;
  for (int l = 0; l < L; ++l) F = std::max(F, model_.mlp_width(l));
  for (auto* buf : {&x_, &ln_, &tmp_, &y_}) grow(*buf, N * H);
  for (auto* buf : {&q_, &q_pre_, &atty_}) grow(*buf, N * QD);
  for (auto* buf : {&k_, &k_pre_, &v_}) grow(*buf, N * KD);
  for (auto* buf : {&h1_, &h3_, &hh_}) grow(*buf, N * F);
  grow(rstd_, N);
  grow(sig_, N);
  grow(q_rstd_, N * NH);
  grow(k_rstd_, N * NKV);
  const std::int64_t n_out = static_cast<std::int64_t>(out_rows_.size());
  grow(lnf_, n_out * H);
  grow(logits_, n_out * V);
  const int block = options_.attention_block_rows > 0 ? options_.attention_block_rows
                                                      : kDefaultAttentionBlockRows;
  int longest = 0;
  for (const auto& seg : segments_) longest = std::max(longest, seg.length);
  const std::int64_t att_floats = !prefill ? T
                                  : longest <= block
                                      ? static_cast<std::int64_t>(NH) * longest * longest
                                      : static_cast<std::int64_t>(block) * longest;
  grow(att_, att_floats);

  float* x = x_.data();
  gather_rows(x, embed_, tokens_.data(), N, H);
  if (c.mla()) grow(mla_scratch_, mla_scratch_floats(c, N));
  for (int l = 0; l < L; ++l) {
    const LayerWeights& w = layer_weights_[l];
    rmsnorm_forward(ln_.data(), rstd_.data(), x, w.ln1, N, H, c.rms_norm_eps);
    if (c.mla()) {
      mla_attention(l, prefill);
    } else {
      float* kc = k_cache_.data() + static_cast<std::int64_t>(l) * options_.max_sequences * T * KD;
      float* vc = v_cache_.data() + static_cast<std::int64_t>(l) * options_.max_sequences * T * KD;
      qkv_forward(c, w, ln_.data(), N, q_.data(), k_.data(), v_.data(),
                  {q_pre_.data(), k_pre_.data(), q_rstd_.data(), k_rstd_.data()});
      if (prefill) {
        // Each prompt starts at position 0: the model's own RoPE and attention kernels per prompt
        // (blocked attention, same arithmetic per score, for prompts longer than a block).
        for (const auto& seg : segments_) {
          float* q = q_.data() + seg.first_row * QD;
          float* k = k_.data() + seg.first_row * KD;
          const float* v = v_.data() + seg.first_row * KD;
          float* out = atty_.data() + seg.first_row * QD;
          rope_forward(q, 1, seg.length, NH, hs, c.rope_theta);
          rope_forward(k, 1, seg.length, NKV, hs, c.rope_theta);
          if (seg.length <= block) {
            attention_forward(out, att_.data(), q, k, v, 1, seg.length, NH, NKV, hs);
          } else {
            attention_prefill_blocked(out, att_.data(), q, k, v, seg.length, NH, NKV, hs, block);
          }
        }
      } else {
        rope_at_positions(q_.data(), row_pos_.data(), N, NH, hs, c.rope_theta);
        rope_at_positions(k_.data(), row_pos_.data(), N, NKV, hs, c.rope_theta);
      }
      // Append this call's keys and values to each row's slot.
      for (std::int64_t n = 0; n < N; ++n) {
        const std::int64_t at = (static_cast<std::int64_t>(row_slot_[n]) * T + row_pos_[n]) * KD;
        std::memcpy(kc + at, k_.data() + n * KD, sizeof(float) * KD);
        std::memcpy(vc + at, v_.data() + n * KD, sizeof(float) * KD);
      }
      if (!prefill) {
        for (std::int64_t n = 0; n < N; ++n) {
          const std::int64_t base = static_cast<std::int64_t>(row_slot_[n]) * T * KD;
          attention_decode_row(atty_.data() + n * QD, att_.data(), q_.data() + n * QD, kc + base,
                               vc + base, row_pos_[n], NH, NKV, hs);
        }
      }
    }
    output_projection_forward(c, w, atty_.data(), N, tmp_.data());
    residual_forward(x, x, tmp_.data(), N * H);
    rmsnorm_forward(ln_.data(), rstd_.data(), x, w.ln2, N, H, c.rms_norm_eps);
    const int m = model_.moe_index(l);
    if (m >= 0) {
      // Collective even with N = 0: this rank's experts serve the other ranks' tokens.
      model_.moe_block(m).forward(w.router, w.router_bias, ln_.data(), N, tmp_.data());
      residual_forward(x, x, tmp_.data(), N * H);
    }
    if (model_.mlp_width(l) > 0) {
      mlp_forward(w, ln_.data(), N, H, model_.mlp_width(l), x,
                  {h1_.data(), h3_.data(), hh_.data(), y_.data(), sig_.data()}, tmp_.data());
    }
  }
  // Only the rows whose next token is wanted go through the final norm and the LM head.
  for (std::int64_t i = 0; i < n_out; ++i) {
    std::memcpy(tmp_.data() + i * H, x + out_rows_[i] * H, sizeof(float) * H);
  }
  rmsnorm_forward(lnf_.data(), rstd_.data(), tmp_.data(), final_norm_, n_out, H, c.rms_norm_eps);
  linear_forward(logits_.data(), lnf_.data(), lm_head_, n_out, H, V);
}

void InferenceEngine::mla_attention(int layer, bool prefill) {
  const ModelConfig& c = model_.config();
  const int NH = c.num_attention_heads, hs = c.head_dim(), QD = c.q_dim(), LW = mla_latent_width(c);
  const std::int64_t N = rows_, T = options_.max_length;
  const LayerWeights& w = layer_weights_[layer];
  float* cache = k_cache_.data() + static_cast<std::int64_t>(layer) * options_.max_sequences * T * LW;
  // The latent rows go straight into each row's slot; q stays in q_.
  grow(k_pre_, N * LW);
  float* latent = k_pre_.data();
  mla_project(c, w, ln_.data(), N, row_pos_.data(), q_.data(), latent, mla_scratch_.data());
  for (std::int64_t n = 0; n < N; ++n) {
    const std::int64_t at = (static_cast<std::int64_t>(row_slot_[n]) * T + row_pos_[n]) * LW;
    std::memcpy(cache + at, latent + n * LW, sizeof(float) * LW);
  }
  const int block = options_.attention_block_rows > 0 ? options_.attention_block_rows : kDefaultAttentionBlockRows;
  if (prefill) {
    // The prompt's keys and values expanded from its own latent rows, then the model's kernels.
    mla_expand(c, w, latent, N, k_.data(), v_.data(), mla_scratch_.data());
    for (const auto& seg : segments_) {
      const float* q = q_.data() + seg.first_row * QD;
      const float* k = k_.data() + seg.first_row * QD;
      const float* v = v_.data() + seg.first_row * QD;
      float* out = atty_.data() + seg.first_row * QD;
      if (seg.length <= block) {
        attention_forward(out, att_.data(), q, k, v, 1, seg.length, NH, NH, hs);
      } else {
        attention_prefill_blocked(out, att_.data(), q, k, v, seg.length, NH, NH, hs, block);
      }
    }
  } else if (options_.mla_absorbed_decode) {
    // Attention in latent space: kv_b folded into each query and output, the cache read as is.
    mla_rows_.resize(static_cast<std::size_t>(N));
    mla_lengths_.resize(static_cast<std::size_t>(N));
    int longest = 0;
    for (std::int64_t n = 0; n < N; ++n) {
      mla_rows_[n] = cache + static_cast<std::int64_t>(row_slot_[n]) * T * LW;
      mla_lengths_[n] = row_pos_[n] + 1;
      longest = std::max(longest, mla_lengths_[n]);
    }
    grow(mla_scratch_, mla_absorbed_scratch_floats(c, N, longest));
    mla_attend_absorbed(c, w, q_.data(), N, mla_rows_.data(), mla_lengths_.data(), atty_.data(), mla_scratch_.data());
    return;  // atty_ already holds NH * v_head_dim values per row
  } else {
    // Each decode row expands its slot's cached latents (positions 0..pos) into keys and values.
    for (std::int64_t n = 0; n < N; ++n) {
      const int pos = row_pos_[n];
      grow(mla_k_, static_cast<std::int64_t>(pos + 1) * QD);
      grow(mla_v_, static_cast<std::int64_t>(pos + 1) * QD);
      grow(mla_scratch_, mla_scratch_floats(c, pos + 1));
      mla_expand(c, w, cache + static_cast<std::int64_t>(row_slot_[n]) * T * LW, pos + 1, mla_k_.data(),
                 mla_v_.data(), mla_scratch_.data());
      attention_decode_row(atty_.data() + n * QD, att_.data(), q_.data() + n * QD, mla_k_.data(), mla_v_.data(), pos,
                           NH, NH, hs);
    }
  }
  mla_compact_heads(c, atty_.data(), N);
}

LayerRouting InferenceEngine::routing(int layer) {
  const ModelConfig& c = model_.config();
  MoeBlock& block = model_.moe_block(layer);
  const int E = c.num_experts, K = c.num_experts_per_tok;
  LayerRouting r;
  r.num_tokens = rows_;
  r.top_k = K;
  r.topk_ids.assign(block.topk_ids(), block.topk_ids() + rows_ * K);
  r.router_probs.assign(block.router_probs(), block.router_probs() + rows_ * E);
  r.topk_weights.resize(static_cast<std::size_t>(rows_ * K));
  for (std::int64_t t = 0; t < rows_; ++t) {
    float sum = 0.0f;
    for (int j = 0; j < K; ++j) sum += r.router_probs[t * E + r.topk_ids[t * K + j]];
    const bool normalise = c.norm_topk_prob || c.score_function == ScoreFunction::kSigmoid;
    for (int j = 0; j < K; ++j) {
      const float p = r.router_probs[t * E + r.topk_ids[t * K + j]];
      r.topk_weights[t * K + j] = (normalise ? p / sum : p) * c.routed_scaling_factor;
    }
  }
  return r;
}

GenerateResult generate(
    MoeTransformer& model, const std::vector<std::vector<std::int32_t>>& prompts,
    const GenerateOptions& options,
    const std::function<void(int step, std::span<const std::int32_t> tokens)>& on_step) {
  Communicator& comm = model.comm();
  const ModelConfig& c = model.config();
  const std::int64_t P = static_cast<std::int64_t>(prompts.size());
  int positions = 1;
  agree_on_errors(comm, [&] {
    validate_sampling_options(options.sampling);
    OCCULT_CHECK(P >= 1, "generation needs at least one prompt");
    OCCULT_CHECK(options.max_new_tokens >= 1, "--max-new-tokens must be >= 1, got {}",
                 options.max_new_tokens);
    for (std::int64_t i = 0; i < P; ++i) {
      const auto len = static_cast<std::int64_t>(prompts[i].size());
      OCCULT_CHECK(len >= 1, "prompt {} is empty: a prompt needs at least one token", i + 1);
      const std::int64_t needed = len + options.max_new_tokens - 1;
      OCCULT_CHECK(needed <= c.max_position_embeddings,
                   "prompt {} has {} tokens; with --max-new-tokens {} generation needs {} "
                   "positions but the model's "
                   "context (max_position_embeddings) is {}",
                   i + 1, len, options.max_new_tokens, needed, c.max_position_embeddings);
      positions = std::max(positions, static_cast<int>(needed));
    }
  });
  const Share share = rank_share(P, comm.rank(), comm.size());
  const std::vector<std::vector<std::int32_t>> local(prompts.begin() + share.begin,
                                                     prompts.begin() + share.end);
  const int n = static_cast<int>(local.size());
  InferenceOptions io;
  io.max_sequences = n;
  io.max_length = positions;
  io.memory_limit_bytes = options.memory_limit_bytes;
  InferenceEngine engine(model, io);

  GenerateResult result;
  result.tokens.assign(static_cast<std::size_t>(P), {});
  for (const auto& p : prompts) result.prompt_tokens += static_cast<std::int64_t>(p.size());
  const ModelConfig& config = model.config();
  std::vector<float> scratch;
  std::vector<std::int64_t> step_tokens(static_cast<std::size_t>(P));
  std::vector<std::int32_t> local_tokens(static_cast<std::size_t>(n));
  // Every rank sees every prompt's tokens, so all agree on which prompts stopped.
  std::vector<char> stopped(static_cast<std::size_t>(P), 0);
  comm.bytes().reset();

  // Samples the token of `step` of local sequences rows[j] from logits row j, then shares them.
  auto take_step = [&](int step, std::span<const float> logits, std::span<const int> rows) {
    std::fill(step_tokens.begin(), step_tokens.end(), 0);
    for (std::size_t j = 0; j < rows.size(); ++j) {
      const int i = rows[j];
      const std::int64_t global = share.begin + i;
      local_tokens[i] = sample_token(
          logits.subspan(j * static_cast<std::size_t>(config.vocab_size), config.vocab_size),
          options.sampling, global, step, &scratch);
      step_tokens[static_cast<std::size_t>(global)] = local_tokens[i];
    }
    comm.all_reduce_sum(std::span<std::int64_t>(step_tokens));
    std::vector<std::int32_t> all(step_tokens.begin(), step_tokens.end());
    for (std::int64_t i = 0; i < P; ++i) {
      if (stopped[i]) {
        all[i] = -1;
        continue;
      }
      result.tokens[i].push_back(all[i]);
      stopped[i] = std::find(options.stop_tokens.begin(), options.stop_tokens.end(), all[i]) !=
                   options.stop_tokens.end();
    }
    if (on_step) on_step(step, all);
  };

  auto start = Clock::now();
  const auto logits = engine.prefill(local);
  double t = seconds_since(start);
  comm.all_reduce_max(std::span<double>(&t, 1));
  result.prefill_seconds = t;
  std::vector<int> all_rows(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) all_rows[i] = i;
  take_step(0, logits, all_rows);
  std::vector<int> slots;
  std::vector<std::int32_t> slot_tokens;
  for (int step = 1; step < options.max_new_tokens; ++step) {
    if (std::all_of(stopped.begin(), stopped.end(), [](char s) { return s != 0; })) break;
    // Stopped prompts leave the batch; the logits rows follow the remaining slots.
    slots.clear();
    slot_tokens.clear();
    for (int i = 0; i < n; ++i) {
      if (stopped[share.begin + i]) continue;
      slots.push_back(i);
      slot_tokens.push_back(local_tokens[i]);
    }
    start = Clock::now();
    const auto out = engine.decode(slots, slot_tokens);
    t = seconds_since(start);
    comm.all_reduce_max(std::span<double>(&t, 1));
    result.decode_seconds += t;
    ++result.decode_steps;
    take_step(step, out, slots);
  }
  result.generated_tokens = 0;
  for (const auto& t : result.tokens) result.generated_tokens += static_cast<std::int64_t>(t.size());
  const auto totals = sum_over_ranks(comm);
  for (const char* name : {kExchangeDispatch, kExchangeCombine}) {
    const auto it = totals.find(name);
    if (it != totals.end()) result.exchange_bytes += it->second.total_bytes();
  }
  return result;
}

Trace profile_routing(MoeTransformer& model, std::span<const std::int32_t> tokens,
                      const ProfileOptions& options) {
  Communicator& comm = model.comm();
  const ModelConfig& c = model.config();
  const int seq_len = options.seq_len > 0 ? options.seq_len : c.max_position_embeddings;
  agree_on_errors(comm, [&] {
    OCCULT_CHECK(!tokens.empty(), "profiling needs at least one calibration token");
    OCCULT_CHECK(seq_len >= 1 && seq_len <= c.max_position_embeddings,
                 "--seq-len {} is outside [1, the model's context max_position_embeddings = {}]",
                 seq_len, c.max_position_embeddings);
    OCCULT_CHECK(options.sequences_per_batch >= 1, "sequences per prefill must be >= 1, got {}",
                 options.sequences_per_batch);
  });
  const std::int64_t T = static_cast<std::int64_t>(tokens.size());
  const std::int64_t num_seqs = (T + seq_len - 1) / seq_len;
  const Share share = rank_share(num_seqs, comm.rank(), comm.size());
  const std::int64_t local_seqs = share.end - share.begin;
  std::int64_t rounds =
      (local_seqs + options.sequences_per_batch - 1) / options.sequences_per_batch;
  comm.all_reduce_max(std::span<std::int64_t>(&rounds, 1));

  InferenceOptions io;
  io.max_sequences = options.sequences_per_batch;
  io.max_length = seq_len;
  InferenceEngine engine(model, io);
  const int L = c.num_moe_layers(), E = c.num_experts, K = c.num_experts_per_tok;
  std::vector<LayerRouting> local(L);
  std::vector<std::int32_t> local_lengths;
  ProgressBar bar("profile", rounds, options.progress && comm.rank() == 0);
  for (std::int64_t round = 0; round < rounds; ++round) {
    std::vector<std::vector<std::int32_t>> batch;
    for (std::int64_t i = 0; i < options.sequences_per_batch; ++i) {
      const std::int64_t s = share.begin + round * options.sequences_per_batch + i;
      if (s >= share.end) break;
      const std::int64_t begin = s * seq_len, end = std::min(T, begin + seq_len);
      batch.emplace_back(tokens.begin() + begin, tokens.begin() + end);
      local_lengths.push_back(static_cast<std::int32_t>(end - begin));
    }
    engine.prefill(batch);
    for (int l = 0; l < L; ++l) {
      const LayerRouting r = engine.routing(l);
      auto& acc = local[l];
      acc.topk_ids.insert(acc.topk_ids.end(), r.topk_ids.begin(), r.topk_ids.end());
      acc.topk_weights.insert(acc.topk_weights.end(), r.topk_weights.begin(), r.topk_weights.end());
      acc.router_probs.insert(acc.router_probs.end(), r.router_probs.begin(), r.router_probs.end());
      acc.num_tokens += r.num_tokens;
    }
    bar.update(round + 1, fmt::format("{} sequences of {} tokens", num_seqs, seq_len));
  }
  bar.finish();

  // Ranks hold consecutive sequences in rank order: gathering in rank order restores token order.
  Trace trace;
  const auto lengths = gather_rows_to_root<std::int32_t>(
      comm, local_lengths, static_cast<std::int64_t>(local_lengths.size()), 1);
  std::vector<LayerRouting> layers(L);
  for (int l = 0; l < L; ++l) {
    const auto& acc = local[l];
    layers[l].top_k = K;
    layers[l].topk_ids = gather_rows_to_root<std::int32_t>(comm, acc.topk_ids, acc.num_tokens, K);
    layers[l].topk_weights = gather_rows_to_root<float>(comm, acc.topk_weights, acc.num_tokens, K);
    layers[l].router_probs = gather_rows_to_root<float>(comm, acc.router_probs, acc.num_tokens, E);
    layers[l].num_tokens = static_cast<std::int64_t>(layers[l].topk_ids.size()) / K;
  }
  if (comm.rank() != 0) return trace;
  trace.num_experts = E;
  trace.top_k = K;
  trace.layers = std::move(layers);
  trace.sequence_lengths = lengths;
  trace.model = options.model_name;
  trace.dataset = options.dataset;
  trace.extra_metadata["source"] =
      fmt::format("occult profile: prefill of {} tokens in sequences of {}", T, seq_len);
  validate_trace(trace, "the profiled routing");
  return trace;
}

}  // namespace occult
