#include "occult/model/memory.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "occult/comm/communicator.h"
#include "occult/comm/wire_format.h"
#include "occult/model/model.h"
#include "occult/core/error.h"

namespace occult {

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr std::int64_t kFloat = sizeof(float);

// "1.50" for 1.5 GiB; three significant digits below 0.01 GiB, so small models read non-zero.
std::string gib(std::int64_t bytes) {
  const double g = static_cast<double>(bytes) / kGiB;
  return g >= 0.01 || g == 0.0 ? fmt::format("{:.2f}", g) : fmt::format("{:.3g}", g);
}

// Elements of the dense tensors MoeTransformer::build_tensors adds: the large matrices (held in
// BF16 when the model is) and the rest (vectors, routers, shared-expert gates; always F32).
struct DenseElements {
  std::int64_t matrices = 0, others = 0;
};

DenseElements dense_elements(const ModelConfig& c) {
  const std::int64_t V = c.vocab_size, H = c.hidden_size, E = c.num_experts, QD = c.q_dim(),
                     KD = c.kv_dim(), hd = c.head_dim();
  DenseElements n;
  n.matrices = V * H;  // model.embed_tokens
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    n.others += 2 * H;                           // input_layernorm, post_attention_layernorm
    if (c.mla()) {
      const std::int64_t NH = c.num_attention_heads, QK = NH * c.qk_head_dim(), QL = c.q_lora_rank,
                         KL = c.kv_lora_rank;
      // q_proj, or q_a_proj, q_a_layernorm and q_b_proj; kv_a_proj_with_mqa, kv_a_layernorm,
      // kv_b_proj; o_proj.
      n.matrices += QL > 0 ? QL * H + QK * QL : QK * H;
      n.others += QL + KL;
      n.matrices += (KL + c.qk_rope_head_dim) * H + NH * (c.qk_nope_head_dim + c.v_head_dim) * KL;
      n.matrices += H * c.attention_out_dim();
    } else {
      n.matrices += QD * H + 2 * KD * H + H * QD;  // q, k, v, o projections
    }
    if (c.attention_qkv_bias) n.others += QD + 2 * KD;
    if (c.attention_o_bias) n.others += H;
    if (c.qk_norm == QkNorm::kFull) n.others += QD + KD;
    if (c.qk_norm == QkNorm::kPerHead) n.others += 2 * hd;
    if (c.is_moe_layer(l)) {
      const std::int64_t W = c.shared_intermediate_size();
      n.others += E * H;  // router
      if (c.router_selection_bias) n.others += E;  // its e_score_correction_bias
      if (W > 0) {
        n.matrices += 3 * W * H;
        if (c.shared_expert_gate) n.others += H;
      }
    } else {
      n.matrices += 3 * static_cast<std::int64_t>(c.intermediate_size) * H;
    }
  }
  n.others += H;                                  // model.norm
  if (!c.tie_word_embeddings) n.matrices += V * H;  // lm_head
  return n;
}

}  // namespace

MemoryEstimate estimate_model_memory(const ModelConfig& config, int num_ranks, bool training,
                                     WeightDType weights, int experts_per_layer) {
  OCCULT_CHECK(num_ranks >= 1, "memory estimate: the run must have at least 1 rank, got {}",
               num_ranks);
  const std::int64_t matrix_bytes = weights == WeightDType::kBF16 ? 2 : kFloat;
  const std::int64_t E = config.num_experts, H = config.hidden_size,
                     F = config.moe_intermediate_size;
  MemoryEstimate m;
  m.moe_layers = config.num_moe_layers();
  m.experts_per_layer =
      experts_per_layer > 0 ? experts_per_layer : static_cast<int>((E + num_ranks - 1) / num_ranks);
  // Parameters and gradients of the dense arena.
  const std::int64_t copies = training ? 2 : 1;  // values, and gradients when training
  const DenseElements dense = dense_elements(config);
  m.dense_bytes = dense.matrices * matrix_bytes + dense.others * kFloat +
                  (copies - 1) * (dense.matrices + dense.others) * kFloat;
  // Per MoE layer (src/moe/moe_layer.cc): the router copy (and its gradient) [E,H], and per
  // local expert gate/up [F,H] and down [H,F] (with their gradients).
  const std::int64_t experts = static_cast<std::int64_t>(m.experts_per_layer) * 3 * F * H;
  const std::int64_t bias = config.router_selection_bias ? E * kFloat : 0;  // the layer's selection bias copy
  const std::int64_t per_layer =
      copies * E * H * kFloat + bias + experts * matrix_bytes + (copies - 1) * experts * kFloat;
  m.expert_bytes = m.moe_layers * per_layer;
  return m;
}

std::int64_t estimate_moe_buffer_bytes(const ModelConfig& c, int num_ranks, std::int64_t tokens_per_rank,
                                       int wire_bytes, bool training, ComputeDType compute) {
  OCCULT_CHECK(num_ranks >= 1 && tokens_per_rank >= 0 && wire_bytes >= 1,
               "MoE buffer estimate: {} ranks, {} tokens per rank, {} bytes per value", num_ranks, tokens_per_rank,
               wire_bytes);
  const std::int64_t N = tokens_per_rank, H = c.hidden_size, E = c.num_experts, k = c.num_experts_per_tok,
                     F = c.moe_intermediate_size;
  // Balanced routing: a rank serves as many assignments as its own tokens make (N * k).
  const std::int64_t A = N * k;
  const std::int64_t routing = N * H * kFloat + N * E * kFloat + 3 * A * 4;  // x copy, probs, ids/weights/sources
  const std::int64_t plan = A * (4 + 12 + 4 + 1) + A * (8 + 4 + 8);         // send side, then receive side
  const std::int64_t rows = 2 * A * H * kFloat + 2 * A * F * kFloat;        // received rows, outputs, W1x/W3x
  const std::int64_t messages = 2 * (A * H * wire_bytes + A * 12);          // one send and one receive buffer
  const std::int64_t per_layer = routing + plan + rows + messages;
  // Training under BF16 compute: every layer's BF16 rounding of its F32 experts (ceil(E / D) of
  // them), made by the forward for its backward.
  const std::int64_t rounded_experts =
      training && compute == ComputeDType::kBF16 ? (E + num_ranks - 1) / num_ranks * 3 * F * H * 2 : 0;
  return (training ? c.num_moe_layers() : std::min(1, c.num_moe_layers())) * per_layer +
         c.num_moe_layers() * rounded_experts;
}

