// The expert-parallel MoE layer under mpirun (1, 2, 3, 4 ranks) against the single-process
// reference: outputs and every gradient, both dispatchers, with and without norm_topk_prob,
// contiguous and scattered placements, uneven experts per device, pruning, ranks without
// tokens; payloads that encode their source token; exact byte accounting; collective errors;
// every wire format within its rounding; collectives per forward and backward; replicated
// experts; the overlapped forward (against the reference in every wire format, and against the
// blocking forward).
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <thread>
#include <chrono>
#include <map>
#include <string>

#include "occult/comm/mpi_communicator.h"
#include "occult/core/error.h"
#include "occult/moe/expert_compute.h"
#include "occult/moe/moe_layer.h"
#include "occult/moe/reference.h"
#include "reference_deliveries.h"
#include "routing/reference.h"
#include "test_util.h"

namespace occult {
namespace {

using testing_util::random_values;
using testing_util::relative_error;

// Rank r holds tokens [floor(r*T/D), floor((r+1)*T/D)) of a global batch (DESIGN.md).
std::int64_t first_token(std::int64_t T, int r, int D) { return T * r / D; }

std::vector<int> make_placement(int E, int D, bool scattered) {
  std::vector<int> p(E);
  // Scattered: round-robin from the top, so no device holds a contiguous id range.
  for (int e = 0; e < E; ++e) p[e] = scattered ? (E - 1 - e) % D : e * D / E;
  return p;
}

template <typename T>
std::span<const T> rows(const std::vector<T>& v, std::int64_t first, std::int64_t count, std::int64_t width) {
  return std::span<const T>(v).subspan(first * width, count * width);
}

struct LayerCase {
  const char* name;
  DispatchKind dispatch;
  bool norm;
  bool scattered;
  int num_experts;
  int top_k;
  bool prune;
  std::int64_t global_tokens;
  ScoreFunction score = ScoreFunction::kSoftmax;
  PruneScheme prune_scheme = PruneScheme::kScore;
  PruneWeights prune_weights = PruneWeights::kKeep;
  // Group-limited routing (DeepSeek-V2/V3): groups, kept groups, group score, output scaling and
  // a selection bias.
  int groups = 1;
  int kept_groups = 1;
  GroupScore group_score = GroupScore::kMax;
  float scale = 1.0f;
  bool bias = false;
};

class MoeLayerVsReference : public ::testing::TestWithParam<LayerCase> {};

TEST_P(MoeLayerVsReference, OutputsGradientsAndBytesMatch) {
  const LayerCase lc = GetParam();
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int D = comm.size(), rank = comm.rank();
  MoeLayerConfig c;
  c.num_experts = lc.num_experts;
  c.top_k = lc.top_k;
  c.hidden_size = 6;
  c.ffn_size = 5;
  c.norm_topk_prob = lc.norm;
  c.score_function = lc.score;
  c.dispatch = lc.dispatch;
  c.num_groups = lc.groups;
  c.kept_groups = lc.kept_groups;
  c.group_score = lc.group_score;
  c.routed_scaling_factor = lc.scale;
  c.selection_bias = lc.bias;
  if (lc.prune) {
    c.prune.max_devices = std::max(1, D / 2);
    c.prune.scheme = lc.prune_scheme;
    c.prune.weights = lc.prune_weights;
  }
  const std::vector<int> placement = make_placement(c.num_experts, D, lc.scattered);
  const std::int64_t T = lc.global_tokens, H = c.hidden_size, E = c.num_experts, k = c.top_k;
  const std::int64_t lo = first_token(T, rank, D), n = first_token(T, rank + 1, D) - lo;

  MoeLayer layer(comm, c, placement);
  layer.init_random(21, 0.6f);
  const std::vector<float> x = random_values(T * H, 22);
  const std::vector<float> dy = random_values(T * H, 23);
  const std::vector<float> dprobs = random_values(T * E, 24, 0.1f);

  ReferenceMoeWeights w = ReferenceMoeWeights::random(c, 21, 0.6f);
  if (lc.bias) {
    // Large enough to change the choice of experts against the unbiased scores.
    w.selection_bias = random_values(E, 25, 0.3f);
    std::copy(w.selection_bias.begin(), w.selection_bias.end(), layer.selection_bias().begin());
  }
  ReferenceMoeState state;
  std::vector<float> y_ref(T * H), dx_ref(T * H);
  reference_moe_forward(c, w, x, T, placement, state, y_ref);
  ReferenceMoeWeights g_ref = ReferenceMoeWeights::zeros(c);
  reference_moe_backward(c, w, state, x, dy, dprobs, dx_ref, g_ref);

  comm.bytes().reset();
  std::vector<float> y(n * H), dx(n * H);
  layer.zero_grad();
  layer.forward(rows(x, lo, n, H), n, y);
  layer.backward(rows(dy, lo, n, H), rows(dprobs, lo, n, E), dx);

  EXPECT_EQ(std::vector<std::int32_t>(layer.topk_ids().begin(), layer.topk_ids().end()),
            std::vector<std::int32_t>(rows(state.topk_ids, lo, n, k).begin(), rows(state.topk_ids, lo, n, k).end()));
  EXPECT_LT(relative_error(layer.topk_weights(), rows(state.topk_weights, lo, n, k)), 1e-6);
  EXPECT_LT(relative_error(layer.router_probs(), rows(state.probs, lo, n, E)), 1e-6);
  EXPECT_LT(relative_error(y, rows(y_ref, lo, n, H)), 1e-5) << "output";
  EXPECT_LT(relative_error(dx, rows(dx_ref, lo, n, H)), 1e-5) << "grad_input";
  std::vector<float> d_router(layer.router_weight_grad().begin(), layer.router_weight_grad().end());
  comm.all_reduce_sum(d_router);
  EXPECT_LT(relative_error(d_router, g_ref.router), 1e-5) << "grad router";
  const std::int64_t FH = c.ffn_size * H;
  for (int e : layer.local_experts()) {
    EXPECT_LT(relative_error(layer.gate_proj_grad(e), rows(g_ref.gate_proj, e, 1, FH)), 1e-5) << "gate_proj " << e;
    EXPECT_LT(relative_error(layer.up_proj_grad(e), rows(g_ref.up_proj, e, 1, FH)), 1e-5) << "up_proj " << e;
    EXPECT_LT(relative_error(layer.down_proj_grad(e), rows(g_ref.down_proj, e, 1, FH)), 1e-5) << "down_proj " << e;
  }

  // Bytes: each exchange moves exactly the rows the dispatcher implies, summed over ranks;
  // local rows are those whose expert device is the token's home rank.
  std::int64_t rows_total = 0, rows_remote = 0;
  for (std::int64_t t = 0; t < T; ++t) {
    int home = 0;
    while (first_token(T, home + 1, D) <= t) ++home;
    std::vector<int> devices;
    for (std::int64_t s = 0; s < k; ++s) devices.push_back(placement[state.topk_ids[t * k + s]]);
    if (lc.dispatch == DispatchKind::kOccult) {
      std::sort(devices.begin(), devices.end());
      devices.erase(std::unique(devices.begin(), devices.end()), devices.end());
    }
    if (lc.prune) {
      std::vector<int> distinct = devices;
      std::sort(distinct.begin(), distinct.end());
      distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
      EXPECT_LE(static_cast<int>(distinct.size()), c.prune.max_devices) << "token " << t;
    }
    rows_total += static_cast<std::int64_t>(devices.size());
    rows_remote += std::count_if(devices.begin(), devices.end(), [&](int d) { return d != home; });
  }
  auto bytes = sum_over_ranks(comm);
  const std::int64_t row_bytes = H * static_cast<std::int64_t>(sizeof(float));
  for (const char* name : {kExchangeDispatch, kExchangeCombine, kExchangeBackwardDispatch, kExchangeBackwardCombine}) {
    EXPECT_EQ(bytes[name].total_bytes(), rows_total * row_bytes) << name;
    EXPECT_EQ(bytes[name].remote_bytes, rows_remote * row_bytes) << name;
    EXPECT_EQ(bytes[name].calls, D) << name;
  }
  // Metadata: 12 bytes per assignment forward, 4 bytes per assignment back (gate gradients),
  // and a 4-byte status word from every rank to every rank on the backward dispatch.
  EXPECT_EQ(bytes[kExchangeMetadata].total_bytes(), T * k * (12 + 4) + 4 * D * D);
  // The plan predicts this rank's share exactly.
  EXPECT_EQ(comm.bytes().get(kExchangeDispatch).total_bytes(), layer.plan().num_send_rows() * row_bytes);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, MoeLayerVsReference,
    ::testing::Values(LayerCase{"standard", DispatchKind::kStandard, false, false, 7, 2, false, 13},
                      LayerCase{"occult", DispatchKind::kOccult, false, false, 7, 2, false, 13},
                      LayerCase{"standard_norm_scattered", DispatchKind::kStandard, true, true, 7, 3, false, 11},
                      LayerCase{"occult_norm_scattered", DispatchKind::kOccult, true, true, 7, 3, false, 11},
                      LayerCase{"occult_sigmoid", DispatchKind::kOccult, true, true, 8, 2, false, 9,
                                ScoreFunction::kSigmoid},
                      // Fewer tokens than ranks: some ranks have none.
                      LayerCase{"occult_few_tokens", DispatchKind::kOccult, false, true, 5, 2, false, 2},
                      LayerCase{"occult_pruned", DispatchKind::kOccult, true, true, 8, 2, true, 12},
                      LayerCase{"standard_pruned", DispatchKind::kStandard, false, false, 8, 2, true, 12},
                      LayerCase{"occult_pruned_recompute", DispatchKind::kOccult, true, true, 8, 2, true, 12,
                                ScoreFunction::kSoftmax, PruneScheme::kScore, PruneWeights::kRecompute},
                      LayerCase{"occult_pruned_device_limited", DispatchKind::kOccult, false, false, 8, 2, true, 12,
                                ScoreFunction::kSoftmax, PruneScheme::kDeviceLimited, PruneWeights::kKeep},
                      LayerCase{"standard_groups_max_scaled", DispatchKind::kStandard, false, true, 8, 2, false, 13,
                                ScoreFunction::kSoftmax, PruneScheme::kScore, PruneWeights::kKeep, 4, 2,
                                GroupScore::kMax, 1.5f},
                      LayerCase{"occult_sigmoid_groups_bias_scaled", DispatchKind::kOccult, true, false, 8, 3, false,
                                13, ScoreFunction::kSigmoid, PruneScheme::kScore, PruneWeights::kKeep, 4, 2,
                                GroupScore::kTopTwoSum, 2.5f, true}),
    [](const auto& info) { return std::string(info.param.name); });

// x[t][c] = t * H + c for the global token t: every received row names its source token, and
// the rows each rank's experts see must be exactly what the naive reference delivers.
TEST(MoeLayerPayload, EveryRowLandsWhereThePlanSays) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int D = comm.size(), rank = comm.rank();
  for (DispatchKind kind : {DispatchKind::kStandard, DispatchKind::kOccult}) {
    MoeLayerConfig c;
    c.num_experts = 7;
    c.top_k = 3;
    c.hidden_size = 4;
    c.ffn_size = 2;
    c.dispatch = kind;
    const std::vector<int> placement = make_placement(7, D, true);
    const std::int64_t T = 17, H = 4, k = 3;
    // Imposed routing known to every rank: token t selects a shuffled triple.
    std::vector<std::vector<std::int32_t>> ids_per_rank(D);
    std::vector<std::vector<float>> weights_per_rank(D);
    for (int r = 0; r < D; ++r) {
      for (std::int64_t t = first_token(T, r, D); t < first_token(T, r + 1, D); ++t) {
        for (std::int64_t s = 0; s < k; ++s) {
          ids_per_rank[r].push_back(static_cast<std::int32_t>((t * 5 + s * 2) % 7));
          weights_per_rank[r].push_back(static_cast<float>(t) + 0.25f * s);
        }
      }
    }
    const std::int64_t lo = first_token(T, rank, D), n = first_token(T, rank + 1, D) - lo;
    std::vector<float> x(n * H), y(n * H);
    for (std::int64_t t = 0; t < n; ++t) {
      for (std::int64_t col = 0; col < H; ++col) x[t * H + col] = static_cast<float>((lo + t) * H + col);
    }
    MoeLayer layer(comm, c, placement);
    layer.forward_with_routing(x, n, ids_per_rank[rank], weights_per_rank[rank], y);

    const ReceivePlan& rp = layer.receive_plan();
    const auto received = layer.received_hidden_states();
    std::vector<DeliveredAssignment> got;
    for (int l = 0; l < rp.num_local_experts; ++l) {
      for (std::int64_t i = rp.expert_offsets[l]; i < rp.expert_offsets[l + 1]; ++i) {
        const std::int64_t row = rp.sorted_row[i];
        int source = 0;
        while (rp.recv_row_offsets[source + 1] <= row) ++source;
        const auto global = static_cast<std::int64_t>(received[row * H]) / H;
        for (std::int64_t col = 0; col < H; ++col) {
          ASSERT_EQ(received[row * H + col], static_cast<float>(global * H + col)) << "row " << row;
        }
        got.push_back({source, global - first_token(T, source, D), layer.local_experts()[l], rp.sorted_weight[i]});
      }
    }
    std::sort(got.begin(), got.end());
    auto expected = reference_deliveries(ids_per_rank, weights_per_rank, static_cast<int>(k), placement, D);
    EXPECT_EQ(got, expected[rank]) << dispatch_kind_name(kind);
  }
}

// Standard dispatch with a capacity factor drops assignments beyond ceil(c*T*k/E) per expert
// and rank; the result must equal the reference with the dropped slots' weights set to zero
// (per-token arithmetic, so each rank checks its own tokens against the reference).
TEST(MoeLayerCapacity, DroppedSlotsContributeNothing) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int D = comm.size(), rank = comm.rank();
  MoeLayerConfig c;
  c.num_experts = 4;
  c.top_k = 2;
  c.hidden_size = 3;
  c.ffn_size = 2;
  c.dispatch = DispatchKind::kStandard;
  c.capacity_factor = 0.5;
  const std::vector<int> placement = make_placement(4, D, true);
  const std::int64_t n = 6 + rank, H = 3, k = 2;
  // Every token picks experts 0 and (t % 3) + 1: expert 0 overflows its capacity of 3.
  std::vector<std::int32_t> ids;
  std::vector<float> weights;
  for (std::int64_t t = 0; t < n; ++t) {
    ids.insert(ids.end(), {0, static_cast<std::int32_t>(t % 3 + 1)});
    weights.insert(weights.end(), {0.75f, 0.25f});
  }
  const auto x = random_values(n * H, 30 + rank), dy = random_values(n * H, 40 + rank);
  MoeLayer layer(comm, c, placement);
  layer.init_random(8, 0.5f);
  std::vector<float> y(n * H), dx(n * H);
  layer.forward_with_routing(x, n, ids, weights, y);
  layer.backward(dy, {}, dx);
  const std::int64_t capacity = (n * k + 4 * 2 - 1) / (4 * 2);  // ceil(0.5 * n * k / E)
  std::int64_t dropped = 0;
  std::vector<float> kept = weights;
  for (std::int64_t i = 0; i < n * k; ++i) {
    if (layer.plan().dropped[i]) {
      kept[i] = 0.0f;
      ++dropped;
    }
  }
  std::vector<std::int64_t> load(4, 0);
  for (std::int32_t id : ids) ++load[id];
  std::int64_t expected_dropped = 0;
  for (std::int64_t l : load) expected_dropped += std::max<std::int64_t>(0, l - capacity);
  EXPECT_EQ(dropped, expected_dropped);
  EXPECT_GE(dropped, n - capacity);  // expert 0 alone overflows
  // Which ones: each expert keeps its first `capacity` assignments in token order. Expert 0 is
  // slot 0 of every token, so exactly its slots of tokens >= capacity are dropped; expert
  // e = t % 3 + 1 gets every third token from t = e - 1.
  for (std::int64_t t = 0; t < n; ++t) {
    EXPECT_EQ(layer.plan().dropped[t * k], t >= capacity ? 1 : 0) << "token " << t << " expert 0";
    const std::int64_t nth = t / 3;  // this token is expert (t % 3 + 1)'s nth assignment
    EXPECT_EQ(layer.plan().dropped[t * k + 1], nth >= capacity ? 1 : 0) << "token " << t << " expert " << t % 3 + 1;
  }
  MoeLayerConfig rc = c;
  rc.capacity_factor = 0;
  ReferenceMoeWeights w = ReferenceMoeWeights::random(rc, 8, 0.5f);
  ReferenceMoeState s;
  std::vector<float> y_ref(n * H), dx_ref(n * H);
  reference_moe_forward_with_routing(rc, w, x, n, ids, kept, s, y_ref);
  ReferenceMoeWeights g = ReferenceMoeWeights::zeros(rc);
  reference_moe_backward(rc, w, s, x, dy, {}, dx_ref, g);
  EXPECT_LT(relative_error(y, y_ref), 1e-5);
  EXPECT_LT(relative_error(dx, dx_ref), 1e-5);
}

