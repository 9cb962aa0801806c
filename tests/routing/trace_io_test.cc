#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "occult/core/error.h"
#include "occult/core/safetensors.h"
#include "occult/routing/trace.h"

namespace occult {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

// A per-test scratch directory, removed afterwards.
class TraceIoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           fmt::format("occult_trace_{}_{}", ::getpid(),
                       ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  std::filesystem::path dir_;
};

// 2 layers, E=4, k=2, 3 tokens in sequences of 2 and 1; weights exact in F16 (multiples of
// 1/8) so F16 round trips compare exactly.
Trace tiny_trace() {
  Trace trace;
  trace.num_experts = 4;
  trace.top_k = 2;
  trace.model = "tiny";
  trace.dataset = "hand-built";
  trace.sequence_lengths = {2, 1};
  trace.layers.resize(2);
  trace.layers[0] = {3, 2, {0, 1, 3, 2, 1, 0}, {0.5f, 0.25f, 0.625f, 0.125f, 0.75f, 0.125f}, {}};
  trace.layers[1] = {3, 2, {2, 3, 0, 3, 3, 1}, {0.5f, 0.375f, 0.5f, 0.5f, 0.875f, 0.0625f}, {}};
  trace.layers[1].router_probs = {0.0625f, 0.0f, 0.5f, 0.375f,  //
                                  0.5f,    0.0f, 0.0f, 0.5f,    //
                                  0.0f,    0.0625f, 0.0f, 0.875f};
  return trace;
}

void expect_same(const Trace& a, const Trace& b) {
  EXPECT_EQ(a.num_experts, b.num_experts);
  EXPECT_EQ(a.top_k, b.top_k);
  ASSERT_EQ(a.num_layers(), b.num_layers());
  for (int l = 0; l < a.num_layers(); ++l) {
    EXPECT_EQ(a.layers[l].num_tokens, b.layers[l].num_tokens) << "layer " << l;
    EXPECT_EQ(a.layers[l].top_k, b.layers[l].top_k) << "layer " << l;
    EXPECT_EQ(a.layers[l].topk_ids, b.layers[l].topk_ids) << "layer " << l;
    EXPECT_EQ(a.layers[l].topk_weights, b.layers[l].topk_weights) << "layer " << l;
    EXPECT_EQ(a.layers[l].router_probs, b.layers[l].router_probs) << "layer " << l;
  }
  EXPECT_EQ(a.sequence_lengths, b.sequence_lengths);
  EXPECT_EQ(a.model, b.model);
  EXPECT_EQ(a.dataset, b.dataset);
  EXPECT_EQ(a.extra_metadata, b.extra_metadata);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.message();
  }
  ADD_FAILURE() << "expected an occult::Error";
  return "";
}

TEST_F(TraceIoTest, RoundTripsEveryIdAndWeightDtype) {
  Trace trace = tiny_trace();
  trace.extra_metadata["source"] = "unit test";
  for (DType ids : {DType::kU8, DType::kI16, DType::kI32, DType::kI64}) {
    for (DType weights : {DType::kF32, DType::kF16, DType::kBF16}) {
      TraceWriteOptions options;
      options.ids_dtype = ids;
      options.weights_dtype = weights;
      const std::string file = path("t.safetensors");
      save_trace(trace, file, options);
      const auto reader = SafetensorsReader::open(file);
      EXPECT_EQ(reader.at("layers.0.topk_ids").dtype, ids);
      EXPECT_EQ(reader.at("layers.1.topk_weights").dtype, weights);
      EXPECT_EQ(reader.at("layers.1.router_probs").dtype, DType::kF32);
      EXPECT_EQ(reader.at("sequence_lengths").dtype, DType::kI32);
      EXPECT_EQ(reader.metadata().at("num_layers"), "2");
      EXPECT_EQ(reader.metadata().at("source"), "unit test");
      expect_same(load_trace(file), trace);
    }
  }
}

