#include "hf/hf_reference.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "occult/core/error.h"
#include "occult/core/safetensors.h"

namespace occult::hf {

void rms_norm(std::span<double> out, std::span<const double> x, std::span<const double> weight,
              double eps) {
  OCCULT_CHECK(out.size() == x.size() && weight.size() == x.size(),
               "rms_norm: x has {} values, weight {}, out {}", x.size(), weight.size(), out.size());
  double sum_sq = 0.0;
  for (double v : x) sum_sq += v * v;
  const double scale = 1.0 / std::sqrt(sum_sq / static_cast<double>(x.size()) + eps);
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = x[i] * scale * weight[i];
}

void linear(std::span<double> out, std::span<const double> x, std::span<const double> w,
            std::span<const double> bias, int rows, int cols) {
  OCCULT_CHECK(static_cast<int>(out.size()) == rows && static_cast<int>(x.size()) == cols &&
                   w.size() == static_cast<std::size_t>(rows) * cols &&
                   (bias.empty() || static_cast<int>(bias.size()) == rows),
               "linear: shapes do not match [{}, {}]", rows, cols);
  for (int r = 0; r < rows; ++r) {
    double acc = bias.empty() ? 0.0 : bias[r];
    for (int c = 0; c < cols; ++c) acc += w[static_cast<std::size_t>(r) * cols + c] * x[c];
    out[r] = acc;
  }
}

void apply_rope(std::span<double> head, int position, double theta) {
  const int dim = static_cast<int>(head.size());
  OCCULT_CHECK(dim % 2 == 0, "apply_rope: head_dim {} is odd", dim);
  const int half = dim / 2;
  for (int i = 0; i < half; ++i) {
    const double inv_freq = std::pow(theta, -2.0 * i / dim);
    const double angle = position * inv_freq;
    const double c = std::cos(angle);
    const double s = std::sin(angle);
    const double a = head[i];
    const double b = head[i + half];
    head[i] = a * c - b * s;
    head[i + half] = b * c + a * s;
  }
}

void causal_attention(std::span<double> out, std::span<const double> q, std::span<const double> k,
                      std::span<const double> v, int seq, int heads, int kv_heads, int head_dim) {
  OCCULT_CHECK(kv_heads >= 1 && heads % kv_heads == 0,
               "causal_attention: {} heads are not a multiple of {} kv heads", heads, kv_heads);
  const std::size_t q_width = static_cast<std::size_t>(heads) * head_dim;
  const std::size_t kv_width = static_cast<std::size_t>(kv_heads) * head_dim;
  OCCULT_CHECK(q.size() == seq * q_width && out.size() == q.size() && k.size() == seq * kv_width &&
                   v.size() == k.size(),
               "causal_attention: buffer sizes do not match seq {}", seq);
  const int group = heads / kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  std::vector<double> scores(seq);
  for (int h = 0; h < heads; ++h) {
    const int kvh = h / group;
    for (int t = 0; t < seq; ++t) {
      const double* qt = &q[t * q_width + h * head_dim];
      double max_score = -INFINITY;
      for (int s = 0; s <= t; ++s) {
        const double* ks = &k[s * kv_width + kvh * head_dim];
        double dot = 0.0;
        for (int d = 0; d < head_dim; ++d) dot += qt[d] * ks[d];
        scores[s] = dot * scale;
        max_score = std::max(max_score, scores[s]);
      }
      double denom = 0.0;
      for (int s = 0; s <= t; ++s) {
        scores[s] = std::exp(scores[s] - max_score);
        denom += scores[s];
      }
      double* ot = &out[t * q_width + h * head_dim];
      for (int d = 0; d < head_dim; ++d) ot[d] = 0.0;
      for (int s = 0; s <= t; ++s) {
        const double* vs = &v[s * kv_width + kvh * head_dim];
        for (int d = 0; d < head_dim; ++d) ot[d] += scores[s] / denom * vs[d];
      }
    }
  }
}

void swiglu_mlp(std::span<double> out, std::span<const double> x, std::span<const double> gate,
                std::span<const double> up, std::span<const double> down, int hidden, int ffn) {
  std::vector<double> g(ffn), u(ffn);
  linear(g, x, gate, {}, ffn, hidden);
  linear(u, x, up, {}, ffn, hidden);
  for (int i = 0; i < ffn; ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
  linear(out, g, down, {}, hidden, ffn);
}

std::vector<RoutedExpert> route_top_k(std::span<const double> router_logits, int k,
                                      bool renormalize) {
  const int n = static_cast<int>(router_logits.size());
  OCCULT_CHECK(k >= 1 && k <= n, "route_top_k: k = {} with {} experts", k, n);
  const double max_logit = *std::max_element(router_logits.begin(), router_logits.end());
  std::vector<double> prob(n);
  double denom = 0.0;
  for (int e = 0; e < n; ++e) {
    prob[e] = std::exp(router_logits[e] - max_logit);
    denom += prob[e];
  }
  for (double& p : prob) p /= denom;
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return prob[a] > prob[b]; });
  std::vector<RoutedExpert> chosen;
  double sum = 0.0;
  for (int i = 0; i < k; ++i) {
    chosen.push_back({order[i], prob[order[i]]});
    sum += prob[order[i]];
  }
  if (renormalize) {
    for (RoutedExpert& c : chosen) c.weight /= sum;
  }
  return chosen;
}