// Replicas: device d holds its primaries (scattered) plus experts 0, 1 and (d + 2) % E, so the
// hot experts are everywhere and others have a second holder.
std::vector<std::vector<int>> replicated_placement(const std::vector<int>& primary, int D) {
  const int E = static_cast<int>(primary.size());
  std::vector<std::vector<int>> held(D);
  for (int d = 0; d < D; ++d) {
    for (int e = 0; e < E; ++e) {
      if (primary[e] == d || e == 0 || e == 1 || e == (d + 2) % E) held[d].push_back(e);
    }
  }
  return held;
}

struct ReplicaCase {
  const char* name;
  DispatchKind dispatch;
  bool prune;
  bool overlap = false;
};

class MoeLayerReplicas : public ::testing::TestWithParam<ReplicaCase> {};

// A replicated layer computes the unreplicated reference (forward, input and router gradients),
// every copy of an expert holds the reference gradient of that expert (summed over its
// holders), and each token's rows go to the holders the naive routing twin picks.
TEST_P(MoeLayerReplicas, MatchTheUnreplicatedReferenceAndTheRoutingTwin) {
  const ReplicaCase rc = GetParam();
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int D = comm.size(), rank = comm.rank();
  if (D == 1) GTEST_SKIP() << "one rank holds every expert once: nothing to replicate";
  MoeLayerConfig c;
  c.num_experts = 8;
  c.top_k = 3;
  c.hidden_size = 6;
  c.ffn_size = 5;
  c.norm_topk_prob = true;
  c.dispatch = rc.dispatch;
  c.overlap = rc.overlap;
  if (rc.prune) c.prune.max_devices = std::min(D, 2);
  const std::vector<int> primary = make_placement(c.num_experts, D, true);
  const std::vector<std::vector<int>> held = replicated_placement(primary, D);
  const std::int64_t T = 14, H = c.hidden_size, E = c.num_experts, k = c.top_k;
  const std::int64_t lo = first_token(T, rank, D), n = first_token(T, rank + 1, D) - lo;

  MoeLayer layer(comm, c, primary, held);
  EXPECT_TRUE(layer.replicated());
  EXPECT_EQ(layer.local_experts(), held[rank]);
  layer.init_random(31, 0.6f);
  const std::vector<float> x = random_values(T * H, 32);
  const std::vector<float> dy = random_values(T * H, 33);
  const std::vector<float> dprobs = random_values(T * E, 34, 0.1f);
  std::vector<float> y(n * H), dx(n * H);
  comm.bytes().reset();
  layer.zero_grad();
  layer.forward(rows(x, lo, n, H), n, y);

  ReferenceMoeWeights w = ReferenceMoeWeights::random(c, 31, 0.6f);
  if (rc.prune) {
    // Pruning with replicas keeps each token within M devices of the replicated placement; the
    // output is then the reference on the pruned routing the routing twin produces.
    MoeLayerConfig unpruned = c;
    unpruned.prune = {};
    ReferenceMoeState s;
    std::vector<float> scratch(T * H), y_ref(T * H);
    reference_moe_forward(unpruned, w, x, T, primary, s, scratch);
    std::vector<std::int32_t> ids = s.topk_ids;
    std::vector<float> weights = s.topk_weights;
    PruneConfig pc;
    pc.num_experts = c.num_experts;
    pc.top_k = c.top_k;
    pc.num_devices = D;
    pc.max_devices = c.prune.max_devices;
    pc.norm_topk_prob = true;
    reference::prune_routing(ids, weights, s.probs, T, held, primary, {}, pc);
    ReferenceMoeState s2;
    reference_moe_forward_with_routing(unpruned, w, x, T, ids, weights, s2, y_ref);
    EXPECT_LT(relative_error(y, rows(y_ref, lo, n, H)), 1e-5) << "output";
    EXPECT_EQ(std::vector<std::int32_t>(layer.topk_ids().begin(), layer.topk_ids().end()),
              std::vector<std::int32_t>(rows(ids, lo, n, k).begin(), rows(ids, lo, n, k).end()));
    return;
  }
  layer.backward(rows(dy, lo, n, H), rows(dprobs, lo, n, E), dx);

  ReferenceMoeState state;
  std::vector<float> y_ref(T * H), dx_ref(T * H);
  reference_moe_forward(c, w, x, T, primary, state, y_ref);
  ReferenceMoeWeights g_ref = ReferenceMoeWeights::zeros(c);
  reference_moe_backward(c, w, state, x, dy, dprobs, dx_ref, g_ref);
  EXPECT_LT(relative_error(y, rows(y_ref, lo, n, H)), 1e-5) << "output";
  EXPECT_LT(relative_error(dx, rows(dx_ref, lo, n, H)), 1e-5) << "grad_input";
  std::vector<float> d_router(layer.router_weight_grad().begin(), layer.router_weight_grad().end());
  comm.all_reduce_sum(d_router);
  EXPECT_LT(relative_error(d_router, g_ref.router), 1e-5) << "grad router";
  const std::int64_t FH = c.ffn_size * H;
  for (int e : layer.local_experts()) {
    EXPECT_LT(relative_error(layer.gate_proj_grad(e), rows(g_ref.gate_proj, e, 1, FH)), 1e-5) << "gate_proj " << e;
    EXPECT_LT(relative_error(layer.up_proj_grad(e), rows(g_ref.up_proj, e, 1, FH)), 1e-5) << "up_proj " << e;
    EXPECT_LT(relative_error(layer.down_proj_grad(e), rows(g_ref.down_proj, e, 1, FH)), 1e-5) << "down_proj " << e;
  }

  // Rows: every rank routes its own tokens (home = the rank) with the twin's rule; occult sends
  // one row per distinct holder, standard one per slot.
  std::int64_t rows_total = 0, rows_remote = 0, rows_without_replicas = 0;
  for (int r = 0; r < D; ++r) {
    const std::int64_t rlo = first_token(T, r, D), rn = first_token(T, r + 1, D) - rlo;
    std::vector<int> homes(rn, r), devices(rn * k);
    const auto ids = rows(state.topk_ids, rlo, rn, k);
    reference::route_tokens(held, c.num_experts, ids, rn, c.top_k, homes, devices);
    for (std::int64_t t = 0; t < rn; ++t) {
      std::vector<int> dev(devices.begin() + t * k, devices.begin() + (t + 1) * k), plain;
      for (std::int64_t s = 0; s < k; ++s) plain.push_back(primary[ids[t * k + s]]);
      if (rc.dispatch == DispatchKind::kOccult) {
        for (auto* v : {&dev, &plain}) {
          std::sort(v->begin(), v->end());
          v->erase(std::unique(v->begin(), v->end()), v->end());
        }
      }
      rows_total += static_cast<std::int64_t>(dev.size());
      rows_without_replicas += static_cast<std::int64_t>(plain.size());
      rows_remote += std::count_if(dev.begin(), dev.end(), [&](int d) { return d != r; });
    }
  }
  const auto bytes = sum_over_ranks(comm);
  const std::int64_t row_bytes = H * static_cast<std::int64_t>(sizeof(float));
  for (const char* name : {kExchangeDispatch, kExchangeCombine, kExchangeBackwardDispatch, kExchangeBackwardCombine}) {
    EXPECT_EQ(bytes.at(name).total_bytes(), rows_total * row_bytes) << name;
    EXPECT_EQ(bytes.at(name).remote_bytes, rows_remote * row_bytes) << name;
  }
  EXPECT_LE(rows_total, rows_without_replicas);
  // Replica gradients move only between an expert's holders: each of its c copies sends its three
  // F x H matrices to the c - 1 others, nothing to itself.
  std::int64_t replica_bytes = 0;
  for (int e = 0; e < c.num_experts; ++e) {
    std::int64_t copies = 0;
    for (const auto& experts : held) copies += std::count(experts.begin(), experts.end(), e);
    replica_bytes += copies * (copies - 1) * 3 * FH * static_cast<std::int64_t>(sizeof(float));
  }
  EXPECT_GT(replica_bytes, 0);
  EXPECT_EQ(bytes.at(kExchangeReplicaGradients).remote_bytes, replica_bytes);
  EXPECT_EQ(bytes.at(kExchangeReplicaGradients).total_bytes(), replica_bytes);
}

