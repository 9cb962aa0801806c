// Chart building on hand-written inputs: the exact series each command's JSON yields, the
// errors that name the file and key, and the gnuplot script's data and reference line.
#include "occult/plot/chart.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "occult/core/error.h"

namespace occult::plot {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The message of the occult::Error `body` throws ("" when it throws none).
template <typename Body>
std::string error_of(Body&& body) {
  try {
    body();
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

TEST(TrainChart, SplitsStepsAndEvaluations) {
  const std::string log = R"({"step":1,"loss":5.5,"cross_entropy":5.25,"tokens_per_s":1000})"
                          "\n"
                          R"({"step":2,"loss":4.5,"cross_entropy":4.25,"tokens_per_s":1200})"
                          "\n\n"
                          R"({"step":2,"val_loss":4.75})"
                          "\n"
                          R"({"step":3,"loss":3.5,"tokens_per_s":900})"
                          "\n";
  const Chart chart = train_chart(log, "run.jsonl");
  ASSERT_EQ(chart.panels.size(), 2u);
  const Panel& loss = chart.panels[0];
  ASSERT_EQ(loss.series.size(), 2u);
  EXPECT_THAT(loss.series[0].x, ElementsAre(1, 2, 3));
  // The cross-entropy when the step records it (what validation measures), else the loss.
  EXPECT_THAT(loss.series[0].y, ElementsAre(5.25, 4.25, 3.5));
  EXPECT_THAT(loss.series[1].x, ElementsAre(2));
  EXPECT_THAT(loss.series[1].y, ElementsAre(4.75));
  EXPECT_THAT(chart.panels[1].series[0].y, ElementsAre(1000, 1200, 900));
}

TEST(TrainChart, NamesFileLineAndKey) {
  EXPECT_EQ(error_of([] {
              train_chart("{\"step\":1,\"loss\":2,\"tokens_per_s\":3}\nnot json\n", "a.jsonl");
            }).substr(0, 26),
            "a.jsonl line 2: not JSON (");
  EXPECT_EQ(error_of([] { train_chart("{\"loss\":2}\n", "a.jsonl"); }),
            "a.jsonl line 1: expected key \"step\" (a number)");
  EXPECT_EQ(error_of([] { train_chart("{\"step\":1,\"loss\":2}\n", "a.jsonl"); }),
            "a.jsonl line 1: expected key \"tokens_per_s\" (a number)");
  EXPECT_EQ(
      error_of([] { train_chart("{\"step\":1,\"lr\":2}\n", "a.jsonl"); }),
      "a.jsonl line 1: expected key \"loss\" (a training step) or \"val_loss\" (an evaluation)");
  EXPECT_EQ(error_of([] { train_chart("{\"step\":\"one\",\"val_loss\":2}\n", "a.jsonl"); }),
            "a.jsonl line 1: key \"step\" is \"one\", expected a number");
  EXPECT_THAT(error_of([] { train_chart("{\"step\":5,\"val_loss\":2}\n", "a.jsonl"); }),
              HasSubstr("a.jsonl has no training step"));
}

TEST(PlacementChart, ReadsEvaluatePlaceAndPlacementFiles) {
  const auto evaluate = nlohmann::json::parse(
      R"({"strategy":"hypergraph","top_k":6,"layers":[{"layer":0,"replicas_per_token":2.5},
         {"layer":1,"replicas_per_token":3.25}],"mean":{"replicas_per_token":2.875}})");
  const auto file = nlohmann::json::parse(
      R"({"format":"occult-placement/1","strategy":"contiguous","layers":[
         {"layer":0,"expert_to_device":[0,1],"metrics":{"replicas_per_token":4.0}},
         {"layer":1,"expert_to_device":[1,0],"metrics":{"replicas_per_token":3.5}}]})");
  const Chart chart =
      placement_chart({{evaluate, "dir/hg.json", ""}, {file, "c.json", "mine"}}, std::nullopt);
  ASSERT_EQ(chart.panels.size(), 1u);
  const Panel& panel = chart.panels[0];
  ASSERT_EQ(panel.series.size(), 2u);
  EXPECT_EQ(panel.series[0].label, "hypergraph");
  EXPECT_THAT(panel.series[0].x, ElementsAre(0, 1));
  EXPECT_THAT(panel.series[0].y, ElementsAre(2.5, 3.25));
  EXPECT_EQ(panel.series[1].label, "mine");
  EXPECT_THAT(panel.series[1].y, ElementsAre(4.0, 3.5));
  ASSERT_TRUE(panel.reference.has_value());
  EXPECT_EQ(panel.reference->y, 6.0);
}

TEST(PlacementChart, TopKFromFlagOrNone) {
  const auto rows = nlohmann::json::parse(R"({"layers":[{"layer":3,"replicas_per_token":1.5}]})");
  EXPECT_FALSE(
      placement_chart({{rows, "a.json", ""}}, std::nullopt).panels[0].reference.has_value());
  const Chart with_flag = placement_chart({{rows, "a.json", ""}}, 8);
  EXPECT_EQ(with_flag.panels[0].reference->y, 8.0);
  EXPECT_EQ(with_flag.panels[0].series[0].label, "a");
  EXPECT_THAT(with_flag.panels[0].series[0].x, ElementsAre(3));
}