TEST_F(TraceIoTest, DefaultIdDtypeIsTheNarrowestThatHoldsE) {
  Trace trace = tiny_trace();
  save_trace(trace, path("a.safetensors"));
  EXPECT_EQ(SafetensorsReader::open(path("a.safetensors")).at("layers.0.topk_ids").dtype, DType::kU8);
  EXPECT_EQ(SafetensorsReader::open(path("a.safetensors")).at("layers.0.topk_weights").dtype,
            DType::kF32);
  TraceWriteOptions options;
  options.ids_i32 = true;
  options.weights_f16 = true;
  options.write_router_probs = false;
  save_trace(trace, path("b.safetensors"), options);
  const auto reader = SafetensorsReader::open(path("b.safetensors"));
  EXPECT_EQ(reader.at("layers.0.topk_ids").dtype, DType::kI32);
  EXPECT_EQ(reader.at("layers.0.topk_weights").dtype, DType::kF16);
  EXPECT_EQ(reader.find("layers.1.router_probs"), nullptr);

  trace.num_experts = 300;  // ids still valid, but U8 cannot name expert 299
  trace.layers[1].router_probs.clear();
  save_trace(trace, path("c.safetensors"));
  EXPECT_EQ(SafetensorsReader::open(path("c.safetensors")).at("layers.0.topk_ids").dtype, DType::kI16);
  options = {};
  options.ids_dtype = DType::kU8;
  EXPECT_THAT(error_of([&] { save_trace(trace, path("d.safetensors"), options); }),
              AllOf(HasSubstr("d.safetensors"), HasSubstr("U8"), HasSubstr("300")));
}

TEST_F(TraceIoTest, LoadsAWriterBuiltFileWithoutOptionalTensors) {
  SafetensorsWriter writer;
  writer.set_metadata("num_experts", "3");
  writer.set_metadata("top_k", "1");
  writer.set_metadata("num_layers", "1");
  const std::vector<std::int64_t> ids = {2, 0};
  writer.add_i64("layers.0.topk_ids", {2, 1}, ids);
  writer.write(path("min.safetensors"));
  const Trace trace = load_trace(path("min.safetensors"));
  EXPECT_EQ(trace.num_layers(), 1);
  EXPECT_EQ(trace.num_tokens(), 2);
  EXPECT_EQ(trace.layers[0].topk_ids, (std::vector<std::int32_t>{2, 0}));
  EXPECT_FALSE(trace.layers[0].has_weights());
  EXPECT_TRUE(trace.sequence_lengths.empty());
  EXPECT_EQ(trace.model, "");
}

TEST_F(TraceIoTest, ConcatenatesTokenWise) {
  const Trace a = tiny_trace();
  Trace b = tiny_trace();
  b.dataset = "other";
  const Trace both = concatenate_traces({a, b}, {"a", "b"});
  EXPECT_EQ(both.num_tokens(), 6);
  EXPECT_EQ(both.layers[0].topk_ids, (std::vector<std::int32_t>{0, 1, 3, 2, 1, 0, 0, 1, 3, 2, 1, 0}));
  EXPECT_EQ(both.layers[1].router_probs.size(), 24u);
  EXPECT_FALSE(both.layers[0].has_router_probs());
  EXPECT_EQ(both.sequence_lengths, (std::vector<std::int32_t>{2, 1, 2, 1}));
  EXPECT_EQ(both.dataset, "hand-built + other");
  EXPECT_EQ(both.model, "tiny");
  EXPECT_NO_THROW(validate_trace(both, "both"));

  // Optional parts survive only when every input has them.
  b.layers[1].router_probs.clear();
  b.sequence_lengths.clear();
  const Trace partial = concatenate_traces({a, b}, {"a", "b"});
  EXPECT_FALSE(partial.layers[1].has_router_probs());
  EXPECT_TRUE(partial.layers[1].has_weights());
  EXPECT_TRUE(partial.sequence_lengths.empty());

  Trace c = tiny_trace();
  c.num_experts = 5;
  EXPECT_THAT(error_of([&] { concatenate_traces({a, c}, {"a.st", "c.st"}); }),
              AllOf(HasSubstr("c.st"), HasSubstr("num_experts=5"), HasSubstr("a.st")));
  Trace d = tiny_trace();
  d.layers.pop_back();
  EXPECT_THAT(error_of([&] { concatenate_traces({a, d}, {"a.st", "d.st"}); }),
              AllOf(HasSubstr("d.st"), HasSubstr("num_layers=1")));
}

