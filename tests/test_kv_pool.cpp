// The paged KV pool (issue 18; docs/serving.md, "The KV pool"): blocks taken, shared, cached,
// evicted and given back under a full pool, preemption, prefix reuse, and the tokens and logprobs
// of every request bitwise those of the static cache, alone.
#include <catch2/catch.hpp>

#include <deque>
#include <map>
#include <random>
#include <cstdlib>
#include <cstring>
#include <set>

#include "cluster/fit.h"
#include "coordinator/engine.h"
#include "coordinator/local_cluster.h"
#include "coordinator/scheduler.h"
#include "support/process.h"

using namespace shoal;

namespace {

const std::string kModel = std::string(SHOAL_FIXTURES) + "/tiny-v3-bf16";

uint64_t mix(uint64_t h, uint64_t v) {
  uint64_t z = h ^ (v * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull);
  z = (z ^ (z >> 31)) * 0xbf58476d1ce4e5b9ull;
  return z ^ (z >> 29);
}

// A model that is a causal function of the whole context and keeps its own KV cache as the ranks
// do: a paged pool of blocks, one table per slot, edited by the micro-batches. Each cached row
// holds the hash of the context up to its position (the row before it, its token, its position),
// so a row that another sequence overwrote, a table that points at the wrong block, or a copy
// that went wrong changes every later token. The next token is that hash modulo the vocabulary.
class ShadowModel : public Executor {
 public:
  ShadowModel(ModelConfig c, int64_t slots, int64_t blocks, int64_t max_seq_len)
      : c_(std::move(c)), slots_(slots), blocks_(blocks), max_seq_len_(max_seq_len),
        rows_(size_t(blocks * kKvBlockTokens), 0), tables_(size_t(slots)) {}
  const ModelConfig& config() const override { return c_; }
  int64_t max_seq_len() const override { return max_seq_len_; }
  int64_t n_slots() const override { return slots_; }
  int64_t kv_blocks() const override { return blocks_; }
  int64_t pipeline_depth() const override { return 2; }

  StatusOr<uint64_t> submit(const Batch& b, const std::vector<int64_t>& rows, bool,
                            const std::vector<RowSampler>&) override {
    SHOAL_RETURN_IF_ERROR(check_batch(b, c_, slots_, max_seq_len_, {}, blocks_));
    for (const TableEdit& e : b.tables) {
      auto& t = tables_[size_t(e.slot)];
      REQUIRE(e.keep <= int64_t(t.size()));
      t.resize(size_t(e.keep));
      t.insert(t.end(), e.blocks.begin(), e.blocks.end());
    }
    for (const SlotCopy& cp : b.copies)
      for (int32_t p = 0; p < cp.positions; ++p) row(cp.to, p) = row(cp.from, p);
    std::vector<uint64_t> last(size_t(b.n_tokens()));
    for (const SeqRange& s : b.seqs)
      for (int64_t t = s.begin; t < s.begin + s.count; ++t) {
        const int32_t pos = b.positions[size_t(t)];
        const uint64_t before = pos == 0 ? 0x5eed : row(s.slot, pos - 1);
        REQUIRE(before != 0);  // a row never written
        row(s.slot, pos) = last[size_t(t)] = mix(mix(before, uint64_t(b.tokens[size_t(t)])), uint64_t(pos));
        ++tokens_;
      }
    StepResult r;
    r.id = next_id_++;
    for (int64_t t : rows) r.ids.push_back(next_token(last[size_t(t)]));
    done_.push_back(std::move(r));
    return done_.back().id;
  }
  StatusOr<StepResult> next_result() override {
    StepResult r = std::move(done_.front());
    done_.pop_front();
    return r;
  }

  int32_t next_token(uint64_t h) const { return int32_t(h % uint64_t(c_.vocab_size)); }
  // What an uninterrupted run gives: the chain over prompt and outputs.
  std::vector<int32_t> expected(const std::vector<int32_t>& prompt, int64_t max_tokens) const {
    uint64_t h = 0x5eed;
    std::vector<int32_t> ctx = prompt, out;
    for (size_t p = 0; out.size() < size_t(max_tokens); ++p) {
      h = mix(mix(h, uint64_t(ctx[p])), uint64_t(p));
      if (p + 1 == ctx.size()) {
        out.push_back(next_token(h));
        ctx.push_back(out.back());
      }
    }
    return out;
  }
  int64_t tokens() const { return tokens_; }

