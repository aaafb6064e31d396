// shoal synth: write a random-weight checkpoint in Hugging Face layout for a config.
#include <chrono>
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "model/synth.h"

namespace shoal::cli {
namespace {

struct Options {
  std::string config, out, dtype = "bf16";
  int64_t layers = 0;
  uint64_t seed = 0;
  double shard_size_mb = 4096;
  bool mtp = false;
};

int synth(const Options& o) {
  SynthOptions so;
  so.config = o.config;
  so.out = o.out;
  so.fp8 = o.dtype == "fp8";
  so.layers = o.layers;
  so.mtp = o.mtp;
  so.seed = o.seed;
  so.shard_bytes = uint64_t(o.shard_size_mb * (1 << 20));
  const auto t0 = std::chrono::steady_clock::now();
  auto r = synth_checkpoint(so);
  if (!r.ok()) return fail(r.status());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("wrote %lld tensors, %.3f GB in %lld shard(s), %lld layers%s, to %s in %.1f s\n",
              (long long)r->n_tensors, double(r->total_bytes) / 1e9, (long long)r->n_shards,
              (long long)r->config.n_layers, o.mtp && r->config.n_mtp_layers > 0 ? " + MTP" : "", o.out.c_str(), s);
  return 0;
}

}  // namespace

void add_synth(CLI::App& app, int& rc) {
  auto o = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("synth", "Write a random-weight checkpoint (HF layout) for a config");
  sub->add_option("--config", o->config,
                  "config.json, or a folder holding it (default: the embedded demo model, DeepSeek-V3's "
                  "architecture at hidden 1024, 4 layers, 32 experts)");
  sub->add_option("--out", o->out, "Folder to write (created; must not hold a checkpoint yet)")
      ->required();
  sub->add_option("--dtype", o->dtype, "bf16 (default), or fp8: e4m3 with 128x128 block scales, as DeepSeek ships")
      ->check(CLI::IsMember({"bf16", "fp8"}));
  sub->add_option("--layers", o->layers, "num_hidden_layers to write (default: the config's)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--seed", o->seed, "Random seed (default 0); the same seed writes the same bytes");
  sub->add_option("--shard-size-mb", o->shard_size_mb,
                  "Tensor MiB per shard (default 4096, fractions allowed), split where HF splits")
      ->check(CLI::PositiveNumber);
  sub->add_flag("--mtp", o->mtp,
                "Also write the MTP layers (num_nextn_predict_layers). Off by default: the 671B model's MTP "
                "layer alone is 11 GB, so without this flag config.json gets num_nextn_predict_layers = 0");
  sub->callback([o, &rc] { rc = synth(*o); });
}

}  // namespace shoal::cli
