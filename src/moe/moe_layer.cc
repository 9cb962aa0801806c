#include "occult/moe/moe_layer.h"


#include <algorithm>
#include <bit>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>

#include "occult/core/error.h"
#include "occult/core/half.h"
#include "occult/core/safetensors.h"
#include "occult/moe/expert_compute.h"
#include "occult/moe/reference.h"

namespace occult {

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Per-layer scratch for the exchanges, kept out of the header (grows to the largest batch).
struct ExchangeBuffers {
  std::vector<float> logits;                    // [T, E]
  std::vector<std::int64_t> counts, counts_recv;  // [3D] rows, assignments, status per rank
  PlanWorkspace plan_workspace;
  std::vector<std::int64_t> recv_rows, recv_assignments;  // [D] from each rank
  std::vector<std::int64_t> send_counts, send_offsets, send_metadata;  // [D] bytes
  std::vector<std::int64_t> recv_counts, recv_offsets;                 // [D] bytes
  std::vector<std::byte> wire_tokens;           // [T, H] input rows in the wire format
  std::vector<std::byte> send, recv;            // packed messages
  std::vector<Assignment> received;             // [A_recv]
  std::vector<float> expert_out;                // [R_recv, H]
  std::vector<float> dy_recv;                   // [R_recv, H]
  std::vector<float> d_weight_sorted;           // [A_recv]
  std::vector<float> d_weight_arrival;
  std::vector<float> d_weight_send;             // [A_send]
  std::vector<float> dg, dlogits;               // [T, k], [T, E] router backward
  std::vector<double> dp;                       // [E]
  ExpertScratch expert;

  // The overlapped forward and backward (MoeLayerConfig::overlap).
  std::vector<std::int64_t> combine_send_counts, combine_send_offsets;  // [D] bytes
  std::vector<std::int64_t> combine_recv_counts, combine_recv_offsets;  // [D] bytes
  std::vector<std::int64_t> combine_metadata;   // [D] gate-gradient bytes (overlapped backward)
  std::vector<std::byte> combine_send, combine_recv;  // stage-1 rows out (non-F32 wire), home
  std::vector<std::int64_t> block_begin, block_end;  // [D, L] each source's range of each expert
  std::vector<std::int64_t> block_fill;              // [L] where the next landed assignment goes
  std::vector<int> ready;       // sources whose dispatch block landed, in landing order
  std::size_t ready_next = 0;   // first entry of `ready` not yet computed
  std::vector<int> home_landed; // sources of stage-1 rows that landed home
  std::vector<char> home_ready; // [D] stage-1 rows from d have landed
  std::vector<char> source_landed;  // [D] the backward dispatch block from s has landed
  int home_next = 0;            // stage-2 has summed the rows from [0, home_next)
  int dispatch_handle = -1, combine_handle = -1;

  // Resets the landing bookkeeping of an overlapped pass over D ranks.
  void reset_landing(int D) {
    ready.clear();
    ready.reserve(D);
    ready_next = 0;
    home_landed.clear();
    home_landed.reserve(D);
    home_ready.assign(D, 0);
    home_next = 0;
  }
  // Notes the blocks reported home, then calls add(d) for each destination d whose block is
  // home, in destination order as far as they have landed: the sums at home, and so the
  // results, never depend on arrival order.
  template <typename Add>
  void add_home_in_order(int D, Add&& add) {
    for (; !home_landed.empty(); home_landed.pop_back()) home_ready[home_landed.back()] = 1;
    for (; home_next < D && home_ready[home_next]; ++home_next) add(home_next);
  }
  // Waits for the remaining home blocks (adding each in order), then completes both exchanges.
  template <typename Add>
  void finish_overlap(Communicator& comm, int D, Add&& add) {
    while (home_next < D) {
      comm.exchange_wait_some(combine_handle, home_landed);
      add_home_in_order(D, add);
    }
    comm.exchange_finish(dispatch_handle);
    comm.exchange_finish(combine_handle);
    dispatch_handle = combine_handle = -1;
  }

  // Sizes both sides of a packed exchange: to rank d go send_units[d] metadata records of
  // unit_bytes and then send_rows[d] rows of row_bytes; from rank d come recv_units[d]
  // records and recv_rows[d] rows. Fills the byte counts, offsets and metadata sizes.
  void lay_out(std::int64_t unit_bytes, std::int64_t row_bytes, std::span<const std::int64_t> send_units,
               std::span<const std::int64_t> send_row_counts, std::span<const std::int64_t> recv_units,
               std::span<const std::int64_t> recv_row_counts);
};

// The exchange names as strings built once: the communicator takes std::string, and a name
// longer than the small-string buffer would otherwise allocate on every call.
const std::string& exchange_name(const char* name) {
  static const std::string names[] = {kExchangeDispatch, kExchangeCombine, kExchangeBackwardDispatch,
                                      kExchangeBackwardCombine, kExchangeReplicaGradients};
  for (const std::string& n : names) {
    if (n == name) return n;
  }
  OCCULT_FAIL("unknown exchange '{}'", name);
}

// Runs `step`; returns the message of the occult::Error it threw, nullopt when it succeeded.
template <typename Step>
std::optional<std::string> local_error(Step&& step) {
  try {
    step();
  } catch (const Error& e) {
    return e.message();
  }
  return std::nullopt;
}

// memcpy that accepts empty (possibly null) ranges.
void copy_bytes(void* dst, const void* src, std::int64_t bytes) {
  if (bytes > 0) std::memcpy(dst, src, static_cast<std::size_t>(bytes));
}

// offsets[d] = the sum of counts before d; returns the total.
std::int64_t pack_offsets(const std::vector<std::int64_t>& counts, std::vector<std::int64_t>& offsets) {
  offsets.resize(counts.size());
  std::int64_t total = 0;
  for (std::size_t d = 0; d < counts.size(); ++d) {
    offsets[d] = total;
    total += counts[d];
  }
  return total;
}

void ExchangeBuffers::lay_out(std::int64_t unit_bytes, std::int64_t row_bytes,
                              std::span<const std::int64_t> send_units, std::span<const std::int64_t> send_row_counts,
                              std::span<const std::int64_t> recv_units, std::span<const std::int64_t> recv_row_counts) {
  const std::size_t D = send_row_counts.size();
  send_counts.resize(D);
  send_metadata.resize(D);
  recv_counts.resize(D);
  for (std::size_t d = 0; d < D; ++d) {
    send_metadata[d] = send_units[d] * unit_bytes;
    send_counts[d] = send_metadata[d] + send_row_counts[d] * row_bytes;
    recv_counts[d] = recv_units[d] * unit_bytes + recv_row_counts[d] * row_bytes;
  }
  send.resize(static_cast<std::size_t>(pack_offsets(send_counts, send_offsets)));
  recv.resize(static_cast<std::size_t>(pack_offsets(recv_counts, recv_offsets)));
}

// `rows` as wire bytes: F32 rows as they are, others cast once into `scratch`.
std::span<const std::byte> wire_rows(WireFormat wire, std::span<const float> rows, std::vector<std::byte>& scratch) {
  if (wire == WireFormat::kF32) return std::as_bytes(rows);
  scratch.resize(rows.size() * static_cast<std::size_t>(wire_bytes_per_value(wire)));
  encode_wire(wire, rows, scratch.data());
  return scratch;
}

// Destination d's rows of a dispatch, to `out`: each of its send rows' token row from
// `token_rows` (row_bytes each, already in the wire format), in plan order.
void pack_send_rows(const DispatchPlan& plan, int d, const std::byte* token_rows, std::int64_t row_bytes,
                    std::byte* out) {
  for (std::int64_t r = plan.send_row_offsets[d]; r < plan.send_row_offsets[d + 1]; ++r, out += row_bytes) {
    copy_bytes(out, token_rows + plan.row_token[r] * row_bytes, row_bytes);
  }
}

// Stage-2 reduction at home, in F32: out[token of send row r] += the widened wire row r, for
// r in [first, last); `rows` holds those rows back to back.
void add_rows_home(WireFormat wire, const DispatchPlan& plan, std::int64_t first, std::int64_t last,
                   const std::byte* rows, int H, std::span<float> out) {
  const std::int64_t row_bytes = wire_row_bytes(wire, H);
  for (std::int64_t r = first; r < last; ++r) {
    decode_wire_add(wire, rows + (r - first) * row_bytes,
                    out.subspan(static_cast<std::int64_t>(plan.row_token[r]) * H, H));
  }
}

}  // namespace

struct MoeLayerBuffers : ExchangeBuffers {};

