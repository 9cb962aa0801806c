// Trace I/O throughput. For each file: reading its bytes (the baseline: what any loader must
// at least pay), opening it (mmap + header validation), load_trace (decode + validate every
// id) and save_trace; medians over repeats after warm-up, in MB/s of file bytes, and the
// ratio to the baseline. save_trace includes fsync (it writes atomically). Files: the shipped real traces and a large synthetic one.
//   build-io/bench/io/bench_trace_io [--repeats N] [SOURCE_DIR]
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "occult/core/safetensors.h"
#include "occult/core/table.h"
#include "occult/routing/synth.h"
#include "occult/routing/trace.h"

namespace {

constexpr int kWarmup = 2;

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Median wall and median thread-CPU seconds of `body` over `repeats` runs after warm-up. CPU
// time is reported too because a shared 2-core VM often runs other jobs: wall time then
// measures the neighbours, CPU time still measures the code.
struct Timing {
  double wall;
  double cpu;
};

Timing median_seconds(int repeats, const std::function<void()>& body) {
  for (int i = 0; i < kWarmup; ++i) body();
  std::vector<double> walls, cpus;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    const double cpu_start = thread_cpu_seconds();
    body();
    cpus.push_back(thread_cpu_seconds() - cpu_start);
    walls.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(walls.begin(), walls.end());
  std::sort(cpus.begin(), cpus.end());
  return {walls[walls.size() / 2], cpus[cpus.size() / 2]};
}

// The baseline: one fread of the whole file into a buffer of its size (page cache -> memory).
std::vector<char> read_all(const std::string& path) {
  std::vector<char> bytes(std::filesystem::file_size(path));
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr || std::fread(bytes.data(), 1, bytes.size(), f) != bytes.size()) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    std::exit(1);
  }
  std::fclose(f);
  return bytes;
}

}  // namespace

int main(int argc, char** argv) {
  int repeats = 9;
  std::string root = ".";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--repeats" && i + 1 < argc) {
      repeats = std::atoi(argv[++i]);
    } else {
      root = arg;
    }
  }
  const auto scratch = std::filesystem::temp_directory_path() / fmt::format("occult_bench_io_{}", ::getpid());
  std::filesystem::create_directories(scratch);

  std::vector<std::string> files;
  for (const char* name : {"dsv2lite-esft-intent.safetensors", "dsv2lite-esft-law.safetensors"}) {
    const std::string path = root + "/data/traces/" + name;
    if (std::filesystem::exists(path)) files.push_back(path);
  }
  // A large synthetic trace: 256 experts, top-8, 8 layers, 100k tokens (U8 ids, F16 weights).
  occult::SynthOptions options;
  options.num_experts = 256;
  options.top_k = 8;
  options.num_layers = 8;
  options.num_tokens = 100000;
  options.num_groups = 8;
  options.seed = 1;
  const std::string synth_path = (scratch / "synth-e256-k8-l8-t100k.safetensors").string();
  occult::TraceWriteOptions write;
  write.weights_f16 = true;
  const auto synth_start = std::chrono::steady_clock::now();
  const occult::SynthTrace synth = occult::synthesize_trace(options);
  const double synth_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - synth_start).count();
  occult::save_trace(synth.trace, synth_path, write);
  files.push_back(synth_path);

  occult::TextTable table({"file", "MB", "read MB/s", "open MB/s", "load_trace MB/s",
                           "load/read", "load_trace cpu MB/s", "save_trace MB/s"});
  for (const std::string& path : files) {
    const double mb = std::filesystem::file_size(path) / 1e6;
    const Timing read = median_seconds(repeats, [&] { (void)read_all(path); });
    const Timing open = median_seconds(repeats, [&] { (void)occult::SafetensorsReader::open(path); });
    occult::Trace trace;
    const Timing load = median_seconds(repeats, [&] { trace = occult::load_trace(path); });
    const std::string out = (scratch / "out.safetensors").string();
    occult::TraceWriteOptions same;
    same.weights_f16 = true;
    const Timing save = median_seconds(repeats, [&] { occult::save_trace(trace, out, same); });
    table.add_row({std::filesystem::path(path).filename().string(), fmt::format("{:.2f}", mb),
                   fmt::format("{:.0f}", mb / read.wall), fmt::format("{:.0f}", mb / open.wall),
                   fmt::format("{:.0f}", mb / load.wall), fmt::format("{:.1f}x", load.wall / read.wall),
                   fmt::format("{:.0f}", mb / load.cpu), fmt::format("{:.0f}", mb / save.wall)});
  }
  fmt::print("{}", table.render());
  fmt::print("synthesize_trace E=256 k=8 L=8 T=100k: {:.2f} s (one run); medians of {} runs after {} warm-ups\n",
             synth_seconds, repeats, kWarmup);
  std::filesystem::remove_all(scratch);
  return 0;
}