void apply_interleaved_rope(std::span<double> x, int position, std::span<const double> rates, double magnitude) {
  const int dim = static_cast<int>(x.size());
  OCCULT_CHECK(dim % 2 == 0 && static_cast<int>(rates.size()) == dim / 2,
               "apply_interleaved_rope: dim {} with {} rates", dim, rates.size());
  for (int i = 0; i < dim / 2; ++i) {
    const double angle = position * rates[i];
    const double c = magnitude * std::cos(angle), s = magnitude * std::sin(angle);
    const double a = x[2 * i], b = x[2 * i + 1];
    x[2 * i] = a * c - b * s;
    x[2 * i + 1] = b * c + a * s;
  }
}

namespace {

// YaRN's magnitude rule: 1 + 0.1 m ln(s) when the context is extended (s > 1).
double yarn_magnitude_rule(double s, double m) { return s > 1.0 ? 1.0 + 0.1 * m * std::log(s) : 1.0; }

}  // namespace

std::vector<double> rope_pair_rates(const HfConfig& c, int dim) {
  std::vector<double> rates(dim / 2);
  for (int i = 0; i < dim / 2; ++i) rates[i] = 1.0 / std::pow(c.rope_theta, 2.0 * i / dim);
  if (!c.yarn) return rates;
  // Pair i makes L * rate_i / (2 pi) turns over the original context L; solving
  // turns(i) = beta for i gives the ramp ends (beta_fast: the fast end, rounded down; beta_slow:
  // the slow end, rounded up), clamped to [0, dim - 1].
  auto pair_at = [&](double turns) {
    return std::log(c.yarn_original_context / (2.0 * M_PI * turns)) / std::log(c.rope_theta) * dim / 2.0;
  };
  const double fast_end = std::max(0.0, std::floor(pair_at(c.yarn_beta_fast)));
  double slow_end = std::min(static_cast<double>(dim - 1), std::ceil(pair_at(c.yarn_beta_slow)));
  if (slow_end == fast_end) slow_end += 0.001;
  for (int i = 0; i < dim / 2; ++i) {
    // 0 at and below the fast end (rate kept), 1 at and above the slow end (rate / factor).
    double t = (i - fast_end) / (slow_end - fast_end);
    t = t < 0.0 ? 0.0 : (t > 1.0 ? 1.0 : t);
    rates[i] = (1.0 - t) * rates[i] + t * rates[i] / c.yarn_factor;
  }
  return rates;
}