PruneConfig MoeLayerConfig::prune_config(int num_devices) const {
  PruneConfig pc;
  pc.num_experts = num_experts;
  pc.top_k = top_k;
  pc.num_devices = num_devices;
  pc.max_devices = prune.max_devices;
  pc.scheme = prune.scheme;
  pc.weights = prune.weights;
  // Sigmoid (DeepSeek-V3) weights are always normalised over the selection.
  pc.norm_topk_prob = norm_topk_prob || score_function == ScoreFunction::kSigmoid;
  return pc;
}

void validate_moe_layer_config(const MoeLayerConfig& c) {
  OCCULT_CHECK(c.num_experts >= 1, "MoE layer: num_experts (E) is {}, expected >= 1", c.num_experts);
  OCCULT_CHECK(c.top_k >= 1 && c.top_k <= c.num_experts, "MoE layer: top-k is {}, expected in [1, E={}]", c.top_k,
               c.num_experts);
  OCCULT_CHECK(c.hidden_size >= 1, "MoE layer: hidden size (H) is {}, expected >= 1", c.hidden_size);
  OCCULT_CHECK(c.ffn_size >= 1, "MoE layer: expert FFN size (F) is {}, expected >= 1", c.ffn_size);
  validate_gating_config(c.gating());
  OCCULT_CHECK(c.prune.max_devices == 0 || c.prune.weights != PruneWeights::kRecompute ||
                   c.routed_scaling_factor == 1.0f,
               "MoE layer: pruning with recomputed weights does not apply the routed scaling factor ({})",
               c.routed_scaling_factor);
  OCCULT_CHECK(c.capacity_factor >= 0, "MoE layer: capacity factor {} is negative", c.capacity_factor);
  OCCULT_CHECK(c.capacity_factor == 0 || c.dispatch == DispatchKind::kStandard,
               "MoE layer: a capacity factor applies to standard dispatch only (occult is dropless)");
  OCCULT_CHECK(c.prune.max_devices >= 0, "MoE layer: prune devices (M) is {}, expected >= 0", c.prune.max_devices);
  OCCULT_CHECK(c.prune.scheme != PruneScheme::kSimilarity ||
                   c.prune.similarity.size() == static_cast<std::size_t>(c.num_experts) * c.num_experts,
               "MoE layer: the similarity prune scheme needs an E x E similarity ({} x {}), got {} values",
               c.num_experts, c.num_experts, c.prune.similarity.size());
  OCCULT_CHECK(c.expert_dtype == WeightDType::kF32 || !c.with_grads,
               "MoE layer: BF16 expert weights are for inference; training needs F32 weights and gradients");
  check_compute_dtype_supported(c.gemm.compute, "MoE layer");
}

MoeLayer::MoeLayer(Communicator& comm, MoeLayerConfig config, std::vector<int> expert_to_device)
    : MoeLayer(comm, std::move(config), std::move(expert_to_device), {}) {}

MoeLayer::MoeLayer(Communicator& comm, MoeLayerConfig config, std::vector<int> expert_to_device,
                   std::vector<std::vector<int>> device_experts)
    : comm_(comm), config_(std::move(config)), expert_to_device_(std::move(expert_to_device)) {
  agree_on_errors(comm_, [&] {
    validate_moe_layer_config(config_);
    OCCULT_CHECK(static_cast<int>(expert_to_device_.size()) == config_.num_experts,
                 "MoE layer: the placement has {} experts, the layer has E = {}", expert_to_device_.size(),
                 config_.num_experts);
    for (std::size_t e = 0; e < expert_to_device_.size(); ++e) {
      OCCULT_CHECK(expert_to_device_[e] >= 0 && expert_to_device_[e] < comm_.size(),
                   "MoE layer: the placement puts expert {} on device {}, but there are {} ranks (a placement "
                   "made for another number of devices?)", e, expert_to_device_[e], comm_.size());
    }
    if (config_.prune.max_devices > 0) {
      const PruneConfig pc = config_.prune_config(comm_.size());
      validate_prune_config(pc, expert_to_device_, config_.prune.similarity);
    }
    if (device_experts.empty()) {
      holders_ = holders_from_primary(expert_to_device_, comm_.size());
    } else {
      OCCULT_CHECK(static_cast<int>(device_experts.size()) == comm_.size(),
                   "MoE layer: the placement lists the experts of {} devices, but there are {} ranks",
                   device_experts.size(), comm_.size());
      holders_ = holders_from_device_experts(device_experts, expert_to_device_);
    }
  });
  {
    // Every rank must build the same layer: a hash of what the exchanges depend on, compared
    // as max == min over ranks (one reduction), catches a rank given another config or placement.
    std::uint64_t h = 1469598103934665603ull;
    auto mix = [&](std::int64_t v) { h = (h ^ static_cast<std::uint64_t>(v)) * 1099511628211ull; };
    for (std::int64_t v : {std::int64_t(config_.num_experts), std::int64_t(config_.top_k),
                           std::int64_t(config_.hidden_size), std::int64_t(config_.ffn_size),
                           std::int64_t(config_.dispatch), std::int64_t(config_.prune.max_devices),
                           std::int64_t(config_.wire), std::int64_t(config_.overlap)}) {
      mix(v);
    }
    for (int d : expert_to_device_) mix(d);
    for (std::uint64_t m : holders_.masks) mix(static_cast<std::int64_t>(m));
    const auto hash = static_cast<std::int64_t>(h >> 2);
    std::vector<std::int64_t> extremes = {hash, -hash};
    comm_.all_reduce_max(extremes);
    OCCULT_CHECK(extremes[0] == -extremes[1],
                 "MoE layer: the ranks were given different layer configs or placements (E, k, H, F, dispatch, "
                 "prune devices, wire format, overlap, expert_to_device and replicas must be identical on every rank)");
  }
  // Each device holds its experts in ascending id order; without replicas that is the order of
  // local_expert_indices.
  const int D = comm_.size();
  local_index_by_device_.assign(static_cast<std::size_t>(D) * config_.num_experts, -1);
  std::vector<int> held(D, 0);
  for (int e = 0; e < config_.num_experts; ++e) {
    for (int d = 0; d < D; ++d) {
      if ((holders_.masks[e] >> d) & 1u) local_index_by_device_[static_cast<std::size_t>(d) * config_.num_experts + e] = held[d]++;
    }
    if (holders_.copies(e) > 1) replicated_experts_.push_back(e);
  }
  max_held_experts_ = *std::max_element(held.begin(), held.end());
  local_index_of_.assign(config_.num_experts, -1);
  for (int e = 0; e < config_.num_experts; ++e) {
    if ((holders_.masks[e] >> comm_.rank()) & 1u) {
      local_index_of_[e] = static_cast<int>(local_experts_.size());
      local_experts_.push_back(e);
    }
  }
  const std::size_t E = config_.num_experts, H = config_.hidden_size, F = config_.ffn_size;
  const std::size_t L = local_experts_.size();
  router_.assign(E * H, 0.0f);
  if (config_.selection_bias) selection_bias_.assign(E, 0.0f);
  if (config_.expert_dtype == WeightDType::kBF16) {
    w1_bf16_.assign(L * F * H, 0);
    w3_bf16_.assign(L * F * H, 0);
    w2_bf16_.assign(L * H * F, 0);
  } else {
    w1_.assign(L * F * H, 0.0f);
    w3_.assign(L * F * H, 0.0f);
    w2_.assign(L * H * F, 0.0f);
  }
  if (config_.with_grads) {
    d_router_.assign(E * H, 0.0f);
    d_w1_.assign(L * F * H, 0.0f);
    d_w3_.assign(L * F * H, 0.0f);
    d_w2_.assign(L * H * F, 0.0f);
  }
  buffers_ = std::make_unique<MoeLayerBuffers>();
  expert_backend_ = make_cpu_expert_backend();
  router_backend_ = make_cpu_router_backend(config_.gemm.backend);
}

MoeLayer::~MoeLayer() = default;

void MoeLayer::set_backends(std::unique_ptr<ExpertBackend> experts, std::unique_ptr<RouterBackend> router) {
  OCCULT_CHECK(experts != nullptr && router != nullptr, "MoE layer: an expert and a router backend are both needed");
  expert_backend_ = std::move(experts);
  router_backend_ = std::move(router);
}

bool MoeLayer::is_local(int expert) const {
  return expert >= 0 && expert < config_.num_experts && local_index_of_[expert] >= 0;
}

int MoeLayer::local_index(int expert, const char* what) const {
  OCCULT_CHECK(expert >= 0 && expert < config_.num_experts, "MoE layer: {} of expert {}: id outside [0, E={})", what,
               expert, config_.num_experts);
  OCCULT_CHECK(local_index_of_[expert] >= 0, "MoE layer: {} of expert {}: it lives on rank {}, not on rank {}", what,
               expert, expert_to_device_[expert], comm_.rank());
  return local_index_of_[expert];
}

