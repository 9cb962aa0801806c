// The `occult` command-line program. Subcommands live one per file in tools/ and register
// themselves (command_registry.h); this file only parses and reports errors.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdlib>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "command_registry.h"
#include "mpi_cli.h"
#include "occult/core/error.h"
#include "occult/model/memory.h"

namespace occult::cli {

namespace {
std::vector<std::pair<std::string, CommandSetup>>& registry() {
  static std::vector<std::pair<std::string, CommandSetup>> commands;
  return commands;
}
}  // namespace

CommandRegistration::CommandRegistration(const char* name, CommandSetup setup) {
  registry().emplace_back(name, setup);
}

void setup_all_commands(CLI::App& root) {
  auto commands = registry();
  std::stable_sort(commands.begin(), commands.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& [name, setup] : commands) setup(root);
}

void accept_global_options_everywhere(CLI::App& app) {
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    sub->fallthrough();
    accept_global_options_everywhere(*sub);
  }
}

CLI::App& command_group(CLI::App& parent, const std::string& name, const std::string& description) {
  for (CLI::App* sub : parent.get_subcommands([](CLI::App*) { return true; })) {
    if (sub->get_name() == name) return *sub;
  }
  CLI::App* group = parent.add_subcommand(name, description);
  group->require_subcommand(1);
  return *group;
}

namespace {

// Edit distance (insertions, deletions, substitutions and swaps of neighbours each cost 1), so
// that "trian" is one edit from "train".
std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

// The candidate nearest to `word`, when it is close enough to be a likely typo (at most 2 edits,
// or a third of the word's length for long words).
std::optional<std::string> nearest(const std::string& word, const std::vector<std::string>& candidates) {
  std::optional<std::string> best;
  std::size_t best_distance = std::max<std::size_t>(2, word.size() / 3) + 1;
  for (const auto& c : candidates) {
    const std::size_t dist = edit_distance(word, c);
    if (dist < best_distance) {
      best_distance = dist;
      best = c;
    }
  }
  return best;
}

// "occult train", "occult trace synth": how the user spells the command `app`.
std::string command_path(const CLI::App* app) {
  std::string path;
  for (; app != nullptr; app = app->get_parent()) {
    path = app->get_parent() == nullptr ? "occult" + path : " " + app->get_name() + path;
  }
  return path;
}

std::vector<std::string> subcommand_names(CLI::App* app) {
  std::vector<std::string> names;
  for (CLI::App* sub : app->get_subcommands([](CLI::App*) { return true; })) names.push_back(sub->get_name());
  return names;
}

CLI::App* find_subcommand(CLI::App* app, const std::string& name) {
  for (CLI::App* sub : app->get_subcommands([](CLI::App*) { return true; })) {
    if (sub->get_name() == name) return sub;
  }
  return nullptr;
}

// Walks the command line as CLI11 does, as far as it goes, to name the first unknown command or
// flag with the nearest known one; "" when the command line has neither (CLI11's own message is
// then the clearer one).
std::string diagnose_unknown(CLI::App& root, int argc, char** argv) {
  CLI::App* app = &root;
  for (int i = 1; i < argc; ++i) {
    const std::string token = argv[i];
    if (token == "--") return "";
    const bool is_flag = token.size() > 1 && token[0] == '-' && !(token[1] >= '0' && token[1] <= '9') && token[1] != '.';
    if (is_flag) {
      const bool is_long = token.size() > 2 && token[1] == '-';
      const std::string name = is_long ? token.substr(0, token.find('=')) : token.substr(0, 2);
      // Options of a parent (the global ones) are accepted after a subcommand too (fallthrough).
      const CLI::Option* opt = nullptr;
      for (CLI::App* a = app; a != nullptr && opt == nullptr; a = a->get_parent()) opt = a->get_option_no_throw(name);
      if (opt == nullptr) {
        std::vector<std::string> names;
        for (const CLI::Option* o : app->get_options()) {
          for (const auto& l : o->get_lnames()) names.push_back("--" + l);
          if (!is_long) {
            for (const auto& s : o->get_snames()) names.push_back("-" + s);
          }
        }
        const auto guess = nearest(name, names);
        return fmt::format("unknown flag {} for \"{}\"; {}", name, command_path(app),
                           guess ? fmt::format("did you mean {}?", *guess)
                                 : fmt::format("see {} --help for its flags", command_path(app)));
      }
      // Skip the values the option takes (none after "--name=value" or for a flag).
      if (is_long && token.find('=') != std::string::npos) continue;
      int left = opt->get_items_expected_max();
      // A value may be a negative number ("-1"), never another flag.
      auto is_value = [&](const char* v) { return v[0] != '-' || (v[1] >= '0' && v[1] <= '9') || v[1] == '.'; };
      while (left > 0 && i + 1 < argc && is_value(argv[i + 1]) && find_subcommand(app, argv[i + 1]) == nullptr) {
        ++i;
        --left;
      }
      continue;
    }
    if (CLI::App* sub = find_subcommand(app, token)) {
      app = sub;
      continue;
    }
    const auto names = subcommand_names(app);
    if (!names.empty() && app->get_require_subcommand_min() > 0) {
      const std::string prefix = app->get_parent() == nullptr ? "" : command_path(app).substr(7) + " ";
      const auto guess = nearest(token, names);
      std::string all;
      for (const auto& n : names) all += (all.empty() ? "" : ", ") + n;
      return fmt::format("unknown command \"{}{}\"; {}", prefix, token,
                         guess ? fmt::format("did you mean \"{}{}\"?", prefix, *guess)
                               : fmt::format("the commands are: {}", all));
    }
  }
  return "";
}

// This process's rank when it runs under mpirun, read from the launcher's environment (the
// command line is parsed before MPI starts); 0 otherwise.
int launcher_rank() {
  for (const char* var : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"}) {
    if (const char* v = std::getenv(var)) return std::atoi(v);
  }
  return 0;
}

// Reports a command-line error (or prints --help / --version) and returns the exit status. Under
// mpirun only rank 0 prints, since every rank reads the same command line and fails alike, and
// the others exit after it has.
int report_parse_error(CLI::App& app, const CLI::ParseError& e, int argc, char** argv) {
  std::ostream null_stream(nullptr);
  const bool quiet = launcher_rank() > 0;
  if (quiet && e.get_exit_code() != 0) let_rank_zero_report_first();
  const bool usage_error = e.get_exit_code() != 0 && dynamic_cast<const CLI::RuntimeError*>(&e) == nullptr;
  if (usage_error) {
    const std::string message = diagnose_unknown(app, argc, argv);
    if (!message.empty()) {
      if (!quiet) fmt::print(stderr, "occult: error: {}\n", message);
      return e.get_exit_code();
    }
  }
  return quiet ? app.exit(e, null_stream, null_stream) : app.exit(e);
}

}  // namespace

}  // namespace occult::cli