std::vector<RoutedExpert> route_deepseek(std::span<const double> logits, std::span<const double> bias,
                                         const HfConfig& c, double* gap) {
  const int n = static_cast<int>(logits.size());
  std::vector<double> scores(n);
  if (c.scoring_func == "softmax") {
    const double max_logit = *std::max_element(logits.begin(), logits.end());
    double denom = 0.0;
    for (int e = 0; e < n; ++e) denom += std::exp(logits[e] - max_logit);
    for (int e = 0; e < n; ++e) scores[e] = std::exp(logits[e] - max_logit) / denom;
  } else {
    OCCULT_CHECK(c.scoring_func == "sigmoid", "route_deepseek: scoring_func {}", c.scoring_func);
    for (int e = 0; e < n; ++e) scores[e] = 1.0 / (1.0 + std::exp(-logits[e]));
  }
  std::vector<double> choice = scores;
  if (c.topk_method == "noaux_tc") {
    OCCULT_CHECK(static_cast<int>(bias.size()) == n, "route_deepseek: noaux_tc needs e_score_correction_bias");
    for (int e = 0; e < n; ++e) choice[e] += bias[e];
  }
  double smallest_gap = INFINITY;
  // Softmax scores carry relative float errors, so their gaps are measured as log ratios (the
  // logit gaps); biased sigmoid scores carry absolute ones.
  auto gap_between = [&](double a, double b) {
    if (c.scoring_func != "softmax") return a - b;
    return b > 0.0 ? std::log(a / b) : INFINITY;
  };
  // Descending order of values, ties to the lower index (a stable sort of the indices).
  auto order_of = [](const std::vector<double>& values) {
    std::vector<int> order(values.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return values[a] > values[b]; });
    return order;
  };
  if (c.topk_method != "greedy") {
    const int size = n / c.n_group;
    std::vector<double> group_scores(c.n_group);
    for (int g = 0; g < c.n_group; ++g) {
      std::vector<double> members(choice.begin() + g * size, choice.begin() + (g + 1) * size);
      std::sort(members.begin(), members.end(), std::greater<>());
      group_scores[g] = c.topk_method == "noaux_tc" ? members[0] + members[1] : members[0];
    }
    const std::vector<int> groups = order_of(group_scores);
    if (c.topk_group < c.n_group) {
      smallest_gap = gap_between(group_scores[groups[c.topk_group - 1]], group_scores[groups[c.topk_group]]);
    }
    std::vector<bool> kept(c.n_group, false);
    for (int j = 0; j < c.topk_group; ++j) kept[groups[j]] = true;
    for (int e = 0; e < n; ++e) {
      if (!kept[e / size]) choice[e] = 0.0;  // masked_fill(~mask, 0.0)
    }
  }
  const std::vector<int> order = order_of(choice);
  if (c.top_k < n) {
    smallest_gap = std::min(smallest_gap, gap_between(choice[order[c.top_k - 1]], choice[order[c.top_k]]));
  }
  if (gap != nullptr) *gap = smallest_gap;
  std::vector<RoutedExpert> chosen;
  double sum = 0.0;
  for (int j = 0; j < c.top_k; ++j) {
    const int e = order[j];
    // V3 gathers the unbiased scores; V2 keeps the (masked) values it selected on.
    const double w = c.topk_method == "noaux_tc" ? scores[e] : choice[e];
    chosen.push_back({e, w});
    sum += w;
  }
  const bool renormalise = c.top_k > 1 && c.norm_topk_prob;
  for (RoutedExpert& r : chosen) {
    if (renormalise) r.weight /= sum + 1e-20;
    if (c.model_type == "deepseek_v3" || !renormalise) r.weight *= c.routed_scaling_factor;
  }
  return chosen;
}

namespace {

// The logit gap between the k-th and (k+1)-th expert (infinite when every expert is chosen).
double top_k_gap(std::span<const double> router_logits, int k) {
  if (k >= static_cast<int>(router_logits.size())) return INFINITY;
  std::vector<double> sorted(router_logits.begin(), router_logits.end());
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  return sorted[k - 1] - sorted[k];
}

const nlohmann::json& require(const nlohmann::json& cfg, const char* key, const std::string& path) {
  OCCULT_CHECK(cfg.contains(key) && !cfg[key].is_null(), "{}: missing key \"{}\"", path, key);
  return cfg[key];
}

template <typename T>
T get_or(const nlohmann::json& cfg, const char* key, T fallback) {
  if (!cfg.contains(key) || cfg[key].is_null()) return fallback;
  return cfg[key].get<T>();
}

}  // namespace

