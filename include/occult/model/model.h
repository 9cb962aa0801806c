// The decoder-only MoE transformer of every supported architecture family (arch.h): token
// embedding; per layer RMSNorm -> causal attention (grouped-query heads, optional q/k/v/o
// biases, optional QK-norm, RoPE; or DeepSeek-V2/V3 multi-head latent attention, inference
// only) -> residual -> RMSNorm -> an MoE block (router, top-k routed
// SwiGLU experts, optional shared expert with an optional sigmoid gate) or a dense SwiGLU MLP ->
// residual; then the final RMSNorm, the LM head (optionally tied to the embedding) and
// cross-entropy plus the Switch load-balancing loss over the MoE layers.
//
// Parallelism: every rank holds all dense parameters (data parallel: each rank runs its own
// sequences and dense gradients are summed over ranks) and only the experts the placement
// gives it (expert parallel: the MoE layer moves tokens to experts and back). forward() and
// backward() are collective: every rank calls them, with the same (B_local may differ) shapes.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "occult/comm/wire_format.h"
#include "occult/linalg/linear.h"
#include "occult/model/config.h"
#include "occult/moe/dispatch_plan.h"

namespace occult {

class Communicator;
class MoeBlock;  // src/model/moe_block.h: the model's view of one MoE layer
template <typename P, typename M>
struct LayerParams;  // src/model/layers/blocks.h: one layer's dense tensors
using LayerWeights = LayerParams<const float*, WeightRef>;
using LayerGrads = LayerParams<float*, float*>;

// How the MoE blocks move tokens (DESIGN.md): one copy per (token, expert) or per (token, device).
// The MoE layer's own enum: the model passes it through unchanged.
using Dispatch = DispatchKind;

// Parses "standard" / "occult" as the value of --dispatch; throws naming the value otherwise.
Dispatch parse_dispatch(const std::string& name);
// "standard" or "occult".
const char* dispatch_name(Dispatch dispatch);

// Expert-parallel options of a model instance.
struct ParallelOptions {
  Dispatch dispatch = Dispatch::kOccult;
  // expert_to_device[m][e] for each MoE layer m (MoE layers only, in order; dense layers have no
  // experts); empty means the contiguous placement e -> floor(e*D/E).
  std::vector<std::vector<int>> expert_to_device;
  // device_experts[m][d]: the experts device d holds in MoE layer m when the placement has
  // replicas (DESIGN.md, "Replicas"); empty means each expert only on expert_to_device.
  std::vector<std::vector<std::vector<int>>> device_experts;
  // Collaboration pruning budget M (0 = off) and scheme ("score", "similarity", "device-limited").
  int prune_devices = 0;
  std::string prune_scheme = "score";
  // Per-MoE-layer E x E expert similarity for the similarity scheme (may be empty).
  std::vector<std::vector<float>> similarity;
  // Format of the MoE hidden-state exchanges (sums stay F32; see occult/comm/wire_format.h).
  WireFormat wire = WireFormat::kF32;
  // Overlaps each MoE layer's forward exchanges with its expert compute (MoeLayerConfig::overlap).
  bool overlap = false;
  // False for inference (generate, eval, profile, logits): no gradient buffers are allocated,
  // which halves the model's memory; backward() then throws.
  bool training = true;
  // kBF16 holds the embedding, LM head, projection matrices and experts in BF16 (norms, biases,
  // routers and gates stay F32; all arithmetic is F32). Inference only.
  WeightDType weight_dtype = WeightDType::kF32;
  // How every GEMM of the model runs (oneDNN or BLAS; F32, or BF16 compute on a CPU with
  // AVX512-BF16: operands rounded to BF16, F32 accumulation; in training, mixed precision with
  // F32 master weights and gradients).
  GemmOptions gemm;
};

// One named parameter tensor of this rank. Dense tensors live in the model's dense arena
// (replicated on every rank); expert tensors (only the experts this rank holds) live in the
// MoE layers.
struct ParamTensor {
  std::string name;                  // Hugging Face name, e.g. model.layers.0.self_attn.q_proj.weight
  std::vector<std::int64_t> shape;   // e.g. {H, H}
  std::span<float> value;            // numel elements (empty when held in BF16)
  std::span<std::uint16_t> value_bf16;  // numel elements when held in BF16 (inference), else empty
  std::span<float> grad;             // same shape (empty in an inference-only model)
  std::int64_t offset = 0;           // first element in its dense arena, F32 or BF16 (dense tensors only)
  std::int64_t numel = 0;
  bool expert = false;               // an expert weight, held by its holders only
  bool primary = true;               // false for a replica's copy off its primary holder: checkpoints
                                     // and the global gradient norm count each expert once
  int layer = -1;                    // -1 for embedding, final norm, LM head
  int expert_id = -1;                // global expert id for expert tensors
  int expert_kind = -1;              // expert tensors: 0 gate (W1), 1 up (W3), 2 down (W2)
  bool decay = false;                // AdamW weight decay applies (matrices, not norm gains)
  bool optimized = true;             // false for a router's selection bias (e_score_correction_bias):
                                     // it has no gradient and moves only by the balancing rule
                                     // (update_selection_bias), never by AdamW or weight decay
};

// The loss of one forward pass, already averaged over the GLOBAL batch (all ranks).
struct LossParts {
  double cross_entropy = 0.0;  // mean -log p(target) in nats per token
  double aux = 0.0;            // router_aux_loss_coef * mean over layers of E * sum_e f_e P_e
  double total = 0.0;          // cross_entropy + aux (what backward differentiates)
  std::int64_t tokens = 0;     // global token count
};

// Routing and traffic of the last forward pass, summed over ranks and averaged over layers.
struct RoutingStats {
  double replicas_per_token = 0.0;       // mean distinct devices per token (C_T)
  double max_replicas_per_token = 0.0;   // max over layers of that layer's C_T
  std::int64_t dispatch_bytes = 0;       // hidden-state bytes the dispatcher moved (fwd + bwd), and replicas' gradients
  std::int64_t standard_bytes = 0;       // what standard dispatch moves for this routing and wire
};

// The model: parameters, gradients, activations and the MoE layers of one rank.
class MoeTransformer {
 public:
  // Collective. Validates the placement against the config (one entry per layer, E experts,
  // devices in [0, comm.size()), balanced); throws naming what mismatches, and refuses to train
  // a multi-head latent attention model (its backward is not implemented).
  // `local_reference` selects the single-process naive MoE block (1 rank only; tests use it
  // as the reference the expert-parallel layer is compared against).
  MoeTransformer(const ModelConfig& config, Communicator& comm, const ParallelOptions& options,
                 bool local_reference = false);
  // Releases the arenas and the MoE layers (not collective).
  ~MoeTransformer();
  MoeTransformer(const MoeTransformer&) = delete;
  MoeTransformer& operator=(const MoeTransformer&) = delete;