INSTANTIATE_TEST_SUITE_P(Cases, MoeLayerReplicas,
                         ::testing::Values(ReplicaCase{"occult", DispatchKind::kOccult, false},
                                           ReplicaCase{"standard", DispatchKind::kStandard, false},
                                           ReplicaCase{"occult_pruned", DispatchKind::kOccult, true},
                                           ReplicaCase{"occult_overlap", DispatchKind::kOccult, false, true},
                                           ReplicaCase{"standard_overlap", DispatchKind::kStandard, false, true}),
                         [](const auto& info) { return std::string(info.param.name); });

// Expects `call` to throw occult::Error on this rank with `fragment` in the message.
template <typename F>
void expect_collective_error(F&& call, const std::string& fragment) {
  try {
    call();
    ADD_FAILURE() << "no error; expected one mentioning '" << fragment << "'";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find(fragment), std::string::npos) << e.message();
  }
}

TEST(MoeLayerErrors, BadInputFailsOnEveryRankWithOneMessage) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int D = comm.size(), rank = comm.rank();
  MoeLayerConfig c;
  c.num_experts = 6;
  c.top_k = 2;
  c.hidden_size = 3;
  c.ffn_size = 2;
  // A placement made for D + 1 devices.
  std::vector<int> other_d = make_placement(6, D + 1, false);
  other_d[5] = D;
  expect_collective_error([&] { MoeLayer layer(comm, c, other_d); }, "there are " + std::to_string(D) + " ranks");
  // E not matching the placement.
  expect_collective_error([&] { MoeLayer layer(comm, c, make_placement(5, D, false)); },
                          "the placement has 5 experts, the layer has E = 6");

  if (D > 1) {
    // Rank 0 alone gets another (valid) placement: the ranks would disagree on every plan.
    expect_collective_error([&] { MoeLayer layer(comm, c, make_placement(6, D, rank == 0)); },
                            "the ranks were given different layer configs or placements");
    // Rank 0 alone overlaps: the count exchanges would differ in width.
    MoeLayerConfig mixed = c;
    mixed.overlap = rank == 0;
    expect_collective_error([&] { MoeLayer layer(comm, mixed, make_placement(6, D, false)); },
                            "the ranks were given different layer configs or placements");
  }

  for (bool overlap : {false, true}) {
    SCOPED_TRACE(overlap ? "overlapped" : "blocking");
    c.overlap = overlap;
    MoeLayer layer(comm, c, make_placement(6, D, false));
    layer.init_random(3, 0.5f);
    const std::int64_t n = 2;
    std::vector<float> x = random_values(n * 3, 4), y(n * 3), dx(n * 3);
    // Only the last rank passes a wrong shape; every rank must fail with its message.
    const std::string prefix = D > 1 ? "rank " + std::to_string(D - 1) + ": " : "";
    std::vector<float> bad_x(rank == D - 1 ? n * 3 + 1 : n * 3, 0.0f);
    expect_collective_error([&] { layer.forward(bad_x, n, y); }, prefix + "MoE layer forward: hidden states hold");
    // Ids out of range on the last rank only.
    std::vector<std::int32_t> ids = {0, 1, 2, 3};
    std::vector<float> w = {0.5f, 0.5f, 0.5f, 0.5f};
    if (rank == D - 1) ids[3] = 6;
    expect_collective_error([&] { layer.forward_with_routing(x, n, ids, w, y); }, "selects expert 6, outside [0, E=6)");
    // The layer still works afterwards (no exchange was left half done).
    layer.forward(x, n, y);
    std::vector<float> bad_dy(rank == 0 ? 1 : n * 3, 0.0f);
    expect_collective_error([&] { layer.backward(bad_dy, {}, dx); }, "output gradient holds");
    std::vector<float> dy = random_values(n * 3, 5);
    layer.backward(dy, {}, dx);
    // Asking for a remote expert's weights names where it lives.
    for (int e = 0; e < 6; ++e) {
      if (!layer.is_local(e)) {
        EXPECT_THROW(layer.gate_proj(e), Error);
      }
    }
  }
}