HfConfig read_hf_config(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / "config.json").string();
  std::ifstream in(path);
  OCCULT_CHECK(in.good(), "cannot open {}", path);
  const nlohmann::json cfg = nlohmann::json::parse(in);
  HfConfig c;
  c.model_type = require(cfg, "model_type", path).get<std::string>();
  c.vocab_size = require(cfg, "vocab_size", path).get<int>();
  c.hidden_size = require(cfg, "hidden_size", path).get<int>();
  c.num_layers = require(cfg, "num_hidden_layers", path).get<int>();
  c.num_heads = require(cfg, "num_attention_heads", path).get<int>();
  c.num_kv_heads = get_or<int>(cfg, "num_key_value_heads", c.num_heads);
  c.head_dim = c.hidden_size / c.num_heads;
  c.rms_norm_eps = require(cfg, "rms_norm_eps", path).get<double>();
  c.rope_theta = require(cfg, "rope_theta", path).get<double>();
  c.tie_word_embeddings = get_or<bool>(cfg, "tie_word_embeddings", false);
  c.o_bias = c.qkv_bias = get_or<bool>(cfg, "attention_bias", false);
  c.dense_ffn = get_or<int>(cfg, "intermediate_size", 0);
  c.top_k = require(cfg, "num_experts_per_tok", path).get<int>();
  if (cfg.contains("rope_scaling") && !cfg["rope_scaling"].is_null()) {
    const nlohmann::json& rs = cfg["rope_scaling"];
    OCCULT_CHECK(rs.value("type", rs.value("rope_type", std::string())) == "yarn",
                 "{}: the reference models rope_scaling of type yarn only", path);
    c.yarn = true;
    c.yarn_factor = rs.at("factor").get<double>();
    c.yarn_original_context = rs.at("original_max_position_embeddings").get<int>();
    c.yarn_beta_fast = rs.value("beta_fast", 32.0);
    c.yarn_beta_slow = rs.value("beta_slow", 1.0);
    c.yarn_mscale = rs.value("mscale", 1.0);
    c.yarn_mscale_all_dim = rs.value("mscale_all_dim", 0.0);
  }
  c.sparse.assign(c.num_layers, true);

  // Qwen2/Qwen3-MoE decoder layers: sparse unless listed in mlp_only_layers, and only every
  // decoder_sparse_step-th layer counting from 1.
  auto qwen_sparse_layers = [&] {
    const std::vector<int> mlp_only = get_or<std::vector<int>>(cfg, "mlp_only_layers", {});
    const std::set<int> dense(mlp_only.begin(), mlp_only.end());
    const int step = get_or<int>(cfg, "decoder_sparse_step", 1);
    for (int l = 0; l < c.num_layers; ++l) {
      c.sparse[l] = !dense.count(l) && c.num_experts > 0 && (l + 1) % step == 0;
    }
  };

  if (c.model_type == "olmoe") {
    c.num_experts = require(cfg, "num_experts", path).get<int>();
    c.expert_ffn = require(cfg, "intermediate_size", path).get<int>();
    c.renormalize = get_or<bool>(cfg, "norm_topk_prob", false);
    OCCULT_CHECK(get_or<double>(cfg, "clip_qkv", 0.0) == 0.0, "{}: clip_qkv is not modelled", path);
  } else if (c.model_type == "qwen2_moe") {
    // Qwen2MoeAttention: q/k/v carry a bias (newer configs may say so with qkv_bias), o_proj never.
    c.qkv_bias = get_or<bool>(cfg, "qkv_bias", true);
    c.o_bias = false;
    c.num_experts = require(cfg, "num_experts", path).get<int>();
    c.expert_ffn = require(cfg, "moe_intermediate_size", path).get<int>();
    c.shared_ffn = require(cfg, "shared_expert_intermediate_size", path).get<int>();
    c.shared_gate = true;
    c.renormalize = get_or<bool>(cfg, "norm_topk_prob", false);
    OCCULT_CHECK(!get_or<bool>(cfg, "use_sliding_window", false),
                 "{}: use_sliding_window is not modelled", path);
    qwen_sparse_layers();
  } else if (c.model_type == "qwen3_moe") {
    c.head_dim = get_or<int>(cfg, "head_dim", c.head_dim);
    c.num_experts = require(cfg, "num_experts", path).get<int>();
    c.expert_ffn = require(cfg, "moe_intermediate_size", path).get<int>();
    c.renormalize = get_or<bool>(cfg, "norm_topk_prob", false);
    OCCULT_CHECK(!get_or<bool>(cfg, "use_sliding_window", false),
                 "{}: use_sliding_window is not modelled", path);
    qwen_sparse_layers();
  } else if (c.model_type == "deepseek") {
    const bool has_routed = cfg.contains("n_routed_experts") && !cfg["n_routed_experts"].is_null();
    c.num_experts = has_routed ? cfg["n_routed_experts"].get<int>() : 0;
    c.expert_ffn = require(cfg, "moe_intermediate_size", path).get<int>();
    c.shared_ffn = get_or<int>(cfg, "n_shared_experts", 0) * c.expert_ffn;
    // DeepSeek's MoEGate renormalises only when more than one expert is chosen.
    c.renormalize = get_or<bool>(cfg, "norm_topk_prob", false) && c.top_k > 1;
    OCCULT_CHECK(get_or<std::string>(cfg, "scoring_func", "softmax") == "softmax",
                 "{}: scoring_func other than softmax is not modelled", path);
    const int first_dense = get_or<int>(cfg, "first_k_dense_replace", 0);
    const int freq = get_or<int>(cfg, "moe_layer_freq", 1);
    for (int l = 0; l < c.num_layers; ++l) {
      c.sparse[l] = has_routed && l >= first_dense && l % freq == 0;
    }
  } else if (c.model_type == "deepseek_v2" || c.model_type == "deepseek_v3") {
    const bool v3 = c.model_type == "deepseek_v3";
    c.mla = true;
    c.q_lora_rank = get_or<int>(cfg, "q_lora_rank", 0);
    c.kv_lora_rank = require(cfg, "kv_lora_rank", path).get<int>();
    c.qk_nope_head_dim = require(cfg, "qk_nope_head_dim", path).get<int>();
    c.qk_rope_head_dim = require(cfg, "qk_rope_head_dim", path).get<int>();
    c.v_head_dim = require(cfg, "v_head_dim", path).get<int>();
    c.num_experts = require(cfg, "n_routed_experts", path).get<int>();
    c.expert_ffn = require(cfg, "moe_intermediate_size", path).get<int>();
    c.shared_ffn = get_or<int>(cfg, "n_shared_experts", 0) * c.expert_ffn;
    c.scoring_func = get_or<std::string>(cfg, "scoring_func", "softmax");
    c.topk_method = get_or<std::string>(cfg, "topk_method", v3 ? "noaux_tc" : "greedy");
    OCCULT_CHECK(v3 ? c.topk_method == "noaux_tc" && c.scoring_func == "sigmoid"
                    : c.topk_method != "noaux_tc" && c.scoring_func == "softmax",
                 "{}: topk_method {} with scoring_func {} is not modelled for {}", path, c.topk_method,
                 c.scoring_func, c.model_type);
    if (c.topk_method != "greedy") {
      c.n_group = require(cfg, "n_group", path).get<int>();
      c.topk_group = require(cfg, "topk_group", path).get<int>();
    }
    c.norm_topk_prob = get_or<bool>(cfg, "norm_topk_prob", false);
    c.routed_scaling_factor = get_or<double>(cfg, "routed_scaling_factor", 1.0);
    const int first_dense = get_or<int>(cfg, "first_k_dense_replace", 0);
    const int freq = get_or<int>(cfg, "moe_layer_freq", 1);
    for (int l = 0; l < c.num_layers; ++l) c.sparse[l] = l >= first_dense && l % freq == 0;
  } else if (c.model_type == "mixtral") {
    c.head_dim = get_or<int>(cfg, "head_dim", c.head_dim);
    c.num_experts = require(cfg, "num_local_experts", path).get<int>();
    c.expert_ffn = require(cfg, "intermediate_size", path).get<int>();
    c.renormalize = true;  // MixtralSparseMoeBlock always renormalises the top-k weights.
    c.qkv_bias = c.o_bias = false;
    // A window at least as long as any sequence the model can see never masks anything.
    const int window = get_or<int>(cfg, "sliding_window", 0);
    OCCULT_CHECK(window == 0 || window >= get_or<int>(cfg, "max_position_embeddings", 0),
                 "{}: an active sliding_window ({}) is not modelled", path, window);
  } else {
    OCCULT_FAIL("{}: model_type \"{}\" is not one the reference knows", path, c.model_type);
  }
  return c;
}

