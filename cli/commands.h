// Subcommands of the shoal executable. Each add_* registers its options on the app and sets
// `rc` to its exit status when it runs: 0 success, 1 an error (printed to stderr), 2 usage.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "common/status.h"

namespace shoal::cli {

void add_logits(CLI::App& app, int& rc);
void add_run(CLI::App& app, int& rc);
void add_synth(CLI::App& app, int& rc);
void add_inspect(CLI::App& app, int& rc);
void add_tokenize(CLI::App& app, int& rc);
void add_bench(CLI::App& app, int& rc);
void add_serve(CLI::App& app, int& rc);
void add_batch(CLI::App& app, int& rc);
void add_plan(CLI::App& app, int& rc);  // shoal plan (cli/cmd_plan.cpp)
// shoal launch {mpirun,ssh} (cli/cmd_launch.cpp); its slurm subcommand comes from
// cli/cmd_launch_slurm.cpp, registered on the launch subcommand when that file is built.
void add_launch(CLI::App& app, int& rc);
void add_launch_slurm(CLI::App& launch, int& rc);
// shoal shard (cli/cmd_shard.cpp)
void add_shard(CLI::App& app, int& rc);

// Prints "shoal: error: ..." and returns 1.
int fail(const Status& s);

// "3 17 42" or "3,17,42" -> ids; anything else is an error naming the bad word.
StatusOr<std::vector<int32_t>> parse_ids(const std::string& text);

}  // namespace shoal::cli
