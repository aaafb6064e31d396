// shoal logits: prompt logits of every position and greedy steps, as one JSON object.
#include <cmath>
#include <cstdio>
#include <memory>

#include "cli/cluster_flags.h"
#include "cli/commands.h"
#include "coordinator/engine.h"

namespace shoal::cli {
namespace {

struct Options {
  std::string model;
  std::vector<std::string> ids;
  int64_t greedy = 0;
  std::string attn = "auto";
  ClusterFlags cluster;
};

void print_floats(std::FILE* f, const std::vector<float>& v) {
  std::fputc('[', f);
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) std::fputc(',', f);
    if (std::isfinite(v[i])) std::fprintf(f, "%.9g", double(v[i]));
    else std::fputs("null", f);
  }
  std::fputc(']', f);
}

// [[[...] per position] per sequence]
void print_nested(std::FILE* f, const std::vector<std::vector<std::vector<float>>>& v) {
  std::fputc('[', f);
  for (size_t b = 0; b < v.size(); ++b) {
    std::fputs(b ? ",[" : "[", f);
    for (size_t p = 0; p < v[b].size(); ++p) {
      if (p) std::fputc(',', f);
      print_floats(f, v[b][p]);
    }
    std::fputc(']', f);
  }
  std::fputc(']', f);
}

int run(const Options& o) {
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& text : o.ids) {
    auto ids = parse_ids(text);
    if (!ids.ok()) return fail(ids.status());
    prompts.push_back(std::move(ids).value());
  }
  ClusterOptions co;
  co.model_dir = o.model;
  co.n_slots = int64_t(prompts.size());
  co.attn_impl = o.attn == "naive" ? AttnImpl::kNaive : o.attn == "absorb" ? AttnImpl::kAbsorb : AttnImpl::kAuto;
  ClusterFlags flags = o.cluster;
  flags.one_model = true;
  auto cluster = open_cluster(flags, co);
  if (!cluster.ok()) return fail(cluster.status());
  auto r = generate_greedy(**cluster, prompts, o.greedy, /*want_prompt_logits=*/true, /*want_step_logits=*/true);
  if (!r.ok()) return fail(r.status());
  if (Status s = (*cluster)->shutdown(); !s.ok()) return fail(s);
  std::FILE* f = stdout;
  std::fputs("{\"prompt_logits\":", f);
  print_nested(f, r->prompt_logits);
  std::fputs(",\"greedy_ids\":[", f);
  for (size_t b = 0; b < r->ids.size(); ++b) {
    std::fputs(b ? ",[" : "[", f);
    for (size_t k = 0; k < r->ids[b].size(); ++k) std::fprintf(f, k ? ",%d" : "%d", r->ids[b][k]);
    std::fputc(']', f);
  }
  std::fputs("],\"greedy_logits\":", f);
  print_nested(f, r->step_logits);
  std::fputs("}\n", f);
  return std::fflush(f) == 0 ? 0 : fail(internal_error("cannot write to stdout"));
}

}  // namespace

void add_logits(CLI::App& app, int& rc) {
  auto o = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("logits", "Print the logits of token-id prompts as JSON");
  sub->add_option("--model", o->model, "Checkpoint: a Hugging Face folder (config.json + safetensors) or a GGUF (file, part 1 or folder)")->required();
  sub->add_option("--ids", o->ids, "Prompt token ids, e.g. \"0 17 42\"; repeat for a batch")->required();
  sub->add_option("--greedy", o->greedy, "Greedy steps to generate")->check(CLI::NonNegativeNumber);
  sub->add_option("--attn", o->attn, "MLA path: auto, naive or absorb")
      ->check(CLI::IsMember({"auto", "naive", "absorb"}));
  add_cluster_flags(sub, o->cluster);
  sub->callback([o, &rc] { rc = run(*o); });
}

}  // namespace shoal::cli
