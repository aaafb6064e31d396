// shoal bench: prefill and decode tokens/s of N random prompts, on one process or on a cluster
// (the cluster flags, mpirun), and the bytes the ranks sent per token. bench/distributed runs
// the matrix; docs/performance.md has the results.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "cli/cluster_flags.h"
#include <algorithm>

#include "cli/commands.h"
#include "coordinator/cluster.h"
#include "coordinator/engine.h"
#include "model/inspect.h"
#include "kernels/kernels.h"
#include "kernels/system.h"

namespace shoal::cli {
namespace {

struct Options {
  std::string model;
  int64_t sequences = 1, prompt_len = 64, tokens = 32, max_seq_len = 0;
  uint64_t seed = 0;
  int64_t prefill_micro_batches = 0;  // 0: prefill_chunk_tokens()'s rule
  int64_t versus_base = 0;  // rounds of adapters against the base in this process (named adapters)
  ClusterFlags cluster;
};

// Traffic summed over the ranks, from their heartbeats (totals since the session began).
struct Traffic {
  int64_t hidden_messages = 0, hidden_bytes = 0, hidden_tokens = 0, expert_messages = 0, expert_bytes = 0;
  std::vector<int64_t> rss_bytes;  // per rank

  Traffic operator-(const Traffic& o) const {
    return {hidden_messages - o.hidden_messages, hidden_bytes - o.hidden_bytes, hidden_tokens - o.hidden_tokens,
            expert_messages - o.expert_messages, expert_bytes - o.expert_bytes, rss_bytes};
  }
};

// Nodes report every second: waiting 1.5 s lets every rank's counters of the run reach rank 0.
Traffic settled_traffic(Cluster& c) {
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  Traffic t;
  for (const wire::Heartbeat& beat : c.rank_stats()) {
    const wire::WorkerStats& s = beat.stats();
    t.hidden_messages += s.hidden_messages();
    t.hidden_bytes += s.hidden_bytes();
    t.hidden_tokens += s.hidden_tokens();
    t.expert_messages += s.expert_messages();
    t.expert_bytes += s.expert_bytes();
    t.rss_bytes.push_back(beat.rss_bytes());
  }
  return t;
}

std::vector<std::vector<int32_t>> random_prompts(int64_t n, int64_t len, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> id(0, int32_t(vocab - 1));
  std::vector<std::vector<int32_t>> prompts(size_t(n), std::vector<int32_t>(size_t(len), 0));
  for (auto& p : prompts)
    for (auto& t : p) t = id(rng);
  return prompts;
}

std::string mode_name(const ClusterFlags& f) {
  if (under_mpi()) return "mpi";
  if (!f.nodes.empty()) return "tcp";
  return f.local_nodes > 0 ? "local-nodes" : "one process";
}

double ratio(double a, double b) { return b > 0 ? a / b : 0; }

int bench(const Options& o) {
  ClusterOptions co;
  co.model_dir = o.model;
  co.n_slots = o.sequences;
  co.max_seq_len = o.max_seq_len;
  auto opened = open_cluster(o.cluster, co);
  if (!opened.ok()) return fail(opened.status());
  Cluster& c = **opened;
  const auto prompts = random_prompts(o.sequences, o.prompt_len, c.config().vocab_size, o.seed);
  // Named adapters (--lora NAME=DIR): sequence b runs adapter b % K + 1, so a step mixes them all.
  std::vector<int32_t> adapters;
  const std::vector<std::string> names = c.adapter_names();
  if (!names.empty() && !names[0].empty())
    for (int64_t b = 0; b < o.sequences; ++b) adapters.push_back(int32_t(b % int64_t(names.size())) + 1);

  // Steady state only: the same run twice before the timed one (generate_greedy always starts at
  // position 0, so each overwrites the last), first with one generated token, then whole. Every
  // weight the timed run reads is then resident and its page faults are behind us, and the
  // difference of the two untimed runs' weight bytes is what the decode steps read.
  const int64_t bytes0 = kernels::weight_bytes_read();
  if (auto w = generate_greedy(c, prompts, 1, false, false, {}, {}, adapters, o.prefill_micro_batches); !w.ok()) return fail(w.status());
  const int64_t bytes1 = kernels::weight_bytes_read();
  if (auto w = generate_greedy(c, prompts, o.tokens, false, false, {}, {}, adapters, o.prefill_micro_batches); !w.ok()) return fail(w.status());
  const int64_t bytes2 = kernels::weight_bytes_read();
  const Traffic before = settled_traffic(c);

  auto r = generate_greedy(c, prompts, o.tokens, false, false, {}, {}, adapters, o.prefill_micro_batches);
  if (!r.ok()) return fail(r.status());
  const Traffic t = settled_traffic(c) - before;
  // Adapters against the base on the same loaded model, runs alternating (base first in odd
  // rounds), so a shared host's drifting bandwidth hits both alike: the median of the paired
  // ratios is the adapters' cost.
  nlohmann::json versus = nullptr;
  if (o.versus_base > 0 && !adapters.empty()) {
    const std::vector<int32_t> none(adapters.size(), 0);
    std::vector<double> with, without, ratios;
    for (int64_t round = 0; round < o.versus_base; ++round) {
      double rate[2] = {0, 0};
      for (int k = 0; k < 2; ++k) {
        const bool base_run = (k == 0) == (round % 2 == 0);
        auto w = generate_greedy(c, prompts, o.tokens, false, false, {}, {}, base_run ? none : adapters,
                                 o.prefill_micro_batches);
        if (!w.ok()) return fail(w.status());
        rate[base_run ? 1 : 0] = ratio(double(w->decode_tokens), w->decode_seconds);
      }
      with.push_back(rate[0]);
      without.push_back(rate[1]);
      ratios.push_back(ratio(rate[0], rate[1]));
    }
    std::vector<double> sorted = ratios;
    std::sort(sorted.begin(), sorted.end());
    versus = {{"rounds", o.versus_base}, {"adapters_decode_tokens_per_s", with}, {"base_decode_tokens_per_s", without},
              {"ratios", ratios}, {"median_ratio", sorted[sorted.size() / 2]}};
  }
  const int world = c.transport().size();
  if (Status s = c.shutdown(); !s.ok()) return fail(s);

  const int64_t processed = r->prefill_tokens + r->decode_tokens;  // tokens that went through the layers
  // Weight bytes per decode step, as the kernels of this process counted them: every rank's when
  // all ranks are threads of this process (one process, --local-nodes); unknown otherwise.
  const bool all_ranks_here = !under_mpi() && o.cluster.nodes.empty();
  const int64_t decode_steps = o.tokens - 1;
  const double step_bytes = all_ranks_here && decode_steps > 0 ? double(bytes2 - 2 * bytes1 + bytes0) / double(decode_steps) : 0;
  const kernels::ReadBandwidth bw = kernels::measure_read_bandwidth();
  const double step_rate = ratio(double(r->decode_tokens) / double(o.sequences), r->decode_seconds);
  nlohmann::json j = {
      {"mode", mode_name(o.cluster)},
      {"world_size", world},
      {"expert_scatter", o.cluster.expert_scatter},
      {"adapters", names.size()},
      {"sequences", o.sequences},
      {"prompt_len", o.prompt_len},
      {"tokens", o.tokens},
      {"prefill_tokens", r->prefill_tokens},
      {"prefill_chunk_tokens", prefill_chunk_tokens(c.pipeline_depth(), r->prefill_tokens, o.prefill_micro_batches)},
      {"prefill_seconds", r->prefill_seconds},
      {"prefill_tokens_per_s", ratio(double(r->prefill_tokens), r->prefill_seconds)},
      {"decode_tokens", r->decode_tokens},
      {"decode_seconds", r->decode_seconds},
      {"decode_tokens_per_s", ratio(double(r->decode_tokens), r->decode_seconds)},
      {"hidden_messages", t.hidden_messages},
      {"hidden_bytes", t.hidden_bytes},
      {"hidden_tokens", t.hidden_tokens},
      {"hidden_bytes_per_token_per_hop", ratio(double(t.hidden_bytes), double(t.hidden_tokens))},
      {"hidden_bytes_per_token", ratio(double(t.hidden_bytes), double(processed))},
      {"expert_messages", t.expert_messages},
      {"expert_bytes", t.expert_bytes},
      {"expert_bytes_per_token", ratio(double(t.expert_bytes), double(processed))},
      {"rss_bytes", t.rss_bytes},
      {"cpu_variant", kernels::cpu_variant()},
      {"read_bandwidth_gbs", bw.gbs},
      {"decode_steps_per_s", step_rate},
      {"versus_base", versus},
  };
  if (all_ranks_here) {
    j["weight_bytes_per_token"] = step_bytes / double(o.sequences);
    j["weight_bytes_per_step"] = step_bytes;
    j["decode_fraction_of_roofline"] = ratio(step_rate * step_bytes / 1e9, bw.gbs);
  } else {
    j["weight_bytes_per_token"] = nullptr;  // other processes' kernels: not counted here
    j["decode_fraction_of_roofline"] = nullptr;
  }
  // Prefill against the compute ceiling: weight multiply-adds per token (the active parameters)
  // over the float32 FMA peak and, for the int8 dot products of GGUF's fast numerics, the int8 peak.
  const double macs_per_token = double(count_params(c.config()).active);
  const double prefill_gops = ratio(double(r->prefill_tokens), r->prefill_seconds) * 2 * macs_per_token / 1e9;
  j["prefill_weight_gops"] = prefill_gops;
  j["fma_peak_gflops"] = kernels::measure_fma_peak_gflops();
  j["int8_peak_gops"] = kernels::measure_int8_peak_gops();
  j["prefill_fraction_of_fma_peak"] = ratio(prefill_gops, j["fma_peak_gflops"].get<double>());
  j["prefill_fraction_of_int8_peak"] = ratio(prefill_gops, j["int8_peak_gops"].get<double>());
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
  std::fprintf(stderr,
               "bench: %s, %d rank(s), %lld sequence(s)\n"
               "  prefill: %lld tokens in %.3f s = %.1f tokens/s\n"
               "  decode:  %lld tokens in %.3f s = %.1f tokens/s (all sequences)\n"
               "  hidden:  %lld messages, %.0f B/token/hop, %.0f B/token over all hops\n"
               "  experts: %lld messages, %.0f B/token\n",
               mode_name(o.cluster).c_str(), world, (long long)o.sequences, (long long)r->prefill_tokens,
               r->prefill_seconds, ratio(double(r->prefill_tokens), r->prefill_seconds), (long long)r->decode_tokens,
               r->decode_seconds, ratio(double(r->decode_tokens), r->decode_seconds), (long long)t.hidden_messages,
               ratio(double(t.hidden_bytes), double(t.hidden_tokens)), ratio(double(t.hidden_bytes), double(processed)),
               (long long)t.expert_messages, ratio(double(t.expert_bytes), double(processed)));
  return 0;
}

}  // namespace

void add_bench(CLI::App& app, int& rc) {
  auto o = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("bench", "Prefill and decode tokens/s and traffic per token on random prompts");
  sub->add_option("--model", o->model, "Checkpoint: a Hugging Face folder (config.json + safetensors) or a GGUF (file, part 1 or folder)")->required();
  sub->add_option("--sequences", o->sequences, "Concurrent sequences (one KV slot each)")->check(CLI::PositiveNumber);
  sub->add_option("--prompt-len", o->prompt_len, "Random prompt tokens per sequence")->check(CLI::PositiveNumber);
  sub->add_option("--tokens", o->tokens, "Tokens to generate per sequence")->check(CLI::PositiveNumber);
  sub->add_option("--max-seq-len", o->max_seq_len, "KV cache positions (default: min(config, 4096))");
  sub->add_option("--seed", o->seed, "Seed of the random prompts");
  sub->add_option("--prefill-micro-batches", o->prefill_micro_batches,
                  "Prefill micro-batches the prompts are cut into (default: 8 per pipeline stage, at least 32 tokens "
                  "each; 1 on one stage)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--versus-base", o->versus_base,
                  "With named adapters (--lora NAME=DIR): this many rounds of the adapters against the base in "
                  "this process, alternating; prints the paired decode ratios and their median")
      ->check(CLI::NonNegativeNumber);
  add_cluster_flags(sub, o->cluster);
  sub->callback([o, &rc] { rc = bench(*o); });
}

}  // namespace shoal::cli
