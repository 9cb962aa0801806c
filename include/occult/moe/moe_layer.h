// The expert-parallel MoE layer (DESIGN.md, "The MoE layer"): router, top-k gating, dispatch
// (standard: one row per (token, expert); occult: one row per (token, device)), SwiGLU expert
// compute with the gate weights applied on the expert's device (stage-1), combine and the
// stage-2 sum at home; and the backward pass through all of it, reusing the dispatch plan.
//
// How a model uses it (every transformer block owns one MoeLayer):
//   MoeLayer moe(comm, config, placement.layer(l).expert_to_device);   // collective
//   moe.load_weights(reader, "model.layers.3.");  // or fill parameters() itself
//   moe.zero_grad();
//   moe.forward(x, num_local_tokens, y);           // collective; keeps what backward needs
//   aux = switch_loss(moe.router_probs(), moe.topk_ids());  // model-side, optional
//   moe.backward(dy, d_router_probs_from_aux, dx); // collective; accumulates gradients
//   comm.all_reduce_sum(moe.router_weight_grad()); // data-parallel router: the MODEL reduces it
// Every rank calls the collective methods the same number of times in the same order; each
// rank may pass a different number of local tokens T_local, including 0. The router weight
// W_r [E, H] is replicated on every rank (identical values are the caller's responsibility);
// the expert weights exist only on the expert's owning rank.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "occult/comm/communicator.h"
#include "occult/comm/wire_format.h"
#include "occult/linalg/linear.h"
#include "occult/moe/backend.h"
#include "occult/moe/dispatch_plan.h"
#include "occult/routing/gating.h"
#include "occult/routing/pruning.h"
#include "occult/routing/replicas.h"

namespace occult {

class SafetensorsReader;
struct MoeLayerBuffers;  // exchange scratch, private to moe_layer.cc
struct ExpertWeightsView;  // occult/moe/expert_compute.h

// Collaboration pruning inside the layer (DESIGN.md, "Collaboration pruning"; the rules are
// routing/pruning.h's prune_routing): after top-k, each token is restricted to at most
// `max_devices` devices of this layer's placement. 0 disables it.
struct MoePruneOptions {
  int max_devices = 0;
  PruneScheme scheme = PruneScheme::kScore;
  // kKeep: a replacement inherits the replaced expert's gate weight (DESIGN.md default);
  // kRecompute: it gets its own p, normalised like g. Backward differentiates whichever.
  PruneWeights weights = PruneWeights::kKeep;
  // PruneScheme::kSimilarity only: E x E expert similarity (e.g. LayerPlacement::similarity).
  std::vector<float> similarity;
};

// Everything that fixes the layer's arithmetic and communication. The routing rules are its
// GatingConfig part: E (num_experts), k (top_k), the score function, norm_topk_prob,
// group-limited selection and the routed scaling factor.
struct MoeLayerConfig : GatingConfig {
  int hidden_size = 0;  // H
  int ffn_size = 0;     // F, each expert's SwiGLU width
  // The layer holds a per-expert selection bias [E] (DeepSeek-V3 e_score_correction_bias),
  // added to the scores for the choice of experts only, never to the gate weights.
  bool selection_bias = false;
  DispatchKind dispatch = DispatchKind::kOccult;
  // Standard dispatch only: 0 = dropless (default); c > 0 caps each expert at
  // ceil(c * T_local * k / E) assignments from each rank (token order; the rest are dropped).
  double capacity_factor = 0;
  MoePruneOptions prune;
  // Format of the hidden-state rows of all four exchanges (dispatch, combine, and both
  // backward); routing metadata and gate gradients always travel in F32, sums run in F32.
  WireFormat wire = WireFormat::kF32;
  // Overlaps the forward's communication with its expert compute: each source rank's rows
  // are computed as they land (this rank's own first), each source's stage-1 rows are sent
  // home as soon as they are done, and home sums them in the blocking order. The bytes, the
  // collectives and the receive plan are the blocking forward's; the output agrees with it to
  // F32 rounding (each source's rows run as GEMM calls of their own) and does not depend on
  // the order in which blocks land. The backward likewise, after one small exchange of every
  // rank's status (three collectives instead of two; the status words are then not counted as
  // metadata), with each source's block computed in a fixed order, so its results do not
  // depend on arrival order either. False runs dispatch, experts and combine one after
  // another. Must be the same on every rank.
  bool overlap = false;
  // False for inference: no gradient buffers are allocated (half the expert memory) and
  // backward() throws.
  bool with_grads = true;
  // kBF16 keeps the expert weights in BF16 (half the memory again; the arithmetic stays F32).
  // Inference only: requires with_grads = false.
  WeightDType expert_dtype = WeightDType::kF32;
  // How the expert GEMMs run (backend, compute precision; the router always computes in F32).
  // BF16 compute needs a CPU with AVX512-BF16; with gradients it is mixed-precision training.
  GemmOptions gemm;

