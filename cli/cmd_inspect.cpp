// shoal inspect: architecture, parameter counts, bytes per dtype, MTP and license of a folder.
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "model/inspect.h"

namespace shoal::cli {
namespace {

struct Options {
  std::string model;
  bool json = false;
};

int inspect(const Options& o) {
  auto s = inspect_model(o.model);
  if (!s.ok()) return fail(s.status());
  const std::string text = o.json ? summary_json(*s) : summary_text(*s);
  std::fwrite(text.data(), 1, text.size(), stdout);
  return 0;
}

}  // namespace

void add_inspect(CLI::App& app, int& rc) {
  auto o = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("inspect", "Describe a checkpoint folder (config.json alone is enough)");
  sub->add_option("--model", o->model, "Checkpoint folder")->required();
  sub->add_flag("--json", o->json, "Print one JSON object instead of text");
  sub->callback([o, &rc] { rc = inspect(*o); });
}

}  // namespace shoal::cli
