// placeholder: being written
#include "cli/commands.h"
namespace shoal::cli {
void add_inspect(CLI::App& app, int& rc) {
  CLI::App* sub = app.add_subcommand("inspect", "(being written)");
  sub->callback([&rc] { rc = fail(unimplemented("inspect")); });
}
}  // namespace shoal::cli
