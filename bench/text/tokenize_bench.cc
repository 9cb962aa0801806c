// Encode throughput of occult::Tokenizer: MB/s on whole text files, the first pass (empty word
// cache) and the median of warm repeats, one core. tokenize_bench.sh runs it beside the
// JavaScript reference on the same files.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "occult/core/error.h"
#include "occult/text/tokenizer.h"

namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  OCCULT_CHECK(in.good(), "cannot open {}", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Tokenizer encode throughput (MB/s): first pass and warm median"};
  std::vector<std::string> tokenizers, texts;
  int repeats = 5;
  int min_bytes = 4 << 20;
  app.add_option("--tokenizer", tokenizers, "tokenizer.json or model directory (repeatable)")
      ->required();
  app.add_option("--text", texts, "Text file (repeatable)")->required();
  app.add_option("--repeats", repeats, "Timed repeats after one warm-up")->capture_default_str();
  app.add_option("--min-bytes", min_bytes,
                 "A text shorter than this is repeated up to it, so that each timing is long "
                 "enough to be stable")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    // name text bytes tokens first_MB/s warm_MB/s: the format tokenize_bench.sh joins on.
    fmt::print("impl tokenizer text bytes tokens first_MBps warm_MBps\n");
    for (const std::string& tokenizer_path : tokenizers) {
      for (const std::string& text_path : texts) {
        // A fresh tokenizer per text, so that "first" starts with an empty word cache.
        const occult::Tokenizer tokenizer = occult::Tokenizer::load(tokenizer_path);
        const std::string one = read_all(text_path);
        std::string text = one;
        while (text.size() < static_cast<std::size_t>(min_bytes)) text += one;
        auto start = std::chrono::steady_clock::now();
        const std::size_t tokens = tokenizer.encode(text).size();
        const double first = seconds_since(start);
        tokenizer.encode(text);  // warm-up
        std::vector<double> times;
        for (int r = 0; r < repeats; ++r) {
          start = std::chrono::steady_clock::now();
          tokenizer.encode(text);
          times.push_back(seconds_since(start));
        }
        std::sort(times.begin(), times.end());
        const double median = times[times.size() / 2];
        const auto name = [](const std::string& p) {
          std::string s = p;
          while (!s.empty() && s.back() == '/') s.pop_back();
          if (s.ends_with("/tokenizer.json")) s.resize(s.size() - 15);
          return s.substr(s.find_last_of('/') + 1);
        };
        fmt::print("occult {} {} {} {} {:.2f} {:.2f}\n", name(tokenizer_path), name(text_path),
                   text.size(), tokens, text.size() / first / 1e6, text.size() / median / 1e6);
      }
    }
  } catch (const occult::Error& e) {
    fmt::print(stderr, "bench_tokenize: error: {}\n", e.message());
    return 1;
  }
  return 0;
}