  // The GatingConfig part.
  const GatingConfig& gating() const { return *this; }
  // The pruning rules of `prune` for `num_devices` devices: the one place a layer's pruning
  // configuration is built (the layer, its reference twin and the benchmarks all use it).
  PruneConfig prune_config(int num_devices) const;
};

// Throws occult::Error naming the field unless E >= 1, 1 <= k <= E, H >= 1, F >= 1,
// capacity_factor >= 0 (and only with standard dispatch), 0 <= prune.max_devices, a
// similarity of E x E when the similarity scheme is chosen, and BF16 experts only without
// gradients.
void validate_moe_layer_config(const MoeLayerConfig& config);

// A named parameter tensor of the layer and its gradient (same shape), for optimizers,
// checkpoints and gradient checks. Names follow DESIGN.md's Hugging Face layout without a
// prefix: "mlp.gate.weight", "mlp.experts.{e}.gate_proj.weight", ...
struct MoeParameter {
  std::string name;
  std::vector<std::int64_t> shape;
  std::span<float> value;
  std::span<float> grad;
  bool replicated = false;  // true for the router (data-parallel: its grad needs an all-reduce)
};

// Wall time (seconds) of the last forward/backward, split so that benchmarks can tell
// communication from compute on one rank. With overlap, forward_dispatch is the packing and the
// start of both exchanges, forward_experts the compute and the waits for blocks to land, and
// forward_combine the wait for the last stage-1 rows to come home (the backward's likewise,
// its dispatch time including the status exchange).
struct MoeLayerTimings {
  double forward_router = 0, forward_dispatch = 0, forward_experts = 0, forward_combine = 0;
  double backward_dispatch = 0, backward_experts = 0, backward_combine = 0, backward_router = 0;
};

// One expert-parallel MoE layer on one rank. Not copyable; holds references to `comm`, which
// must outlive it.
class MoeLayer {
 public:
  // Collective. `expert_to_device` [E] must have entries in [0, comm.size()) (uneven counts
  // per device are fine). Errors (config, placement for another D or E) throw on every rank.
  // Weights start at zero; fill them with load_weights, init_random or parameters().
  MoeLayer(Communicator& comm, MoeLayerConfig config, std::vector<int> expert_to_device);
  // Collective. A layer whose experts may be replicated (DESIGN.md, "Replicas"):
  // device_experts[d] lists the experts device d holds (empty: none replicated, as above);
  // every expert is held by its primary device expert_to_device[e]. Each token's slots go to
  // holders chosen by route_token (fewest devices, home first, lighter next), so the output is
  // the unreplicated layer's; backward sums each replicated expert's gradient over its holders
  // (an all-reduce), so every copy gets the unreplicated gradient and stays equal after any
  // identical optimizer step.
  MoeLayer(Communicator& comm, MoeLayerConfig config, std::vector<int> expert_to_device,
           std::vector<std::vector<int>> device_experts);
  ~MoeLayer();
  MoeLayer(const MoeLayer&) = delete;
  MoeLayer& operator=(const MoeLayer&) = delete;

  const MoeLayerConfig& config() const { return config_; }
  const std::vector<int>& expert_to_device() const { return expert_to_device_; }
  // The global ids of this rank's experts, ascending ("local expert i" is local_experts()[i]).
  const std::vector<int>& local_experts() const { return local_experts_; }
  // True when some expert has more than one holder.
  bool replicated() const { return holders_.replicated(); }
  // Where the experts and the router GEMMs run (the CPU backends unless replaced). Replacing
  // them is local to this rank; every rank must run the same arithmetic for the ranks' results
  // to agree. Neither may be null.
  void set_backends(std::unique_ptr<ExpertBackend> experts, std::unique_ptr<RouterBackend> router);
  const ExpertBackend& expert_backend() const { return *expert_backend_; }
  const RouterBackend& router_backend() const { return *router_backend_; }
  // True when this rank is expert e's primary holder (the copy a checkpoint saves and a global
  // gradient norm counts); e must be local.
  bool is_primary(int expert) const { return expert_to_device_[expert] == comm_.rank(); }
  // True when expert `e` lives on this rank.
  bool is_local(int expert) const;

