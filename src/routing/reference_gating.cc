#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "occult/core/error.h"
#include "routing/reference.h"

namespace occult::reference {

void router_scores(std::span<const float> logits, std::int64_t num_tokens, const GatingConfig& config,
                   std::span<float> scores) {
  const int e = config.num_experts;
  OCCULT_CHECK(e >= 1 && logits.size() == static_cast<std::size_t>(num_tokens * e) &&
                   scores.size() == logits.size(),
               "reference router_scores: shapes do not match num_tokens x num_experts");
  for (std::int64_t t = 0; t < num_tokens; ++t) {
    const std::vector<float> row(logits.begin() + t * e, logits.begin() + (t + 1) * e);
    std::vector<float> out(e);
    if (config.score_function == ScoreFunction::kSigmoid) {
      for (int i = 0; i < e; ++i) out[i] = 1.0f / (1.0f + std::exp(-row[i]));
    } else {
      const float max_logit = *std::max_element(row.begin(), row.end());
      float sum = 0.0f;
      for (int i = 0; i < e; ++i) {
        out[i] = std::exp(row[i] - max_logit);
        sum += out[i];
      }
      for (int i = 0; i < e; ++i) out[i] *= 1.0f / sum;
    }
    std::copy(out.begin(), out.end(), scores.begin() + t * e);
  }
}

void select_topk(std::span<const float> scores, std::span<const float> selection_bias,
                 std::int64_t num_tokens, const GatingConfig& config, std::span<std::int32_t> ids,
                 std::span<float> weights) {
  const int e = config.num_experts;
  const int k = config.top_k;
  OCCULT_CHECK(e >= 1 && k >= 1 && k <= e, "reference select_topk: bad config");
  OCCULT_CHECK(scores.size() == static_cast<std::size_t>(num_tokens * e) &&
                   ids.size() == static_cast<std::size_t>(num_tokens * k) &&
                   weights.size() == ids.size(),
               "reference select_topk: shapes do not match");
  OCCULT_CHECK(config.num_groups >= 1 && e % config.num_groups == 0 && config.kept_groups >= 1 &&
                   config.kept_groups <= config.num_groups,
               "reference select_topk: bad groups");
  const int size = e / config.num_groups;
  struct Candidate {
    float key;
    int id;
  };
  auto descending = [](const Candidate& a, const Candidate& b) { return a.key != b.key ? a.key > b.key : a.id < b.id; };
  for (std::int64_t t = 0; t < num_tokens; ++t) {
    std::vector<float> keys(e);
    for (int i = 0; i < e; ++i) keys[i] = selection_bias.empty() ? scores[t * e + i] : scores[t * e + i] + selection_bias[i];
    std::vector<char> kept(config.num_groups, 1);
    if (config.num_groups > 1) {
      // Score each group from its sorted keys, sort the groups, keep the first kept_groups.
      std::vector<Candidate> groups;
      for (int g = 0; g < config.num_groups; ++g) {
        std::vector<float> members(keys.begin() + g * size, keys.begin() + (g + 1) * size);
        std::sort(members.begin(), members.end(), std::greater<float>());
        const float score = config.group_score == GroupScore::kMax ? members[0] : members[0] + members[1];
        groups.push_back({score, g});
      }
      std::sort(groups.begin(), groups.end(), descending);
      std::fill(kept.begin(), kept.end(), 0);
      for (int j = 0; j < config.kept_groups; ++j) kept[groups[j].id] = 1;
    }
    std::vector<Candidate> all;
    for (int i = 0; i < e; ++i) all.push_back({kept[i / size] ? keys[i] : 0.0f, i});
    std::sort(all.begin(), all.end(), descending);
    float sum = 0.0f;
    for (int j = 0; j < k; ++j) {
      ids[t * k + j] = all[j].id;
      weights[t * k + j] = scores[t * e + all[j].id];
      sum += weights[t * k + j];
    }
    if (config.norm_topk_prob || config.score_function == ScoreFunction::kSigmoid) {
      for (int j = 0; j < k; ++j) weights[t * k + j] /= sum;
    }
    for (int j = 0; j < k; ++j) weights[t * k + j] *= config.routed_scaling_factor;
  }
}

}  // namespace occult::reference
