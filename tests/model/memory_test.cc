// The memory estimate before allocation (occult/model/memory.h): for small configs covering every
// optional tensor (biases, QK-norms, shared experts and their gate, dense layers, tied and untied
// embeddings) and 1, 3 and 4 ranks, the estimate equals the bytes the MoeTransformer allocates
// for parameters and gradients (counted from its arenas and tensors, and measured as heap growth
// for a larger config); MemAvailable is divided by the ranks on the host; and with
// OCCULT_MEMORY_LIMIT_GIB set tiny the constructor refuses with a message naming the needed and
// the available bytes, while a bad value of the variable is an error naming it.
#include "occult/model/memory.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <optional>
#include <string>

#include "occult/comm/communicator.h"
#include "occult/core/error.h"
#include "occult/model/config.h"
#include "occult/model/model.h"
#include "test_util.h"

// Heap growth is measured with glibc's mallinfo2, and only under glibc's own allocator.
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer)
#define OCCULT_TEST_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define OCCULT_TEST_SANITIZED 1
#endif
#if defined(__GLIBC__) && !defined(OCCULT_TEST_SANITIZED)
#include <malloc.h>
#define OCCULT_TEST_HEAP_MEASURABLE 1
#else
#define OCCULT_TEST_HEAP_MEASURABLE 0
#endif

namespace occult {
namespace {

// Rank `rank` of a `size`-rank run whose peers agree with it: reductions and broadcasts leave
// the values as they are, which is what the MoeTransformer constructor needs to build the rank's
// share of the experts without MPI (nothing here runs an exchange).
class LoneRankCommunicator final : public Communicator {
 public:
  LoneRankCommunicator(int rank, int size) : rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::vector<std::int64_t> all_to_all_counts(std::span<const std::int64_t>) override {
    ADD_FAILURE() << "the constructor ran an exchange";
    return std::vector<std::int64_t>(size_, 0);
  }
  void all_to_all_v(const std::string&, std::span<const std::byte>, std::span<const std::int64_t>,
                    std::span<const std::int64_t>, std::span<std::byte>,
                    std::span<const std::int64_t>, std::span<const std::int64_t>) override {
    ADD_FAILURE() << "the constructor ran an exchange";
  }
  void all_reduce_sum(std::span<float>) override {}
  void all_reduce_sum(std::span<double>) override {}
  void all_reduce_sum(std::span<std::int64_t>) override {}
  void all_reduce_max(std::span<double>) override {}
  void all_reduce_max(std::span<std::int64_t>) override {}
  void broadcast(std::span<std::byte>, int) override {}
  void barrier() override {}