  // Router weight W_r [E, H] (replicated) and its gradient (local; the model all-reduces it).
  std::span<float> router_weight() { return router_; }
  // The selection bias [E] (empty unless config.selection_bias; starts at zero). It has no
  // gradient: the choice of experts is piecewise constant in it.
  std::span<float> selection_bias() { return selection_bias_; }
  std::span<float> router_weight_grad() { return d_router_; }
  // Expert `e`'s W1 (gate_proj) [F, H], W3 (up_proj) [F, H], W2 (down_proj) [H, F] and their
  // gradients; `e` is a global id and must be local (throws naming it otherwise). The weight
  // accessors throw when the experts are held in BF16 (use expert_weight_bf16).
  std::span<float> gate_proj(int expert);
  std::span<float> up_proj(int expert);
  std::span<float> down_proj(int expert);
  std::span<float> gate_proj_grad(int expert);
  std::span<float> up_proj_grad(int expert);
  std::span<float> down_proj_grad(int expert);
  // Expert `e`'s tensor `kind` (0 gate_proj, 1 up_proj, 2 down_proj) when the experts are held
  // in BF16 (throws otherwise, and for a remote expert).
  std::span<std::uint16_t> expert_weight_bf16(int expert, int kind);
  // The router and this rank's expert tensors, router first, then experts ascending (F32
  // experts only: throws when they are held in BF16).
  std::vector<MoeParameter> parameters();

  // Reads `prefix + "mlp.gate.weight"` and, for this rank's experts only,
  // `prefix + "mlp.experts.{e}.{gate,up,down}_proj.weight`; checks every shape. Collective
  // (a missing tensor on one rank fails every rank).
  void load_weights(const SafetensorsReader& reader, std::string_view prefix = "");
  // Fills every weight with a deterministic function of (seed, name, index) uniform in
  // [-scale, scale): all ranks agree on the router and any expert's values regardless of D.
  void init_random(std::uint64_t seed, float scale);
  // Sets every gradient to zero (backward accumulates).
  void zero_grad();

  // Collective. x [T_local, H] -> y [T_local, H]. Computes router logits, probabilities and
  // top-k (then pruning, if configured), plans and runs dispatch, experts and combine, and
  // keeps x's routing, the plan and expert activations for backward.
  void forward(std::span<const float> x, std::int64_t num_tokens, std::span<float> y);
  // Collective. As forward, but with the routing imposed (e.g. from a trace): topk_ids
  // [T_local, k] and topk_weights [T_local, k] are used as given and the router is not run;
  // backward then leaves the router gradient untouched. Ids out of range throw on every rank.
  void forward_with_routing(std::span<const float> x, std::int64_t num_tokens,
                            std::span<const std::int32_t> topk_ids,
                            std::span<const float> topk_weights, std::span<float> y);
  // Collective. dy [T_local, H] -> dx [T_local, H] (overwritten), for the last forward.
  // `d_router_probs` [T_local, E] (may be empty) is an extra gradient on router_probs(), e.g.
  // from the load-balancing loss. Accumulates into router_weight_grad() (local, not reduced)
  // and this rank's expert gradients.
  void backward(std::span<const float> dy, std::span<const float> d_router_probs,
                std::span<float> dx);

  // Read-only routing of the last forward (T_local rows): router probabilities (scores) [T, E]
  // (empty after forward_with_routing), selected experts [T, k] and gate weights [T, k].
  std::span<const float> router_probs() const { return probs_; }
  std::span<const std::int32_t> topk_ids() const { return ids_; }
  std::span<const float> topk_weights() const { return weights_; }
  std::int64_t num_tokens() const { return num_tokens_; }
  // The dispatch plan of the last forward (send side of this rank; the "handle").
  const DispatchPlan& plan() const { return plan_; }
  // The receive side of the last forward (rows and assignments this rank's experts served).
  const ReceivePlan& receive_plan() const { return receive_; }
  // The hidden-state rows this rank's experts received in the last forward [R, H], in the
  // receive plan's row order, widened from the wire format (tests prove with it that every row
  // landed where planned, rounded exactly once).
  std::span<const float> received_hidden_states() const { return x_recv_; }
  // Sum over this rank's tokens of the distinct devices each token's kept slots went to in
  // the last forward (C_T's numerator, with replicas and pruning as they were applied).
  std::int64_t token_device_pairs() const;
  // Pruning counters of the last forward (zeros without pruning).
  const PruneStats& prune_stats() const { return prune_stats_; }
  // Timings of the last forward and backward on this rank.
  const MoeLayerTimings& timings() const { return timings_; }
  // Expert FLOPs of the last forward (2*3*H*F per assignment served here) and backward.
  double forward_expert_flops() const;
  double backward_expert_flops() const;

