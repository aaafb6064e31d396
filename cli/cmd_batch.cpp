// shoal batch: an OpenAI batch input file through the model into a results file, resumable
// after kill -9, SIGTERM (Slurm preemption) or a lost node by running the same command again
// (docs/batch.md).
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/cluster_flags.h"
#include "cli/commands.h"
#include "coordinator/cluster.h"
#include "serve/batch/runner.h"

namespace shoal::cli {
namespace {

namespace fs = std::filesystem;

struct Options {
  std::string model, tokenizer, input, output, model_name;
  int64_t max_seq_len = 0;
  int64_t slots = 64;
  int64_t max_in_flight = 0;
  double drain_timeout_s = 10;
  double heal_timeout_s = 600;
  double progress_interval_s = 5;
  ClusterFlags cluster;
};

batch::StopSignal g_stop;

extern "C" void on_stop_signal(int sig) {  // lock-free atomics only: async-signal-safe
  g_stop.signal.store(sig);
  g_stop.count.fetch_add(1);
}

void install_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) sigaction(sig, &sa, nullptr);
}

std::string default_model_name(const std::string& dir) {
  fs::path p = fs::path(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  const std::string name = p.filename().string();
  return name.empty() || name == "." ? "shoal" : name;
}

int run(const Options& o) {
  auto tok = Tokenizer::load(o.tokenizer.empty() ? o.model : o.tokenizer);
  if (!tok.ok()) return fail(tok.status());
  batch::RunnerOptions ro;
  ro.input = o.input;
  ro.output = o.output;
  ro.model_name = o.model_name.empty() ? default_model_name(o.model) : o.model_name;
  ro.max_in_flight = o.max_in_flight;
  ro.drain_timeout_s = o.drain_timeout_s;
  ro.heal_timeout_s = o.heal_timeout_s;
  ro.progress_interval_s = o.progress_interval_s;
  ro.progress_tty = ::isatty(STDERR_FILENO) == 1;
  auto runner = batch::BatchRunner::open(ro);
  if (!runner.ok()) return fail(runner.status());
  batch::BatchRunner& r = **runner;
  const auto& rec = r.recovered();
  if (rec.unlocked)
    std::fprintf(stderr, "shoal batch: warning: %s cannot be locked on this filesystem: run one batch per output\n",
                 o.output.c_str());
  if (rec.dropped_bytes > 0)
    std::fprintf(stderr, "shoal batch: %s: cut %lld bytes after its last whole record (a torn or invalid line: %s...)\n",
                 o.output.c_str(), (long long)rec.dropped_bytes,
                 nlohmann::json(rec.dropped_start.substr(0, 60)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  if (rec.duplicates > 0)
    std::fprintf(stderr, "shoal batch: warning: %s holds %lld records twice\n", o.output.c_str(), (long long)rec.duplicates);
  if (r.unknown_records() > 0)
    std::fprintf(stderr, "shoal batch: warning: %lld records of %s answer no line of %s (another or an edited input?)\n",
                 (long long)r.unknown_records(), o.output.c_str(), o.input.c_str());
  if (r.already_done() > 0)
    std::fprintf(stderr, "shoal batch: resuming: %lld of %lld records already in %s\n", (long long)r.already_done(),
                 (long long)r.total(), o.output.c_str());
  if (r.already_done() == r.total() && !under_mpi()) {  // under mpirun the other ranks wait for a session
    std::fprintf(stderr, "shoal batch: all %lld records are in %s\n", (long long)r.total(), o.output.c_str());
    return 0;
  }

  ClusterOptions co;
  co.model_dir = o.model;
  co.max_seq_len = o.max_seq_len;
  co.n_slots = o.slots;
  // Over TCP nodes the cluster heals: the run waits for a lost node (--heal-timeout) and goes on.
  auto cluster = ServingCluster::open(o.cluster, co);
  if (!cluster.ok()) return fail(cluster.status());
  Executor& ex = cluster->executor();
  (*tok)->set_vocab_limit(ex.config().vocab_size);
  install_signal_handlers();
  auto sum = r.run(ex, **tok, g_stop);
  const Status down = cluster->shutdown();
  if (!sum.ok()) {
    const int rc = fail(sum.status());
    std::fprintf(stderr, "shoal batch: %s holds every record finished so far; run the same command again to resume\n",
                 o.output.c_str());
    return rc;
  }
  std::fprintf(stderr,
               "shoal batch: %lld records written (%lld errors) in %.1f s, %lld tokens generated (%.1f tokens/s); "
               "%lld of %lld records in %s\n",
               (long long)sum->written, (long long)sum->errors, sum->seconds, (long long)sum->completion_tokens,
               double(sum->completion_tokens) / std::max(sum->seconds, 1e-9),
               (long long)(sum->already_done + sum->written), (long long)sum->total, o.output.c_str());
  if (!sum->complete) {
    std::fprintf(stderr, "shoal batch: stopped by a signal (%lld requests dropped); run the same command again to resume\n",
                 (long long)sum->dropped);
    return 128 + (sum->signal > 0 ? sum->signal : SIGTERM);
  }
  if (!down.ok()) return fail(down);
  return 0;
}

}  // namespace

void add_batch(CLI::App& app, int& rc) {
  auto o = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand(
      "batch", "Run an OpenAI batch file (/v1/chat/completions, /v1/completions) into a results file; resumable");
  sub->add_option("--model", o->model, "Checkpoint folder (config.json + safetensors + tokenizer)")->required();
  sub->add_option("-i,--input", o->input, "Batch input: one request per line (JSON lines)")->required();
  sub->add_option("-o,--output", o->output,
                  "Results: one record per line, appended as they finish; also the journal a rerun resumes from")
      ->required();
  sub->add_option("--tokenizer", o->tokenizer, "Folder with tokenizer.json, or a GGUF (default: --model)");
  sub->add_option("--max-seq-len", o->max_seq_len, "Context: positions per request (default: the model's, as far as the KV pool holds)");
  sub->add_option("--slots", o->slots, "Requests generated at once (KV slots)")->check(CLI::Range(int64_t(1), int64_t(4096)));
  sub->add_option("--max-in-flight", o->max_in_flight, "Requests submitted ahead (default: 4 x --slots)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--model-name", o->model_name, "\"model\" of each response (default: the --model folder's name)");
  sub->add_option("--drain-timeout", o->drain_timeout_s,
                  "After SIGTERM/SIGINT: seconds the running requests may take to finish")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--heal-timeout", o->heal_timeout_s,
                  "With --nodes: seconds to wait for a lost node to come back (restarted, same shard) before giving up "
                  "(default 600)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--progress-interval", o->progress_interval_s,
                  "Seconds between progress lines when stderr is not a terminal")
      ->check(CLI::PositiveNumber);
  add_cluster_flags(sub, o->cluster);
  o->cluster.paged_by_default = true;  // the KV pool (docs/serving.md)
  sub->callback([o, &rc] { rc = run(*o); });
}

}  // namespace shoal::cli
