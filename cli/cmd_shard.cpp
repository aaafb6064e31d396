// shoal shard: cut a checkpoint into one folder per rank of a plan (out/rank-N), each with
// exactly that rank's tensors and a sha256 manifest (cluster/shard.h), for machines that each
// keep only their part on a local disk. Start each node with `shoal node --model out/rank-N`.
// A GGUF source gives GGUF shards (cluster/shard.h, docs/gguf.md "Synth and shard").
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "cluster/plan.h"
#include "cluster/shard.h"
#include "model/checkpoint.h"
#include "node/units.h"

namespace shoal::cli {
namespace {

struct Options {
  std::string model, plan, out;
};

int shard(const Options& o) {
  auto ck = Checkpoint::open(o.model);
  if (!ck.ok()) return fail(ck.status());
  std::ifstream in(o.plan);
  if (!in) return fail(not_found("--plan " + o.plan + ": cannot read it"));
  std::stringstream text;
  text << in.rdbuf();
  const auto j = nlohmann::json::parse(text.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("world_size") || !j["world_size"].is_number_integer())
    return fail(invalid_argument(o.plan + ": not a plan (a JSON object with world_size, docs/plan.md)"));
  const int world = j["world_size"].get<int>();
  auto plan = cluster::plan_from_json(j, (*ck)->config(), world);
  if (!plan.ok()) return fail(plan.status());
  for (int r = 0; r < world; ++r) {
    if (!plan->hosts_anything(r)) continue;
    const std::string dir = o.out + "/rank-" + std::to_string(r);
    auto m = cluster::write_shard(**ck, hosted_tensors(**ck, *plan, r), r, world, dir);
    if (!m.ok()) return fail(m.status());
    const cluster::ShardFile& f = m->files.front();
    std::printf("rank %d: %s/%s, %zu tensors, %lld bytes, sha256 %s\n", r, dir.c_str(), f.file.c_str(),
                f.tensors.size(), (long long)f.bytes, f.sha256.c_str());
  }
  return 0;
}

}  // namespace

void add_shard(CLI::App& app, int& rc) {
  auto o = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("shard", "Write each rank's tensors of a plan into OUT/rank-N with a sha256 manifest");
  sub->add_option("--model", o->model,
                  "Checkpoint to cut: a Hugging Face folder (shards: config.json + model.safetensors), or a GGUF "
                  "model (shards: one model.gguf each, holding only the rank's experts)")
      ->required();
  sub->add_option("--plan", o->plan, "Placement plan (JSON, docs/plan.md): which rank hosts what")->required();
  sub->add_option("--out", o->out, "Folder for the rank-N folders")->required();
  sub->callback([o, &rc] { rc = shard(*o); });
}

}  // namespace shoal::cli