// ---- Wire formats ----------------------------------------------------------------------------

// x rounded to `wire` and widened back: what the expert's device receives for x.
// x [rows, width] as the exchange delivers it: each row encoded in `wire` and widened back.
std::vector<float> through_wire(WireFormat wire, const std::vector<float>& x, std::int64_t width) {
  std::vector<std::byte> bytes(static_cast<std::size_t>(x.size() / width * wire_row_bytes(wire, width)));
  encode_wire_rows(wire, x, width, bytes.data());
  std::vector<float> back(x.size());
  decode_wire_rows(wire, bytes.data(), width, back);
  return back;
}

struct WireCase {
  const char* name;
  DispatchKind dispatch;
  bool prune;
  double capacity_factor;
  WireFormat wire;
  bool overlap = false;
};

class MoeLayerWire : public ::testing::TestWithParam<WireCase> {};

// Why the tolerance is what it is. Rows are cast once: the expert's device receives exactly
// x~ = fl(x) and dy~ = fl(dy) (EveryReceivedRowIsTheRoundedToken checks this bit for bit), so
// the reference run on (x~, dy~) reproduces everything computed on the device up to F32
// noise: the expert-weight gradients (checked with the F32 tolerance). What travels home is
// fl(s_d) for each device's stage-1 row s_d = sum over the token's experts e on d of
// g_e E_e(x~) (standard: one row per expert), and |fl(v) - v| <= u |v| + eta per element,
// with u the format's unit roundoff (2^-8 bf16, 2^-11 f16, 2^-24 f32) and eta the absolute
// error below the normal range (2^-25 for f16's subnormals; 0 for bf16 and f32 at these
// magnitudes). Summing at most k rows per token:
//   |y_t - y~_t| <= u * sum_{slots j} |g_j E_j(x~_t)| + k * eta,
// the sum over slots taken element-wise (each slot's own contribution, computed by the
// reference with the other slots' weights set to zero). The backward combine is the same
// with dx_j = g_j J_j(x~)^T dy~ in place of g_j E_j(x~). On top, F32 arithmetic differs from
// the double-accumulating reference by far less than 1e-5 of the largest magnitude.
TEST_P(MoeLayerWire, MatchesTheReferenceWithinTheFormatsRounding) {
  const WireCase wc = GetParam();
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int D = comm.size(), rank = comm.rank();
  MoeLayerConfig c;
  c.num_experts = 8;
  c.top_k = 3;
  c.hidden_size = 6;
  c.ffn_size = 5;
  c.norm_topk_prob = true;
  c.dispatch = wc.dispatch;
  c.wire = wc.wire;
  c.capacity_factor = wc.capacity_factor;
  c.overlap = wc.overlap;
  if (wc.prune) c.prune.max_devices = (D + 1) / 2;  // enough devices to hold k experts
  const std::vector<int> placement = make_placement(c.num_experts, D, true);
  const std::int64_t T = 14, H = c.hidden_size, k = c.top_k;
  const std::vector<float> x = random_values(T * H, 51), dy = random_values(T * H, 52);

  // Realistic routing (pruned when asked) from the reference router on the unrounded input.
  MoeLayerConfig rc = c;
  rc.capacity_factor = 0;
  ReferenceMoeWeights w = ReferenceMoeWeights::random(rc, 53, 0.6f);
  ReferenceMoeState routed;
  std::vector<float> scratch(T * H);
  reference_moe_forward(rc, w, x, T, placement, routed, scratch);
  // Capacity: each rank keeps at most ceil(c * n * k / E) assignments per expert, in its own
  // token order; a dropped slot contributes nothing (weight zero in the reference).
  std::vector<float> kept = routed.topk_weights;
  if (wc.capacity_factor > 0) {
    for (int r = 0; r < D; ++r) {
      const std::int64_t r_lo = first_token(T, r, D), r_n = first_token(T, r + 1, D) - r_lo;
      const auto capacity = static_cast<std::int64_t>(std::ceil(wc.capacity_factor * r_n * k / c.num_experts));
      std::vector<std::int64_t> used(c.num_experts, 0);
      for (std::int64_t i = r_lo * k; i < (r_lo + r_n) * k; ++i) {
        if (used[routed.topk_ids[i]]++ >= capacity) kept[i] = 0.0f;
      }
    }
  }

  const std::int64_t lo = first_token(T, rank, D), n = first_token(T, rank + 1, D) - lo;
  MoeLayer layer(comm, c, placement);
  layer.init_random(53, 0.6f);
  std::vector<float> y(n * H), dx(n * H);
  comm.bytes().reset();
  layer.forward_with_routing(rows(x, lo, n, H), n, rows(routed.topk_ids, lo, n, k),
                             rows(routed.topk_weights, lo, n, k), y);
  layer.backward(rows(dy, lo, n, H), {}, dx);

  // fp8 rounds the forward dispatch in E4M3 (per-row scale) and everything else in BF16.
  const WireFormat dispatch_wire = exchange_wire(c.wire, true), other_wire = exchange_wire(c.wire, false);
  const std::vector<float> xw = through_wire(dispatch_wire, x, H), dyw = through_wire(other_wire, dy, H);
  auto run_reference = [&](const std::vector<float>& weights, std::vector<float>& y_out, std::vector<float>& dx_out,
                           ReferenceMoeWeights& grads) {
    ReferenceMoeState s;
    y_out.assign(T * H, 0.0f);
    dx_out.assign(T * H, 0.0f);
    reference_moe_forward_with_routing(rc, w, xw, T, routed.topk_ids, weights, s, y_out);
    reference_moe_backward(rc, w, s, xw, dyw, {}, dx_out, grads);
  };
  std::vector<float> y_ref, dx_ref;
  ReferenceMoeWeights g_ref = ReferenceMoeWeights::zeros(rc);
  run_reference(kept, y_ref, dx_ref, g_ref);
  std::vector<double> bound_y(T * H, 0.0), bound_dx(T * H, 0.0);
  for (std::int64_t slot = 0; slot < k; ++slot) {
    std::vector<float> only = kept;
    for (std::int64_t i = 0; i < T * k; ++i) {
      if (i % k != slot) only[i] = 0.0f;
    }
    std::vector<float> y_slot, dx_slot;
    ReferenceMoeWeights unused = ReferenceMoeWeights::zeros(rc);
    run_reference(only, y_slot, dx_slot, unused);
    for (std::int64_t i = 0; i < T * H; ++i) {
      bound_y[i] += std::abs(y_slot[i]);
      bound_dx[i] += std::abs(dx_slot[i]);
    }
  }
  // Only the combines round after the experts (the dispatches' rounding is in xw, dyw).
  const double u = wire_unit_roundoff(other_wire), eta = other_wire == WireFormat::kF16 ? 0x1p-25 : 0.0;
  auto check = [&](std::span<const float> got, const std::vector<float>& want, const std::vector<double>& bound,
                   const char* what) {
    double largest = 0;
    for (std::int64_t i = 0; i < T * H; ++i) largest = std::max({largest, std::abs(double(want[i])), bound[i]});
    for (std::int64_t i = 0; i < n * H; ++i) {
      const std::int64_t g = lo * H + i;
      const double allowed = u * bound[g] + static_cast<double>(k) * eta + 1e-5 * largest;
      ASSERT_LE(std::abs(double(got[i]) - want[g]), allowed) << what << " element " << g;
    }
  };
  check(y, y_ref, bound_y, "output");
  check(dx, dx_ref, bound_dx, "grad_input");
  const std::int64_t FH = c.ffn_size * H;
  for (int e : layer.local_experts()) {
    EXPECT_LT(relative_error(layer.gate_proj_grad(e), rows(g_ref.gate_proj, e, 1, FH)), 1e-5) << "gate_proj " << e;
    EXPECT_LT(relative_error(layer.up_proj_grad(e), rows(g_ref.up_proj, e, 1, FH)), 1e-5) << "up_proj " << e;
    EXPECT_LT(relative_error(layer.down_proj_grad(e), rows(g_ref.down_proj, e, 1, FH)), 1e-5) << "down_proj " << e;
  }
  if (c.wire != WireFormat::kF32) {
    // The rounding is real: a loose format must not agree with the unrounded F32 result.
    std::vector<float> y_f32(T * H);
    ReferenceMoeState s;
    reference_moe_forward_with_routing(rc, w, x, T, routed.topk_ids, kept, s, y_f32);
    std::vector<double> gap = {relative_error(y, rows(y_f32, lo, n, H)) * static_cast<double>(n)};
    comm.all_reduce_sum(gap);
    EXPECT_GT(gap[0], 1e-5);
  }

  // Bytes: wire-format rows of the plan (recounted here from the routing, dropped slots
  // excluded), and F32 metadata.
  std::int64_t rows_total = 0, assignments = 0;
  for (std::int64_t t = 0; t < T; ++t) {
    std::vector<int> devices;
    for (std::int64_t s = 0; s < k; ++s) {
      if (kept[t * k + s] == 0.0f && wc.capacity_factor > 0) continue;
      devices.push_back(placement[routed.topk_ids[t * k + s]]);
      ++assignments;
    }
    if (c.dispatch == DispatchKind::kOccult) {
      std::sort(devices.begin(), devices.end());
      devices.erase(std::unique(devices.begin(), devices.end()), devices.end());
    }
    rows_total += static_cast<std::int64_t>(devices.size());
  }
  auto bytes = sum_over_ranks(comm);
  for (const char* name : {kExchangeDispatch, kExchangeCombine, kExchangeBackwardDispatch, kExchangeBackwardCombine}) {
    const bool forward_dispatch = std::string_view(name) == kExchangeDispatch;
    EXPECT_EQ(bytes[name].total_bytes(), rows_total * wire_row_bytes(exchange_wire(c.wire, forward_dispatch), H))
        << name;
  }
  // 12 bytes per assignment forward, a 4-byte gate gradient back, a 4-byte status word from
  // every rank to every rank on the blocking backward dispatch (the overlapped backward sends
  // it in a count exchange of its own).
  EXPECT_EQ(bytes[kExchangeMetadata].total_bytes(), assignments * (12 + 4) + (wc.overlap ? 0 : 4 * D * D));
}

