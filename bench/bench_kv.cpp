// What the paged KV pool buys (issue 18; docs/performance.md, "The KV pool"), through the
// scheduler that `shoal serve` runs, on one process:
//   bench_kv --model DIR [--long 65536] [--streams 8] [--prefix 8192] [--rounds 3] [--kv-memory BYTES]
// 1. Concurrency in the same memory: 160 requests of 512 positions (448 prompt + 64 generated)
//    through today's default fixed cache (8 slots x 4096 float32 positions) and through a pool of
//    the same bytes (the default --kv-memory): the most sequences running at once, tokens/s.
// 2. Prefix reuse: time to first token of a prompt of --prefix tokens + 64 new ones, with its
//    prefix not cached and cached (another request with the same prefix ran before), median.
// 3. A long prompt beside streams: --streams short requests decoding, then one prompt of --long
//    tokens arrives; the streams' inter-token latency before and while it prefills, its time to
//    first token, and the pool's bytes.
// Model: bench/configs/kv-long.json synthesized (`shoal synth`), max_position_embeddings 163840.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "coordinator/engine.h"
#include "coordinator/scheduler.h"

using namespace shoal;
using Clock = std::chrono::steady_clock;

namespace {

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(q * double(v.size())))];
}

std::vector<int32_t> random_tokens(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int32_t& x : t) x = int32_t(2 + rng() % 30000);
  return t;
}

std::unique_ptr<Engine> open(const std::string& dir, int64_t slots, int64_t max_seq_len, int64_t kv_memory) {
  EngineOptions eo;
  eo.n_slots = slots;
  eo.max_seq_len = max_seq_len;
  eo.kv_memory = kv_memory;
  auto e = Engine::open(dir, eo);
  if (!e.ok()) {
    std::fprintf(stderr, "bench_kv: %s\n", e.status().to_string().c_str());
    std::exit(1);
  }
  return std::move(*e);
}

// Runs the scheduler until idle; per request the time of each token event.
struct Run {
  std::map<uint64_t, std::vector<Clock::time_point>> tokens;
  int64_t most_running = 0, generated = 0;
  double seconds = 0;
};
Run run(Scheduler& s, const std::function<void(int64_t step)>& each_step = {}) {
  Run r;
  const auto t0 = Clock::now();
  for (int64_t step = 0; !s.idle(); ++step) {
    if (each_step) each_step(step);
    auto events = s.step();
    if (!events.ok()) {
      std::fprintf(stderr, "bench_kv: %s\n", events.status().to_string().c_str());
      std::exit(1);
    }
    const auto now = Clock::now();
    for (const TokenEvent& e : *events)
      if (e.token >= 0) r.tokens[e.request].push_back(now), ++r.generated;
    r.most_running = std::max<int64_t>(r.most_running, int64_t(s.running()));
  }
  r.seconds = seconds(Clock::now() - t0);
  return r;
}

void concurrency(const std::string& dir) {
  std::printf("1. 160 requests of 448 + 64 positions, the same memory\n");
  for (bool paged : {false, true}) {
    // The fixed cache: today's default, 8 slots of 4096. The pool: as many bytes (kDefaultKvMemory).
    auto e = paged ? open(dir, 256, 0, kDefaultKvMemory) : open(dir, 8, 4096, 0);
    Scheduler s(*e);
    for (uint64_t i = 0; i < 160; ++i) {
      GenerationRequest r;
      r.id = i + 1;
      r.prompt = random_tokens(448, uint32_t(i));
      r.max_tokens = 64;
      (void)s.add(r);
    }
    const Run r = run(s);
    const int64_t pool_positions = paged ? e->kv_blocks() * kKvBlockTokens : 8 * 4096;
    std::printf("   %-24s KV positions %6lld: at most %3lld sequences at once, %.1f generated tok/s, %.1f s\n",
                paged ? "paged pool (default)" : "fixed cache (8 x 4096)", (long long)pool_positions,
                (long long)r.most_running, double(r.generated) / r.seconds, r.seconds);
  }
}

