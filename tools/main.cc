// The `occult` command-line program. Subcommands live one per file in tools/ and register
// themselves (command_registry.h); this file only parses and reports errors.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "command_registry.h"
#include "mpi_cli.h"
#include "occult/core/error.h"

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

CLI::App& command_group(CLI::App& parent, const std::string& name, const std::string& description) {
  for (CLI::App* sub : parent.get_subcommands([](CLI::App*) { return true; })) {
    if (sub->get_name() == name) return *sub;
  }
  CLI::App* group = parent.add_subcommand(name, description);
  group->require_subcommand(1);
  return *group;
}

}  // namespace occult::cli

int main(int argc, char** argv) {
  CLI::App app{
      "occult: expert-parallel Mixture-of-Experts with collaborative communication.\n"
      "Profile routing, place experts, prune collaborations, and run MoE layers and models\n"
      "with occult (one copy per device) or standard (one copy per expert) dispatch."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "occult 0.1.0");
  occult::cli::setup_all_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (...) {
    // Any other exception of any type: printed once, and under mpirun the job is aborted, since
    // the other ranks may be waiting for this one in a collective.
    occult::cli::abort_job_after_local_failure(occult::describe_current_exception());
    return 1;
  }
  return 0;
}
