// How subcommands join the `occult` program: each tools/<name>.cc defines a setup function
// and registers it with a static OCCULT_REGISTER_COMMAND, so adding a subcommand touches one
// file. Setup functions add their CLI11 subcommand (with its callback) to the root app.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

namespace occult::cli {

using CommandSetup = void (*)(CLI::App& root);

// Registers `setup` under `name` (used only to order the help text).
struct CommandRegistration {
  CommandRegistration(const char* name, CommandSetup setup);
};

// Calls every registered setup on `root`, in name order.
void setup_all_commands(CLI::App& root);

// Lets every subcommand of `app` (recursively) accept `app`'s own options after its name, so
// that `occult train --collective-timeout 60 ...` works as well as `occult --collective-timeout
// 60 train ...`. Call after setup_all_commands.
void accept_global_options_everywhere(CLI::App& app);

// The subcommand `name` of `parent`, created with `description` if it does not exist yet;
// lets `trace synth` and `trace stats` live in separate files.
CLI::App& command_group(CLI::App& parent, const std::string& name, const std::string& description);

}  // namespace occult::cli

#define OCCULT_CONCAT_INNER(a, b) a##b
#define OCCULT_CONCAT(a, b) OCCULT_CONCAT_INNER(a, b)
#define OCCULT_REGISTER_COMMAND(name, setup) \
  [[maybe_unused]] static const ::occult::cli::CommandRegistration OCCULT_CONCAT(occult_command_, __COUNTER__)(name, setup)