 private:
  uint64_t& row(int32_t slot, int64_t pos) {
    const auto& t = tables_[size_t(slot)];
    REQUIRE(pos / kKvBlockTokens < int64_t(t.size()));
    return rows_[size_t(t[size_t(pos / kKvBlockTokens)] * kKvBlockTokens + pos % kKvBlockTokens)];
  }

  ModelConfig c_;
  int64_t slots_, blocks_, max_seq_len_;
  std::vector<uint64_t> rows_;
  std::vector<std::vector<int32_t>> tables_;
  std::deque<StepResult> done_;
  uint64_t next_id_ = 1;
  int64_t tokens_ = 0;
};

}  // namespace

TEST_CASE("10,000 random requests through a small pool: every output exact, no block lost", "[kv][scheduler]") {
  auto cfg = load_config(kModel);
  REQUIRE(cfg.ok());
  // 40 blocks of 64 = 2,560 positions for 16 slots of requests up to 512 positions: the pool
  // runs dry often, so sequences are preempted, and shared prefixes hit the cache.
  ShadowModel model(*cfg, 16, 40, 512);
  SchedulerOptions so;
  so.max_batch_tokens = 96;
  Scheduler s(model, so);
  std::mt19937 rng(2026);
  std::vector<std::vector<int32_t>> prefixes;
  for (int k = 0; k < 6; ++k) {
    std::vector<int32_t> p(size_t(64 + rng() % 200));
    for (int32_t& t : p) t = int32_t(rng() % 1000);
    prefixes.push_back(p);
  }
  std::map<uint64_t, std::vector<int32_t>> want, got;
  std::map<uint64_t, FinishReason> finish;
  std::set<uint64_t> cancelled;
  uint64_t next = 1;
  const uint64_t total = 10000;
  int64_t steps = 0;
  while (next <= total || !s.idle()) {
    while (next <= total && s.waiting() < 24) {
      GenerationRequest r;
      r.id = next++;
      if (rng() % 4 != 0) r.prompt = prefixes[rng() % prefixes.size()];
      for (int64_t k = 1 + rng() % 120; k > 0; --k) r.prompt.push_back(int32_t(rng() % 1000));
      if (rng() % 3 == 0) r.prompt.resize(std::min<size_t>(r.prompt.size(), 1 + rng() % 64));
      r.max_tokens = 1 + rng() % 150;
      r.max_tokens = std::min<int64_t>(r.max_tokens, 512 - int64_t(r.prompt.size()));
      want[r.id] = model.expected(r.prompt, r.max_tokens);
      REQUIRE(s.add(r).ok());
    }
    if (rng() % 400 == 0 && next > 10) {  // now and then a request is cancelled, running or not
      const uint64_t id = next - 1 - rng() % 10;
      s.cancel(id);
      cancelled.insert(id);
    }
    auto events = s.step();
    REQUIRE(events.ok());
    for (const TokenEvent& e : *events) {
      if (e.token >= 0) got[e.request].push_back(e.token);
      if (e.finish != FinishReason::kNone) finish[e.request] = e.finish;
    }
    REQUIRE(++steps < 2000000);
    if (steps % 1000 == 0) REQUIRE(s.pool()->check().ok());
  }
  int64_t checked = 0;
  for (uint64_t id = 1; id <= total; ++id) {
    INFO("request " << id);
    const auto& g = got[id];
    const auto& w = want[id];
    if (cancelled.count(id)) {  // what it got before the cancel is still exact
      REQUIRE(g.size() <= w.size());
      CHECK(std::equal(g.begin(), g.end(), w.begin()));
      continue;
    }
    CHECK(g == w);
    CHECK(finish[id] == FinishReason::kLength);
    ++checked;
  }
  CHECK(checked > 9000);
  const KvBlockPool& pool = *s.pool();
  const Status invariants = pool.check();
  INFO(invariants.to_string());
  CHECK(invariants.ok());
  CHECK(pool.held() == 0);  // every block given back: free, or cached for reuse
  CHECK(pool.available() == pool.n_blocks());
  CHECK(pool.counters().taken > 0);
  const KvStats k = s.kv_stats();
  CHECK(k.preemptions > 100);            // the pool ran dry, and the preempted came back exact
  CHECK(k.cached_prompt_tokens > 64 * 1000);  // prefixes were found cached
  CHECK(pool.counters().evicted > 0);    // and evicted when the pool needed them
  std::printf("kv pool stress: %lld tokens computed, %lld preemptions, %lld of %lld prompt tokens cached, %lld evictions\n",
              (long long)model.tokens(), (long long)k.preemptions, (long long)k.cached_prompt_tokens,
              (long long)k.prompt_tokens, (long long)pool.counters().evicted);
}