TEST(PlacementChart, NamesFileAndKey) {
  const auto no_metric = nlohmann::json::parse(R"({"layers":[{"layer":0,"load_imbalance":1.0}]})");
  EXPECT_EQ(error_of([&] {
              placement_chart({{no_metric, "e.json", ""}}, std::nullopt);
            }),
            "e.json layers[0]: expected key \"replicas_per_token\" (a number)");
  const auto all = nlohmann::json::parse(R"({"strategies":[{"strategy":"metis"}]})");
  EXPECT_THAT(error_of([&] {
                placement_chart({{all, "all.json", ""}}, std::nullopt);
              }),
              HasSubstr("all.json: expected key \"layers\""));
  const auto k6 = nlohmann::json::parse(R"({"top_k":6,"layers":[{"replicas_per_token":2}]})");
  const auto k8 = nlohmann::json::parse(R"({"top_k":8,"layers":[{"replicas_per_token":2}]})");
  EXPECT_EQ(error_of([&] {
              placement_chart({{k6, "a.json", ""}, {k8, "b.json", ""}}, std::nullopt);
            }),
            "b.json has \"top_k\" 8 but a.json has 6: the inputs measure different models");
  EXPECT_EQ(error_of([&] {
              placement_chart({{k6, "a.json", ""}}, 4);
            }),
            "--top-k 4 disagrees with \"top_k\" 6 in a.json");
  const auto bad_format = nlohmann::json::parse(R"({"format":"occult-trace/1","layers":[]})");
  EXPECT_EQ(error_of([&] {
              placement_chart({{bad_format, "t.json", ""}}, std::nullopt);
            }),
            "t.json: key \"format\" is \"occult-trace/1\", expected \"occult-placement/1\"");
}

TEST(InferChart, OneLinePerVariantSortedByBatch) {
  const auto b32 = nlohmann::json::parse(
      R"({"batch":32,"prompt_tokens":16,"variants":[{"name":"standard","prefill_ms":20,"decode_ms_per_step":4},
         {"name":"occult","prefill_ms":15,"decode_ms_per_step":3}]})");
  const auto b8 = nlohmann::json::parse(
      R"({"batch":8,"prompt_tokens":16,"variants":[{"name":"standard","prefill_ms":6,"decode_ms_per_step":2},
         {"name":"occult","prefill_ms":5,"decode_ms_per_step":1.5}]})");
  const Chart chart = infer_chart({{b32, "b32.json"}, {b8, "b8.json"}}, InferAxis::kBatch);
  ASSERT_EQ(chart.panels.size(), 2u);
  const Panel& prefill = chart.panels[0];
  const Panel& decode = chart.panels[1];
  ASSERT_EQ(prefill.series.size(), 2u);
  EXPECT_EQ(prefill.series[0].label, "standard");
  EXPECT_THAT(prefill.series[0].x, ElementsAre(8, 32));
  EXPECT_THAT(prefill.series[0].y, ElementsAre(6, 20));
  EXPECT_THAT(decode.series[1].y, ElementsAre(1.5, 3));
  EXPECT_FALSE(prefill.log_x);  // 32 / 8 < 8
}

TEST(InferChart, NamesFileAndKey) {
  const auto old = nlohmann::json::parse(R"({"variants":[]})");
  EXPECT_EQ(error_of([&] {
              infer_chart({{old, "old.json"}}, InferAxis::kBatch);
            }),
            "old.json: expected key \"batch\" (a number)");
  const auto a = nlohmann::json::parse(
      R"({"batch":8,"variants":[{"name":"occult","prefill_ms":1,"decode_ms_per_step":1}]})");
  EXPECT_EQ(error_of([&] {
              infer_chart({{a, "a.json"}, {a, "b.json"}}, InferAxis::kBatch);
            }),
            "a.json and b.json both measure variant \"occult\" at batch 8; give each --in file "
            "another batch");
  const auto no_decode =
      nlohmann::json::parse(R"({"batch":8,"variants":[{"name":"occult","prefill_ms":1}]})");
  EXPECT_EQ(error_of([&] {
              infer_chart({{no_decode, "c.json"}}, InferAxis::kBatch);
            }),
            "c.json variants[0]: expected key \"decode_ms_per_step\" (a number)");
}

TEST(GnuplotScript, CarriesEveryPointAndTheReferenceLine) {
  Chart chart{.title = "t", .panels = {}};
  Panel panel{.title = "p \"q\"", .xlabel = "x", .ylabel = "y"};
  panel.series.push_back({"a", {0, 1}, {2.5, 3.25}});
  panel.series.push_back({"b", {0}, {4}});
  panel.reference = ReferenceLine{6, "top-k"};
  chart.panels.push_back(panel);
  const std::string s = gnuplot_script(chart, "out's.png");
  EXPECT_THAT(s, HasSubstr("$d0_0 << EOD\n0 2.5\n1 3.25\nEOD\n"));
  EXPECT_THAT(s, HasSubstr("$d0_1 << EOD\n0 4\nEOD\n"));
  EXPECT_THAT(s, HasSubstr("set output 'out''s.png'\n"));
  EXPECT_THAT(s, HasSubstr("set title \"p \\\"q\\\"\"\n"));
  EXPECT_THAT(s, HasSubstr(", \\\n     6 title \"top-k\" with lines"));
  EXPECT_THAT(s, HasSubstr("set multiplot layout 1,1"));

  chart.panels[0].series[1].y.push_back(1);  // 1 x, 2 y
  EXPECT_THAT(error_of([&] { gnuplot_script(chart, "o.png"); }),
              HasSubstr("has 1 x and 2 y values"));
}

}  // namespace
}  // namespace occult::plot