  // The architecture this model was built for.
  const ModelConfig& config() const { return config_; }
  // The ranks this model spans (dense gradients are summed over them).
  Communicator& comm() { return comm_; }

  // Every parameter of this rank (dense ones, then this rank's experts), in checkpoint order.
  const std::vector<ParamTensor>& tensors() const { return tensors_; }
  // The dense arena (replicated parameters) and its gradients (same layout).
  std::span<float> dense_params() { return dense_params_; }
  std::span<float> dense_grads() { return dense_grads_; }
  // The tensor called `name` if this rank holds it, else nullptr.
  const ParamTensor* find(const std::string& name) const;
  // The F32 values of one tensor of this rank (throws when the name is not held here, or is held
  // in BF16: see weight()).
  std::span<float> param(const std::string& name);
  std::span<float> grad(const std::string& name);
  // The device that holds expert `e` of MoE layer `moe_layer` (an ordinal among MoE layers).
  int expert_device(int moe_layer, int e) const { return expert_to_device_[moe_layer][e]; }
  // The MoE ordinal of transformer layer `layer`, or -1 when it has a dense MLP.
  int moe_index(int layer) const;
  // Layer `layer`'s dense tensors (pointers into the dense arena; null where absent).
  LayerWeights layer_weights(int layer) const;
  // Tensor `name` as a weight matrix in the dtype it is held in (throws when not held here).
  WeightRef weight(const std::string& name) const;
  // Width of layer `layer`'s dense SwiGLU branch: its dense MLP, or its MoE block's shared expert
  // (0 when it has none).
  int mlp_width(int layer) const;
  // Total parameter count of the whole model (all experts) and per token active count.
  std::int64_t num_parameters() const;
  std::int64_t num_active_parameters() const;

  // Deterministic initialisation from `seed`, independent of the rank count: each tensor (and
  // each expert) draws from its own stream, so rank r's experts equal the 1-rank run's.
  void init_weights(std::uint64_t seed);

  // Collective. tokens/targets[B,T] of this rank's sequences (B may be 0 on some ranks,
  // T <= max_position_embeddings, ids in [0, vocab_size)). Returns the global mean loss.
  LossParts forward(std::span<const std::int32_t> tokens, std::span<const std::int32_t> targets,
                    std::int64_t B, int T);
  // Collective. Gradients of forward's total loss: overwrites the gradient arenas, then sums
  // the dense gradients over ranks (expert gradients are complete on their owner already).
  void backward();
  // Routing statistics and bytes of the last forward (+ backward when it ran). Collective.
  RoutingStats routing_stats();
  // Collective. Per MoE layer, the top-k assignments each expert received in the last forward,
  // summed over ranks: [num_moe_layers * E], layer-major (identical on every rank).
  std::vector<std::int64_t> expert_loads();
  // Logits [B,T,V] of the last forward (this rank's tokens).
  std::span<const float> logits() const;
  // The MoE block of MoE layer `moe_layer` (an ordinal in [0, num_moe_layers)), for code that
  // runs the layers itself, e.g. the KV-cache inference engine (src/model/inference.cc); throws
  // naming the layer when out of range.
  MoeBlock& moe_block(int moe_layer);
  // The options the model was built with (an engine that runs the layers itself uses their GEMM
  // options).
  const ParallelOptions& parallel_options() const { return options_; }
  // Bytes of the activation arena a forward of B sequences of T tokens allocates (on its first
  // call with that shape; backward needs nothing more): for memory checks before a run.
  std::int64_t activation_bytes(std::int64_t B, int T);

 private:
  struct Impl;
  void build_tensors();
  void allocate_activations(std::int64_t B, int T);
  // The arena's layout for (B, T): its size in floats; points the views into it when `assign`.
  std::int64_t layout_activations(std::int64_t B, int T, bool assign);
  LayerGrads layer_grads(int layer);
  WeightRef weight_at(std::size_t slot) const;

  ModelConfig config_;
  Communicator& comm_;
  ParallelOptions options_;
  std::vector<std::vector<int>> expert_to_device_;
  std::vector<ParamTensor> tensors_;
  std::vector<float> dense_params_, dense_grads_;
  std::vector<std::uint16_t> dense_bf16_;  // matrices held in BF16 (inference with weight_dtype kBF16)
  std::unique_ptr<Impl> impl_;
};

}  // namespace occult