void prefix_reuse(const std::string& dir, int64_t prefix, int rounds, int64_t kv_memory) {
  std::printf("2. time to first token, %lld-token prefix + 64 new tokens\n", (long long)prefix);
  std::vector<double> cold, warm;
  auto e = open(dir, 8, 0, kv_memory);
  for (int round = 0; round < rounds; ++round) {
    const std::vector<int32_t> shared = random_tokens(prefix, 100 + uint32_t(round));
    for (bool cached : {false, true}) {
      SchedulerOptions so;
      so.prefix_cache = true;
      Scheduler s(*e, so);  // a fresh scheduler: nothing cached
      if (cached) {         // one request with the same prefix runs first
        GenerationRequest first{1, shared, 1, {}};
        for (int32_t t : random_tokens(64, 7)) first.prompt.push_back(t);
        (void)s.add(first);
        run(s);
      }
      GenerationRequest r{2, shared, 1, {}};
      for (int32_t t : random_tokens(64, 9 + uint32_t(round))) r.prompt.push_back(t);
      const auto t0 = Clock::now();
      (void)s.add(r);
      const Run got = run(s);
      (cached ? warm : cold).push_back(seconds(got.tokens.at(2).front() - t0));
      if (cached && s.kv_stats().cached_prompt_tokens < prefix - kKvBlockTokens) std::printf("   (prefix not found cached!)\n");
    }
  }
  const double c = percentile(cold, 0.5), w = percentile(warm, 0.5);
  std::printf("   uncached %.3f s, cached %.3f s (median of %d): %.3fx\n", c, w, rounds, w / c);
}

void long_prompt(const std::string& dir, int64_t long_len, int64_t streams, int64_t kv_memory) {
  std::printf("3. one %lld-token prompt arriving beside %lld decoding streams\n", (long long)long_len, (long long)streams);
  auto e = open(dir, streams + 1, 0, kv_memory);
  std::printf("   KV pool: %lld blocks of %lld positions (%lld positions), %.1f MB\n", (long long)e->kv_blocks(),
              (long long)kKvBlockTokens, (long long)(e->kv_blocks() * kKvBlockTokens),
              double(e->kv_blocks() * kv_block_bytes(e->config(), e->config().n_layers, e->kv_dtype())) / 1e6);
  Scheduler s(*e);
  for (int64_t i = 0; i < streams; ++i) {
    GenerationRequest r;
    r.id = uint64_t(i + 1);
    r.prompt = random_tokens(32, uint32_t(50 + i));
    r.max_tokens = 100000;
    (void)s.add(r);
  }
  const uint64_t long_id = 1000;
  Clock::time_point arrived{}, long_first{};
  bool added = false;
  std::vector<double> before, during;
  std::map<uint64_t, Clock::time_point> last;
  for (int64_t step = 0; !s.idle(); ++step) {
    auto events = s.step();
    if (!events.ok()) {
      std::fprintf(stderr, "bench_kv: %s\n", events.status().to_string().c_str());
      std::exit(1);
    }
    const auto now = Clock::now();
    for (const TokenEvent& e : *events) {
      if (e.token < 0) continue;
      if (e.request == long_id) {
        long_first = now;
        for (int64_t i = 0; i < streams; ++i) s.cancel(uint64_t(i + 1));  // done: the streams end too
        continue;
      }
      if (last.count(e.request)) (added ? during : before).push_back(seconds(now - last[e.request]));
      last[e.request] = now;
    }
    if (!added && before.size() >= size_t(20 * streams)) {
      GenerationRequest r;
      r.id = long_id;
      r.prompt = random_tokens(long_len, 999);
      r.max_tokens = 1;
      if (Status st = s.add(r); !st.ok()) {
        std::fprintf(stderr, "bench_kv: %s\n", st.to_string().c_str());
        std::exit(1);
      }
      arrived = Clock::now();
      added = true;
    }
  }
  std::printf("   streams' inter-token latency before: p50 %.3f s, p99 %.3f s; while the prompt prefills: p50 %.3f s, "
              "p99 %.3f s, max %.3f s (%zu gaps)\n",
              percentile(before, 0.5), percentile(before, 0.99), percentile(during, 0.5), percentile(during, 0.99),
              percentile(during, 1.0), during.size());
  std::printf("   the long prompt's time to first token: %.1f s (%.0f prompt tokens/s)\n", seconds(long_first - arrived),
              double(long_len) / seconds(long_first - arrived));
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir;
  int64_t long_len = 65536, streams = 8, prefix = 8192, kv_memory = int64_t(1) << 30;
  int rounds = 3;
  std::string only;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--model") dir = v;
    else if (a == "--long") long_len = std::atoll(v.c_str());
    else if (a == "--streams") streams = std::atoll(v.c_str());
    else if (a == "--prefix") prefix = std::atoll(v.c_str());
    else if (a == "--rounds") rounds = std::atoi(v.c_str());
    else if (a == "--kv-memory") kv_memory = std::atoll(v.c_str());
    else if (a == "--only") only = v;
  }
  if (dir.empty()) {
    std::fprintf(stderr, "usage: bench_kv --model DIR [--long N] [--streams N] [--prefix N] [--rounds N] [--kv-memory BYTES] [--only 1|2|3]\n");
    return 2;
  }
  if (only.empty() || only == "1") concurrency(dir);
  if (only.empty() || only == "2") prefix_reuse(dir, prefix, rounds, kv_memory);
  if (only.empty() || only == "3") long_prompt(dir, long_len, streams, kv_memory);
  return 0;
}
