// Memory before allocation: what one rank of a D-rank run of a model config will hold in
// parameters and gradients, what this host can give each of its ranks, and the check the
// MoeTransformer constructor makes with both, so that a model too large for the machine fails
// at once with one message instead of being killed by the kernel half-way through loading.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "occult/linalg/linear.h"
#include "occult/model/config.h"

namespace occult {

class Communicator;
class MoeTransformer;

// The bytes one rank holds for the model's parameters (F32, or BF16 matrices for inference) and
// (training) their F32 gradients, as the
// MoeTransformer allocates them: activations, which depend on the batch and sequence length,
// and the optimizer's moments are not included.
struct MemoryEstimate {
  // The dense arena and its gradients: every non-expert tensor (embedding, attention, norms,
  // routers, shared experts, dense MLPs, LM head), replicated on every rank.
  std::int64_t dense_bytes = 0;
  // This rank's experts with their gradients, plus the per-layer buffers each MoE layer keeps
  // (its copy of the router weight and the router gradient), over every MoE layer.
  std::int64_t expert_bytes = 0;
  // Experts per MoE layer assumed on this rank: ceil(E / D), a balanced placement's maximum.
  int experts_per_layer = 0;
  // MoE layers of the config.
  int moe_layers = 0;

  // dense_bytes + expert_bytes.
  std::int64_t total_bytes() const { return dense_bytes + expert_bytes; }
};

// The estimate for one rank of a `num_ranks`-rank run of `config` (which must be valid, see
// validate_model_config) with a balanced placement; without `training` (inference) no gradient
// is allocated; `weights` is the dtype the matrices and experts are held in (ParallelOptions);
// `experts_per_layer` > 0 replaces ceil(E / D) (a placement with replicas holds more).
// Throws when num_ranks < 1.
MemoryEstimate estimate_model_memory(const ModelConfig& config, int num_ranks, bool training = true,
                                     WeightDType weights = WeightDType::kF32, int experts_per_layer = 0);

// What this process may use.
struct AvailableMemory {
  // Bytes available to this rank; -1 when unknown (no /proc/meminfo: the check is skipped).
  std::int64_t bytes_per_rank = -1;
  // MemAvailable of the host (-1 when unknown or when the limit comes from the environment).
  std::int64_t host_bytes = -1;
  // Ranks sharing this host: OMPI_COMM_WORLD_LOCAL_SIZE, 1 when unset.
  int ranks_on_host = 1;
  // True when bytes_per_rank is OCCULT_MEMORY_LIMIT_GIB's value rather than the host's.
  bool from_environment = false;
};

// The name of the environment variable that sets the memory available PER RANK, in GiB (a
// positive decimal number), instead of /proc/meminfo; tests use it to make the refusal
// deterministic, users to leave room for something else on the host.
inline constexpr const char* kMemoryLimitEnv = "OCCULT_MEMORY_LIMIT_GIB";

// The memory this rank may use: OCCULT_MEMORY_LIMIT_GIB GiB when that variable is set (throws
// naming it when it is not a positive number), else MemAvailable from /proc/meminfo divided by
// the ranks on this host (OMPI_COMM_WORLD_LOCAL_SIZE, 1 when unset or not a positive integer).
// Not collective.
AvailableMemory available_memory_per_rank();

// Throws occult::Error "the model needs X GiB per rank (dense ..., experts ...) but Y GiB are
// available per rank on this host (...): use more ranks or a smaller model", with the byte
// counts, when `needed` exceeds `available` (never when available.bytes_per_rank is unknown).
// Not collective.
void check_memory(const MemoryEstimate& needed, const AvailableMemory& available);

// What one training step adds per rank on top of the parameters (and gradients).
struct StepMemoryEstimate {
  std::int64_t optimizer_bytes = 0;   // AdamW's two F32 moments of this rank's trainable tensors
  std::int64_t activation_bytes = 0;  // the model's activation arena for the batch shape (exact)
  // The MoE layers' routing state, plans, received rows, expert activations and exchange
  // messages, assuming balanced routing (each rank serves its share of the assignments) and one
  // row per assignment (standard dispatch; occult sends fewer), and under BF16 compute the
  // experts' per-step BF16 rounding: an estimate, not a bound.
  std::int64_t moe_buffer_bytes = 0;
  std::int64_t total_bytes() const { return optimizer_bytes + activation_bytes + moe_buffer_bytes; }
};

// The MoE buffers of StepMemoryEstimate for `config` on `num_ranks` ranks, `tokens_per_rank`
// tokens each, with `wire_bytes` bytes per exchanged value and the GEMMs in `compute`: kept by
// every MoE layer when training, by one layer at a time for inference.
std::int64_t estimate_moe_buffer_bytes(const ModelConfig& config, int num_ranks, std::int64_t tokens_per_rank,
                                       int wire_bytes, bool training, ComputeDType compute = ComputeDType::kF32);

// Collective: refuses, on every rank with one message naming the parts and the flags that
// shrink them, a training step whose memory (StepMemoryEstimate for `batch_per_rank` sequences
// of `seq_len` tokens, AdamW over the tensors marked in `trainable`, all when empty) does not
// fit what this rank may still use: MemAvailable now (the model is already allocated), or
// OCCULT_MEMORY_LIMIT_GIB minus the model's estimate. Call before the first step.
void check_training_step_fits_memory(MoeTransformer& model, const std::vector<bool>& trainable,
                                     std::int64_t batch_per_rank, int seq_len);

// Collective over `comm`: estimates one rank's memory for `config` on comm.size() ranks, reads
// what this rank may use and checks the one against the other under agree_on_errors, so that a
// refusal (or a bad OCCULT_MEMORY_LIMIT_GIB) throws on every rank with one message. `config`
// must be valid. The MoeTransformer constructor calls it before allocating anything.
void check_model_fits_memory(const ModelConfig& config, Communicator& comm, bool training = true,
                             WeightDType weights = WeightDType::kF32, int experts_per_layer = 0);

}  // namespace occult