namespace {
// The F32 expert tensor v, after checking the layer holds its experts in F32.
std::vector<float>& f32_experts(const MoeLayerConfig& c, std::vector<float>& v, const char* what) {
  OCCULT_CHECK(c.expert_dtype == WeightDType::kF32,
               "MoE layer: {} requested in F32, but the experts are held in BF16 (use expert_weight_bf16)", what);
  return v;
}
// Expert `index`'s part of v; empty when v is (gradients of an inference-only layer).
std::span<float> slice(std::vector<float>& v, int index, std::size_t size) {
  if (v.empty()) return {};
  return std::span<float>(v).subspan(static_cast<std::size_t>(index) * size, size);
}
}  // namespace

std::span<float> MoeLayer::gate_proj(int e) {
  return slice(f32_experts(config_, w1_, "gate_proj"), local_index(e, "gate_proj"),
               std::size_t(config_.ffn_size) * config_.hidden_size);
}
std::span<float> MoeLayer::up_proj(int e) {
  return slice(f32_experts(config_, w3_, "up_proj"), local_index(e, "up_proj"),
               std::size_t(config_.ffn_size) * config_.hidden_size);
}
std::span<float> MoeLayer::down_proj(int e) {
  return slice(f32_experts(config_, w2_, "down_proj"), local_index(e, "down_proj"),
               std::size_t(config_.ffn_size) * config_.hidden_size);
}
std::span<std::uint16_t> MoeLayer::expert_weight_bf16(int e, int kind) {
  OCCULT_CHECK(config_.expert_dtype == WeightDType::kBF16 && kind >= 0 && kind < 3,
               "MoE layer: expert {} tensor {} requested in BF16, but the experts are held in {}", e, kind,
               weight_dtype_name(config_.expert_dtype));
  auto& v = kind == 0 ? w1_bf16_ : kind == 1 ? w3_bf16_ : w2_bf16_;
  const std::size_t size = std::size_t(config_.ffn_size) * config_.hidden_size;
  return std::span<std::uint16_t>(v).subspan(static_cast<std::size_t>(local_index(e, "a BF16 weight")) * size, size);
}
std::span<float> MoeLayer::gate_proj_grad(int e) {
  return slice(d_w1_, local_index(e, "gate_proj grad"), std::size_t(config_.ffn_size) * config_.hidden_size);
}
std::span<float> MoeLayer::up_proj_grad(int e) {
  return slice(d_w3_, local_index(e, "up_proj grad"), std::size_t(config_.ffn_size) * config_.hidden_size);
}
std::span<float> MoeLayer::down_proj_grad(int e) {
  return slice(d_w2_, local_index(e, "down_proj grad"), std::size_t(config_.ffn_size) * config_.hidden_size);
}

std::vector<MoeParameter> MoeLayer::parameters() {
  const std::int64_t E = config_.num_experts, H = config_.hidden_size, F = config_.ffn_size;
  std::vector<MoeParameter> params;
  params.push_back({"mlp.gate.weight", {E, H}, router_, d_router_, true});
  for (int e : local_experts_) {
    const std::string base = fmt::format("mlp.experts.{}.", e);
    params.push_back({base + "gate_proj.weight", {F, H}, gate_proj(e), gate_proj_grad(e), false});
    params.push_back({base + "up_proj.weight", {F, H}, up_proj(e), up_proj_grad(e), false});
    params.push_back({base + "down_proj.weight", {H, F}, down_proj(e), down_proj_grad(e), false});
  }
  return params;
}

void MoeLayer::load_weights(const SafetensorsReader& reader, std::string_view prefix) {
  agree_on_errors(comm_, [&] {
    if (config_.expert_dtype == WeightDType::kBF16) {
      const std::string router = std::string(prefix) + "mlp.gate.weight";
      reader.expect_shape(router, std::vector<std::int64_t>{config_.num_experts, config_.hidden_size});
      const std::vector<float> values = reader.read_f32(router);
      std::copy(values.begin(), values.end(), router_.begin());
      const std::int64_t H = config_.hidden_size, F = config_.ffn_size;
      for (int e : local_experts_) {
        for (int kind = 0; kind < 3; ++kind) {
          static constexpr const char* kNames[] = {"gate_proj", "up_proj", "down_proj"};
          const std::string name = fmt::format("{}mlp.experts.{}.{}.weight", prefix, e, kNames[kind]);
          reader.expect_shape(name, kind < 2 ? std::vector<std::int64_t>{F, H} : std::vector<std::int64_t>{H, F});
          const std::vector<float> w = reader.read_f32(name);
          auto dst = expert_weight_bf16(e, kind);
          for (std::size_t i = 0; i < w.size(); ++i) dst[i] = float_to_bf16(w[i]);
        }
      }
      return;
    }
    for (MoeParameter& p : parameters()) {
      const std::string name = std::string(prefix) + p.name;
      reader.expect_shape(name, p.shape);
      std::vector<float> values = reader.read_f32(name);
      std::copy(values.begin(), values.end(), p.value.begin());
    }
  });
}

void MoeLayer::init_random(std::uint64_t seed, float scale) {
  for (std::size_t i = 0; i < router_.size(); ++i) router_[i] = moe_init_value(seed, 0, i, scale);
  const std::size_t FH = std::size_t(config_.ffn_size) * config_.hidden_size;
  for (std::size_t l = 0; l < local_experts_.size(); ++l) {
    const std::uint64_t e = local_experts_[l];
    if (config_.expert_dtype == WeightDType::kBF16) {
      for (std::size_t i = 0; i < FH; ++i) {
        w1_bf16_[l * FH + i] = float_to_bf16(moe_init_value(seed, 1 + 3 * e + 0, i, scale));
        w3_bf16_[l * FH + i] = float_to_bf16(moe_init_value(seed, 1 + 3 * e + 1, i, scale));
        w2_bf16_[l * FH + i] = float_to_bf16(moe_init_value(seed, 1 + 3 * e + 2, i, scale));
      }
      continue;
    }
    for (std::size_t i = 0; i < FH; ++i) {
      w1_[l * FH + i] = moe_init_value(seed, 1 + 3 * e + 0, i, scale);
      w3_[l * FH + i] = moe_init_value(seed, 1 + 3 * e + 1, i, scale);
      w2_[l * FH + i] = moe_init_value(seed, 1 + 3 * e + 2, i, scale);
    }
  }
}

ExpertWeightsView MoeLayer::expert_view() const {
  ExpertWeightsView view{static_cast<int>(local_experts_.size()), config_.hidden_size, config_.ffn_size, w1_, w3_, w2_};
  view.gate_proj_bf16 = w1_bf16_;
  view.up_proj_bf16 = w3_bf16_;
  view.down_proj_bf16 = w2_bf16_;
  return view;
}

void MoeLayer::round_experts_for_step() {
  step_bf16_current_ = config_.with_grads && config_.expert_dtype == WeightDType::kF32 &&
                       current_gemm_options().compute == ComputeDType::kBF16;
  if (!step_bf16_current_) return;
  for (auto [src, dst] : {std::pair{&w1_, &w1_step_bf16_}, std::pair{&w3_, &w3_step_bf16_},
                          std::pair{&w2_, &w2_step_bf16_}}) {
    dst->resize(src->size());
    std::transform(src->begin(), src->end(), dst->begin(), float_to_bf16);
  }
}

ExpertWeightsView MoeLayer::compute_view() const {
  if (!step_bf16_current_) return expert_view();
  ExpertWeightsView view;
  view.num_local_experts = static_cast<int>(local_experts_.size());
  view.hidden_size = config_.hidden_size;
  view.ffn_size = config_.ffn_size;
  view.gate_proj_bf16 = w1_step_bf16_;
  view.up_proj_bf16 = w3_step_bf16_;
  view.down_proj_bf16 = w2_step_bf16_;
  return view;
}

void MoeLayer::zero_grad() {
  for (auto* v : {&d_router_, &d_w1_, &d_w3_, &d_w2_}) std::fill(v->begin(), v->end(), 0.0f);
}

double MoeLayer::forward_expert_flops() const {
  return expert_forward_flops(receive_.num_assignments(), config_.hidden_size, config_.ffn_size);
}
double MoeLayer::backward_expert_flops() const { return 2.0 * forward_expert_flops(); }

