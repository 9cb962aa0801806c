// Baselines for the training benchmark (bench/model/run.sh): the corpus's byte-unigram entropy
// (the loss a model that ignores context reaches) and the single-thread cblas_sgemm rate on the
// model's own matmul shapes, measured in the same run as the training so that model FLOP
// utilisation = (tokens/s * FLOPs/token / cores) / sgemm rate compares like with like.
#include <cblas.h>
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <vector>

#include "occult/core/error.h"
#include "occult/core/table.h"
#include "occult/model/config.h"
#include "occult/train/data.h"

namespace {

// Median GFLOP/s of out[M,N] = a[M,K] @ b[N,K]^T over `repeats` timed runs after 2 warm-ups.
double sgemm_gflops(int M, int N, int K, int repeats) {
  std::vector<float> a(static_cast<std::size_t>(M) * K, 0.5f), b(static_cast<std::size_t>(N) * K, 0.25f),
      c(static_cast<std::size_t>(M) * N);
  std::vector<double> rates;
  for (int r = 0; r < repeats + 2; ++r) {
    const auto start = std::chrono::steady_clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a.data(), K, b.data(), K, 0.0f, c.data(), N);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (r >= 2) rates.push_back(2.0 * M * N * K / s / 1e9);
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Baselines of the model benchmark: byte-unigram entropy and the sgemm rate."};
  std::string config_path, data_path;
  int batch = 16, seq_len = 128, ranks = 1, repeats = 9;
  bool json = false;
  app.add_option("--config", config_path, "model config.json")->required();
  app.add_option("--data", data_path, "text corpus")->required();
  app.add_option("--batch", batch, "global sequences per step")->capture_default_str();
  app.add_option("--seq-len", seq_len, "tokens per sequence")->capture_default_str();
  app.add_option("--ranks", ranks, "ranks of the training run (sets the per-rank matmul height)")->capture_default_str();
  app.add_option("--repeats", repeats, "timed repeats per shape (median reported)")->capture_default_str();
  app.add_flag("--json", json, "machine-readable output");
  CLI11_PARSE(app, argc, argv);
  try {
    const occult::ModelConfig c = occult::load_model_config(config_path);
    const occult::TextDataset data(data_path);  // validates the file the same way training does
    // Unigram statistics of the train split; the val cross-entropy of that unigram model.
    std::vector<double> counts(256, 1.0);  // add-one smoothing: every byte gets a probability
    std::ifstream in(data_path, std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::size_t split = static_cast<std::size_t>(static_cast<double>(text.size()) * 0.9);
    for (std::size_t i = 0; i < split; ++i) counts[static_cast<unsigned char>(text[i])] += 1.0;
    double total = 0.0;
    for (double v : counts) total += v;
    double entropy = 0.0;
    for (double v : counts) entropy -= v / total * std::log(v / total);
    double val_ce = 0.0;
    for (std::size_t i = split; i < text.size(); ++i) val_ce -= std::log(counts[static_cast<unsigned char>(text[i])] / total);
    val_ce /= static_cast<double>(text.size() - split);

    const int rows = std::max(1, batch * seq_len / ranks);
    const int H = c.hidden_size, F = c.moe_intermediate_size, V = c.vocab_size;
    struct Shape {
      const char* name;
      int M, N, K;
    };
    const Shape shapes[] = {{"attention projection [N,H]x[H,H]", rows, H, H},
                            {"shared expert up [N,H]x[H,S]", rows, std::max(1, c.shared_intermediate_size()), H},
                            {"expert up (rows per expert) [N*k/E,H]x[H,F]", std::max(1, rows * c.num_experts_per_tok / c.num_experts), F, H},
                            {"LM head [N,H]x[H,V]", rows, V, H}};
    occult::TextTable table({"shape", "M", "N", "K", "GFLOP/s (median)"});
    nlohmann::json rates = nlohmann::json::array();
    double best = 0.0;
    for (const auto& s : shapes) {
      const double g = sgemm_gflops(s.M, s.N, s.K, repeats);
      best = std::max(best, g);
      table.add_row({s.name, std::to_string(s.M), std::to_string(s.N), std::to_string(s.K), fmt::format("{:.2f}", g)});
      rates.push_back({{"shape", s.name}, {"M", s.M}, {"N", s.N}, {"K", s.K}, {"gflops", g}});
    }
    if (json) {
      fmt::print("{}\n", nlohmann::json{{"unigram_entropy_train", entropy},
                                        {"unigram_cross_entropy_val", val_ce},
                                        {"sgemm", rates},
                                        {"sgemm_best_gflops", best}}
                             .dump());
    } else {
      fmt::print("byte-unigram entropy of the train split: {:.4f} nats/byte\n", entropy);
      fmt::print("unigram model's cross-entropy on validation: {:.4f} nats/byte\n", val_ce);
      fmt::print("{}", table.render());
    }
  } catch (const occult::Error& e) {
    fmt::print(stderr, "bench_model: error: {}\n", e.message());
    return 1;
  }
  return 0;
}
