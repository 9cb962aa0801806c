// `occult tokenize`: the ids a model's own Hugging Face tokenizer gives a text file, or the text
// of an ids file (--decode); the same tokenizer the model commands read real text with.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <CLI/CLI.hpp>
#include <cctype>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "command_registry.h"
#include "occult/core/error.h"
#include "occult/text/token_source.h"
#include "occult/text/tokenizer.h"

namespace occult::cli {
namespace tokenize_command {

struct TokenizeArgs {
  std::string tokenizer;
  std::string text_file;
  std::string ids_file;
  bool decode = false;
  bool json = false;
  bool add_special_tokens = false;
  bool skip_special_tokens = false;
  int threads = 1;
};

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  OCCULT_CHECK(in.good(), "cannot open {}", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void run_tokenize(const TokenizeArgs& args) {
  const Tokenizer tokenizer = Tokenizer::load(args.tokenizer);
  if (args.decode) {
    OCCULT_CHECK(!args.ids_file.empty(), "--decode needs --ids-file");
    const std::string text = tokenizer.decode(read_token_ids(args.ids_file), args.skip_special_tokens);
    if (args.json) {
      fmt::print("{}\n", nlohmann::json{{"text", text}}.dump());
    } else {
      fmt::print("{}", text);
    }
    return;
  }
  OCCULT_CHECK(!args.text_file.empty(), "give --text-file (or --decode --ids-file)");
  const std::string text = read_all(args.text_file);
  std::vector<std::int32_t> ids;
  try {
    OCCULT_CHECK(args.threads >= 1, "--threads must be >= 1, got {}", args.threads);
    ids = tokenizer.encode(text, args.add_special_tokens, args.threads);
  } catch (const Error& e) {
    OCCULT_FAIL("{}: {}", args.text_file, e.message());
  }
  if (args.json) {
    const nlohmann::json j = {{"ids", ids}, {"tokens", ids.size()}, {"bytes", text.size()}};
    fmt::print("{}\n", j.dump());
  } else {
    fmt::print("{}\n", fmt::join(ids, " "));
  }
}

void setup_tokenize(CLI::App& root) {
  CLI::App* cmd = root.add_subcommand(
      "tokenize", "Encode a text file with a Hugging Face tokenizer.json, or decode ids");
  auto args = std::make_shared<TokenizeArgs>();
  cmd->add_option("--tokenizer", args->tokenizer,
                  "tokenizer.json, or a model directory that holds one")
      ->required();
  cmd->add_option("--text-file", args->text_file, "UTF-8 text to encode");
  cmd->add_option("--threads", args->threads, "threads for the BPE merges of a large text (same ids)")
      ->capture_default_str();
  cmd->add_flag(
      "--json", args->json,
      "Print {\"ids\": [...], \"tokens\": N, \"bytes\": B} (with --decode: {\"text\": ...})");
  cmd->add_flag("--add-special-tokens", args->add_special_tokens,
                "Apply the tokenizer's post-processor template (e.g. BOS)");
  cmd->add_flag("--decode", args->decode, "Decode the ids of --ids-file to text");
  cmd->add_option("--ids-file", args->ids_file,
                  "Ids to decode: whitespace-separated integers or JSON with \"ids\"");
  cmd->add_flag("--skip-special-tokens", args->skip_special_tokens,
                "With --decode: leave out special added tokens");
  cmd->callback([args] { run_tokenize(*args); });
}

OCCULT_REGISTER_COMMAND("tokenize", setup_tokenize);

}  // namespace tokenize_command

}  // namespace occult::cli