 private:
  int rank_, size_;
};

// Sets (or, with nullopt, unsets) an environment variable for one scope, restoring it after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) {
      ::setenv(name, value->c_str(), 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// Bytes of parameters and gradients the model holds, from its own accounting: the dense arena and
// its gradients, every expert tensor and gradient of this rank, and the MoE layer's router copy
// and router gradient [E,H] per MoE layer (src/moe/moe_layer.cc; not visible through tensors()).
struct Counted {
  std::int64_t dense = 0, experts = 0;
};
Counted count_allocated(MoeTransformer& model) {
  const ModelConfig& c = model.config();
  Counted n;
  for (const ParamTensor& t : model.tensors()) {
    const std::int64_t bytes = static_cast<std::int64_t>(t.value.size() + t.grad.size()) * 4 +
                               static_cast<std::int64_t>(t.value_bf16.size()) * 2;
    (t.expert ? n.experts : n.dense) += bytes;
  }
  // Each MoE layer's router copy, and its gradient when the model trains.
  const std::int64_t router_copies = model.dense_grads().empty() ? 1 : 2;
  n.experts += static_cast<std::int64_t>(c.num_moe_layers()) * router_copies * c.num_experts *
               c.hidden_size * 4;
  // The layer's copy of the selection bias [E] (DeepSeek-V3), which has no gradient.
  if (c.router_selection_bias) n.experts += static_cast<std::int64_t>(c.num_moe_layers()) * c.num_experts * 4;
  return n;
}

// Configs that switch on each optional dense tensor the model allocates.
std::vector<std::pair<std::string, ModelConfig>> configs() {
  std::vector<std::pair<std::string, ModelConfig>> out;
  out.emplace_back("tiny", testing::tiny_config(false, false, false));
  out.emplace_back("tiny shared tied", testing::tiny_config(true, true, true));
  ModelConfig olmoe_like = testing::tiny_config(false, true, false);
  olmoe_like.model_type = "olmoe";
  olmoe_like.qk_norm = QkNorm::kFull;
  olmoe_like.num_key_value_heads = 1;
  olmoe_like.attention_qkv_bias = olmoe_like.attention_o_bias = true;
  out.emplace_back("qkv/o bias, full QK-norm, GQA", olmoe_like);
  ModelConfig qwen2_like = testing::tiny_config(false, false, false);
  qwen2_like.model_type = "qwen2_moe";
  qwen2_like.num_hidden_layers = 3;
  qwen2_like.mlp_only_layers = {1};
  qwen2_like.intermediate_size = 10;
  qwen2_like.shared_expert_intermediate_size = 12;
  qwen2_like.shared_expert_gate = true;
  qwen2_like.attention_qkv_bias = true;
  qwen2_like.num_experts = 8;
  out.emplace_back("dense layer, gated shared expert", qwen2_like);
  ModelConfig qwen3_like = testing::tiny_config(false, true, true);
  qwen3_like.model_type = "qwen3_moe";
  qwen3_like.qk_norm = QkNorm::kPerHead;
  qwen3_like.explicit_head_dim = 6;
  qwen3_like.num_key_value_heads = 1;
  qwen3_like.num_experts = 7;
  out.emplace_back("per-head QK-norm, explicit head_dim, E=7", qwen3_like);
  ModelConfig deepseek_like = testing::tiny_config(true, false, false);
  deepseek_like.model_type = "deepseek";
  deepseek_like.num_hidden_layers = 3;
  deepseek_like.first_k_dense_replace = 1;
  deepseek_like.n_shared_experts = 2;
  deepseek_like.intermediate_size = 14;
  out.emplace_back("first dense layer, two fused shared experts", deepseek_like);
  // Multi-head latent attention (inference only): q_proj, or q_a_proj + q_a_layernorm + q_b_proj;
  // kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj; an o_proj of NH * v_head_dim inputs.
  ModelConfig v2_like = testing::tiny_config(true, false, false);
  v2_like.model_type = "deepseek_v2";
  v2_like.num_hidden_layers = 3;
  v2_like.first_k_dense_replace = 1;
  v2_like.intermediate_size = 14;
  v2_like.kv_lora_rank = 6;
  v2_like.qk_nope_head_dim = 3;
  v2_like.qk_rope_head_dim = 2;
  v2_like.v_head_dim = 4;
  v2_like.n_group = 2;
  out.emplace_back("latent attention without q_lora_rank, groups", v2_like);
  ModelConfig v3_like = v2_like;
  v3_like.model_type = "deepseek_v3";
  v3_like.q_lora_rank = 5;
  v3_like.v_head_dim = 7;
  v3_like.score_function = ScoreFunction::kSigmoid;
  v3_like.router_selection_bias = true;
  v3_like.routed_scaling_factor = 2.5f;
  out.emplace_back("latent attention with q_lora_rank, selection bias", v3_like);
  return out;
}

class MemoryTest : public ::testing::Test {
 protected:
  // Neither a limit from the caller's environment nor a rank count leaks into the tests.
  ScopedEnv limit_{kMemoryLimitEnv, std::nullopt};
  ScopedEnv local_{"OMPI_COMM_WORLD_LOCAL_SIZE", std::nullopt};
};

TEST_F(MemoryTest, EstimateEqualsWhatTheModelAllocates) {
  for (const auto& [label, config] : configs()) {
    for (int D : {1, 3, 4}) {
      for (const int mode : {0, 1, 2}) {  // training; inference in F32; inference in BF16
        const bool training = mode == 0;
        const WeightDType dtype = mode == 2 ? WeightDType::kBF16 : WeightDType::kF32;
        if (config.num_experts < D || (training && config.mla())) continue;
        SCOPED_TRACE(label + ", " + std::to_string(D) + " ranks" + (training ? "" : ", inference") +
                     (mode == 2 ? " in BF16" : ""));
        const MemoryEstimate estimate = estimate_model_memory(config, D, training, dtype);
        EXPECT_EQ(estimate.experts_per_layer, (config.num_experts + D - 1) / D);
        EXPECT_EQ(estimate.moe_layers, config.num_moe_layers());
        // Rank 0 of the contiguous placement holds ceil(E/D) experts, the most any rank holds.
        LoneRankCommunicator comm(0, D);
        ParallelOptions options;
        options.training = training;
        options.weight_dtype = dtype;
        MoeTransformer model(config, comm, options);
        ASSERT_EQ(static_cast<int>(model.tensors().back().expert_id),
                  estimate.experts_per_layer - 1);
        const Counted actual = count_allocated(model);
        EXPECT_EQ(estimate.dense_bytes, actual.dense);
        EXPECT_EQ(estimate.expert_bytes, actual.experts);
        EXPECT_EQ(estimate.total_bytes(), actual.dense + actual.experts);
      }
    }
  }
}

TEST_F(MemoryTest, EstimateMatchesTheHeapGrowthOfConstruction) {
#if OCCULT_TEST_HEAP_MEASURABLE
  // Large enough that names and bookkeeping are noise next to the arenas (about 6 MB).
  ModelConfig c = testing::tiny_config(true, true, false);
  c.vocab_size = 1000;
  c.hidden_size = 64;
  c.num_attention_heads = 4;
  c.num_experts = 8;
  c.moe_intermediate_size = 128;
  SelfCommunicator comm;
  const MemoryEstimate estimate = estimate_model_memory(c, 1);
  const struct mallinfo2 before = ::mallinfo2();
  auto model = std::make_unique<MoeTransformer>(c, comm, ParallelOptions{});
  const struct mallinfo2 after = ::mallinfo2();
  const double grown = static_cast<double>(after.uordblks + after.hblkhd) -
                       static_cast<double>(before.uordblks + before.hblkhd);
  EXPECT_NEAR(grown / static_cast<double>(estimate.total_bytes()), 1.0, 0.03)
      << "heap grew by " << grown << " bytes, the estimate is " << estimate.total_bytes();
#else
  GTEST_SKIP()
      << "heap growth is not measurable here (no glibc mallinfo2, or a sanitizer's allocator)";
#endif
}

// The step estimate (activations exact, MoE buffers estimated) against the heap growth of the
// first training step, which allocates both; and the estimate's dry run leaves the arena in use
// alone (backward after it gives the same gradients).
TEST_F(MemoryTest, StepEstimateMatchesTheFirstStepAndLeavesTheArenaAlone) {
  ModelConfig c = testing::tiny_config(true, true, false);
  c.vocab_size = 300;
  c.hidden_size = 64;
  c.num_attention_heads = 4;
  c.num_experts = 8;
  c.moe_intermediate_size = 64;
  c.max_position_embeddings = 32;
  const std::int64_t B = 8;
  const int T = 32;
  std::vector<std::int32_t> tokens(B * T), targets(B * T);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = static_cast<std::int32_t>((i * 37) % 300);
    targets[i] = static_cast<std::int32_t>((i * 11 + 5) % 300);
  }
  auto grads_after_step = [&](bool dry_run_between) {
    SelfCommunicator comm;
    MoeTransformer model(c, comm, ParallelOptions{});
    model.init_weights(3);
    model.forward(tokens, targets, B, T);
    if (dry_run_between) {
      EXPECT_GT(model.activation_bytes(2 * B, T), model.activation_bytes(B, T));
    }
    model.backward();
    std::vector<float> g;
    for (const auto& t : model.tensors()) g.insert(g.end(), t.grad.begin(), t.grad.end());
    return g;
  };
  EXPECT_EQ(grads_after_step(false), grads_after_step(true));
#if OCCULT_TEST_HEAP_MEASURABLE
  // The heap growth of a first step in `compute`, and its estimate.
  auto first_step = [&](ComputeDType compute) {
    SelfCommunicator comm;
    ParallelOptions options;
    options.gemm.compute = compute;
    MoeTransformer model(c, comm, options);
    model.init_weights(3);
    const double estimate = static_cast<double>(model.activation_bytes(B, T) +
                                                estimate_moe_buffer_bytes(c, 1, B * T, 4, true, compute));
    const struct mallinfo2 before = ::mallinfo2();
    model.forward(tokens, targets, B, T);
    model.backward();
    const struct mallinfo2 after = ::mallinfo2();
    const double grown = static_cast<double>(after.uordblks + after.hblkhd) -
                         static_cast<double>(before.uordblks + before.hblkhd);
    return std::pair{grown, estimate};
  };
  const auto [grown, estimate] = first_step(ComputeDType::kF32);
  // The MoE part is an estimate (balanced routing, one row per assignment): within 25%. (Measured
  // here: 6.36 MB grown against 3.84 MB of activations + 1.80 MB of MoE buffers.)
  EXPECT_NEAR(grown / estimate, 1.0, 0.25) << "heap grew by " << grown << " bytes, the estimate is " << estimate;
  if (cpu_has_bf16_compute()) {
    // Under BF16 compute the first step also keeps each layer's BF16 rounding of its experts.
    // Measured against a second F32 model after one BF16 step has run, so that the process's
    // BF16 GEMM primitives and per-thread operand buffers (not the model's) are already there.
    first_step(ComputeDType::kBF16);
    const auto [grown16, estimate16] = first_step(ComputeDType::kBF16);
    const auto [grown32, estimate32] = first_step(ComputeDType::kF32);
    const double rounded = static_cast<double>(c.num_moe_layers()) * c.num_experts * 3 * c.moe_intermediate_size *
                           c.hidden_size * 2;
    EXPECT_EQ(estimate16 - estimate32, rounded);
    EXPECT_NEAR((grown16 - grown32) / rounded, 1.0, 0.25) << "BF16 grew by " << grown16 << ", F32 by " << grown32;
  }
#endif
}

TEST_F(MemoryTest, ExpertShareShrinksWithRanksAndDenseDoesNot) {
  ModelConfig c = testing::tiny_config(false, false, false);
  c.num_experts = 8;
  const MemoryEstimate one = estimate_model_memory(c, 1), three = estimate_model_memory(c, 3),
                       eight = estimate_model_memory(c, 8);
  EXPECT_EQ(one.dense_bytes, three.dense_bytes);
  EXPECT_EQ(one.dense_bytes, eight.dense_bytes);
  EXPECT_EQ(three.experts_per_layer, 3);
  EXPECT_EQ(eight.experts_per_layer, 1);
  const std::int64_t router = 2LL * c.num_experts * c.hidden_size * 4 * c.num_moe_layers();
  EXPECT_EQ((one.expert_bytes - router), 8 * (eight.expert_bytes - router));
  EXPECT_EQ(3 * (one.expert_bytes - router), 8 * (three.expert_bytes - router));
  testing::expect_error([&] { estimate_model_memory(c, 0); }, "at least 1 rank");
}

TEST_F(MemoryTest, AvailableMemoryIsMemAvailableSharedByTheHostsRanks) {
  const AvailableMemory alone = available_memory_per_rank();
  if (alone.host_bytes < 0) GTEST_SKIP() << "no MemAvailable in /proc/meminfo on this system";
  EXPECT_FALSE(alone.from_environment);
  EXPECT_EQ(alone.ranks_on_host, 1);
  EXPECT_EQ(alone.bytes_per_rank, alone.host_bytes);
  EXPECT_GT(alone.host_bytes, 0);
  ScopedEnv four("OMPI_COMM_WORLD_LOCAL_SIZE", "4");
  const AvailableMemory shared = available_memory_per_rank();
  EXPECT_EQ(shared.ranks_on_host, 4);
  EXPECT_EQ(shared.bytes_per_rank, shared.host_bytes / 4);
  ScopedEnv junk("OMPI_COMM_WORLD_LOCAL_SIZE", "many");
  EXPECT_EQ(available_memory_per_rank().ranks_on_host, 1);
}

TEST_F(MemoryTest, LimitFromTheEnvironmentOverridesTheHost) {
  ScopedEnv limit(kMemoryLimitEnv, "0.5");
  const AvailableMemory a = available_memory_per_rank();
  EXPECT_TRUE(a.from_environment);
  EXPECT_EQ(a.bytes_per_rank, 512LL * 1024 * 1024);
  for (const char* bad : {"lots", "-1", "0", "1e400", "2GiB"}) {
    ScopedEnv wrong(kMemoryLimitEnv, bad);
    testing::expect_error(
        [] { available_memory_per_rank(); },
        std::string(kMemoryLimitEnv) + "=\"" + bad + "\" must be a positive number of GiB");
  }
}

TEST_F(MemoryTest, ConstructorRefusesAModelAboveTheLimit) {
  const ModelConfig c = testing::tiny_config(true, false, false);
  SelfCommunicator comm;
  const MemoryEstimate needed = estimate_model_memory(c, 1);
  {
    ScopedEnv tiny(kMemoryLimitEnv, "0.000001");  // 1073 bytes
    try {
      MoeTransformer model(c, comm, ParallelOptions{});
      ADD_FAILURE() << "a model of " << needed.total_bytes()
                    << " bytes was built under a 1073-byte limit";
    } catch (const Error& e) {
      const std::string& m = e.message();
      EXPECT_EQ(m.rfind("the model needs ", 0), 0u) << m;
      EXPECT_NE(m.find(std::to_string(needed.total_bytes()) + " bytes: dense"), std::string::npos)
          << m;
      EXPECT_NE(m.find("GiB (1073 bytes) are available per rank on this host"), std::string::npos)
          << m;
      EXPECT_NE(m.find(kMemoryLimitEnv), std::string::npos) << m;
      EXPECT_NE(m.find("use more ranks or a smaller model"), std::string::npos) << m;
    }
  }
  {
    // Exactly the estimate fits; one byte less does not.
    const double exact_gib = static_cast<double>(needed.total_bytes()) / (1024.0 * 1024.0 * 1024.0);
    ScopedEnv enough(kMemoryLimitEnv, fmt::format("{:.17g}", exact_gib * (1 + 1e-12)));
    EXPECT_NO_THROW([&] { MoeTransformer model(c, comm, ParallelOptions{}); }());
  }
  AvailableMemory host;
  host.bytes_per_rank = needed.total_bytes() - 1;
  host.host_bytes = 2 * host.bytes_per_rank;
  host.ranks_on_host = 2;
  testing::expect_error(
      [&] { check_memory(needed, host); },
      fmt::format("({} bytes) are available per rank on this host (2 ranks share its",
                  host.bytes_per_rank));
  host.ranks_on_host = 1;
  testing::expect_error([&] { check_memory(needed, host); }, "on this host (its MemAvailable is ");
  host.bytes_per_rank = -1;  // unknown: no check
  EXPECT_NO_THROW(check_memory(needed, host));
}

}  // namespace
}  // namespace occult

namespace occult {
namespace {

TEST(Bf16Weights, AreForInferenceOnlyAndHaveNoF32View) {
  const ModelConfig c = testing::tiny_config(true, true, false);
  SelfCommunicator comm;
  ParallelOptions options;
  options.weight_dtype = WeightDType::kBF16;
  testing::expect_error([&] { MoeTransformer model(c, comm, options); }, "BF16-resident weights are for inference");
  options.training = false;
  MoeTransformer model(c, comm, options);
  testing::expect_error([&] { (void)model.param("model.embed_tokens.weight"); }, "held in BF16");
  EXPECT_EQ(model.weight("model.embed_tokens.weight").dtype(), WeightDType::kBF16);
  EXPECT_EQ(model.weight("model.norm.weight").dtype(), WeightDType::kF32);
}

}  // namespace
}  // namespace occult