void MoeLayer::forward(std::span<const float> x, std::int64_t num_tokens, std::span<float> y) {
  const GemmOptionsScope gemm_scope(config_.gemm);
  const int E = config_.num_experts, H = config_.hidden_size, k = config_.top_k;
  const double t0 = now_seconds();
  // Shape and router errors stay local here; the count exchange of run_forward carries them
  // to every rank, so a bad input costs no extra collective when all is well.
  std::optional<std::string> error = local_error([&] {
    OCCULT_CHECK(num_tokens >= 0, "MoE layer forward: {} tokens", num_tokens);
    OCCULT_CHECK(x.size() == static_cast<std::size_t>(num_tokens) * H,
                 "MoE layer forward: hidden states hold {} floats, expected T*H = {}*{}", x.size(), num_tokens, H);
    OCCULT_CHECK(y.size() == x.size(), "MoE layer forward: output holds {} floats, expected {}", y.size(), x.size());
    num_tokens_ = num_tokens;
    routing_imposed_ = false;
    x_.assign(x.begin(), x.end());
    const std::size_t T = num_tokens;
    std::vector<float>& logits = buffers_->logits;
    logits.resize(T * E);
    router_backend_->logits(x, num_tokens, router_, E, H, logits);
    probs_.assign(T * E, 0.0f);
    ids_.assign(T * k, 0);
    weights_.assign(T * k, 0.0f);
    const GatingConfig gating = config_.gating();
    prune_stats_ = PruneStats{};
    router_scores(logits, num_tokens, gating, probs_);
    select_topk(probs_, selection_bias_, num_tokens, gating, ids_, weights_);
    weight_source_ = ids_;
    if (config_.prune.max_devices > 0) {
      const PruneConfig pc = config_.prune_config(comm_.size());
      prune_stats_ = replicated()
                         ? prune_routing(ids_, weights_, probs_, num_tokens, holders_, config_.prune.similarity, pc,
                                         prune_workspace_)
                         : prune_routing(ids_, weights_, probs_, num_tokens, expert_to_device_,
                                         config_.prune.similarity, pc, prune_workspace_);
      // kKeep: slot j keeps the weight (so the score) of the expert originally in slot j;
      // kRecompute: each weight is the new expert's own p.
      if (config_.prune.weights == PruneWeights::kRecompute) weight_source_ = ids_;
    }
  });
  timings_.forward_router = now_seconds() - t0;
  run_forward(x, y, std::move(error));
}

void MoeLayer::forward_with_routing(std::span<const float> x, std::int64_t num_tokens,
                                    std::span<const std::int32_t> topk_ids, std::span<const float> topk_weights,
                                    std::span<float> y) {
  const GemmOptionsScope gemm_scope(config_.gemm);
  const int E = config_.num_experts, H = config_.hidden_size, k = config_.top_k;
  std::optional<std::string> error = local_error([&] {
    OCCULT_CHECK(num_tokens >= 0, "MoE layer forward: {} tokens", num_tokens);
    OCCULT_CHECK(x.size() == static_cast<std::size_t>(num_tokens) * H,
                 "MoE layer forward: hidden states hold {} floats, expected T*H = {}*{}", x.size(), num_tokens, H);
    OCCULT_CHECK(y.size() == x.size(), "MoE layer forward: output holds {} floats, expected {}", y.size(), x.size());
    OCCULT_CHECK(topk_ids.size() == static_cast<std::size_t>(num_tokens) * k && topk_weights.size() == topk_ids.size(),
                 "MoE layer forward: imposed routing holds {} ids and {} weights, expected T*k = {}*{}",
                 topk_ids.size(), topk_weights.size(), num_tokens, k);
    for (std::int64_t t = 0; t < num_tokens; ++t) {
      for (int s = 0; s < k; ++s) {
        const std::int32_t id = topk_ids[t * k + s];
        OCCULT_CHECK(id >= 0 && id < E, "MoE layer forward: token {} slot {} selects expert {}, outside [0, E={})", t,
                     s, id, E);
        for (int r = 0; r < s; ++r) {
          OCCULT_CHECK(topk_ids[t * k + r] != id, "MoE layer forward: token {} selects expert {} twice", t, id);
        }
      }
    }
    num_tokens_ = num_tokens;
    routing_imposed_ = true;
    x_.assign(x.begin(), x.end());
    probs_.clear();
    ids_.assign(topk_ids.begin(), topk_ids.end());
    weights_.assign(topk_weights.begin(), topk_weights.end());
    weight_source_ = ids_;
    prune_stats_ = PruneStats{};
  });
  timings_.forward_router = 0;
  run_forward(x, y, std::move(error));
}

void MoeLayer::fail_on_every_rank(bool any_failed, const std::optional<std::string>& error) {
  if (!any_failed) return;
  // No rank keeps a plan the others lack: a backward after this fails cleanly everywhere.
  plan_ = DispatchPlan{};
  receive_ = ReceivePlan{};
  agree_on_error_message(comm_, error.has_value(), error.value_or(""));
}

void MoeLayer::run_forward(std::span<const float> x, std::span<float> y, std::optional<std::string> error) {
  const int H = config_.hidden_size, D = comm_.size();
  // The dispatch may travel in another format than the combine (fp8: E4M3 rows, BF16 combine).
  const WireFormat dispatch_wire = exchange_wire(config_.wire, true), wire = exchange_wire(config_.wire, false);
  const std::int64_t row_bytes = wire_row_bytes(wire, H), dispatch_row_bytes = wire_row_bytes(dispatch_wire, H);
  constexpr std::int64_t kAssignmentBytes = sizeof(Assignment);
  MoeLayerBuffers& b = *buffers_;
  double t0 = now_seconds();
  // Routing is validated (or produced by our own gating) on this rank; plan building cannot
  // fail on other ranks' data.
  if (!error) {
    error = local_error([&] {
      if (replicated()) {
        // Every token starts at this rank: route_token prefers the holders it already visits,
        // then this rank, then the lighter holder.
        homes_.assign(static_cast<std::size_t>(num_tokens_), comm_.rank());
        slot_device_.resize(static_cast<std::size_t>(num_tokens_) * config_.top_k);
        route_tokens(holders_, ids_, num_tokens_, config_.top_k, homes_, slot_device_);
        const SlotRouting routing{slot_device_, local_index_by_device_};
        build_dispatch_plan_into(plan_, b.plan_workspace, config_.dispatch, ids_, weights_, num_tokens_,
                                 config_.top_k, expert_to_device_, D, config_.capacity_factor, &routing);
      } else {
        build_dispatch_plan_into(plan_, b.plan_workspace, config_.dispatch, ids_, weights_, num_tokens_,
                                 config_.top_k, expert_to_device_, D, config_.capacity_factor);
      }
    });
  }
  // The one count exchange of the forward: rows, assignments and this rank's status for every
  // destination. A failing rank sends zero counts and status 1, so every rank learns of the
  // failure here and none starts the dispatch. The overlapped forward also sends the
  // assignments per destination expert, so that each source's block can be placed in the
  // receive plan the moment it lands.
  const std::size_t width = 3 + (config_.overlap ? static_cast<std::size_t>(max_held_experts_) : 0);
  b.counts.assign(width * static_cast<std::size_t>(D), 0);
  for (int d = 0; d < D; ++d) {
    if (!error) {
      b.counts[width * d] = plan_.send_row_counts[d];
      b.counts[width * d + 1] = plan_.send_assignment_counts[d];
      if (config_.overlap) {
        for (std::int64_t a = plan_.send_assignment_offsets[d]; a < plan_.send_assignment_offsets[d + 1]; ++a) {
          ++b.counts[width * d + 3 + plan_.assignments[a].local_expert];
        }
      }
    }
    b.counts[width * d + 2] = error ? 1 : 0;
  }
  b.counts_recv.resize(b.counts.size());
  comm_.all_to_all_counts_into(b.counts, b.counts_recv);
  const std::vector<std::int64_t>& got = b.counts_recv;
  bool any_failed = false;
  b.recv_rows.resize(D);
  b.recv_assignments.resize(D);
  for (int s = 0; s < D; ++s) {
    b.recv_rows[s] = got[width * s];
    b.recv_assignments[s] = got[width * s + 1];
    any_failed = any_failed || got[width * s + 2] != 0;
  }
  fail_on_every_rank(any_failed, error);
  round_experts_for_step();

  // Dispatch: to each destination its assignments (metadata, F32 weights) and then its rows,
  // in one message. Rows are cast to the wire format once per token, not once per copy.
  const std::byte* token_rows = reinterpret_cast<const std::byte*>(x.data());
  if (dispatch_wire != WireFormat::kF32) {
    b.wire_tokens.resize(static_cast<std::size_t>(num_tokens_ * dispatch_row_bytes));
    encode_wire_rows(dispatch_wire, x, H, b.wire_tokens.data());
    token_rows = b.wire_tokens.data();
  }
  b.lay_out(kAssignmentBytes, dispatch_row_bytes, plan_.send_assignment_counts, plan_.send_row_counts,
            b.recv_assignments, b.recv_rows);
  for (int d = 0; d < D; ++d) {
    std::byte* out = b.send.data() + b.send_offsets[d];
    copy_bytes(out, plan_.assignments.data() + plan_.send_assignment_offsets[d], b.send_metadata[d]);
    pack_send_rows(plan_, d, token_rows, dispatch_row_bytes, out + b.send_metadata[d]);
  }
  if (config_.overlap) {
    overlapped_exchange_and_experts(y);
    if (!config_.with_grads) release_forward_buffers();
    return;
  }
  comm_.all_to_all_v_with_metadata(exchange_name(kExchangeDispatch), b.send, b.send_counts, b.send_offsets, b.send_metadata, b.recv,
                                   b.recv_counts, b.recv_offsets);
  std::int64_t total_assignments = 0, total_rows = 0;
  for (int s = 0; s < D; ++s) {
    total_assignments += b.recv_assignments[s];
    total_rows += b.recv_rows[s];
  }
  b.received.resize(total_assignments);
  x_recv_.resize(total_rows * H);
  for (std::int64_t s = 0, a = 0, row = 0; s < D; ++s) {
    const std::byte* in = b.recv.data() + b.recv_offsets[s];
    copy_bytes(b.received.data() + a, in, b.recv_assignments[s] * kAssignmentBytes);
    in += b.recv_assignments[s] * kAssignmentBytes;
    decode_wire_rows(dispatch_wire, in, H, std::span<float>(x_recv_).subspan(row * H, b.recv_rows[s] * H));
    a += b.recv_assignments[s];
    row += b.recv_rows[s];
  }
  build_receive_plan_into(receive_, b.plan_workspace, b.recv_rows, b.recv_assignments, b.received,
                          static_cast<int>(local_experts_.size()));
  double t1 = now_seconds();
  timings_.forward_dispatch = t1 - t0;

  // Expert compute with stage-1 reduction (F32).
  const std::size_t A = receive_.num_assignments(), F = config_.ffn_size;
  act_gate_.resize(A * F);
  act_up_.resize(A * F);
  b.expert_out.resize(receive_.num_rows() * H);
  expert_backend_->forward(receive_, compute_view(), x_recv_, b.expert_out, act_gate_, act_up_, b.expert);
  double t2 = now_seconds();
  timings_.forward_experts = t2 - t1;

  // Combine: each stage-1 row cast once, home, widened and summed there in F32 (stage-2).
  for (int d = 0; d < D; ++d) {
    b.send_counts[d] = receive_.recv_row_counts[d] * row_bytes;
    b.recv_counts[d] = plan_.send_row_counts[d] * row_bytes;
  }
  pack_offsets(b.send_counts, b.send_offsets);
  b.recv.resize(static_cast<std::size_t>(pack_offsets(b.recv_counts, b.recv_offsets)));
  comm_.all_to_all_v(exchange_name(kExchangeCombine), wire_rows(wire, b.expert_out, b.send), b.send_counts, b.send_offsets, b.recv,
                     b.recv_counts, b.recv_offsets);
  std::fill(y.begin(), y.end(), 0.0f);
  add_rows_home(wire, plan_, 0, plan_.num_send_rows(), b.recv.data(), H, y);
  timings_.forward_combine = now_seconds() - t2;
  if (!config_.with_grads) release_forward_buffers();
}