// ---- validate_trace: one case per rule --------------------------------------------------

TEST(ValidateTrace, AcceptsTheTinyTrace) { EXPECT_NO_THROW(validate_trace(tiny_trace(), "x")); }

TEST(ValidateTrace, IdOutOfRange) {
  Trace trace = tiny_trace();
  trace.layers[1].topk_ids[3] = 4;
  EXPECT_THAT(error_of([&] { validate_trace(trace, "f.st"); }),
              AllOf(HasSubstr("f.st"), HasSubstr("layer 1"), HasSubstr("token 1"),
                    HasSubstr("expert id 4"), HasSubstr("[0, num_experts=4)")));
  trace.layers[1].topk_ids[3] = -1;
  EXPECT_THAT(error_of([&] { validate_trace(trace, "f.st"); }), HasSubstr("expert id -1"));
}

TEST(ValidateTrace, DuplicateIdInAToken) {
  Trace trace = tiny_trace();
  trace.layers[0].topk_ids[5] = 1;  // token 2 = {1, 1}
  EXPECT_THAT(error_of([&] { validate_trace(trace, "f.st"); }),
              AllOf(HasSubstr("f.st"), HasSubstr("layer 0"), HasSubstr("token 2"),
                    HasSubstr("expert 1 is selected twice")));
}

TEST(ValidateTrace, LayersWithDifferentTokenCounts) {
  Trace trace = tiny_trace();
  trace.layers[1].num_tokens = 2;
  trace.layers[1].topk_ids.resize(4);
  EXPECT_THAT(error_of([&] { validate_trace(trace, "f.st"); }),
              AllOf(HasSubstr("f.st"), HasSubstr("layer 1 has 2 tokens"), HasSubstr("layer 0 has 3")));
}

TEST(ValidateTrace, ShapesOfIdsWeightsAndProbs) {
  Trace trace = tiny_trace();
  trace.layers[0].topk_ids.pop_back();
  EXPECT_THAT(error_of([&] { validate_trace(trace, "f.st"); }),
              AllOf(HasSubstr("layer 0"), HasSubstr("topk_ids holds 5 ids"), HasSubstr("= 6")));
  trace = tiny_trace();
  trace.layers[0].topk_weights.push_back(0.0f);
  EXPECT_THAT(error_of([&] { validate_trace(trace, "f.st"); }),
              AllOf(HasSubstr("layer 0"), HasSubstr("topk_weights holds 7")));
  trace = tiny_trace();
  trace.layers[1].router_probs.resize(8);
  EXPECT_THAT(error_of([&] { validate_trace(trace, "f.st"); }),
              AllOf(HasSubstr("layer 1"), HasSubstr("router_probs holds 8"), HasSubstr("= 12")));
  trace = tiny_trace();
  trace.layers[1].top_k = 3;
  EXPECT_THAT(error_of([&] { validate_trace(trace, "f.st"); }),
              AllOf(HasSubstr("layer 1 has top_k 3")));
}

TEST(ValidateTrace, NonFiniteWeights) {
  Trace trace = tiny_trace();
  trace.layers[1].topk_weights[4] = std::nanf("");
  EXPECT_THAT(error_of([&] { validate_trace(trace, "f.st"); }),
              AllOf(HasSubstr("layer 1"), HasSubstr("token 2"), HasSubstr("finite")));
}

