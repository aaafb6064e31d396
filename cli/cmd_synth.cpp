// placeholder: being written
#include "cli/commands.h"
namespace shoal::cli {
void add_synth(CLI::App& app, int& rc) {
  CLI::App* sub = app.add_subcommand("synth", "(being written)");
  sub->callback([&rc] { rc = fail(unimplemented("synth")); });
}
}  // namespace shoal::cli