namespace {
// ExpertProgress's hook for the overlapped forward: lets both exchanges progress and notes
// what landed (the layer computes it later, in a fixed order where the order matters).
struct OverlapProgress {
  Communicator* comm;
  ExchangeBuffers* b;
  static void poll(void* context) {
    auto* self = static_cast<OverlapProgress*>(context);
    self->comm->exchange_test(self->b->dispatch_handle, self->b->ready);
    self->comm->exchange_test(self->b->combine_handle, self->b->home_landed);
  }
};
}  // namespace

void MoeLayer::overlapped_exchange_and_experts(std::span<float> y) {
  const int H = config_.hidden_size, D = comm_.size(), me = comm_.rank();
  const int L = static_cast<int>(local_experts_.size());
  const std::size_t width = 3 + static_cast<std::size_t>(max_held_experts_);
  const WireFormat wire = exchange_wire(config_.wire, false);  // the combine's format
  const std::int64_t row_bytes = wire_row_bytes(wire, H);
  MoeLayerBuffers& b = *buffers_;
  const double t0 = now_seconds();

  // The receive plan is known from the counts up to the landed assignments themselves: its
  // counts, offsets and expert CSR now, each source's (expert, arrival)-sorted entries when its
  // block lands. Within an expert, sources keep rank order, so the plan is the blocking one.
  ReceivePlan& rp = receive_;
  rp.num_devices = D;
  rp.num_local_experts = L;
  rp.recv_row_counts.assign(b.recv_rows.begin(), b.recv_rows.end());
  rp.recv_assignment_counts.assign(b.recv_assignments.begin(), b.recv_assignments.end());
  const std::int64_t rows_total = pack_offsets(rp.recv_row_counts, rp.recv_row_offsets);
  rp.recv_row_offsets.push_back(rows_total);
  const std::int64_t assignments_total = pack_offsets(rp.recv_assignment_counts, rp.recv_assignment_offsets);
  rp.recv_assignment_offsets.push_back(assignments_total);
  rp.expert_offsets.assign(static_cast<std::size_t>(L) + 1, 0);
  for (int s = 0; s < D; ++s) {
    std::int64_t announced = 0;
    for (int e = 0; e < max_held_experts_; ++e) {
      const std::int64_t c = b.counts_recv[width * s + 3 + e];
      OCCULT_CHECK(c >= 0 && (e < L || c == 0), "MoE layer forward: rank {} announces {} assignments for local "
                   "expert {}, this rank holds {}", s, c, e, L);
      if (e < L) rp.expert_offsets[e + 1] += c;
      announced += c;
    }
    OCCULT_CHECK(announced == rp.recv_assignment_counts[s], "MoE layer forward: rank {} announces {} assignments "
                 "but {} per expert", s, rp.recv_assignment_counts[s], announced);
  }
  for (int e = 0; e < L; ++e) rp.expert_offsets[e + 1] += rp.expert_offsets[e];
  b.block_begin.resize(static_cast<std::size_t>(D) * L);
  b.block_end.resize(static_cast<std::size_t>(D) * L);
  for (int e = 0; e < L; ++e) {
    std::int64_t at = rp.expert_offsets[e];
    for (int s = 0; s < D; ++s) {
      b.block_begin[static_cast<std::size_t>(s) * L + e] = at;
      at += b.counts_recv[width * s + 3 + e];
      b.block_end[static_cast<std::size_t>(s) * L + e] = at;
    }
  }
  const std::int64_t A = rp.recv_assignment_offsets.back(), R = rp.recv_row_offsets.back();
  rp.sorted_row.resize(A);
  rp.sorted_weight.resize(A);
  rp.sorted_to_arrival.resize(A);
  b.received.resize(A);
  x_recv_.resize(R * H);
  const std::size_t F = config_.ffn_size;
  act_gate_.resize(A * F);
  act_up_.resize(A * F);
  b.expert_out.resize(R * H);

  // Combine: stage-1 rows go back to each source in the blocking layout (packed by source), and
  // home receives every destination's rows into the blocking layout too.
  b.combine_send_counts.resize(D);
  b.combine_recv_counts.resize(D);
  for (int d = 0; d < D; ++d) {
    b.combine_send_counts[d] = rp.recv_row_counts[d] * row_bytes;
    b.combine_recv_counts[d] = plan_.send_row_counts[d] * row_bytes;
  }
  pack_offsets(b.combine_send_counts, b.combine_send_offsets);
  b.combine_recv.resize(static_cast<std::size_t>(pack_offsets(b.combine_recv_counts, b.combine_recv_offsets)));
  std::span<const std::byte> combine_send = std::as_bytes(std::span<const float>(b.expert_out));
  if (wire != WireFormat::kF32) {
    b.combine_send.resize(static_cast<std::size_t>(R * row_bytes));
    combine_send = b.combine_send;
  }
  b.reset_landing(D);
  std::fill(y.begin(), y.end(), 0.0f);

  b.dispatch_handle = comm_.start_exchange(exchange_name(kExchangeDispatch), b.send, b.send_counts, b.send_offsets,
                                           b.send_metadata, b.recv, b.recv_counts, b.recv_offsets, false);
  b.combine_handle = comm_.start_exchange(exchange_name(kExchangeCombine), combine_send, b.combine_send_counts,
                                          b.combine_send_offsets, {}, b.combine_recv, b.combine_recv_counts,
                                          b.combine_recv_offsets, true);
  const double t1 = now_seconds();
  timings_.forward_dispatch = t1 - t0;

  // Stage-2 at home in destination order, as far as the rows have landed: the sums, and so y,
  // are bit for bit those of the blocking combine whatever the arrival order.
  auto add_home = [&](int d) {
    add_rows_home(wire, plan_, plan_.send_row_offsets[d], plan_.send_row_offsets[d + 1],
                  b.combine_recv.data() + b.combine_recv_offsets[d], H, y);
  };
  // This rank's own block landed at the start: compute it first, then the others as they land.
  comm_.exchange_test(b.dispatch_handle, b.ready);
  const auto own = std::find(b.ready.begin(), b.ready.end(), me);
  if (own != b.ready.end()) std::iter_swap(b.ready.begin(), own);
  for (int done = 0; done < D; ++done) {
    if (b.ready_next == b.ready.size()) comm_.exchange_wait_some(b.dispatch_handle, b.ready);
    compute_source_block(b.ready[b.ready_next++], b.combine_handle);
    b.add_home_in_order(D, add_home);
  }
  const double t2 = now_seconds();
  timings_.forward_experts = t2 - t1;
  b.finish_overlap(comm_, D, add_home);
  timings_.forward_combine = now_seconds() - t2;
}