std::span<const double> HfModel::optional(const std::string& name,
                                          std::vector<std::int64_t> shape) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) return {};
  OCCULT_CHECK(it->second.shape == shape, "tensor {} has shape [{}], expected [{}]", name,
               fmt::join(it->second.shape, ", "), fmt::join(shape, ", "));
  return it->second.data;
}

std::span<const double> HfModel::at(const std::string& name,
                                    std::vector<std::int64_t> shape) const {
  OCCULT_CHECK(tensors.count(name), "the model has no tensor {}", name);
  return optional(name, std::move(shape));
}

HfModel load_hf_model(const std::string& dir) {
  HfModel model;
  model.config = read_hf_config(dir);
  const std::filesystem::path root(dir);
  std::vector<std::string> files;
  if (std::filesystem::exists(root / "model.safetensors.index.json")) {
    std::ifstream in(root / "model.safetensors.index.json");
    const nlohmann::json index = nlohmann::json::parse(in);
    std::set<std::string> unique;
    for (const auto& [name, file] : index.at("weight_map").items())
      unique.insert(file.get<std::string>());
    files.assign(unique.begin(), unique.end());
  } else {
    files.push_back("model.safetensors");
  }
  for (const std::string& file : files) {
    const SafetensorsReader reader = SafetensorsReader::open((root / file).string());
    for (const TensorInfo& info : reader.tensors()) {
      const std::vector<float> values = reader.read_f32(info.name);
      Tensor t{info.shape, std::vector<double>(values.begin(), values.end())};
      OCCULT_CHECK(model.tensors.emplace(info.name, std::move(t)).second,
                   "tensor {} is stored twice (again in {})", info.name, file);
    }
  }
  return model;
}

