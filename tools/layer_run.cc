// `occult layer run`: one expert-parallel MoE layer forward (and backward with
// --grad-output) under mpirun, each rank holding its tokens and only its experts; rank 0
// writes the gathered outputs, routing, gradients and byte counts.
#include <fmt/format.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "command_registry.h"
#include "moe_cli.h"
#include "occult/core/safetensors.h"
#include "occult/moe/moe_layer.h"
#include "occult/placement/placement.h"

namespace occult::cli {
namespace layer_run_command {

struct LayerRunArgs {
  std::string weights, input, dispatch = "occult", placement, grad_output, out;
  std::string prune_scheme = "score", prune_weights = "keep", wire = "f32", overlap = "off";
  int layer = 0, top_k = 0, prune_devices = 0;
  bool norm_topk_prob = false;
  double capacity_factor = 0;
};

int metadata_top_k(const SafetensorsReader& reader) {
  for (const char* key : {"top_k", "num_experts_per_tok"}) {
    auto it = reader.metadata().find(key);
    if (it != reader.metadata().end()) return std::stoi(it->second);
  }
  OCCULT_FAIL("{}: no --top-k given and the weights' __metadata__ has no top_k", reader.source());
}

void run_layer(const LayerRunArgs& a, Communicator& comm) {
  const int D = comm.size(), rank = comm.rank();
  MoeLayerConfig config;
  std::vector<int> expert_to_device;
  std::vector<std::vector<int>> device_experts;  // empty unless the placement has replicas
  std::vector<float> x_local, dy_local;
  std::int64_t T = 0, lo = 0, n = 0;
  std::optional<SafetensorsReader> weights;
  // Everything that reads user input happens here, so that any rank's failure fails all.
  agree_on_errors(comm, [&] {
    weights.emplace(SafetensorsReader::open(a.weights));
    const TensorInfo& gate = weights->at("mlp.gate.weight");
    OCCULT_CHECK(gate.shape.size() == 2, "{}: mlp.gate.weight must be [E, H], has {} dims", a.weights, gate.shape.size());
    config.num_experts = static_cast<int>(gate.shape[0]);
    config.hidden_size = static_cast<int>(gate.shape[1]);
    const TensorInfo& w1 = weights->at("mlp.experts.0.gate_proj.weight");
    OCCULT_CHECK(w1.shape.size() == 2 && w1.shape[1] == config.hidden_size,
                 "{}: mlp.experts.0.gate_proj.weight must be [F, H={}]", a.weights, config.hidden_size);
    config.ffn_size = static_cast<int>(w1.shape[0]);
    config.top_k = a.top_k > 0 ? a.top_k : metadata_top_k(*weights);
    config.norm_topk_prob = a.norm_topk_prob;
    config.dispatch = parse_dispatch_kind(a.dispatch);
    config.capacity_factor = a.capacity_factor;
    config.wire = parse_wire_format(a.wire, "--wire");
    config.overlap = parse_overlap_flag(a.overlap);
    if (!a.placement.empty()) {
      Placement p = load_placement(a.placement, ReplicaPolicy::kAllow);
      OCCULT_CHECK(p.num_devices == D, "{}: the placement is for {} devices, but mpirun started {} ranks",
                   a.placement, p.num_devices, D);
      OCCULT_CHECK(p.num_experts == config.num_experts, "{}: the placement is for {} experts, {} has E = {}",
                   a.placement, p.num_experts, a.weights, config.num_experts);
      const LayerPlacement& lp = p.layer(a.layer);
      expert_to_device = lp.expert_to_device;
      device_experts = lp.device_experts;
      config.prune.similarity = lp.similarity;
    } else {
      expert_to_device.resize(config.num_experts);
      for (int e = 0; e < config.num_experts; ++e) expert_to_device[e] = e * D / config.num_experts;
    }
    OCCULT_CHECK(a.prune_devices >= 0, "--prune-devices {}: expected >= 0", a.prune_devices);
    config.prune.max_devices = a.prune_devices;
    config.prune.scheme = parse_prune_scheme_flag(a.prune_scheme);
    config.prune.weights = parse_prune_weights_flag(a.prune_weights);
    OCCULT_CHECK(config.prune.scheme != PruneScheme::kSimilarity || a.prune_devices == 0 ||
                     !config.prune.similarity.empty(),
                 "--prune-scheme similarity needs a placement whose layer {} carries a similarity matrix; embed one with "
                 "`occult prune --traces ROUTING.safetensors --placement P.json --embed-similarity P-sim.json` and "
                 "pass --placement P-sim.json",
                 a.layer);

    SafetensorsReader input = SafetensorsReader::open(a.input);
    const TensorInfo& hs = input.at("hidden_states");
    OCCULT_CHECK(hs.shape.size() == 2 && hs.shape[1] == config.hidden_size,
                 "{}: hidden_states must be [T, H={}] (H of {}), got {} dims with last {}", a.input,
                 config.hidden_size, a.weights, hs.shape.size(), hs.shape.empty() ? 0 : hs.shape.back());
    T = hs.shape[0];
    lo = T * rank / D;
    n = T * (rank + 1) / D - lo;
    const std::vector<float> all = input.read_f32("hidden_states");
    x_local.assign(all.begin() + lo * config.hidden_size, all.begin() + (lo + n) * config.hidden_size);
    if (!a.grad_output.empty()) {
      SafetensorsReader grad = SafetensorsReader::open(a.grad_output);
      const std::vector<std::int64_t> shape = {T, config.hidden_size};
      grad.expect_shape("grad_output", shape);
      const std::vector<float> g = grad.read_f32("grad_output");
      dy_local.assign(g.begin() + lo * config.hidden_size, g.begin() + (lo + n) * config.hidden_size);
    }
  });

  MoeLayer layer(comm, config, expert_to_device, device_experts);
  layer.load_weights(*weights);
  const int H = config.hidden_size, k = config.top_k, E = config.num_experts;
  std::vector<float> y(n * H);
  comm.bytes().reset();
  layer.zero_grad();
  layer.forward(x_local, n, y);
  std::vector<float> dx;
  if (!a.grad_output.empty()) {
    dx.resize(n * H);
    layer.backward(dy_local, {}, dx);
  }

  // Replicas per token of the routing actually used (after pruning).
  std::vector<double> devices_sum = {static_cast<double>(layer.token_device_pairs())};
  comm.all_reduce_sum(devices_sum);
  const auto bytes = sum_over_ranks(comm);

  auto output = gather_rows_to_root<float>(comm, y, n, H);
  auto ids = gather_rows_to_root<std::int32_t>(comm, layer.topk_ids(), n, k);
  auto gate_weights = gather_rows_to_root<float>(comm, layer.topk_weights(), n, k);
  std::vector<float> grad_input, d_router, d_experts[3];
  const std::int64_t FH = static_cast<std::int64_t>(config.ffn_size) * H;
  if (!a.grad_output.empty()) {
    grad_input = gather_rows_to_root<float>(comm, dx, n, H);
    d_router.assign(layer.router_weight_grad().begin(), layer.router_weight_grad().end());
    comm.all_reduce_sum(d_router);
    const auto L = static_cast<std::int64_t>(layer.local_experts().size());
    std::vector<float> packed[3];
    for (int e : layer.local_experts()) {
      packed[0].insert(packed[0].end(), layer.gate_proj_grad(e).begin(), layer.gate_proj_grad(e).end());
      packed[1].insert(packed[1].end(), layer.up_proj_grad(e).begin(), layer.up_proj_grad(e).end());
      packed[2].insert(packed[2].end(), layer.down_proj_grad(e).begin(), layer.down_proj_grad(e).end());
    }
    for (int i = 0; i < 3; ++i) d_experts[i] = gather_rows_to_root<float>(comm, packed[i], L, FH);
  }

  agree_on_errors(comm, [&] {
    if (rank != 0) return;
    SafetensorsWriter out;
    out.add_f32("output", {T, H}, output);
    out.add_i32("topk_ids", {T, k}, ids);
    out.add_f32("topk_weights", {T, k}, gate_weights);
    if (!a.grad_output.empty()) {
      out.add_f32("grad_input", {T, H}, grad_input);
      out.add_f32("grad.mlp.gate.weight", {E, H}, d_router);
      // Gathered in rank order, each rank's experts ascending: map back to global ids.
      std::vector<int> order;
      for (int d = 0; d < D; ++d) {
        for (int e = 0; e < E; ++e) {
          if (expert_to_device[e] == d) order.push_back(e);
        }
      }
      const char* names[3] = {"gate_proj", "up_proj", "down_proj"};
      for (std::size_t i = 0; i < order.size(); ++i) {
        for (int j = 0; j < 3; ++j) {
          const std::vector<std::int64_t> shape =
              j == 2 ? std::vector<std::int64_t>{H, config.ffn_size} : std::vector<std::int64_t>{config.ffn_size, H};
          out.add_f32(fmt::format("grad.mlp.experts.{}.{}.weight", order[i], names[j]), shape,
                      std::span<const float>(d_experts[j]).subspan(i * FH, FH));
        }
      }
    }
    out.set_metadata("dispatch", std::string(dispatch_kind_name(config.dispatch)));
    out.set_metadata("wire", std::string(wire_format_name(config.wire)));
    out.set_metadata("num_devices", std::to_string(D));
    out.set_metadata("num_experts", std::to_string(E));
    out.set_metadata("top_k", std::to_string(k));
    out.set_metadata("prune_devices", std::to_string(config.prune.max_devices));
    out.set_metadata("replicas_per_token", fmt::format("{:.17g}", T > 0 ? devices_sum[0] / T : 0.0));
    for (const auto& [name, b] : bytes) {
      out.set_metadata("bytes." + name, std::to_string(b.total_bytes()));
      out.set_metadata("bytes." + name + ".remote", std::to_string(b.remote_bytes));
    }
    out.write(a.out);
    fmt::print("layer run: {} tokens on {} ranks, {} dispatch, {} wire, C_T {:.3f}; dispatch {} B ({} remote), "
               "combine {} B; wrote {}\n",
               T, D, dispatch_kind_name(config.dispatch), wire_format_name(config.wire), T > 0 ? devices_sum[0] / T : 0.0,
               bytes.at(kExchangeDispatch).total_bytes(), bytes.at(kExchangeDispatch).remote_bytes,
               bytes.at(kExchangeCombine).total_bytes(), a.out);
  });
}

void setup(CLI::App& root) {
  CLI::App& group = command_group(root, "layer", "Run one expert-parallel MoE layer (under mpirun)");
  auto args = std::make_shared<LayerRunArgs>();
  CLI::App* cmd = group.add_subcommand(
      "run", "Forward (and backward with --grad-output) of one MoE layer; each rank holds its tokens and experts");
  cmd->add_option("--weights", args->weights,
                  "safetensors with mlp.gate.weight [E,H] and mlp.experts.{e}.{gate,up,down}_proj.weight")
      ->required();
  cmd->add_option("--input", args->input, "safetensors with hidden_states F32 [T,H]")->required();
  cmd->add_option("--dispatch", args->dispatch, "standard (one row per token-expert) or occult (per token-device)")
      ->required();
  cmd->add_option("--wire", args->wire, "hidden-state payloads of the exchanges: f32, bf16, f16 or fp8 (E4M3 forward dispatch, BF16 elsewhere; sums stay F32)")
      ->capture_default_str();
  cmd->add_option("--overlap", args->overlap, "overlap the forward's exchanges with expert compute: on or off")
      ->capture_default_str();
  cmd->add_option("--placement", args->placement, "placement JSON (default: expert e on device floor(e*D/E))");
  cmd->add_option("--layer", args->layer, "layer of the placement to use")->capture_default_str();
  cmd->add_option("--top-k", args->top_k, "experts per token (default: the weights' __metadata__ top_k)");
  cmd->add_flag("--norm-topk-prob", args->norm_topk_prob, "normalise the top-k probabilities to sum to 1");
  cmd->add_option("--prune-devices", args->prune_devices, "collaboration pruning: at most M devices per token");
  cmd->add_option("--prune-scheme", args->prune_scheme, "score, similarity or device-limited")->capture_default_str();
  cmd->add_option("--prune-weights", args->prune_weights, "keep or recompute")->capture_default_str();
  cmd->add_option("--capacity-factor", args->capacity_factor, "standard only: drop beyond c*T*k/E per expert (0 = dropless)");
  cmd->add_option("--grad-output", args->grad_output, "safetensors with grad_output [T,H]: also run backward");
  cmd->add_option("--out", args->out, "output safetensors (written by rank 0)")->required();
  cmd->callback([args] { run_on_mpi_world([&](Communicator& comm) { run_layer(*args, comm); }); });
}

OCCULT_REGISTER_COMMAND("layer run", setup);

}  // namespace layer_run_command
}  // namespace occult::cli