void MoeLayer::compute_source_block(int s, int combine) {
  const int H = config_.hidden_size, L = static_cast<int>(local_experts_.size());
  const WireFormat dispatch_wire = exchange_wire(config_.wire, true), wire = exchange_wire(config_.wire, false);
  const std::int64_t row_bytes = wire_row_bytes(wire, H);
  constexpr std::int64_t kAssignmentBytes = sizeof(Assignment);
  MoeLayerBuffers& b = *buffers_;
  ReceivePlan& rp = receive_;
  const std::int64_t a0 = rp.recv_assignment_offsets[s], na = rp.recv_assignment_counts[s];
  const std::int64_t r0 = rp.recv_row_offsets[s], nr = rp.recv_row_counts[s];
  const std::byte* in = b.recv.data() + b.recv_offsets[s];
  copy_bytes(b.received.data() + a0, in, na * kAssignmentBytes);
  decode_wire_rows(dispatch_wire, in + na * kAssignmentBytes, H, std::span<float>(x_recv_).subspan(r0 * H, nr * H));
  // This source's entries of the receive plan, as build_receive_plan_into places them.
  const std::span<const std::int64_t> begin =
      std::span<const std::int64_t>(b.block_begin).subspan(static_cast<std::size_t>(s) * L, L);
  const std::span<const std::int64_t> end =
      std::span<const std::int64_t>(b.block_end).subspan(static_cast<std::size_t>(s) * L, L);
  b.block_fill.assign(begin.begin(), begin.end());
  for (std::int64_t a = a0; a < a0 + na; ++a) {
    const Assignment& as = b.received[a];
    OCCULT_CHECK(as.row >= 0 && as.row < nr, "receive plan: an assignment from rank {} names row {}, but that rank "
                 "sent {} rows", s, as.row, nr);
    OCCULT_CHECK(as.local_expert >= 0 && as.local_expert < L && b.block_fill[as.local_expert] < end[as.local_expert],
                 "receive plan: an assignment from rank {} names local expert {} beyond what that rank announced",
                 s, as.local_expert);
    const std::int64_t i = b.block_fill[as.local_expert]++;
    rp.sorted_row[i] = r0 + as.row;
    rp.sorted_weight[i] = as.weight;
    rp.sorted_to_arrival[i] = a;
  }
  const std::span<float> out = std::span<float>(b.expert_out).subspan(r0 * H, nr * H);
  std::fill(out.begin(), out.end(), 0.0f);
  OverlapProgress poll{&comm_, &b};
  expert_backend_->forward_ranges(rp, compute_view(), begin, end, x_recv_, b.expert_out, act_gate_, act_up_, b.expert,
                        ExpertProgress{&OverlapProgress::poll, &poll});
  if (wire != WireFormat::kF32) encode_wire(wire, out, b.combine_send.data() + r0 * row_bytes);
  comm_.exchange_send(combine, s);
}

std::int64_t MoeLayer::token_device_pairs() const {
  // One bit per device per token, from the rows the plan sent (standard sends one row per slot,
  // occult one per device; both name the device).
  std::vector<std::uint64_t> seen(static_cast<std::size_t>(plan_.num_tokens), 0);
  for (int d = 0; d < plan_.num_devices; ++d) {
    for (std::int64_t r = plan_.send_row_offsets[d]; r < plan_.send_row_offsets[d + 1]; ++r) {
      seen[plan_.row_token[r]] |= std::uint64_t{1} << d;
    }
  }
  std::int64_t pairs = 0;
  for (std::uint64_t m : seen) pairs += std::popcount(m);
  return pairs;
}

template <typename Visit>
void MoeLayer::for_each_local_replica_grad(Visit&& visit) {
  const std::size_t FH = static_cast<std::size_t>(config_.ffn_size) * config_.hidden_size;
  for (std::size_t r = 0; r < replicated_experts_.size(); ++r) {
    const int e = replicated_experts_[r];
    if (!is_local(e)) continue;
    const std::span<float> g[3] = {gate_proj_grad(e), up_proj_grad(e), down_proj_grad(e)};
    for (int kind = 0; kind < 3; ++kind) visit(g[kind], (3 * r + kind) * FH);
  }
}

void MoeLayer::snapshot_replica_gradients() {
  if (replicated_experts_.empty()) return;
  const std::size_t FH = static_cast<std::size_t>(config_.ffn_size) * config_.hidden_size;
  replica_before_.assign(replicated_experts_.size() * 3 * FH, 0.0f);
  for_each_local_replica_grad(
      [&](std::span<float> g, std::size_t base) { std::copy(g.begin(), g.end(), replica_before_.begin() + base); });
}

void MoeLayer::sum_replica_gradients() {
  if (replicated_experts_.empty()) return;
  // Only an expert's holders take part: each sends this backward's gradient of its copy to the
  // other holders, and every holder adds all holders' contributions in rank order, so the copies
  // stay bit-identical. Holders pair up through one all-to-all; ranks that share no replicated
  // expert exchange nothing, and the bytes are counted under "replica_gradients".
  const int D = comm_.size(), me = comm_.rank();
  const std::size_t FH = static_cast<std::size_t>(config_.ffn_size) * config_.hidden_size;
  const std::int64_t block = static_cast<std::int64_t>(3 * FH * sizeof(float));
  replica_grads_.assign(replicated_experts_.size() * 3 * FH, 0.0f);
  for_each_local_replica_grad([&](std::span<float> g, std::size_t base) {
    for (std::size_t i = 0; i < g.size(); ++i) replica_grads_[base + i] = g[i] - replica_before_[base + i];
  });
  auto shared_with = [&](int e, int d) { return d != me && ((holders_.masks[e] >> d) & 1u) != 0 && is_local(e); };
  replica_counts_.assign(static_cast<std::size_t>(D), 0);
  for (int e : replicated_experts_) {
    for (int d = 0; d < D; ++d) replica_counts_[d] += shared_with(e, d) ? block : 0;
  }
  // What two holders share is the same set seen from either side, so the receive counts and
  // offsets equal the send ones.
  replica_send_.resize(static_cast<std::size_t>(pack_offsets(replica_counts_, replica_offsets_)));
  replica_recv_.resize(replica_send_.size());
  for (int d = 0; d < D; ++d) {
    std::byte* out = replica_send_.data() + replica_offsets_[d];
    for (std::size_t r = 0; r < replicated_experts_.size(); ++r) {
      if (!shared_with(replicated_experts_[r], d)) continue;
      copy_bytes(out, replica_grads_.data() + r * 3 * FH, block);
      out += block;
    }
  }
  comm_.all_to_all_v(exchange_name(kExchangeReplicaGradients), replica_send_, replica_counts_, replica_offsets_,
                     replica_recv_, replica_counts_, replica_offsets_);
  std::vector<std::int64_t>& cursor = replica_offsets_;  // each peer's next unread block
  for_each_local_replica_grad([&](std::span<float> g, std::size_t base) {
    const std::size_t r = base / (3 * FH), kind_offset = base % (3 * FH);
    const int e = replicated_experts_[r];
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = 0.0f;
    for (int d = 0; d < D; ++d) {
      if (d != me && !shared_with(e, d)) continue;
      const float* part = d == me ? replica_grads_.data() + r * 3 * FH
                                  : reinterpret_cast<const float*>(replica_recv_.data() + cursor[d]);
      for (std::size_t i = 0; i < g.size(); ++i) g[i] += part[kind_offset + i];
      // The last of an expert's three matrices moves the peer's cursor to its next block.
      if (d != me && kind_offset + g.size() == 3 * FH) cursor[d] += block;
    }
    for (std::size_t i = 0; i < g.size(); ++i) g[i] += replica_before_[base + i];
  });
}