std::vector<WireCase> wire_cases() {
  std::vector<WireCase> cases;
  for (bool overlap : {false, true}) {
    for (WireFormat w : {WireFormat::kF32, WireFormat::kBF16, WireFormat::kF16, WireFormat::kFP8}) {
      cases.push_back({"standard", DispatchKind::kStandard, false, 0, w, overlap});
      cases.push_back({"occult", DispatchKind::kOccult, false, 0, w, overlap});
      cases.push_back({"occult_pruned", DispatchKind::kOccult, true, 0, w, overlap});
      cases.push_back({"standard_capacity", DispatchKind::kStandard, false, 0.5, w, overlap});
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Formats, MoeLayerWire, ::testing::ValuesIn(wire_cases()), [](const auto& info) {
  return std::string(info.param.name) + "_" + std::string(wire_format_name(info.param.wire)) +
         (info.param.overlap ? "_overlap" : "");
});

// BF16 compute (mixed-precision training: F32 master weights, BF16-rounded GEMM operands, F32
// sums) through the whole layer on every rank count, for standard, occult, pruned and overlapped
// dispatch. The element-wise rounding bounds of the expert kernels are proved in
// expert_compute_test; here the layer must hand every product to them on every rank, forward
// and backward: the output, the input gradient and every expert-weight gradient are within
// 2^-5 = 8 u16 of the double reference norm-wise (each value is at most three rounded GEMMs
// deep, each adding up to 2 u16 times the ratio ||A||B|| / ||AB||, a small factor at these
// shapes; measured 0.004-0.006), and farther from it than F32 ever is (1e-4), so the products
// really ran in BF16.
TEST(MoeLayerBf16Compute, TrainsWithinBf16RoundingOnEveryRankCount) {
  if (!cpu_has_bf16_compute()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int D = comm.size(), rank = comm.rank();
  struct Variant {
    const char* name;
    DispatchKind dispatch;
    bool prune, overlap;
  };
  for (const Variant v : {Variant{"standard", DispatchKind::kStandard, false, false},
                          Variant{"occult", DispatchKind::kOccult, false, false},
                          Variant{"occult_pruned", DispatchKind::kOccult, true, false},
                          Variant{"occult_overlap", DispatchKind::kOccult, false, true}}) {
    SCOPED_TRACE(v.name);
    MoeLayerConfig c;
    c.num_experts = 8;
    c.top_k = 3;
    c.hidden_size = 16;
    c.ffn_size = 12;
    c.norm_topk_prob = true;
    c.dispatch = v.dispatch;
    c.overlap = v.overlap;
    c.gemm = {GemmBackend::kOneDnn, ComputeDType::kBF16};
    if (v.prune) c.prune.max_devices = (D + 1) / 2;
    const std::vector<int> placement = make_placement(c.num_experts, D, true);
    const std::int64_t T = 24, H = c.hidden_size, k = c.top_k;
    const std::vector<float> x = random_values(T * H, 71), dy = random_values(T * H, 72);
    ReferenceMoeWeights w = ReferenceMoeWeights::random(c, 73, 0.4f);
    // The routing (pruned by the reference when asked) is imposed, as a model's router would.
    ReferenceMoeState routed, s;
    std::vector<float> y_ref(T * H), dx_ref(T * H);
    reference_moe_forward(c, w, x, T, placement, routed, y_ref);
    reference_moe_forward_with_routing(c, w, x, T, routed.topk_ids, routed.topk_weights, s, y_ref);
    ReferenceMoeWeights g_ref = ReferenceMoeWeights::zeros(c);
    reference_moe_backward(c, w, s, x, dy, {}, dx_ref, g_ref);

    const std::int64_t lo = first_token(T, rank, D), n = first_token(T, rank + 1, D) - lo;
    MoeLayer layer(comm, c, placement);
    layer.init_random(73, 0.4f);
    std::vector<float> y(n * H), dx(n * H);
    layer.forward_with_routing(rows(x, lo, n, H), n, rows(s.topk_ids, lo, n, k), rows(s.topk_weights, lo, n, k), y);
    layer.backward(rows(dy, lo, n, H), {}, dx);

    // Norm-wise over all ranks: squared differences and norms summed.
    auto global_error = [&](std::span<const float> got, std::span<const float> want) {
      std::vector<double> sums = {0, 0};
      for (std::size_t i = 0; i < got.size(); ++i) {
        sums[0] += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
        sums[1] += double(want[i]) * want[i];
      }
      comm.all_reduce_sum(sums);
      return std::sqrt(sums[0] / sums[1]);
    };
    const double tolerance = 0x1p-5, f32_noise = 1e-4;
    const double y_err = global_error(y, rows(y_ref, lo, n, H)), dx_err = global_error(dx, rows(dx_ref, lo, n, H));
    EXPECT_LT(y_err, tolerance) << "output";
    EXPECT_GT(y_err, f32_noise) << "output";
    EXPECT_LT(dx_err, tolerance) << "grad_input";
    EXPECT_GT(dx_err, f32_noise) << "grad_input";
    const std::int64_t FH = c.ffn_size * H;
    for (int e : layer.local_experts()) {
      for (int kind = 0; kind < 3; ++kind) {
        const auto& ref = kind == 0 ? g_ref.gate_proj : kind == 1 ? g_ref.up_proj : g_ref.down_proj;
        const auto got = kind == 0 ? layer.gate_proj_grad(e) : kind == 1 ? layer.up_proj_grad(e) : layer.down_proj_grad(e);
        const double err = relative_error(got, rows(ref, e, 1, FH));
        EXPECT_LT(err, tolerance) << "expert " << e << " matrix " << kind;
        if (std::any_of(got.begin(), got.end(), [](float g) { return g != 0.0f; })) {
          EXPECT_GT(err, f32_noise) << "expert " << e << " matrix " << kind;
        }
      }
    }
  }
}

// Rows are cast once at home and arrive as exactly fl(x): column 0 carries the global token id
// (an integer, exact in every format), the others values that the half formats must round.
TEST(MoeLayerWirePayload, EveryReceivedRowIsTheRoundedToken) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int D = comm.size(), rank = comm.rank();
  for (WireFormat wire : {WireFormat::kBF16, WireFormat::kF16}) {
    for (DispatchKind kind : {DispatchKind::kStandard, DispatchKind::kOccult}) {
      MoeLayerConfig c;
      c.num_experts = 7;
      c.top_k = 3;
      c.hidden_size = 5;
      c.ffn_size = 2;
      c.dispatch = kind;
      c.wire = wire;
      const std::int64_t T = 17, H = 5, k = 3;
      std::vector<float> x = random_values(T * H, 61, 3.0f);
      for (std::int64_t t = 0; t < T; ++t) x[t * H] = static_cast<float>(t);
      const std::vector<float> xw = through_wire(wire, x, H);
      const std::int64_t lo = first_token(T, rank, D), n = first_token(T, rank + 1, D) - lo;
      std::vector<std::int32_t> ids;
      std::vector<float> weights;
      for (std::int64_t t = lo; t < lo + n; ++t) {
        for (std::int64_t s = 0; s < k; ++s) {
          ids.push_back(static_cast<std::int32_t>((t * 5 + s * 2) % 7));
          weights.push_back(0.25f);
        }
      }
      MoeLayer layer(comm, c, make_placement(7, D, true));
      std::vector<float> y(n * H);
      layer.forward_with_routing(rows(x, lo, n, H), n, ids, weights, y);
      const auto received = layer.received_hidden_states();
      std::int64_t rounded = 0;
      for (std::int64_t row = 0; row * H < static_cast<std::int64_t>(received.size()); ++row) {
        const auto t = static_cast<std::int64_t>(received[row * H]);
        ASSERT_TRUE(t >= 0 && t < T) << "row " << row;
        for (std::int64_t col = 0; col < H; ++col) {
          ASSERT_EQ(received[row * H + col], xw[t * H + col]) << wire_format_name(wire) << " row " << row;
          rounded += received[row * H + col] != x[t * H + col];
        }
      }
      std::vector<std::int64_t> total = {rounded};
      comm.all_reduce_sum(total);
      EXPECT_GT(total[0], 0) << "no value was rounded: the test would not see a missing cast";
    }
  }
}

// A tiny case counted by hand, one rank (SelfCommunicator): E = 2 experts on the one device,
// k = 2, H = 3, two tokens each selecting both experts.
//   occult: 1 row per token -> 2 rows; standard: 1 row per (token, expert) -> 4 rows;
//   bf16/f16 rows are 3 * 2 = 6 bytes, f32 rows 12 bytes;
//   metadata: 4 assignments * 12 B forward + a 4 B status word + 4 gate gradients * 4 B = 68 B.
TEST(MoeLayerWireBytes, HandCountedTinyCase) {
  struct Expect {
    WireFormat wire;
    DispatchKind dispatch;
    std::int64_t row_bytes;
  };
  for (const Expect& e : {Expect{WireFormat::kBF16, DispatchKind::kOccult, 12},
                          Expect{WireFormat::kF16, DispatchKind::kOccult, 12},
                          Expect{WireFormat::kF32, DispatchKind::kOccult, 24},
                          Expect{WireFormat::kBF16, DispatchKind::kStandard, 24},
                          Expect{WireFormat::kF32, DispatchKind::kStandard, 48}}) {
    for (bool overlap : {false, true}) {
      SelfCommunicator self;
      MoeLayerConfig c;
      c.num_experts = 2;
      c.top_k = 2;
      c.hidden_size = 3;
      c.ffn_size = 2;
      c.dispatch = e.dispatch;
      c.wire = e.wire;
      c.overlap = overlap;
      MoeLayer layer(self, c, {0, 0});
      layer.init_random(1, 0.5f);
      const std::vector<float> x = random_values(6, 2), dy = random_values(6, 3);
      std::vector<float> y(6), dx(6);
      self.bytes().reset();
      layer.forward_with_routing(x, 2, std::vector<std::int32_t>{0, 1, 1, 0}, std::vector<float>{0.5f, 0.5f, 0.5f, 0.5f},
                                 y);
      layer.backward(dy, {}, dx);
      for (const char* name : {kExchangeDispatch, kExchangeCombine, kExchangeBackwardDispatch, kExchangeBackwardCombine}) {
        EXPECT_EQ(self.bytes().get(name).total_bytes(), e.row_bytes) << name << " " << wire_format_name(e.wire);
      }
      // The overlapped backward's status words travel in a count exchange of their own, which
      // (like the forward's count exchange) is not MoE metadata.
      EXPECT_EQ(self.bytes().get(kExchangeMetadata).total_bytes(), overlap ? 64 : 68);
    }
  }
}

// One count exchange, one dispatch and one combine per forward; one backward dispatch and one
// backward combine per backward, at every rank count (errors ride these, see below).
TEST(MoeLayerCollectives, ThreeForwardTwoBackward) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int D = comm.size(), rank = comm.rank();
  MoeLayerConfig c;
  c.num_experts = 8;
  c.top_k = 2;
  c.hidden_size = 4;
  c.ffn_size = 3;
  c.prune.max_devices = 1;
  MoeLayer layer(comm, c, make_placement(8, D, false));
  layer.init_random(4, 0.5f);
  const std::int64_t n = 3 + rank;
  const std::vector<float> x = random_values(n * 4, 70 + rank), dy = random_values(n * 4, 80 + rank);
  std::vector<float> y(n * 4), dx(n * 4);
  const std::int64_t before = comm.collective_calls();
  layer.forward(x, n, y);
  EXPECT_EQ(comm.collective_calls() - before, 3);
  layer.backward(dy, {}, dx);
  EXPECT_EQ(comm.collective_calls() - before, 5);
  // Overlapped: the same count exchange, and the dispatch and combine started non-blocking.
  c.overlap = true;
  MoeLayer overlapped(comm, c, make_placement(8, D, false));
  overlapped.init_random(4, 0.5f);
  const std::int64_t start = comm.collective_calls();
  overlapped.forward(x, n, y);
  EXPECT_EQ(comm.collective_calls() - start, 3);
  // Its backward agrees on every rank's status first (no gradient may change before that),
  // then starts the backward dispatch and combine non-blocking: three.
  overlapped.backward(dy, {}, dx);
  EXPECT_EQ(comm.collective_calls() - start, 6);
}

// ---- Overlapped forward ----------------------------------------------------------------------

// The overlapped forward against the blocking one, for standard, occult, pruned and
// capacity-limited dispatch in every wire format: the receive plan, the received rows, the
// bytes of every exchange and the collectives are exactly the blocking forward's; outputs and
// the gradients of the backward that follows agree to F32 rounding; and the overlapped results
// do not depend on the order in which blocks land (a rank that starts late changes the order;
// the results stay bit for bit the same). Experts serve more than a GEMM tile (256 rows) from
// several sources; ranks hold different numbers of tokens and experts (E = 5), and the last
// rank has none, so it sends nothing.
//
// Why not bit for bit with the blocking path, and why 1e-6: the two paths evaluate the same F32
// expression, with every sum in the same order, except that the overlapped path runs each
// source's rows of an expert as GEMM calls of their own (tiles per source) where the blocking
// path tiles the expert's rows of all sources together, and a GEMM's result for one row can
// change in its last bits with the call's shape. Each GEMM output is a dot product of
// n <= max(H, F) = 8 terms; two summation orders of one differ by at most 2 gamma_n of the sum
// of the terms' magnitudes (gamma_n = n u / (1 - n u), u = 2^-24; Higham, "Accuracy and
// Stability of Numerical Algorithms", 3.1), 2 gamma_8 = 9.5e-7. A chain of three GEMMs and a
// weighted sum over k = 2 experts keeps the norm-wise difference a small multiple of that for
// these well-conditioned random inputs; 1e-6 of the norm (the suite checks F32 against the
// double reference at 1e-5) passes with room, and a row summed into the wrong token or a
// missed block breaks it by orders of magnitude.
TEST(MoeLayerOverlap, MatchesTheBlockingForwardAndIgnoresArrivalOrder) {
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int D = comm.size(), rank = comm.rank();
  struct Case {
    const char* name;
    DispatchKind dispatch;
    int prune_devices;
    double capacity_factor;
  };
  for (const Case& cs : {Case{"standard", DispatchKind::kStandard, 0, 0}, Case{"occult", DispatchKind::kOccult, 0, 0},
                         Case{"occult_pruned", DispatchKind::kOccult, (D + 1) / 2, 0},
                         Case{"standard_capacity", DispatchKind::kStandard, 0, 0.6}}) {
    for (WireFormat wire : {WireFormat::kF32, WireFormat::kBF16, WireFormat::kF16, WireFormat::kFP8}) {
      SCOPED_TRACE(std::string(cs.name) + " " + std::string(wire_format_name(wire)));
      MoeLayerConfig c;
      c.num_experts = 5;
      c.top_k = 2;
      c.hidden_size = 8;
      c.ffn_size = 4;
      c.dispatch = cs.dispatch;
      c.capacity_factor = cs.capacity_factor;
      c.prune.max_devices = cs.prune_devices;
      c.wire = wire;
      const std::vector<int> placement = make_placement(5, D, true);
      // Over 256 rows per expert even under the capacity limit; the last rank has no tokens.
      const std::int64_t n = D > 1 && rank == D - 1 ? 0 : 1100 + 97 * rank;
      const std::vector<float> x = random_values(n * 8, 90 + rank), dy = random_values(n * 8, 95 + rank);
      const std::vector<float> dprobs = random_values(n * 5, 99 + rank, 0.1f);
      struct Run {
        std::vector<float> y, dx, grads;
        ReceivePlan receive;
        std::vector<float> received;
        std::map<std::string, ExchangeBytes> bytes;
        std::int64_t forward_collectives = 0;
      };
      auto run = [&](bool overlap, int late_rank) {
        MoeLayerConfig lc = c;
        lc.overlap = overlap;
        MoeLayer layer(comm, lc, placement);
        layer.init_random(91, 0.5f);
        Run out;
        out.y.resize(n * 8);
        out.dx.resize(n * 8);
        comm.bytes().reset();
        layer.zero_grad();
        comm.barrier();
        // The late rank's blocks land last everywhere else.
        if (rank == late_rank) std::this_thread::sleep_for(std::chrono::milliseconds(30));
        const std::int64_t calls = comm.collective_calls();
        layer.forward(x, n, out.y);
        out.forward_collectives = comm.collective_calls() - calls;
        out.receive = layer.receive_plan();
        out.received.assign(layer.received_hidden_states().begin(), layer.received_hidden_states().end());
        layer.backward(dy, dprobs, out.dx);
        out.bytes = comm.bytes().all();
        for (const MoeParameter& p : layer.parameters()) out.grads.insert(out.grads.end(), p.grad.begin(), p.grad.end());
        return out;
      };
      const Run blocking = run(false, -1), overlapped = run(true, 0), late = run(true, D - 1);
      EXPECT_LT(relative_error(overlapped.y, blocking.y), 1e-6) << "output";
      EXPECT_LT(relative_error(overlapped.dx, blocking.dx), 1e-6) << "grad_input";
      EXPECT_LT(relative_error(overlapped.grads, blocking.grads), 1e-6) << "expert grads";
      EXPECT_EQ(late.y, overlapped.y);
      EXPECT_EQ(late.dx, overlapped.dx);
      EXPECT_EQ(late.grads, overlapped.grads);
      EXPECT_EQ(overlapped.forward_collectives, blocking.forward_collectives);
      EXPECT_EQ(overlapped.received, blocking.received);
      EXPECT_EQ(overlapped.receive.recv_row_counts, blocking.receive.recv_row_counts);
      EXPECT_EQ(overlapped.receive.recv_row_offsets, blocking.receive.recv_row_offsets);
      EXPECT_EQ(overlapped.receive.recv_assignment_counts, blocking.receive.recv_assignment_counts);
      EXPECT_EQ(overlapped.receive.recv_assignment_offsets, blocking.receive.recv_assignment_offsets);
      EXPECT_EQ(overlapped.receive.expert_offsets, blocking.receive.expert_offsets);
      EXPECT_EQ(overlapped.receive.sorted_row, blocking.receive.sorted_row);
      EXPECT_EQ(overlapped.receive.sorted_weight, blocking.receive.sorted_weight);
      EXPECT_EQ(overlapped.receive.sorted_to_arrival, blocking.receive.sorted_to_arrival);
      ASSERT_EQ(overlapped.bytes.size(), blocking.bytes.size());
      for (const auto& [name, b] : blocking.bytes) {
        // Except the backward's 4-byte status word to each rank, which the overlapped backward
        // sends in a count exchange of its own.
        const bool metadata = name == kExchangeMetadata;
        EXPECT_EQ(overlapped.bytes.at(name).local_bytes, b.local_bytes - (metadata ? 4 : 0)) << name;
        EXPECT_EQ(overlapped.bytes.at(name).remote_bytes, b.remote_bytes - (metadata ? 4 * (D - 1) : 0)) << name;
        EXPECT_EQ(overlapped.bytes.at(name).calls, b.calls) << name;
      }
      // The case is what it claims: some expert serves more than a tile (so the paths split the
      // tiles differently), and some pair of ranks exchanges no rows.
      std::vector<std::int64_t> facts = {0, 0};
      for (std::size_t e = 0; e + 1 < blocking.receive.expert_offsets.size(); ++e) {
        facts[0] = std::max(facts[0], blocking.receive.expert_offsets[e + 1] - blocking.receive.expert_offsets[e]);
      }
      for (std::int64_t rows : blocking.receive.recv_row_counts) facts[1] += rows == 0;
      comm.all_reduce_max(facts);
      EXPECT_GT(facts[0], kExpertTileRows);
      if (D > 1) {
        EXPECT_GT(facts[1], 0);
      }
    }
  }
}

}  // namespace
}  // namespace occult