namespace {

struct Outcome {
  std::vector<int32_t> ids;
  std::vector<float> logprobs;
  int64_t cached_tokens = -1;
};

// Requests with shared prefixes, greedy and sampled, all with logprobs.
std::vector<GenerationRequest> shared_prefix_requests() {
  std::mt19937 rng(11);
  std::vector<int32_t> system(150), fewshot(70);
  for (int32_t& t : system) t = int32_t(rng() % 1000);
  for (int32_t& t : fewshot) t = int32_t(rng() % 1000);
  std::vector<GenerationRequest> out;
  for (int i = 0; i < 10; ++i) {
    GenerationRequest r;
    r.id = uint64_t(i + 1);
    r.prompt = system;
    if (i % 2) r.prompt.insert(r.prompt.end(), fewshot.begin(), fewshot.end());
    for (int k = 0; k < 3 + i * 7; ++k) r.prompt.push_back(int32_t(rng() % 1000));
    r.max_tokens = 40 + 3 * i;  // crossing into another block as they decode
    SamplingParams sp;
    sp.temperature = i % 3 == 0 ? 0.0f : 0.8f;
    sp.top_logprobs = 2;
    r.sampling = sp;
    r.seed = 1000 + uint64_t(i);
    out.push_back(r);
  }
  return out;
}

std::map<uint64_t, Outcome> serve_all(Executor& ex, const std::vector<GenerationRequest>& requests, bool prefix_cache,
                                      KvStats* stats = nullptr) {
  SchedulerOptions so;
  so.max_batch_tokens = 40;  // prompts in several chunks, beside others' decodes
  so.prefix_cache = prefix_cache;
  Scheduler s(ex, so);
  std::map<uint64_t, Outcome> got;
  // The first request alone, then the rest at once: its prompt blocks are cached by then.
  REQUIRE(s.add(requests[0]).ok());
  for (size_t k = 0; k <= 30 || !s.idle(); ++k) {
    if (k == 30)
      for (size_t i = 1; i < requests.size(); ++i) REQUIRE(s.add(requests[i]).ok());
    auto events = s.step();
    REQUIRE(events.ok());
    for (const TokenEvent& e : *events) {
      if (e.token < 0) continue;
      got[e.request].ids.push_back(e.token);
      got[e.request].logprobs.push_back(*e.logprob);
      if (e.cached_tokens >= 0) got[e.request].cached_tokens = e.cached_tokens;
    }
    REQUIRE(k < 100000);
  }
  if (stats) *stats = s.kv_stats();
  if (s.pool()) {
    CHECK(s.pool()->check().ok());
    CHECK(s.pool()->held() == 0);
  }
  return got;
}

// The expectation: each request alone on a static cache (one slot of its own, no reuse).
std::map<uint64_t, Outcome> each_alone_on_a_static_cache(const std::vector<GenerationRequest>& requests) {
  std::map<uint64_t, Outcome> want;
  for (const auto& r : requests) {
    EngineOptions eo;
    eo.n_slots = 1;
    eo.max_seq_len = 512;
    auto e = Engine::open(kModel, eo);
    REQUIRE(e.ok());
    want[r.id] = serve_all(**e, {r}, false)[r.id];
    REQUIRE(want[r.id].ids.size() == size_t(r.max_tokens));
  }
  return want;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("paged, preempted and prefix-reusing runs give the static cache's tokens and logprobs bit for bit", "[kv][model]") {
  const auto requests = shared_prefix_requests();
  std::map<uint64_t, Outcome> want = each_alone_on_a_static_cache(requests);
  auto check_all = [&](const std::map<uint64_t, Outcome>& got) {
    for (const auto& r : requests) {
      INFO("request " << r.id);
      CHECK(got.at(r.id).ids == want[r.id].ids);
      CHECK(same_bits(got.at(r.id).logprobs, want[r.id].logprobs));
    }
  };
  for (int ranks : {0, 3}) {
    for (DType dtype : {DType::kF32, DType::kBF16, DType::kF8E4M3}) {
      if (dtype != DType::kF32 && ranks == 3) continue;
      for (bool reuse : {false, true}) {
        INFO("ranks " << ranks << ", " << kv_dtype_name(dtype) << (reuse ? ", prefix reuse" : ", no reuse"));
        // 14 blocks of 64 positions for 8 slots of prompts of 153-286 positions: the pool runs dry.
        auto loaded = load_config(kModel);
        REQUIRE(loaded.ok());
        const ModelConfig cfg = *loaded;
        int64_t layers = cfg.n_layers;  // the fullest rank's attention layers
        if (ranks > 1) {
          ClusterOptions probe;
          probe.model_dir = kModel;
          auto c = start_local_cluster(ranks, probe);
          REQUIRE(c.ok());
          layers = 0;
          for (int r = 0; r < ranks; ++r)
            layers = std::max<int64_t>(layers, int64_t((*c)->plan().attn_layers(r).size()));
        }
        const int64_t bytes = 14 * kv_block_bytes(cfg, layers, dtype);
        std::unique_ptr<Executor> ex;
        if (ranks == 0) {
          EngineOptions eo;
          eo.n_slots = 8;
          eo.kv_memory = bytes;
          eo.kv_dtype = dtype;
          auto e = Engine::open(kModel, eo);
          REQUIRE(e.ok());
          ex = std::move(*e);
        } else {
          ClusterOptions co;
          co.model_dir = kModel;
          co.n_slots = 8;
          co.kv_memory = bytes;  // the rank with the most layers holds 14 blocks, as all do
          co.kv_dtype = dtype;
          auto c = start_local_cluster(ranks, co);
          REQUIRE(c.ok());
          ex = std::move(*c);
        }
        REQUIRE(ex->kv_blocks() == 14);
        KvStats stats;
        const auto got = serve_all(*ex, requests, reuse, &stats);
        if (dtype == DType::kF32) {
          check_all(got);
        } else {  // bf16, fp8: the same with or without reuse and preemption, against their own first run
          static std::map<DType, std::map<uint64_t, Outcome>> first;
          if (first[dtype].empty()) first[dtype] = got;
          for (const auto& r : requests) {
            INFO("request " << r.id);
            CHECK(got.at(r.id).ids == first[dtype][r.id].ids);
            CHECK(same_bits(got.at(r.id).logprobs, first[dtype][r.id].logprobs));
          }
        }
        CHECK(stats.preemptions > 0);
        if (reuse) {
          CHECK(stats.cached_prompt_tokens >= 9 * 128);  // the system prompt's two full blocks, nine times
          CHECK(got.at(2).cached_tokens >= 128);
        } else {
          CHECK(stats.cached_prompt_tokens == 0);
        }
      }
    }
  }
}

TEST_CASE("a KV pool as a share of memory (--kv-memory 90%): one host's ranks share its memory, the host with least room sizes the pool", "[kv]") {
  auto cfg = load_config(kModel);
  REQUIRE(cfg.ok());
  // tiny-v3: a position of one layer is the latent (32) and the roped key (16) in float32, 192 bytes;
  // a block of 64 positions over 2 layers 24,576 bytes (24 KiB).
  REQUIRE((cfg->kv_lora_rank + cfg->qk_rope_head_dim) * 4 == 192);
  const int64_t MiB = int64_t(1) << 20, GiB = int64_t(1) << 30;
  auto room = [](int rank, std::string host, int64_t cap, int64_t weights, int64_t layers) {
    KvRoom r;
    r.rank = rank;
    r.host = std::move(host);
    r.capacity_bytes = cap;
    r.weight_bytes = weights;
    r.workspace_bytes = 100 * (int64_t(1) << 20);
    r.layers = layers;
    return r;
  };
  // Host a: 8 GiB, the coordinator (no layers) and rank 1 (1 GiB, 2 layers): 8 GiB - 1 GiB - 200 MiB
  // = 6968 MiB left, half of it 3484 MiB = 148,650.7 blocks of 24 KiB. Host b: 4 GiB, rank 2
  // (3 GiB, 2 layers): 924 MiB left, half 462 MiB = 19,712 blocks exactly. The pool: the least, 19,712.
  std::vector<KvRoom> two_hosts = {room(0, "a", 8 * GiB, 0, 0), room(1, "a", 8 * GiB, GiB, 2), room(2, "b", 4 * GiB, 3 * GiB, 2)};
  auto blocks = kv_pool_blocks_of_fraction(*cfg, two_hosts, 0.5, DType::kF32);
  REQUIRE(blocks.ok());
  CHECK(*blocks == 19712);
  // bf16 halves a block: twice the blocks.
  blocks = kv_pool_blocks_of_fraction(*cfg, two_hosts, 0.5, DType::kBF16);
  REQUIRE(blocks.ok());
  CHECK(*blocks == 2 * 19712);
  // All three on host a (8 GiB): 8 GiB - 4 GiB - 300 MiB = 3796 MiB left, half 1898 MiB, over
  // blocks of 4 layers (48 KiB): 40,490.7 -> 40,490, not what each rank would get alone.
  std::vector<KvRoom> one_host = two_hosts;
  one_host[2].host = "a";
  one_host[2].capacity_bytes = 8 * GiB;
  blocks = kv_pool_blocks_of_fraction(*cfg, one_host, 0.5, DType::kF32);
  REQUIRE(blocks.ok());
  CHECK(*blocks == 40490);
  // No room on host b: weights over its memory.
  std::vector<KvRoom> full = two_hosts;
  full[2].weight_bytes = 4 * GiB;
  auto err = kv_pool_blocks_of_fraction(*cfg, full, 0.9, DType::kF32);
  REQUIRE(!err.ok());
  CHECK_THAT(err.status().message(), Catch::Contains("host b (rank 2)") && Catch::Contains("no room left"));
  // Room, but not for one block: 10,000 bytes left on b.
  full[2].weight_bytes = 4 * GiB - 100 * MiB - 10000;
  err = kv_pool_blocks_of_fraction(*cfg, full, 1.0, DType::kF32);
  REQUIRE(!err.ok());
  CHECK_THAT(err.status().message(), Catch::Contains("host b (rank 2)") && Catch::Contains("100% of the") &&
                                         Catch::Contains("cannot hold one block of 64 positions (24576 bytes"));
  for (double bad : {0.0, -0.5, 1.5}) CHECK(!kv_pool_blocks_of_fraction(*cfg, two_hosts, bad, DType::kF32).ok());
}

TEST_CASE("a KV pool as a share of memory over local ranks: the pool the memory allows, every token the static cache's", "[kv][model]") {
  const auto requests = shared_prefix_requests();
  std::map<uint64_t, Outcome> want = each_alone_on_a_static_cache(requests);
  auto cfg = load_config(kModel);
  REQUIRE(cfg.ok());
  const int64_t slots = 8;
  const int64_t workspace = cluster::cpu_workspace_bytes(*cfg, 512, slots);  // per rank, as shoal plan counts it
  const int64_t block = 64 * cfg->n_layers * (cfg->kv_lora_rank + cfg->qk_rope_head_dim) * 4;  // all layers, one host
  for (int ranks : {1, 3}) {
    INFO(ranks << " rank(s) on this host");
    ClusterOptions probe;  // the weights each rank loads
    probe.model_dir = kModel;
    auto p = start_local_cluster(ranks, probe);
    REQUIRE(p.ok());
    int64_t weights = 0;
    for (const auto& l : (*p)->loaded()) weights += l.weight_bytes();
    p->reset();
    // A host whose memory leaves room for 14.5 blocks at half: the pool takes 14 (the pool runs dry).
    const int64_t cap = weights + ranks * workspace + 29 * block;
    ::setenv("SHOAL_TEST_MEMORY_BYTES", std::to_string(cap).c_str(), 1);
    ClusterOptions co;
    co.model_dir = kModel;
    co.n_slots = slots;
    co.kv_memory_fraction = 0.5;
    auto c = start_local_cluster(ranks, co);
    ::unsetenv("SHOAL_TEST_MEMORY_BYTES");
    REQUIRE(c.ok());
    CHECK((*c)->kv_blocks() == 14);
    CHECK((*c)->max_seq_len() == std::min<int64_t>(cfg->max_position_embeddings, 14 * 64));  // 512: the model's
    for (const auto& l : (*c)->loaded()) CHECK(l.memory_capacity_bytes() == cap);
    KvStats stats;
    const auto got = serve_all(**c, requests, true, &stats);
    CHECK(stats.preemptions > 0);
    for (const auto& r : requests) {
      INFO("request " << r.id);
      CHECK(got.at(r.id).ids == want[r.id].ids);
      CHECK(same_bits(got.at(r.id).logprobs, want[r.id].logprobs));
    }
  }
  // Too little memory: the error names the host and what took it, and nothing starts.
  ::setenv("SHOAL_TEST_MEMORY_BYTES", "1000000", 1);
  ClusterOptions co;
  co.model_dir = kModel;
  co.kv_memory_fraction = 0.9;
  auto c = start_local_cluster(3, co);
  ::unsetenv("SHOAL_TEST_MEMORY_BYTES");
  REQUIRE(!c.ok());
  CHECK_THAT(c.status().message(), Catch::Contains("ranks 0, 1, 2") && Catch::Contains("no room left for a KV pool"));
}

TEST_CASE("bad KV inputs: a pool too small, bad table edits, positions past a sequence's blocks, bad flags", "[kv][errors]") {
  auto cfg = load_config(kModel);
  REQUIRE(cfg.ok());
  auto small = kv_pool_blocks(*cfg, cfg->n_layers, 1000, DType::kF32);
  REQUIRE(!small.ok());
  CHECK_THAT(small.status().message(), Catch::Contains("1000 bytes") && Catch::Contains("one block of 64 positions"));

  EngineOptions eo;
  eo.n_slots = 2;
  eo.kv_memory = 4 * kv_block_bytes(*cfg, cfg->n_layers, DType::kF32);  // 4 blocks
  auto e = Engine::open(kModel, eo);
  REQUIRE(e.ok());
  REQUIRE((*e)->kv_blocks() == 4);
  CHECK((*e)->max_seq_len() == 4 * kKvBlockTokens);  // what the pool can hold, under the model's 512
  auto forward = [&](const Batch& b) { return (*e)->forward(b, {b.n_tokens() - 1}); };
  Batch b;
  b.add_sequence(0, 0, {1, 2, 3});
  b.tables.push_back({0, 0, {7}});  // no block 7
  auto r = forward(b);
  REQUIRE(!r.ok());
  CHECK_THAT(r.status().message(), Catch::Contains("KV block 7") && Catch::Contains("pool of 4"));
  b.tables = {{5, 0, {1}}};  // no slot 5
  r = forward(b);
  REQUIRE(!r.ok());
  CHECK_THAT(r.status().message(), Catch::Contains("slot 5"));
  b.tables.clear();  // slot 0 has no blocks yet
  r = forward(b);
  REQUIRE(!r.ok());
  CHECK(r.status().code() == Code::kResourceExhausted);
  CHECK_THAT(r.status().message(), Catch::Contains("slot 0 reaches position 2") && Catch::Contains("hold 0 positions"));
  b.tables = {{0, 0, {2}}};
  CHECK(forward(b).ok());  // now it has one
  Batch more;
  more.add_sequence(0, 3, std::vector<int32_t>(70, 5));  // positions 3..72: past its one block
  r = forward(more);
  REQUIRE(!r.ok());
  CHECK_THAT(r.status().message(), Catch::Contains("reaches position 72") && Catch::Contains("hold 64 positions"));

  EngineOptions fixed;  // a static cache takes no edits
  auto f = Engine::open(kModel, fixed);
  REQUIRE(f.ok());
  b.tables = {{0, 0, {0}}};
  auto rf = (*f)->forward(b, {2});
  REQUIRE(!rf.ok());
  CHECK_THAT(rf.status().message(), Catch::Contains("not paged"));

  // The flags, through the binary: a size that is not one, a dtype that is not offered.
  for (const char* flags : {"--kv-memory 12QB", "--kv-memory -5", "--kv-dtype fp16", "--kv-memory 100", "--kv-memory 150%",
                            "--kv-memory 0%", "--kv-memory -3%", "--kv-memory 5%%"}) {
    INFO(flags);
    int status = -1;
    const std::string out = shoal::test::run_command(std::string(SHOAL_BINARY) + " run --model " + kModel +
                                                         " --ids '0 1 2' --max-tokens 2 " + flags + " 2>&1",
                                                     &status);
    INFO(out);
    CHECK(status != 0);
    CHECK_THAT(out, Catch::Contains("--kv-") || Catch::Contains("KV pool of 100 bytes"));
  }
  // A share through the binary (a 300 MB host): the same tokens as the fixed cache, 50% and 0.5 alike.
  const std::string run = std::string(SHOAL_BINARY) + " run --model " + kModel + " --ids '0 1 2' --max-tokens 6";
  int status = -1;
  auto generated = [](const std::string& out) { return out.substr(0, out.find('\n')); };  // "generated: ids"
  const std::string fixed_out = generated(shoal::test::run_command(run + " 2>/dev/null", &status));
  REQUIRE(status == 0);
  REQUIRE(fixed_out.rfind("generated: ", 0) == 0);
  for (const char* share : {"50%", "0.5"}) {
    INFO(share);
    const std::string out = shoal::test::run_command(
        "SHOAL_TEST_MEMORY_BYTES=300000000 " + run + " --kv-memory " + share + " 2>/dev/null", &status);
    CHECK(status == 0);
    CHECK(generated(out) == fixed_out);
  }
}