TEST(ValidateTrace, ModelShape) {
  Trace trace = tiny_trace();
  trace.top_k = 5;
  EXPECT_THAT(error_of([&] { validate_trace(trace, "f.st"); }), HasSubstr("top_k is 5"));
  trace = tiny_trace();
  trace.num_experts = 0;
  EXPECT_THAT(error_of([&] { validate_trace(trace, "f.st"); }), HasSubstr("num_experts is 0"));
  trace = tiny_trace();
  trace.layers.clear();
  EXPECT_THAT(error_of([&] { validate_trace(trace, "f.st"); }), HasSubstr("no layers"));
}

TEST(ValidateTrace, SequenceLengths) {
  Trace trace = tiny_trace();
  trace.sequence_lengths = {2, 2};
  EXPECT_THAT(error_of([&] { validate_trace(trace, "f.st"); }),
              AllOf(HasSubstr("f.st"), HasSubstr("sum to 4"), HasSubstr("hold 3")));
  trace.sequence_lengths = {3, 0};
  EXPECT_THAT(error_of([&] { validate_trace(trace, "f.st"); }),
              AllOf(HasSubstr("sequence_lengths[1] is 0")));
}

// ---- load_trace: malformed files --------------------------------------------------------

// Writes a trace file from parts, so each test breaks exactly one thing.
struct FileParts {
  std::map<std::string, std::string> metadata = {{"num_experts", "4"}, {"top_k", "2"}, {"num_layers", "1"}};
  std::vector<std::int32_t> ids = {0, 1, 2, 3};
  std::vector<std::int64_t> ids_shape = {2, 2};
  void write(const std::string& file, const std::function<void(SafetensorsWriter&)>& extra = {}) const {
    SafetensorsWriter writer;
    for (const auto& [k, v] : metadata) writer.set_metadata(k, v);
    writer.add_i32("layers.0.topk_ids", ids_shape, ids);
    if (extra) extra(writer);
    writer.write(file);
  }
};

TEST_F(TraceIoTest, MissingMetadata) {
  FileParts parts;
  parts.metadata.erase("top_k");
  parts.write(path("m.st"));
  EXPECT_THAT(error_of([&] { load_trace(path("m.st")); }),
              AllOf(HasSubstr("m.st"), HasSubstr("lacks 'top_k'")));
}

TEST_F(TraceIoTest, MetadataNotAnInteger) {
  FileParts parts;
  parts.metadata["num_experts"] = "64x";
  parts.write(path("m.st"));
  EXPECT_THAT(error_of([&] { load_trace(path("m.st")); }),
              AllOf(HasSubstr("m.st"), HasSubstr("'num_experts'"), HasSubstr("\"64x\"")));
  parts.metadata["num_experts"] = "4";
  parts.metadata["top_k"] = "5";
  parts.write(path("m.st"));
  EXPECT_THAT(error_of([&] { load_trace(path("m.st")); }),
              AllOf(HasSubstr("'top_k' is 5"), HasSubstr("[1, 4]")));
}

TEST_F(TraceIoTest, MetadataCountsMoreLayersThanPresent) {
  FileParts parts;
  parts.metadata["num_layers"] = "2";
  parts.write(path("m.st"));
  EXPECT_THAT(error_of([&] { load_trace(path("m.st")); }),
              AllOf(HasSubstr("m.st"), HasSubstr("layer 1"), HasSubstr("layers.1.topk_ids"),
                    HasSubstr("num_layers is 2")));
}

TEST_F(TraceIoTest, TensorForALayerBeyondMetadata) {
  FileParts parts;
  parts.write(path("m.st"), [&](SafetensorsWriter& w) { w.add_i32("layers.1.topk_ids", {2, 2}, parts.ids); });
  EXPECT_THAT(error_of([&] { load_trace(path("m.st")); }),
              AllOf(HasSubstr("m.st"), HasSubstr("'layers.1.topk_ids'"), HasSubstr("layer 1"),
                    HasSubstr("num_layers is 1")));
}