int main(int argc, char** argv) {
  CLI::App app{
      "occult: expert-parallel Mixture-of-Experts with collaborative communication.\n"
      "Profile routing, place experts, prune collaborations, and run MoE layers and models\n"
      "with occult (one copy per device) or standard (one copy per expert) dispatch."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "occult 0.1.0");
  app.add_option("--collective-timeout", occult::cli::mpi_run_options().collective_timeout_s,
                 "Seconds a rank may wait in one collective before the job is ended with a message naming "
                 "the rank, the operation and the layer (a peer killed, stopped or stuck); 0 waits forever. "
                 "Accepted after the subcommand too")
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            double v = -1;
            return CLI::detail::lexical_cast(text, v) && v >= 0 && v < 1e9
                       ? ""
                       : "must be 0 (wait forever) or a positive number of seconds, got " + text;
          },
          "SECONDS"))
      ->capture_default_str();
  app.add_option_function<std::string>(
         "--memory-limit",
         [](const std::string& gib) {
           // The memory checks read the variable (occult/model/memory.h), so every rank and every
           // library path sees the same budget.
           ::setenv(occult::kMemoryLimitEnv, gib.c_str(), 1);
         },
         "GiB each rank may use; commands refuse, before allocating, what would not fit (default: the "
         "host's available memory divided by its ranks; the same as OCCULT_MEMORY_LIMIT_GIB)")
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            double v = -1;
            return CLI::detail::lexical_cast(text, v) && v > 0 && v < 1e9 ? ""
                                                                         : "must be a positive number of GiB, got " + text;
          },
          "GIB"));
  occult::cli::setup_all_commands(app);
  occult::cli::accept_global_options_everywhere(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return occult::cli::report_parse_error(app, e, argc, argv);
  } catch (...) {
    // Any other exception of any type: printed once, and under mpirun the job is aborted, since
    // the other ranks may be waiting for this one in a collective.
    occult::cli::abort_job_after_local_failure(occult::describe_current_exception());
    return 1;
  }
  return 0;
}