 private:
  // Plans and runs the exchanges of a forward whose local steps ended with `error` (nullopt
  // when they succeeded); throws on every rank when any rank failed.
  void run_forward(std::span<const float> x, std::span<float> y, std::optional<std::string> error);
  // The overlapped dispatch, experts and combine of run_forward (config_.overlap), after the
  // count exchange succeeded on every rank; the send messages are packed in b.send.
  void overlapped_exchange_and_experts(std::span<float> y);
  // Processes source s's dispatch block of the overlapped forward: fills its part of the
  // receive plan, computes its experts and sends its stage-1 rows home.
  void compute_source_block(int s, int combine);
  // The exchanges and experts of backward(), after this rank's checks ended with `error`
  // (nullopt when they passed); both throw on every rank when any rank failed. The overlapped
  // form (config_.overlap) first agrees on every rank's status in one small exchange, then
  // computes each source's block as it lands and sends its input-gradient rows home at once.
  void blocking_backward(std::span<const float> dy, std::span<float> dx, const std::optional<std::string>& error);
  void overlapped_backward(std::span<const float> dy, std::span<float> dx, const std::optional<std::string>& error);
  // Processes source s's block of the overlapped backward: its experts' backward, then its gate
  // and input gradients sent home on the combine exchange.
  void backward_source_block(int s, int combine);
  // When any rank failed: forgets the plans and throws, on every rank, the lowest failing
  // rank's message (collective; `error` is this rank's own, if any).
  void fail_on_every_rank(bool any_failed, const std::optional<std::string>& error);
  ExpertWeightsView expert_view() const;
  // The experts as this step's GEMMs multiply them: under BF16 compute (the thread's
  // GemmOptions) with F32 master weights and gradients, the forward rounds every local expert
  // to BF16 once (round_experts_for_step) and its backward multiplies by the same rounding,
  // instead of each call rounding each matrix again; otherwise expert_view(). The weights must
  // not change between a forward and its backward (the gradients would not be theirs anyway).
  void round_experts_for_step();
  ExpertWeightsView compute_view() const;
  // Frees the rows, activations and messages of the last forward (inference layers, after
  // each forward).
  void release_forward_buffers();
  int local_index(int expert, const char* what) const;
  // Backward with replicas: keeps the replicated experts' gradients before this backward, then
  // adds this backward's part of each over all its holders (collective).
  void snapshot_replica_gradients();
  void sum_replica_gradients();
  // Calls visit(gradient, offset in the [R, 3, F*H] replica buffers) for each tensor of each
  // replicated expert this rank holds.
  template <typename Visit>
  void for_each_local_replica_grad(Visit&& visit);

  Communicator& comm_;
  MoeLayerConfig config_;
  std::vector<int> expert_to_device_;
  std::vector<int> local_experts_;
  std::vector<int> local_index_of_;  // [E]: index among this rank's experts, -1 if remote
  ExpertHolders holders_;                    // which devices hold each expert
  std::vector<int> local_index_by_device_;   // [D, E] each device's index of e, -1 if absent (replicas)
  std::vector<int> replicated_experts_;      // ids with more than one holder, ascending
  int max_held_experts_ = 0;                 // most experts any device holds
  std::vector<int> slot_device_, homes_;     // [T, k] holder serving each slot, [T] this rank
  std::vector<float> replica_grads_, replica_before_;  // [R, 3, F*H] gradient sums of replicas
  std::vector<std::byte> replica_send_, replica_recv_;  // holders' gradient deltas on the wire
  std::vector<std::int64_t> replica_counts_, replica_offsets_;  // [D] bytes to (and from) each rank

  std::vector<float> router_, d_router_;          // [E, H]
  std::vector<float> selection_bias_;             // [E] when config_.selection_bias
  std::vector<float> w1_, w3_, w2_;               // [L, F, H], [L, F, H], [L, H, F]
  std::vector<std::uint16_t> w1_bf16_, w3_bf16_, w2_bf16_;  // the same, when held in BF16
  // The F32 experts rounded to BF16 for the current forward and backward (compute_view).
  std::vector<std::uint16_t> w1_step_bf16_, w3_step_bf16_, w2_step_bf16_;
  bool step_bf16_current_ = false;
  std::vector<float> d_w1_, d_w3_, d_w2_;

  // State of the last forward.
  std::int64_t num_tokens_ = 0;
  bool routing_imposed_ = false;
  std::vector<float> x_;              // [T, H] copy of the input (router gradient)
  std::vector<float> probs_;          // [T, E]
  std::vector<std::int32_t> ids_;     // [T, k]
  std::vector<float> weights_;        // [T, k]
  std::vector<std::int32_t> weight_source_;  // [T, k]: expert whose p gave slot's weight
  PruneWorkspace prune_workspace_;
  PruneStats prune_stats_;
  DispatchPlan plan_;
  ReceivePlan receive_;
  std::vector<float> x_recv_;         // [R, H] rows received by this rank's experts
  std::vector<float> act_gate_, act_up_;  // [A, F] W1 x and W3 x per assignment (expert order)
  MoeLayerTimings timings_;
  std::unique_ptr<MoeLayerBuffers> buffers_;
  std::unique_ptr<ExpertBackend> expert_backend_;
  std::unique_ptr<RouterBackend> router_backend_;
};

}  // namespace occult
