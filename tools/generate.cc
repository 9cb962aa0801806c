// `occult generate`: text generation from a checkpoint with the KV-cache engine under mpirun
// (attention data-parallel, experts expert-parallel), streaming the text as it is produced.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "command_registry.h"
#include "infer_cli.h"
#include "occult/core/table.h"
#include "occult/text/token_source.h"
#include "occult/infer/inference.h"

namespace occult::cli {
namespace generate_command {

struct GenerateFlags {
  ModelFlags model;
  std::string prompt, prompt_file;
  int max_new_tokens = 64;
  float temperature = 0.8f, top_p = 0.95f;
  double kv_memory_gib = 8.0;
  bool json = false, ignore_eos = false;
};

// --prompt first, then one prompt per non-empty line of --prompt-file.
std::vector<std::string> read_prompts(const GenerateFlags& f) {
  std::vector<std::string> prompts;
  if (!f.prompt.empty()) prompts.push_back(f.prompt);
  if (!f.prompt_file.empty()) {
    check_input_file("--prompt-file", f.prompt_file);
    std::ifstream in(f.prompt_file);
    OCCULT_CHECK(in.good(), "cannot read --prompt-file {}", f.prompt_file);
    std::string line;
    while (std::getline(in, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!line.empty()) prompts.push_back(line);
    }
  }
  OCCULT_CHECK(!prompts.empty(), "give --prompt TEXT or a non-empty --prompt-file F");
  return prompts;
}

void write_text(const std::string& text) { std::fwrite(text.data(), 1, text.size(), stdout); }

void run_generate(const GenerateFlags& f) {
  run_on_mpi_world([&](Communicator& comm) {
    std::vector<std::string> texts;
    agree_on_errors(comm, [&] { texts = read_prompts(f); });
    const ModelConfig config = resolve_model_config(f.model, comm, /*allow_random=*/false);
    std::optional<TextCodec> codec;
    agree_on_errors(comm, [&] {
      codec = TextCodec::for_model(f.model.checkpoint, config.vocab_size);
      OCCULT_CHECK(std::isfinite(f.kv_memory_gib) && f.kv_memory_gib > 0, "--kv-memory-gib must be > 0, got {}",
                   f.kv_memory_gib);
      OCCULT_CHECK(f.max_new_tokens >= 1, "--max-new-tokens must be >= 1, got {}", f.max_new_tokens);
      OCCULT_CHECK(std::isfinite(f.temperature) && f.temperature >= 0, "--temperature must be >= 0 (0 = greedy), got {}",
                   f.temperature);
      OCCULT_CHECK(std::isfinite(f.top_p) && f.top_p > 0 && f.top_p <= 1, "--top-p must be in (0, 1], got {}",
                   f.top_p);
    });
    const ParallelOptions parallel =
        resolve_parallel_options(f.model, config, comm, f.model.dispatch);
    const auto model = build_model(f.model, config, parallel, comm);

    std::vector<std::vector<std::int32_t>> prompts;
    agree_on_errors(comm, [&] {
      for (const auto& t : texts) prompts.push_back(codec->encode(t));
    });
    GenerateOptions o;
    o.max_new_tokens = f.max_new_tokens;
    o.sampling.temperature = f.temperature;
    o.sampling.top_p = f.top_p;
    o.sampling.seed = f.model.seed;
    o.sampling.vocab_limit = std::min(codec->vocab_limit(), config.vocab_size);
    if (!f.ignore_eos) o.stop_tokens = config.eos_token_ids;
    o.memory_limit_bytes = static_cast<std::int64_t>(f.kv_memory_gib * (1ll << 30));
    const bool root = comm.rank() == 0;
    const bool stream = root && !f.json;
    const std::size_t P = prompts.size();
    auto header = [&](std::size_t i) {
      if (P > 1) fmt::print("{}=== prompt {}/{} ===\n", i > 0 ? "\n" : "", i + 1, P);
      std::fwrite(texts[i].data(), 1, texts[i].size(), stdout);
    };
    // Prompt 0 streams as it is produced (its text is printed with the first token, once the
    // input has been validated); the others follow in order. A token can end inside a UTF-8
    // character, so the text printed is the decoded prefix, held back while it ends in one.
    std::vector<std::int32_t> first;
    std::size_t printed = 0;
    const GenerateResult r =
        generate(*model, prompts, o, [&](int step, std::span<const std::int32_t> tokens) {
          if (!stream || tokens[0] < 0) return;
          if (step == 0) header(0);
          first.push_back(tokens[0]);
          const std::string text = codec->decode(first);
          if (text.ends_with("\xEF\xBF\xBD") || text.size() <= printed) return;
          write_text(text.substr(printed));
          printed = text.size();
          std::fflush(stdout);
        });
    if (stream && codec->decode(first).size() > printed) write_text(codec->decode(first).substr(printed));
    if (!root) return;
    const double decode_ms = 1e3 * r.decode_seconds / std::max(1, r.decode_steps);
    const double tokens_per_s =
        r.decode_seconds > 0 ? static_cast<double>(r.generated_tokens - static_cast<std::int64_t>(P)) / r.decode_seconds
                             : 0.0;
    if (f.json) {
      nlohmann::json gens = nlohmann::json::array();
      for (std::size_t i = 0; i < P; ++i) {
        gens.push_back({{"prompt", texts[i]},
                        {"text", codec->decode(r.tokens[i])},
                        {"tokens", r.tokens[i]}});
      }
      const nlohmann::json j{{"dispatch", f.model.dispatch},
                             {"wire", f.model.wire},
                             {"overlap", f.model.overlap},
                             {"ranks", comm.size()},
                             {"generations", gens},
                             {"prompt_tokens", r.prompt_tokens},
                             {"generated_tokens", r.generated_tokens},
                             {"prefill_ms", 1e3 * r.prefill_seconds},
                             {"decode_ms_per_step", decode_ms},
                             {"tokens_per_s", tokens_per_s},
                             {"exchange_bytes", r.exchange_bytes}};
      // Invalid UTF-8 (a byte model can cut a character) is replaced rather than thrown on.
      fmt::print("{}\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
      return;
    }
    for (std::size_t i = 1; i < P; ++i) {
      fmt::print("\n");
      header(i);
      write_text(codec->decode(r.tokens[i]));
    }
    fmt::print("\n");
    std::fflush(stdout);
    TextTable table({"metric", "value"});
    table.add_row({"ranks / dispatch / wire", fmt::format("{} / {} / {}", comm.size(), f.model.dispatch, f.model.wire)});
    table.add_row({"prompts (tokens)", fmt::format("{} ({})", P, r.prompt_tokens)});
    table.add_row({"generated tokens", std::to_string(r.generated_tokens)});
    table.add_row({"prefill (ms)", fmt::format("{:.2f}", 1e3 * r.prefill_seconds)});
    table.add_row({"decode (ms/step)", fmt::format("{:.2f}", decode_ms)});
    table.add_row({"decode tokens/s", fmt::format("{:.0f}", tokens_per_s)});
    table.add_row(
        {"MoE exchange bytes (all ranks)", human_bytes(static_cast<double>(r.exchange_bytes))});
    fmt::print(stderr, "{}", table.render());
  });
}

void setup(CLI::App& root) {
  auto f = std::make_shared<GenerateFlags>();
  CLI::App* cmd = root.add_subcommand(
      "generate",
      "Generate text from a model with the KV-cache engine (run under mpirun; prompts are "
      "spread over\n"
      "ranks, experts stay expert-parallel). Streams the first prompt's text as it is produced, "
      "then prints\n"
      "the others in order, and a summary on stderr; --json prints one object at the end.");
  add_checkpoint_flags(cmd, f->model);
  cmd->add_option("--prompt", f->prompt,
                  "prompt text (read with the model's tokenizer.json when it has one, else bytes)");
  cmd->add_option("--prompt-file", f->prompt_file, "more prompts, one per non-empty line");
  cmd->add_option("--max-new-tokens", f->max_new_tokens, "tokens generated per prompt")
      ->capture_default_str();
  cmd->add_option("--temperature", f->temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--top-p", f->top_p, "nucleus sampling mass in (0, 1]")->capture_default_str();
  cmd->add_option("--seed", f->model.seed,
                  "sampling seed (draws depend on seed, prompt index, step)")
      ->capture_default_str();
  add_routing_flags(cmd, f->model);
  cmd->add_option("--kv-memory-gib", f->kv_memory_gib, "KV-cache budget per rank")
      ->capture_default_str();
  cmd->add_flag("--ignore-eos", f->ignore_eos,
                "keep generating past the config's eos_token_id (default: a prompt stops at it)");
  cmd->add_flag("--json", f->json,
                "print {generations, prefill_ms, decode_ms_per_step, ...} instead of streaming");
  cmd->callback([f] { run_generate(*f); });
}

OCCULT_REGISTER_COMMAND("generate", setup);

}  // namespace generate_command
}  // namespace occult::cli