namespace {

// The tensor-name prefix of layer l's MLP block and the names of its parts, per architecture.
struct MoeNames {
  std::string router, expert_gate, expert_up, expert_down;  // expert names take the index
};

MoeNames moe_names(const std::string& model_type, int layer, int expert) {
  const std::string l = fmt::format("model.layers.{}.", layer);
  if (model_type == "mixtral") {
    const std::string e = fmt::format("{}block_sparse_moe.experts.{}.", l, expert);
    return {l + "block_sparse_moe.gate.weight", e + "w1.weight", e + "w3.weight", e + "w2.weight"};
  }
  const std::string e = fmt::format("{}mlp.experts.{}.", l, expert);
  return {l + "mlp.gate.weight", e + "gate_proj.weight", e + "up_proj.weight",
          e + "down_proj.weight"};
}

// The MLP of one layer for one token: dense SwiGLU or the sparse MoE block.
void mlp_forward(std::span<double> out, std::span<const double> x, const HfModel& m, int layer,
                 ForwardStats* stats) {
  const HfConfig& c = m.config;
  const std::int64_t h = c.hidden_size;
  const std::string l = fmt::format("model.layers.{}.mlp.", layer);
  std::fill(out.begin(), out.end(), 0.0);
  if (!c.sparse[layer]) {
    const std::int64_t f = c.dense_ffn;
    swiglu_mlp(out, x, m.at(l + "gate_proj.weight", {f, h}), m.at(l + "up_proj.weight", {f, h}),
               m.at(l + "down_proj.weight", {h, f}), c.hidden_size, c.dense_ffn);
    return;
  }
  const std::int64_t e = c.num_experts;
  const std::int64_t f = c.expert_ffn;
  std::vector<double> router(e);
  linear(router, x, m.at(moe_names(c.model_type, layer, 0).router, {e, h}), {}, c.num_experts,
         c.hidden_size);
  if (stats && !c.mla) stats->min_top_k_gap = std::min(stats->min_top_k_gap, top_k_gap(router, c.top_k));
  std::vector<double> y(h);
  std::vector<RoutedExpert> routed;
  if (c.mla) {
    double gap = INFINITY;
    const auto bias = c.topk_method == "noaux_tc" ? m.at(l + "gate.e_score_correction_bias", {e})
                                                   : std::span<const double>{};
    routed = route_deepseek(router, bias, c, &gap);
    if (stats) stats->min_top_k_gap = std::min(stats->min_top_k_gap, gap);
  } else {
    routed = route_top_k(router, c.top_k, c.renormalize);
  }
  for (const RoutedExpert& r : routed) {
    const MoeNames n = moe_names(c.model_type, layer, r.expert);
    swiglu_mlp(y, x, m.at(n.expert_gate, {f, h}), m.at(n.expert_up, {f, h}),
               m.at(n.expert_down, {h, f}), c.hidden_size, c.expert_ffn);
    for (int i = 0; i < h; ++i) out[i] += r.weight * y[i];
  }
  if (c.shared_ffn > 0) {
    const std::int64_t s = c.shared_ffn;
    const std::string p = l + (c.model_type == "qwen2_moe" ? "shared_expert." : "shared_experts.");
    swiglu_mlp(y, x, m.at(p + "gate_proj.weight", {s, h}), m.at(p + "up_proj.weight", {s, h}),
               m.at(p + "down_proj.weight", {h, s}), c.hidden_size, c.shared_ffn);
    double scale = 1.0;
    if (c.shared_gate) {
      double g = 0.0;
      linear(std::span<double>(&g, 1), x, m.at(l + "shared_expert_gate.weight", {1, h}), {}, 1,
             c.hidden_size);
      scale = 1.0 / (1.0 + std::exp(-g));
    }
    for (int i = 0; i < h; ++i) out[i] += scale * y[i];
  }
}

// DeepSeek-V2/V3 multi-head latent attention of one layer over one sequence (positions
// 0..seq-1); x_norm [T, H] in, out [T, H]. The latent norms use DeepseekV2RMSNorm's default
// epsilon 1e-6; scores are scaled by (qk_nope + qk_rope)^-1/2, times YaRN's mscale(mscale_all_dim)^2.
void mla_attention_forward(std::span<double> out, std::span<const double> x_norm, const HfModel& m, int layer,
                           int seq) {
  const HfConfig& c = m.config;
  const std::int64_t h = c.hidden_size, heads = c.num_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim,
                     vd = c.v_head_dim, qk = nope + rope, kl = c.kv_lora_rank, ql = c.q_lora_rank;
  const std::string p = fmt::format("model.layers.{}.self_attn.", layer);
  constexpr double kLatentEps = 1e-6;
  const std::vector<double> rates = rope_pair_rates(c, static_cast<int>(rope));
  const double magnitude = c.yarn ? yarn_magnitude_rule(c.yarn_factor, c.yarn_mscale) /
                                        yarn_magnitude_rule(c.yarn_factor, c.yarn_mscale_all_dim)
                                  : 1.0;
  // Per token: q [heads, qk] (rope part rotated), k [heads, qk], v [heads, vd].
  std::vector<double> q(seq * heads * qk), k(seq * heads * qk), v(seq * heads * vd);
  for (int t = 0; t < seq; ++t) {
    auto xt = x_norm.subspan(t * h, h);
    std::span<double> qt(&q[t * heads * qk], heads * qk);
    if (ql > 0) {
      std::vector<double> qa(ql);
      linear(qa, xt, m.at(p + "q_a_proj.weight", {ql, h}), {}, ql, h);
      rms_norm(qa, qa, m.at(p + "q_a_layernorm.weight", {ql}), kLatentEps);
      linear(qt, qa, m.at(p + "q_b_proj.weight", {heads * qk, ql}), {}, heads * qk, ql);
    } else {
      linear(qt, xt, m.at(p + "q_proj.weight", {heads * qk, h}), {}, heads * qk, h);
    }
    std::vector<double> ckv(kl + rope), kv(heads * (nope + vd));
    linear(ckv, xt, m.at(p + "kv_a_proj_with_mqa.weight", {kl + rope, h}), {}, kl + rope, h);
    std::span<double> latent(ckv.data(), kl), k_pe(ckv.data() + kl, rope);
    rms_norm(latent, latent, m.at(p + "kv_a_layernorm.weight", {kl}), kLatentEps);
    linear(kv, latent, m.at(p + "kv_b_proj.weight", {heads * (nope + vd), kl}), {}, heads * (nope + vd), kl);
    apply_interleaved_rope(k_pe, t, rates, magnitude);
    for (int hd = 0; hd < heads; ++hd) {
      apply_interleaved_rope(qt.subspan(hd * qk + nope, rope), t, rates, magnitude);
      double* kh = &k[(t * heads + hd) * qk];
      const double* kvh = &kv[hd * (nope + vd)];
      for (std::int64_t d = 0; d < nope; ++d) kh[d] = kvh[d];
      for (std::int64_t d = 0; d < rope; ++d) kh[nope + d] = k_pe[d];
      for (std::int64_t d = 0; d < vd; ++d) v[(t * heads + hd) * vd + d] = kvh[nope + d];
    }
  }
  double scale = 1.0 / std::sqrt(static_cast<double>(qk));
  if (c.yarn && c.yarn_mscale_all_dim != 0.0) {
    const double m = yarn_magnitude_rule(c.yarn_factor, c.yarn_mscale_all_dim);
    scale *= m * m;
  }
  std::vector<double> attn(heads * vd), scores(seq);
  for (int t = 0; t < seq; ++t) {
    for (int hd = 0; hd < heads; ++hd) {
      double max_score = -INFINITY;
      for (int s = 0; s <= t; ++s) {
        double dot = 0.0;
        for (int d = 0; d < qk; ++d) dot += q[(t * heads + hd) * qk + d] * k[(s * heads + hd) * qk + d];
        scores[s] = dot * scale;
        max_score = std::max(max_score, scores[s]);
      }
      double denom = 0.0;
      for (int s = 0; s <= t; ++s) denom += (scores[s] = std::exp(scores[s] - max_score));
      for (int d = 0; d < vd; ++d) {
        double acc = 0.0;
        for (int s = 0; s <= t; ++s) acc += scores[s] / denom * v[(s * heads + hd) * vd + d];
        attn[hd * vd + d] = acc;
      }
    }
    linear(out.subspan(t * h, h), attn, m.at(p + "o_proj.weight", {h, heads * vd}), {}, h, heads * vd);
  }
}

// Self-attention of one layer over one sequence; x_norm [T, H] in, out [T, H].
void attention_forward(std::span<double> out, std::span<const double> x_norm, const HfModel& m,
                       int layer, int seq) {
  const HfConfig& c = m.config;
  if (c.mla) {
    mla_attention_forward(out, x_norm, m, layer, seq);
    return;
  }
  const std::int64_t h = c.hidden_size;
  const std::int64_t qw = static_cast<std::int64_t>(c.num_heads) * c.head_dim;
  const std::int64_t kw = static_cast<std::int64_t>(c.num_kv_heads) * c.head_dim;
  const std::string p = fmt::format("model.layers.{}.self_attn.", layer);
  auto bias = [&](const char* name, std::int64_t n, bool has) {
    return has ? m.at(p + name, {n}) : std::span<const double>{};
  };
  const auto wq = m.at(p + "q_proj.weight", {qw, h});
  const auto wk = m.at(p + "k_proj.weight", {kw, h});
  const auto wv = m.at(p + "v_proj.weight", {kw, h});
  const auto wo = m.at(p + "o_proj.weight", {h, qw});
  const auto bq = bias("q_proj.bias", qw, c.qkv_bias);
  const auto bk = bias("k_proj.bias", kw, c.qkv_bias);
  const auto bv = bias("v_proj.bias", kw, c.qkv_bias);
  const auto bo = bias("o_proj.bias", h, c.o_bias);
  std::vector<double> q(seq * qw), k(seq * kw), v(seq * kw), attn(seq * qw);
  OCCULT_CHECK(!c.yarn, "the reference models YaRN for the latent-attention families only");
  for (int t = 0; t < seq; ++t) {
    auto xt = x_norm.subspan(t * h, h);
    std::span<double> qt(&q[t * qw], qw), kt(&k[t * kw], kw), vt(&v[t * kw], kw);
    linear(qt, xt, wq, bq, qw, h);
    linear(kt, xt, wk, bk, kw, h);
    linear(vt, xt, wv, bv, kw, h);
    if (c.model_type == "olmoe") {
      // OLMoE normalises the whole q and k projections before splitting heads.
      rms_norm(qt, qt, m.at(p + "q_norm.weight", {qw}), c.rms_norm_eps);
      rms_norm(kt, kt, m.at(p + "k_norm.weight", {kw}), c.rms_norm_eps);
    } else if (c.model_type == "qwen3_moe") {
      // Qwen3-MoE normalises each head separately with one [head_dim] weight.
      const auto qn = m.at(p + "q_norm.weight", {c.head_dim});
      const auto kn = m.at(p + "k_norm.weight", {c.head_dim});
      for (int hd = 0; hd < c.num_heads; ++hd) {
        auto s = qt.subspan(hd * c.head_dim, c.head_dim);
        rms_norm(s, s, qn, c.rms_norm_eps);
      }
      for (int hd = 0; hd < c.num_kv_heads; ++hd) {
        auto s = kt.subspan(hd * c.head_dim, c.head_dim);
        rms_norm(s, s, kn, c.rms_norm_eps);
      }
    }
    for (int hd = 0; hd < c.num_heads; ++hd) {
      apply_rope(qt.subspan(hd * c.head_dim, c.head_dim), t, c.rope_theta);
    }
    for (int hd = 0; hd < c.num_kv_heads; ++hd) {
      apply_rope(kt.subspan(hd * c.head_dim, c.head_dim), t, c.rope_theta);
    }
  }
  causal_attention(attn, q, k, v, seq, c.num_heads, c.num_kv_heads, c.head_dim);
  for (int t = 0; t < seq; ++t) {
    linear(out.subspan(t * h, h), std::span<const double>(&attn[t * qw], qw), wo, bo, h, qw);
  }
}

}  // namespace