void MoeLayer::release_forward_buffers() {
  // A model holds one layer per transformer block; without a backward to serve, keeping each
  // layer's rows and activations would multiply the largest batch's exchange memory by the
  // number of layers (about 100 MB per OLMoE layer at 256 tokens per rank).
  MoeLayerBuffers& b = *buffers_;
  for (auto* v : {&x_, &x_recv_, &act_gate_, &act_up_, &b.expert_out}) std::vector<float>().swap(*v);
  for (auto* v : {&b.wire_tokens, &b.send, &b.recv, &b.combine_send, &b.combine_recv}) std::vector<std::byte>().swap(*v);
}

void MoeLayer::blocking_backward(std::span<const float> dy, std::span<float> dx,
                                 const std::optional<std::string>& error) {
  const int H = config_.hidden_size, D = comm_.size();
  const WireFormat wire = exchange_wire(config_.wire, false);  // fp8 is the forward dispatch's only
  const std::int64_t row_bytes = wire_row_bytes(wire, H);
  const bool have_plan = plan_.num_devices == D && receive_.num_devices == D;
  MoeLayerBuffers& b = *buffers_;
  double t0 = now_seconds();
  // Backward dispatch: to each destination a status word, then the output gradient of each
  // send row's token (same plan as dispatch). The status replaces a separate error agreement:
  // a rank with bad input still sends its (unread) rows so the sizes every rank expects hold.
  constexpr std::int64_t kStatusBytes = sizeof(std::int32_t);
  const std::byte* token_rows = error ? nullptr : wire_rows(wire, dy, b.wire_tokens).data();
  b.send_counts.resize(D);
  b.send_metadata.assign(D, kStatusBytes);
  b.recv_counts.resize(D);
  for (int d = 0; d < D; ++d) {
    b.send_counts[d] = kStatusBytes + (have_plan ? plan_.send_row_counts[d] * row_bytes : 0);
    b.recv_counts[d] = kStatusBytes + (have_plan ? receive_.recv_row_counts[d] * row_bytes : 0);
  }
  b.send.resize(static_cast<std::size_t>(pack_offsets(b.send_counts, b.send_offsets)));
  b.recv.resize(static_cast<std::size_t>(pack_offsets(b.recv_counts, b.recv_offsets)));
  const std::int32_t status = error ? 1 : 0;
  for (int d = 0; d < D; ++d) {
    std::byte* out = b.send.data() + b.send_offsets[d];
    copy_bytes(out, &status, kStatusBytes);
    if (!error) pack_send_rows(plan_, d, token_rows, row_bytes, out + kStatusBytes);
  }
  comm_.all_to_all_v_with_metadata(exchange_name(kExchangeBackwardDispatch), b.send, b.send_counts, b.send_offsets, b.send_metadata,
                                   b.recv, b.recv_counts, b.recv_offsets);
  bool any_failed = false;
  for (int s = 0; s < D; ++s) {
    std::int32_t peer_status = 0;
    copy_bytes(&peer_status, b.recv.data() + b.recv_offsets[s], kStatusBytes);
    any_failed = any_failed || peer_status != 0;
  }
  if (any_failed) agree_on_error_message(comm_, error.has_value(), error.value_or(""));
  b.dy_recv.resize(receive_.num_rows() * H);
  for (int s = 0; s < D; ++s) {
    decode_wire(wire, b.recv.data() + b.recv_offsets[s] + kStatusBytes,
                std::span<float>(b.dy_recv).subspan(receive_.recv_row_offsets[s] * H, receive_.recv_row_counts[s] * H));
  }
  double t1 = now_seconds();
  timings_.backward_dispatch = t1 - t0;

  b.expert_out.resize(receive_.num_rows() * H);  // dx rows, on the expert side
  b.d_weight_sorted.resize(receive_.num_assignments());
  const ExpertWeightsView view = compute_view();
  ExpertGradsView grads{d_w1_, d_w3_, d_w2_};
  snapshot_replica_gradients();
  expert_backend_->backward(receive_, view, x_recv_, b.dy_recv, act_gate_, act_up_, b.expert_out, b.d_weight_sorted, grads,
                  b.expert);
  sum_replica_gradients();
  double t2 = now_seconds();
  timings_.backward_experts = t2 - t1;

  // Backward combine: to each source rank, the gate-weight gradients (F32, in the order the
  // sender listed its assignments) and then the input-gradient rows (occult: already summed
  // over the device's experts) in the wire format, in one message.
  b.d_weight_arrival.resize(receive_.num_assignments());
  for (std::size_t i = 0; i < receive_.sorted_to_arrival.size(); ++i) {
    b.d_weight_arrival[receive_.sorted_to_arrival[i]] = b.d_weight_sorted[i];
  }
  constexpr std::int64_t kGradBytes = sizeof(float);
  b.lay_out(kGradBytes, row_bytes, receive_.recv_assignment_counts, receive_.recv_row_counts,
            plan_.send_assignment_counts, plan_.send_row_counts);
  for (int s = 0; s < D; ++s) {
    std::byte* out = b.send.data() + b.send_offsets[s];
    copy_bytes(out, b.d_weight_arrival.data() + receive_.recv_assignment_offsets[s], b.send_metadata[s]);
    encode_wire(wire,
                std::span<const float>(b.expert_out)
                    .subspan(receive_.recv_row_offsets[s] * H, receive_.recv_row_counts[s] * H),
                out + b.send_metadata[s]);
  }
  comm_.all_to_all_v_with_metadata(exchange_name(kExchangeBackwardCombine), b.send, b.send_counts, b.send_offsets, b.send_metadata,
                                   b.recv, b.recv_counts, b.recv_offsets);
  b.d_weight_send.resize(plan_.num_assignments());
  std::fill(dx.begin(), dx.end(), 0.0f);
  for (int d = 0; d < D; ++d) {
    const std::byte* in = b.recv.data() + b.recv_offsets[d];
    const std::int64_t grad_bytes = plan_.send_assignment_counts[d] * kGradBytes;
    copy_bytes(b.d_weight_send.data() + plan_.send_assignment_offsets[d], in, grad_bytes);
    add_rows_home(wire, plan_, plan_.send_row_offsets[d], plan_.send_row_offsets[d + 1], in + grad_bytes, H, dx);
  }
  timings_.backward_combine = now_seconds() - t2;

}

namespace {
// Each source's range of each local expert in a receive plan ([D, L] begin and end): within an
// expert, a plan's entries come in source order, and source s's rows are
// [recv_row_offsets[s], recv_row_offsets[s + 1]).
void source_ranges(const ReceivePlan& rp, std::vector<std::int64_t>& begin, std::vector<std::int64_t>& end) {
  const int D = rp.num_devices, L = rp.num_local_experts;
  begin.resize(static_cast<std::size_t>(D) * L);
  end.resize(static_cast<std::size_t>(D) * L);
  for (int e = 0; e < L; ++e) {
    std::int64_t i = rp.expert_offsets[e];
    for (int s = 0; s < D; ++s) {
      begin[static_cast<std::size_t>(s) * L + e] = i;
      while (i < rp.expert_offsets[e + 1] && rp.sorted_row[i] < rp.recv_row_offsets[s + 1]) ++i;
      end[static_cast<std::size_t>(s) * L + e] = i;
    }
  }
}
}  // namespace

