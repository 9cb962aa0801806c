// hf_fixture: writes tiny random Hugging Face model directories, input ids and placements,
// computes reference logits with the double-precision twin, and compares logits files.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "hf/hf_fixture_writer.h"
#include "hf/hf_reference.h"
#include "occult/core/error.h"
#include "occult/core/safetensors.h"

namespace {

// Router logits of the k-th and (k+1)-th expert closer than this could be ordered differently
// by a float implementation (its logits carry errors near 1e-5), which would make a logits
// comparison meaningless.
constexpr double kMinSafeTopKGap = 1e-3;

// Exit status of `reference` for such a near-tie, so that a script can try another seed.
constexpr int kNearTieExit = 3;

int run_reference(const std::string& model_dir, const std::string& ids_path,
                  const std::string& out_path) {
  const occult::hf::HfModel model = occult::hf::load_hf_model(model_dir);
  const occult::SafetensorsReader ids_file = occult::SafetensorsReader::open(ids_path);
  const occult::TensorInfo& info = ids_file.at("input_ids");
  OCCULT_CHECK(info.shape.size() == 2, "{}: input_ids must be [batch, seq]", ids_path);
  const int batch = static_cast<int>(info.shape[0]);
  const int seq = static_cast<int>(info.shape[1]);
  const std::vector<std::int64_t> ids = ids_file.read_i64("input_ids");
  occult::hf::ForwardStats stats;
  const std::vector<double> logits = occult::hf::hf_forward(model, ids, batch, seq, &stats);
  std::vector<float> narrow(logits.begin(), logits.end());
  occult::SafetensorsWriter w;
  w.add_f32("logits", {batch, seq, model.config.vocab_size}, narrow);
  w.write(out_path);
  fmt::print("reference: {} [{}, {}, {}], smallest top-k router logit gap {:.3g}\n", out_path,
             batch, seq, model.config.vocab_size, stats.min_top_k_gap);
  if (stats.min_top_k_gap < kMinSafeTopKGap) {
    fmt::print(stderr,
               "hf_fixture: the router's top-k logit gap {:.3g} is below {:.0e}: a near-tie "
               "would make a comparison flaky; use another --seed\n",
               stats.min_top_k_gap, kMinSafeTopKGap);
    return kNearTieExit;
  }
  return 0;
}

int run_compare(const std::string& expected_path, const std::string& actual_path, double tol) {
  const occult::SafetensorsReader expected_file = occult::SafetensorsReader::open(expected_path);
  const occult::SafetensorsReader actual_file = occult::SafetensorsReader::open(actual_path);
  const auto& es = expected_file.at("logits").shape;
  const auto& as = actual_file.at("logits").shape;
  OCCULT_CHECK(es == as, "logits shapes differ: expected [{}] ({}), actual [{}] ({})",
               fmt::join(es, ", "), expected_path, fmt::join(as, ", "), actual_path);
  const std::vector<float> e = expected_file.read_f32("logits");
  const std::vector<float> a = actual_file.read_f32("logits");
  double max_err = 0.0;
  double max_ref = 0.0;
  std::size_t worst = 0;
  for (std::size_t i = 0; i < e.size(); ++i) {
    const double err = std::fabs(static_cast<double>(a[i]) - e[i]);
    if (!(err <= max_err)) {  // also catches NaN
      max_err = std::isnan(err) ? INFINITY : err;
      worst = i;
    }
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(e[i])));
  }
  const double rel = max_ref > 0.0 ? max_err / max_ref : max_err;
  fmt::print(
      "compare: max|a-e| {:.3e} (at flat index {}), max|e| {:.3e}, relative {:.3e}, tol {:.1e}\n",
      max_err, worst, max_ref, rel, tol);
  if (!(rel <= tol)) {
    fmt::print(stderr, "FAIL: {} differs from {}: relative error {:.3e} exceeds tolerance {:.1e}\n",
               actual_path, expected_path, rel, tol);
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Tiny Hugging Face model directories and a double-precision reference forward"};
  app.require_subcommand(1);

  occult::hf::FixtureOptions fixture;
  std::string out;
  int tied = -1;
  CLI::App* write = app.add_subcommand("write", "write a tiny random model directory");
  write->add_option("--arch", fixture.arch, "olmoe, qwen2_moe, deepseek, deepseek_v2, deepseek_v3, qwen3_moe or mixtral")
      ->required();
  write->add_option("--out", out, "directory to write")->required();
  write->add_option("--dtype", fixture.dtype, "f32, bf16 or f16")->capture_default_str();
  write->add_option("--shards", fixture.shards, "number of safetensors shards")
      ->capture_default_str();
  write->add_option("--tied", tied, "tie_word_embeddings 0|1 (default: the variant's)")
      ->check(CLI::Range(0, 1));
  write->add_option("--seed", fixture.seed, "random seed")->capture_default_str();
  write->add_option("--variant", fixture.variant, "default or alt")->capture_default_str();

  int batch = 0, seq = 0, vocab = 0;
  std::uint64_t ids_seed = 1;
  std::string ids_dtype = "i64";
  CLI::App* ids = app.add_subcommand("input-ids", "write random input_ids [batch, seq]");
  ids->add_option("--batch", batch)->required();
  ids->add_option("--seq", seq)->required();
  ids->add_option("--vocab", vocab)->required();
  ids->add_option("--seed", ids_seed)->capture_default_str();
  ids->add_option("--dtype", ids_dtype, "i32 or i64")->capture_default_str();
  ids->add_option("--out", out)->required();

  std::string model_dir;
  int devices = 0;
  CLI::App* place = app.add_subcommand("placement", "write a round-robin expert placement");
  place->add_option("--model", model_dir)->required();
  place->add_option("--devices", devices)->required();
  place->add_option("--out", out)->required();

  std::string ids_path;
  CLI::App* ref = app.add_subcommand("reference", "compute reference logits in double");
  ref->add_option("--model", model_dir)->required();
  ref->add_option("--input-ids", ids_path)->required();
  ref->add_option("--out", out)->required();

  std::string expected, actual;
  double tol = 1e-4;
  CLI::App* cmp = app.add_subcommand("compare", "compare two logits files");
  cmp->add_option("--expected", expected)->required();
  cmp->add_option("--actual", actual)->required();
  cmp->add_option("--tol", tol, "max|a-e| / max|e| allowed")->capture_default_str();

  CLI11_PARSE(app, argc, argv);
  try {
    if (write->parsed()) {
      if (tied >= 0) fixture.tied = tied == 1;
      occult::hf::write_fixture(fixture, out);
    } else if (ids->parsed()) {
      occult::hf::write_input_ids(out, batch, seq, vocab, ids_seed, ids_dtype);
    } else if (place->parsed()) {
      std::ofstream file(out);
      file << occult::hf::round_robin_placement(model_dir, devices).dump(2) << "\n";
      OCCULT_CHECK(file.good(), "cannot write {}", out);
    } else if (ref->parsed()) {
      return run_reference(model_dir, ids_path, out);
    } else if (cmp->parsed()) {
      return run_compare(expected, actual, tol);
    }
  } catch (const occult::Error& e) {
    fmt::print(stderr, "hf_fixture: error: {}\n", e.message());
    return 2;
  }
  return 0;
}