TEST_F(TraceIoTest, UnknownLayerTensor) {
  FileParts parts;
  parts.write(path("m.st"), [&](SafetensorsWriter& w) { w.add_i32("layers.0.topk_idz", {2, 2}, parts.ids); });
  EXPECT_THAT(error_of([&] { load_trace(path("m.st")); }),
              AllOf(HasSubstr("m.st"), HasSubstr("'layers.0.topk_idz'"), HasSubstr("not a trace tensor")));
}

TEST_F(TraceIoTest, IdsOfWrongWidthOrDtype) {
  FileParts parts;
  parts.ids_shape = {1, 4};
  parts.write(path("m.st"));
  EXPECT_THAT(error_of([&] { load_trace(path("m.st")); }),
              AllOf(HasSubstr("m.st"), HasSubstr("layer 0"), HasSubstr("[1, 4]"), HasSubstr("top_k=2")));
  SafetensorsWriter writer;
  writer.set_metadata("num_experts", "4");
  writer.set_metadata("top_k", "2");
  writer.set_metadata("num_layers", "1");
  const std::vector<float> f(4, 1.0f);
  writer.add_f32("layers.0.topk_ids", {2, 2}, f);
  writer.write(path("f.st"));
  EXPECT_THAT(error_of([&] { load_trace(path("f.st")); }),
              AllOf(HasSubstr("f.st"), HasSubstr("'layers.0.topk_ids'"), HasSubstr("F32"),
                    HasSubstr("integer")));
}

TEST_F(TraceIoTest, WeightsOfWrongShapeOrDtype) {
  FileParts parts;
  const std::vector<float> w(6, 0.5f);
  parts.write(path("m.st"), [&](SafetensorsWriter& wr) { wr.add_f32("layers.0.topk_weights", {2, 3}, w); });
  EXPECT_THAT(error_of([&] { load_trace(path("m.st")); }),
              AllOf(HasSubstr("m.st"), HasSubstr("layer 0"), HasSubstr("'layers.0.topk_weights'"),
                    HasSubstr("[2, 3]"), HasSubstr("[2, 2]")));
  const std::vector<std::int32_t> wi(4, 1);
  parts.write(path("m.st"), [&](SafetensorsWriter& wr) { wr.add_i32("layers.0.topk_weights", {2, 2}, wi); });
  EXPECT_THAT(error_of([&] { load_trace(path("m.st")); }),
              AllOf(HasSubstr("'layers.0.topk_weights'"), HasSubstr("I32"), HasSubstr("F32, F16 or BF16")));
}

TEST_F(TraceIoTest, RouterProbsOfWrongShape) {
  FileParts parts;
  const std::vector<float> p(6, 0.25f);
  parts.write(path("m.st"), [&](SafetensorsWriter& wr) { wr.add_f32("layers.0.router_probs", {2, 3}, p); });
  EXPECT_THAT(error_of([&] { load_trace(path("m.st")); }),
              AllOf(HasSubstr("layer 0"), HasSubstr("'layers.0.router_probs'"), HasSubstr("num_experts=4")));
}

TEST_F(TraceIoTest, IdsOutOfRangeInAFileNameTheFile) {
  FileParts parts;
  parts.ids = {0, 1, 2, 9};
  parts.write(path("m.st"));
  EXPECT_THAT(error_of([&] { load_trace(path("m.st")); }),
              AllOf(HasSubstr("m.st"), HasSubstr("layer 0"), HasSubstr("token 1"), HasSubstr("expert id 9")));
}

TEST_F(TraceIoTest, BadSequenceLengthsInAFile) {
  FileParts parts;
  const std::vector<std::int32_t> lengths = {1, 2};
  parts.write(path("m.st"), [&](SafetensorsWriter& w) { w.add_i32("sequence_lengths", {2}, lengths); });
  EXPECT_THAT(error_of([&] { load_trace(path("m.st")); }),
              AllOf(HasSubstr("m.st"), HasSubstr("sum to 3")));
  const std::vector<float> f = {2.0f};
  parts.write(path("m.st"), [&](SafetensorsWriter& w) { w.add_f32("sequence_lengths", {1}, f); });
  EXPECT_THAT(error_of([&] { load_trace(path("m.st")); }),
              AllOf(HasSubstr("'sequence_lengths'"), HasSubstr("F32")));
}