std::vector<double> hf_forward(const HfModel& m, std::span<const std::int64_t> input_ids, int batch,
                               int seq, ForwardStats* stats) {
  const HfConfig& c = m.config;
  const std::int64_t h = c.hidden_size;
  const std::int64_t vocab = c.vocab_size;
  OCCULT_CHECK(input_ids.size() == static_cast<std::size_t>(batch) * seq,
               "input_ids has {} values, expected {} x {}", input_ids.size(), batch, seq);
  const auto embed = m.at("model.embed_tokens.weight", {vocab, h});
  const auto final_norm = m.at("model.norm.weight", {h});
  const auto lm_head = c.tie_word_embeddings ? embed : m.at("lm_head.weight", {vocab, h});
  std::vector<double> logits(static_cast<std::size_t>(batch) * seq * vocab);
  std::vector<double> x(seq * h), x_norm(seq * h), delta(seq * h);
  for (int b = 0; b < batch; ++b) {
    for (int t = 0; t < seq; ++t) {
      const std::int64_t id = input_ids[b * seq + t];
      OCCULT_CHECK(id >= 0 && id < vocab, "input id {} outside [0, {})", id, vocab);
      std::copy_n(&embed[id * h], h, &x[t * h]);
    }
    for (int l = 0; l < c.num_layers; ++l) {
      const std::string p = fmt::format("model.layers.{}.", l);
      const auto in_norm = m.at(p + "input_layernorm.weight", {h});
      const auto post_norm = m.at(p + "post_attention_layernorm.weight", {h});
      for (int t = 0; t < seq; ++t) {
        rms_norm(std::span(&x_norm[t * h], h), std::span<const double>(&x[t * h], h), in_norm,
                 c.rms_norm_eps);
      }
      attention_forward(delta, x_norm, m, l, seq);
      for (std::size_t i = 0; i < x.size(); ++i) x[i] += delta[i];
      for (int t = 0; t < seq; ++t) {
        std::span<double> xn(&x_norm[t * h], h);
        rms_norm(xn, std::span<const double>(&x[t * h], h), post_norm, c.rms_norm_eps);
        mlp_forward(std::span(&delta[t * h], h), xn, m, l, stats);
      }
      for (std::size_t i = 0; i < x.size(); ++i) x[i] += delta[i];
    }
    for (int t = 0; t < seq; ++t) {
      std::span<double> xn(&x_norm[t * h], h);
      rms_norm(xn, std::span<const double>(&x[t * h], h), final_norm, c.rms_norm_eps);
      linear(std::span(&logits[(static_cast<std::size_t>(b) * seq + t) * vocab], vocab), xn,
             lm_head, {}, vocab, h);
    }
  }
  return logits;
}

}  // namespace occult::hf
