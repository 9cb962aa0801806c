#include "occult/train/eval.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>

#include "model/layers/blocks.h"
#include "model/moe_block.h"
#include "occult/comm/communicator.h"
#include "occult/core/error.h"
#include "occult/core/progress.h"
#include "occult/train/data.h"
#include "occult/routing/gating.h"

namespace occult {

namespace {

// Per-layer routing counters of this rank, summed over its tokens: distinct devices, tokens
// whose selected set differs from the plain top-k of their router probabilities, tokens.
struct RoutingCounters {
  std::vector<std::int64_t> devices, changed;
  std::int64_t tokens = 0;
  std::int64_t max_devices = 0;
};

// Adds the routing of the model's last forward (N local tokens) to `c`. The unpruned selection
// is recomputed from the router probabilities with the gating reference (select_topk), so
// "changed" means exactly "collaboration pruning replaced at least one expert".
void count_routing(MoeTransformer& model, std::int64_t N, RoutingCounters& c) {
  const ModelConfig& cfg = model.config();
  const int L = cfg.num_moe_layers(), E = cfg.num_experts, K = cfg.num_experts_per_tok,
            D = model.comm().size();
  const GatingConfig gating = cfg.gating();
  std::vector<std::int32_t> plain(static_cast<std::size_t>(N) * K);
  std::vector<float> plain_weights(plain.size());
  std::vector<std::int32_t> a(K), b(K);
  std::vector<char> seen(D);
  for (int l = 0; l < L; ++l) {
    MoeBlock& block = model.moe_block(l);
    const std::int32_t* ids = block.topk_ids();
    if (N > 0) {
      // The model's selection bias (DeepSeek-V3), when it has one, is part of the choice.
      const float* bias = model.layer_weights(cfg.moe_layer(l)).router_bias;
      select_topk(std::span<const float>(block.router_probs(), static_cast<std::size_t>(N) * E),
                  std::span<const float>(bias, bias != nullptr ? static_cast<std::size_t>(E) : 0), N, gating, plain,
                  plain_weights);
    }
    for (std::int64_t t = 0; t < N; ++t) {
      std::fill(seen.begin(), seen.end(), 0);
      int distinct = 0;
      for (int j = 0; j < K; ++j) {
        const int d = model.expert_device(l, ids[t * K + j]);
        if (!seen[d]) {
          seen[d] = 1;
          ++distinct;
        }
        a[j] = ids[t * K + j];
        b[j] = plain[t * K + j];
      }
      c.devices[l] += distinct;
      c.max_devices = std::max<std::int64_t>(c.max_devices, distinct);
      std::sort(a.begin(), a.end());
      std::sort(b.begin(), b.end());
      if (a != b) ++c.changed[l];
    }
  }
  c.tokens += N;
}

}  // namespace

std::vector<int> eval_window_lengths(std::int64_t num_tokens, int seq_len) {
  OCCULT_CHECK(seq_len >= 1, "--seq-len must be >= 1, got {}", seq_len);
  std::vector<int> lengths;
  for (std::int64_t start = 0; start + 1 < num_tokens; start += seq_len) {
    lengths.push_back(static_cast<int>(std::min<std::int64_t>(seq_len, num_tokens - 1 - start)));
  }
  return lengths;
}

EvalResult evaluate_text(MoeTransformer& model, std::span<const std::int32_t> tokens,
                         const EvalOptions& options) {
  Communicator& comm = model.comm();
  const ModelConfig& cfg = model.config();
  const int T = options.seq_len > 0 ? options.seq_len : std::min(128, cfg.max_position_embeddings);
  agree_on_errors(comm, [&] {
    OCCULT_CHECK(T >= 1 && T <= cfg.max_position_embeddings,
                 "--seq-len must be in [1, max_position_embeddings = {}], got {}",
                 cfg.max_position_embeddings, T);
    OCCULT_CHECK(options.batch >= 1, "--batch (windows per forward pass) must be >= 1, got {}",
                 options.batch);
    OCCULT_CHECK(tokens.size() >= 2,
                 "the evaluation text has {} tokens (bytes); it needs at least 2 to predict one",
                 tokens.size());
  });
  const std::vector<int> lengths = eval_window_lengths(static_cast<std::int64_t>(tokens.size()), T);
  const std::int64_t W = static_cast<std::int64_t>(lengths.size());
  const int L = cfg.num_moe_layers();

  RoutingCounters counters;
  counters.devices.assign(L, 0);
  counters.changed.assign(L, 0);
  double ce_sum = 0.0;
  std::int64_t predicted = 0;
  double seconds = 0.0;
  ProgressBar bar("eval", W, options.progress && comm.rank() == 0);
  std::vector<std::int32_t> in, out;
  // Passes group windows of one length (all full windows, then the shorter last one), since a
  // forward pass takes one T for all its sequences.
  std::int64_t w = 0;
  while (w < W) {
    const int len = lengths[w];
    std::int64_t count = 0;
    while (w + count < W && count < options.batch && lengths[w + count] == len) ++count;
    const Share share = rank_share(count, comm.rank(), comm.size());
    in.clear();
    out.clear();
    for (std::int64_t s = share.begin; s < share.end; ++s) {
      const std::int64_t start = (w + s) * T;
      in.insert(in.end(), tokens.begin() + start, tokens.begin() + start + len);
      out.insert(out.end(), tokens.begin() + start + 1, tokens.begin() + start + 1 + len);
    }
    const auto begin = std::chrono::steady_clock::now();
    const LossParts loss = model.forward(in, out, share.end - share.begin, len);
    double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
    comm.all_reduce_max(std::span<double>(&elapsed, 1));
    seconds += elapsed;
    // forward() returns the global mean; times its token count it is the global sum again.
    ce_sum += loss.cross_entropy * static_cast<double>(loss.tokens);
    predicted += loss.tokens;
    count_routing(model, (share.end - share.begin) * len, counters);
    w += count;
    bar.update(w, fmt::format("{} tokens | loss {:.4f}", predicted,
                              ce_sum / static_cast<double>(predicted)));
  }

  // One reduction for all counters: devices[L], changed[L], tokens; and the max separately.
  std::vector<std::int64_t> sums(counters.devices);
  sums.insert(sums.end(), counters.changed.begin(), counters.changed.end());
  sums.push_back(counters.tokens);
  comm.all_reduce_sum(sums);
  std::int64_t max_devices = counters.max_devices;
  comm.all_reduce_max(std::span<std::int64_t>(&max_devices, 1));

  EvalResult r;
  r.tokens = predicted;
  r.windows = W;
  r.seq_len = T;
  r.loss = ce_sum / static_cast<double>(predicted);
  // The loss is global, so every rank fails alike; a non-finite loss is never reported as a number.
  agree_on_errors(comm, [&] {
    OCCULT_CHECK(std::isfinite(r.loss),
                 "the evaluation loss is {}: the model produces non-finite logits on this text (diverged or "
                 "corrupted weights)",
                 r.loss);
  });
  r.perplexity = std::exp(r.loss);
  const std::int64_t routed = sums[2 * L];
  OCCULT_CHECK(routed == predicted, "internal: {} tokens routed but {} predicted", routed,
               predicted);
  std::int64_t all_devices = 0, all_changed = 0;
  for (int l = 0; l < L; ++l) {
    r.layer_replicas.push_back(static_cast<double>(sums[l]) / static_cast<double>(routed));
    all_devices += sums[l];
    all_changed += sums[L + l];
  }
  const double pairs = static_cast<double>(routed) * L;
  r.replicas_per_token = static_cast<double>(all_devices) / pairs;
  r.tokens_changed = static_cast<double>(all_changed) / pairs;
  r.max_devices_per_token = static_cast<int>(max_devices);
  r.seconds = seconds;
  r.tokens_per_s = seconds > 0 ? static_cast<double>(predicted) / seconds : 0.0;
  bar.finish(fmt::format("loss {:.4f} nats/byte over {} tokens", r.loss, r.tokens));
  return r;
}

std::string eval_result_json(const EvalResult& r) {
  const nlohmann::json j{{"loss", r.loss},
                         {"perplexity", r.perplexity},
                         {"tokens", r.tokens},
                         {"replicas_per_token", r.replicas_per_token},
                         {"tokens_changed", r.tokens_changed}};
  return j.dump();
}

}  // namespace occult