TEST_F(TraceIoTest, NotASafetensorsFile) {
  {
    std::FILE* f = std::fopen(path("x.st").c_str(), "wb");
    std::fputs("hello world, not a trace", f);
    std::fclose(f);
  }
  EXPECT_THAT(error_of([&] { load_trace(path("x.st")); }), HasSubstr("x.st"));
}

std::string shipped(const std::string& name) {
  const char* root = std::getenv("OCCULT_SOURCE_DIR");
  return std::string(root ? root : ".") + "/data/traces/" + name;
}

// The shipped real traces load, have the shape data/traces/SOURCE.md promises, and hold the
// original values (first and last token checked against the F32 originals by hand).
TEST(ShippedTraces, IntentTraceMatchesItsSource) {
  ASSERT_NE(std::getenv("OCCULT_SOURCE_DIR"), nullptr) << "run under ctest (sets OCCULT_SOURCE_DIR)";
  const std::string file = shipped("dsv2lite-esft-intent.safetensors");
  const auto reader = SafetensorsReader::open(file);
  EXPECT_EQ(reader.at("layers.0.topk_ids").dtype, DType::kU8);
  EXPECT_EQ(reader.at("layers.0.topk_weights").dtype, DType::kF16);
  const Trace trace = load_trace(file);
  EXPECT_EQ(trace.num_experts, 64);
  EXPECT_EQ(trace.top_k, 6);
  EXPECT_EQ(trace.num_layers(), 26);
  EXPECT_EQ(trace.num_tokens(), 8222);
  EXPECT_EQ(trace.sequence_lengths.size(), 127u);
  EXPECT_EQ(trace.sequence_lengths[0], 64);
  EXPECT_THAT(trace.model, HasSubstr("ESFT-vanilla-lite"));
  EXPECT_THAT(trace.extra_metadata.at("source"), HasSubstr("18d23501"));
  EXPECT_EQ(std::vector<std::int32_t>(trace.layers[0].topk_ids.begin(), trace.layers[0].topk_ids.begin() + 6),
            (std::vector<std::int32_t>{57, 60, 26, 56, 8, 11}));
  const float first[] = {0.1787f, 0.0858f, 0.0470f, 0.0446f, 0.0414f, 0.0378f};
  for (int j = 0; j < 6; ++j) {
    EXPECT_EQ(trace.layers[0].topk_weights[j], f16_to_float(float_to_f16(first[j])));
    EXPECT_NEAR(trace.layers[0].topk_weights[j], first[j], 5e-4 * first[j]);
  }
  const auto& last = trace.layers[25];
  EXPECT_EQ(std::vector<std::int32_t>(last.topk_ids.end() - 6, last.topk_ids.end()),
            (std::vector<std::int32_t>{49, 57, 11, 17, 60, 14}));
  // Weights are non-increasing per token, as the format promises.
  for (const LayerRouting& layer : trace.layers) {
    for (std::int64_t t = 0; t < layer.num_tokens; ++t) {
      for (int j = 1; j < layer.top_k; ++j) {
        ASSERT_GE(layer.topk_weights[t * 6 + j - 1], layer.topk_weights[t * 6 + j]);
      }
    }
  }
}

TEST(ShippedTraces, LawTraceLoads) {
  const Trace trace = load_trace(shipped("dsv2lite-esft-law.safetensors"));
  EXPECT_EQ(trace.num_layers(), 26);
  EXPECT_EQ(trace.num_tokens(), 8327);
  EXPECT_EQ(trace.sequence_lengths.size(), 33u);
}

}  // namespace
}  // namespace occult