void check_training_step_fits_memory(MoeTransformer& model, const std::vector<bool>& trainable,
                                     std::int64_t batch_per_rank, int seq_len) {
  Communicator& comm = model.comm();
  agree_on_errors(comm, [&] {
    const ModelConfig& c = model.config();
    StepMemoryEstimate step;
    const auto& tensors = model.tensors();
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      if (trainable.empty() || trainable[i]) step.optimizer_bytes += 2 * tensors[i].numel * kFloat;
    }
    step.activation_bytes = model.activation_bytes(batch_per_rank, seq_len);
    step.moe_buffer_bytes = estimate_moe_buffer_bytes(c, comm.size(), batch_per_rank * seq_len,
                                                      wire_bytes_per_value(model.parallel_options().wire), true,
                                                      model.parallel_options().gemm.compute);
    const AvailableMemory available = available_memory_per_rank();
    if (available.bytes_per_rank < 0) return;
    // A limit from the environment is the whole budget, the model included; MemAvailable is
    // read now, after the model (and the optimizer) took theirs.
    const MemoryEstimate held = estimate_model_memory(c, comm.size(), true, WeightDType::kF32);
    const std::int64_t room = available.from_environment ? available.bytes_per_rank - held.total_bytes()
                                                          : available.bytes_per_rank + step.optimizer_bytes;
    OCCULT_CHECK(step.total_bytes() <= room,
                 "a training step of {} sequences x {} tokens per rank needs {} GiB per rank (optimizer moments {}, "
                 "activations {}, MoE routing and exchange buffers about {}) but {} GiB are available per rank ({}): "
                 "lower --batch or --seq-len, or use more ranks",
                 batch_per_rank, seq_len, gib(step.total_bytes()), gib(step.optimizer_bytes),
                 gib(step.activation_bytes), gib(step.moe_buffer_bytes), gib(std::max<std::int64_t>(room, 0)),
                 available.from_environment ? fmt::format("{} minus the model's {} GiB", kMemoryLimitEnv,
                                                          gib(held.total_bytes()))
                                            : "MemAvailable with the model loaded");
  });
}

AvailableMemory available_memory_per_rank() {
  AvailableMemory a;
  if (const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE"); local != nullptr) {
    char* end = nullptr;
    errno = 0;
    const long n = std::strtol(local, &end, 10);
    if (errno == 0 && end != local && *end == '\0' && n >= 1 && n <= (1 << 20)) {
      a.ranks_on_host = static_cast<int>(n);
    }
  }
  if (const char* limit = std::getenv(kMemoryLimitEnv); limit != nullptr && *limit != '\0') {
    char* end = nullptr;
    errno = 0;
    const double g = std::strtod(limit, &end);
    OCCULT_CHECK(errno == 0 && end != limit && *end == '\0' && std::isfinite(g) && g > 0 &&
                     g * kGiB < 9.2e18,
                 "{}=\"{}\" must be a positive number of GiB (the memory each rank may use)",
                 kMemoryLimitEnv, limit);
    a.bytes_per_rank = static_cast<std::int64_t>(g * kGiB);
    a.from_environment = true;
    return a;
  }
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("MemAvailable:", 0) != 0) continue;
    std::istringstream fields(line.substr(13));
    std::int64_t kib = -1;
    std::string unit;
    fields >> kib >> unit;
    if (fields.fail() || kib < 0 || unit != "kB") break;
    a.host_bytes = kib * 1024;
    a.bytes_per_rank = a.host_bytes / a.ranks_on_host;
    break;
  }
  return a;
}

void check_memory(const MemoryEstimate& needed, const AvailableMemory& available) {
  if (available.bytes_per_rank < 0 || needed.total_bytes() <= available.bytes_per_rank) return;
  const std::string source =
      available.from_environment ? fmt::format("{} sets the limit per rank", kMemoryLimitEnv)
      : available.ranks_on_host > 1
          ? fmt::format("{} ranks share its {} GiB MemAvailable", available.ranks_on_host,
                        gib(available.host_bytes))
          : fmt::format("its MemAvailable is {} GiB", gib(available.host_bytes));
  OCCULT_FAIL(
      "the model needs {} GiB per rank ({} bytes: dense {} GiB, experts {} GiB for {} experts "
      "in each of {} MoE layers) but {} GiB ({} bytes) are available "
      "per rank on this host ({}): use more ranks or a smaller model",
      gib(needed.total_bytes()), needed.total_bytes(), gib(needed.dense_bytes),
      gib(needed.expert_bytes), needed.experts_per_layer, needed.moe_layers,
      gib(available.bytes_per_rank), available.bytes_per_rank, source);
}

void check_model_fits_memory(const ModelConfig& config, Communicator& comm, bool training,
                             WeightDType weights, int experts_per_layer) {
  agree_on_errors(comm, [&] {
    check_memory(estimate_model_memory(config, comm.size(), training, weights, experts_per_layer),
                 available_memory_per_rank());
  });
}

}  // namespace occult