void MoeLayer::overlapped_backward(std::span<const float> dy, std::span<float> dx,
                                   const std::optional<std::string>& error) {
  const int H = config_.hidden_size, D = comm_.size(), me = comm_.rank();
  const WireFormat wire = exchange_wire(config_.wire, false);
  const std::int64_t row_bytes = wire_row_bytes(wire, H);
  constexpr std::int64_t kGradBytes = sizeof(float);
  MoeLayerBuffers& b = *buffers_;
  const double t0 = now_seconds();
  // Every rank's status first, in one small exchange: blocks are computed as they land and add
  // into the weight gradients, which must not change unless every rank succeeded.
  b.counts.assign(static_cast<std::size_t>(D), error ? 1 : 0);
  b.counts_recv.resize(static_cast<std::size_t>(D));
  comm_.all_to_all_counts_into(b.counts, b.counts_recv);
  if (std::any_of(b.counts_recv.begin(), b.counts_recv.end(), [](std::int64_t s) { return s != 0; })) {
    agree_on_error_message(comm_, error.has_value(), error.value_or(""));
  }

  // Backward dispatch: each send row's output gradient, cast once per token, in the forward's
  // plan order.
  const std::byte* token_rows = wire_rows(wire, dy, b.wire_tokens).data();
  b.send_counts.resize(D);
  b.send_metadata.assign(D, 0);
  b.recv_counts.resize(D);
  for (int d = 0; d < D; ++d) {
    b.send_counts[d] = plan_.send_row_counts[d] * row_bytes;
    b.recv_counts[d] = receive_.recv_row_counts[d] * row_bytes;
  }
  b.send.resize(static_cast<std::size_t>(pack_offsets(b.send_counts, b.send_offsets)));
  b.recv.resize(static_cast<std::size_t>(pack_offsets(b.recv_counts, b.recv_offsets)));
  for (int d = 0; d < D; ++d) pack_send_rows(plan_, d, token_rows, row_bytes, b.send.data() + b.send_offsets[d]);
  // Backward combine: to each source its gate-weight gradients (F32, its arrival order), then
  // its input-gradient rows, sent as soon as its block is computed.
  b.combine_send_counts.resize(D);
  b.combine_recv_counts.resize(D);
  b.combine_metadata.resize(D);
  for (int d = 0; d < D; ++d) {
    b.combine_metadata[d] = receive_.recv_assignment_counts[d] * kGradBytes;
    b.combine_send_counts[d] = b.combine_metadata[d] + receive_.recv_row_counts[d] * row_bytes;
    b.combine_recv_counts[d] = plan_.send_assignment_counts[d] * kGradBytes + plan_.send_row_counts[d] * row_bytes;
  }
  b.combine_send.resize(static_cast<std::size_t>(pack_offsets(b.combine_send_counts, b.combine_send_offsets)));
  b.combine_recv.resize(static_cast<std::size_t>(pack_offsets(b.combine_recv_counts, b.combine_recv_offsets)));
  source_ranges(receive_, b.block_begin, b.block_end);
  const std::int64_t R = receive_.num_rows(), A = receive_.num_assignments();
  b.dy_recv.resize(R * H);
  b.expert_out.resize(R * H);  // dx rows, on the expert side
  b.d_weight_sorted.resize(A);
  b.d_weight_arrival.resize(A);
  b.d_weight_send.resize(plan_.num_assignments());
  b.reset_landing(D);
  std::fill(dx.begin(), dx.end(), 0.0f);
  snapshot_replica_gradients();
  b.dispatch_handle = comm_.start_exchange(exchange_name(kExchangeBackwardDispatch), b.send, b.send_counts,
                                           b.send_offsets, b.send_metadata, b.recv, b.recv_counts, b.recv_offsets,
                                           false);
  b.combine_handle = comm_.start_exchange(exchange_name(kExchangeBackwardCombine), b.combine_send,
                                          b.combine_send_counts, b.combine_send_offsets, b.combine_metadata,
                                          b.combine_recv, b.combine_recv_counts, b.combine_recv_offsets, true);
  const double t1 = now_seconds();
  timings_.backward_dispatch = t1 - t0;

  // Home adds the input-gradient rows in destination order, as far as they have landed: dx is
  // bit for bit independent of the arrival order.
  auto add_home = [&](int d) {
    const std::byte* in = b.combine_recv.data() + b.combine_recv_offsets[d];
    const std::int64_t grad_bytes = plan_.send_assignment_counts[d] * kGradBytes;
    copy_bytes(b.d_weight_send.data() + plan_.send_assignment_offsets[d], in, grad_bytes);
    add_rows_home(wire, plan_, plan_.send_row_offsets[d], plan_.send_row_offsets[d + 1], in + grad_bytes, H, dx);
  };
  // Sources in a fixed order (this rank's own block, which is there at once, then the next
  // ranks in turn), not in landing order: each block adds into the weight gradients, and F32
  // sums in a fixed order keep them independent of when blocks land.
  // (The progress hook reports landed blocks into b.ready while the experts compute.)
  b.source_landed.assign(D, 0);
  auto note_landed = [&] {
    for (; b.ready_next < b.ready.size(); ++b.ready_next) b.source_landed[b.ready[b.ready_next]] = 1;
  };
  comm_.exchange_test(b.dispatch_handle, b.ready);
  for (int k = 0; k < D; ++k) {
    const int s = (me + k) % D;
    for (note_landed(); !b.source_landed[s]; note_landed()) comm_.exchange_wait_some(b.dispatch_handle, b.ready);
    backward_source_block(s, b.combine_handle);
    b.add_home_in_order(D, add_home);
  }
  const double t2 = now_seconds();
  timings_.backward_experts = t2 - t1;
  b.finish_overlap(comm_, D, add_home);
  sum_replica_gradients();
  timings_.backward_combine = now_seconds() - t2;
}

void MoeLayer::backward_source_block(int s, int combine) {
  const int H = config_.hidden_size, L = static_cast<int>(local_experts_.size());
  const WireFormat wire = exchange_wire(config_.wire, false);
  MoeLayerBuffers& b = *buffers_;
  const ReceivePlan& rp = receive_;
  const std::int64_t a0 = rp.recv_assignment_offsets[s], na = rp.recv_assignment_counts[s];
  const std::int64_t r0 = rp.recv_row_offsets[s], nr = rp.recv_row_counts[s];
  decode_wire(wire, b.recv.data() + b.recv_offsets[s], std::span<float>(b.dy_recv).subspan(r0 * H, nr * H));
  const std::span<float> dx_rows = std::span<float>(b.expert_out).subspan(r0 * H, nr * H);
  std::fill(dx_rows.begin(), dx_rows.end(), 0.0f);
  const std::span<const std::int64_t> begin =
      std::span<const std::int64_t>(b.block_begin).subspan(static_cast<std::size_t>(s) * L, L);
  const std::span<const std::int64_t> end =
      std::span<const std::int64_t>(b.block_end).subspan(static_cast<std::size_t>(s) * L, L);
  OverlapProgress poll{&comm_, &b};
  expert_backend_->backward_ranges(rp, compute_view(), begin, end, x_recv_, b.dy_recv, act_gate_, act_up_,
                                   b.expert_out, b.d_weight_sorted, ExpertGradsView{d_w1_, d_w3_, d_w2_}, b.expert,
                                   ExpertProgress{&OverlapProgress::poll, &poll});
  for (int e = 0; e < L; ++e) {
    for (std::int64_t i = begin[e]; i < end[e]; ++i) b.d_weight_arrival[rp.sorted_to_arrival[i]] = b.d_weight_sorted[i];
  }
  std::byte* out = b.combine_send.data() + b.combine_send_offsets[s];
  copy_bytes(out, b.d_weight_arrival.data() + a0, na * static_cast<std::int64_t>(sizeof(float)));
  encode_wire(wire, dx_rows, out + na * static_cast<std::int64_t>(sizeof(float)));
  comm_.exchange_send(combine, s);
}

void MoeLayer::backward(std::span<const float> dy, std::span<const float> d_router_probs, std::span<float> dx) {
  const GemmOptionsScope gemm_scope(config_.gemm);
  const int E = config_.num_experts, H = config_.hidden_size, k = config_.top_k, D = comm_.size();
  const std::int64_t T = num_tokens_;
  const bool have_plan = plan_.num_devices == D && receive_.num_devices == D;
  std::optional<std::string> error = local_error([&] {
    OCCULT_CHECK(config_.with_grads, "MoE layer backward: the layer was built for inference (no gradients)");
    OCCULT_CHECK(have_plan, "MoE layer backward: no successful forward to differentiate");
    OCCULT_CHECK(dy.size() == static_cast<std::size_t>(T) * H,
                 "MoE layer backward: output gradient holds {} floats, expected T*H = {}*{} (T of the last forward)",
                 dy.size(), T, H);
    OCCULT_CHECK(dx.size() == dy.size(), "MoE layer backward: input gradient holds {} floats, expected {}", dx.size(),
                 dy.size());
    OCCULT_CHECK(d_router_probs.empty() || d_router_probs.size() == static_cast<std::size_t>(T) * E,
                 "MoE layer backward: router-probability gradient holds {} floats, expected 0 or T*E = {}*{}",
                 d_router_probs.size(), T, E);
    OCCULT_CHECK(d_router_probs.empty() || !routing_imposed_,
                 "MoE layer backward: a router-probability gradient was given but the routing was imposed");
  });
  if (config_.overlap) {
    overlapped_backward(dy, dx, error);
  } else {
    blocking_backward(dy, dx, error);
  }
  const double t3 = now_seconds();
  MoeLayerBuffers& b = *buffers_;
  if (!routing_imposed_ && T > 0) {
    // The gate-weight gradient per (token, slot); dropped slots have none.
    std::vector<float>& dg = b.dg;
    dg.assign(T * k, 0.0f);
    for (std::int64_t a = 0; a < plan_.num_assignments(); ++a) dg[plan_.assignment_slot[a]] = b.d_weight_send[a];
    std::vector<float>& dlogits = b.dlogits;
    std::vector<double>& dp = b.dp;
    dlogits.resize(T * E);
    dp.resize(E);
    gating_backward(probs_, weight_source_, dg, d_router_probs, T, config_.gating(), dlogits, dp);
    router_backend_->backward(dlogits, x_, T, router_, E, H, d_router_, dx);
  }
  timings_.backward_router = now_seconds() - t3;
}

}  // namespace occult
