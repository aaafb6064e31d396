// shoal run: generate greedily from a prompt and report tokens/s.
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "coordinator/engine.h"

namespace shoal::cli {
namespace {

struct Options {
  std::string model;
  std::string ids;
  int64_t max_tokens = 32;
  int64_t max_seq_len = 0;
};

int run(const Options& o) {
  auto prompt = parse_ids(o.ids);
  if (!prompt.ok()) return fail(prompt.status());
  EngineOptions eo;
  eo.max_seq_len = o.max_seq_len;
  auto engine = Engine::open(o.model, eo);
  if (!engine.ok()) return fail(engine.status());
  auto r = generate_greedy(**engine, {*prompt}, o.max_tokens, false, false);
  if (!r.ok()) return fail(r.status());
  std::printf("generated:");
  for (int32_t id : r->ids[0]) std::printf(" %d", id);
  std::printf("\nprefill: %lld tokens in %.3f s (%.1f tokens/s)\n", (long long)r->prefill_tokens,
              r->prefill_seconds, double(r->prefill_tokens) / std::max(r->prefill_seconds, 1e-9));
  std::printf("decode: %lld tokens in %.3f s (%.1f tokens/s)\n", (long long)r->decode_tokens, r->decode_seconds,
              double(r->decode_tokens) / std::max(r->decode_seconds, 1e-9));
  return 0;
}

}  // namespace

void add_run(CLI::App& app, int& rc) {
  auto o = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("run", "Generate greedily from a prompt of token ids");
  sub->add_option("--model", o->model, "Checkpoint folder (config.json + safetensors)")->required();
  sub->add_option("--ids", o->ids, "Prompt token ids, e.g. \"0 17 42\"")->required();
  sub->add_option("--max-tokens", o->max_tokens, "Tokens to generate")->check(CLI::PositiveNumber);
  sub->add_option("--max-seq-len", o->max_seq_len, "KV cache positions (default: min(config, 4096))");
  sub->callback([o, &rc] { rc = run(*o); });
}

}  // namespace shoal::cli
