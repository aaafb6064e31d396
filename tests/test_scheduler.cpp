// The continuous-batching scheduler: many requests through few slots, chunked prefill and
// micro-batches in flight give each request exactly the tokens it gets when run alone.
#include <catch2/catch.hpp>

#include <map>
#include <random>

#include "coordinator/engine.h"
#include "coordinator/local_cluster.h"
#include "coordinator/scheduler.h"

using namespace shoal;

namespace {

const std::string kModel = std::string(SHOAL_FIXTURES) + "/tiny-v3-bf16";

std::vector<GenerationRequest> make_requests() {
  std::mt19937 rng(7);
  std::vector<GenerationRequest> out;
  const int lengths[] = {1, 5, 40, 3, 17, 9, 2, 25};
  for (int i = 0; i < 8; ++i) {
    GenerationRequest r;
    r.id = uint64_t(100 + i);
    for (int t = 0; t < lengths[i]; ++t) r.prompt.push_back(int32_t(rng() % 1024));
    r.max_tokens = 2 + i;
    out.push_back(r);
  }
  return out;
}

// Each request alone, one at a time: the expectation.
std::vector<int32_t> alone(const GenerationRequest& r) {
  EngineOptions eo;
  auto e = Engine::open(kModel, eo);
  REQUIRE(e.ok());
  auto g = generate_greedy(**e, {r.prompt}, r.max_tokens, false, false, r.stop_ids);
  REQUIRE(g.ok());
  return g->ids[0];
}

// The single-process Engine (ranks 0) or a cluster of `ranks` local ranks, with `slots` KV slots.
std::unique_ptr<Executor> open_executor(int ranks, int64_t slots) {
  if (ranks == 0) {
    EngineOptions eo;
    eo.n_slots = slots;
    auto e = Engine::open(kModel, eo);
    REQUIRE(e.ok());
    return std::move(*e);
  }
  ClusterOptions co;
  co.model_dir = kModel;
  co.n_slots = slots;
  auto c = start_local_cluster(ranks, co);
  REQUIRE(c.ok());
  return std::move(*c);
}

struct Outcome {
  std::vector<int32_t> ids;
  FinishReason finish = FinishReason::kNone;
};

std::map<uint64_t, Outcome> run_all(Scheduler& s, int64_t max_steps = 10000) {
  std::map<uint64_t, Outcome> out;
  for (int64_t k = 0; k < max_steps && !s.idle(); ++k) {
    auto events = s.step();
    REQUIRE(events.ok());
    for (const TokenEvent& e : *events) {
      if (e.token >= 0) out[e.request].ids.push_back(e.token);
      if (e.finish != FinishReason::kNone) out[e.request].finish = e.finish;
    }
  }
  REQUIRE(s.idle());
  return out;
}

}  // namespace

TEST_CASE("continuous batching equals each request run alone", "[scheduler]") {
  std::vector<GenerationRequest> requests = make_requests();
  std::map<uint64_t, std::vector<int32_t>> want;
  for (const auto& r : requests) want[r.id] = alone(r);
  // A stop id: request 103 stops at its third token.
  requests[3].stop_ids = {want[103][2]};
  requests[3].max_tokens = 20;
  want[103] = alone(requests[3]);
  REQUIRE(want[103].size() <= 3);

  for (int ranks : {0, 1, 3}) {  // 0: the single-process Engine
    INFO("ranks " << ranks);
    std::unique_ptr<Executor> ex = open_executor(ranks, 3);
    SchedulerOptions so;
    so.max_batch_tokens = 8;  // the 40-token prompt takes five chunks
    Scheduler s(*ex, so);
    for (const auto& r : requests) REQUIRE(s.add(r).ok());
    CHECK(s.waiting() == requests.size());
    const auto got = run_all(s);
    for (const auto& r : requests) {
      INFO("request " << r.id);
      CHECK(got.at(r.id).ids == want[r.id]);
      CHECK(got.at(r.id).finish == (r.id == 103 ? FinishReason::kStop : FinishReason::kLength));
    }
  }
}

TEST_CASE("a request that can never fit is refused with the numbers, cancel frees a slot", "[scheduler]") {
  EngineOptions eo;
  eo.n_slots = 1;
  eo.max_seq_len = 64;
  auto e = Engine::open(kModel, eo);
  REQUIRE(e.ok());
  Scheduler s(**e);
  GenerationRequest big{1, std::vector<int32_t>(60, 5), 10, {}};
  const Status st = s.add(big);
  CHECK(st.code() == Code::kResourceExhausted);
  CHECK_THAT(st.message(), Catch::Contains("70 positions") && Catch::Contains("prompt 60 + max_tokens 10") &&
                               Catch::Contains("holds 64"));
  CHECK(s.add({2, {}, 4, {}}).code() == Code::kInvalidArgument);

  // One slot: the second request waits until the first is cancelled.
  std::vector<GenerationRequest> requests = make_requests();
  requests[0].max_tokens = 50;
  REQUIRE(s.add(requests[0]).ok());
  REQUIRE(s.add(requests[1]).ok());
  auto first = s.step();
  REQUIRE(first.ok());
  CHECK(s.running() == 1);
  CHECK(s.waiting() == 1);
  s.cancel(requests[0].id);
  const auto got = run_all(s);
  CHECK(got.at(requests[1].id).ids == alone(requests[1]));
  // Its next micro-batch was already in flight: it ends with no token, as cancelled.
  CHECK(got.at(requests[0].id).ids.empty());
  CHECK(got.at(requests[0].id).finish == FinishReason::kCancelled);
  CHECK(s.add(requests[1]).ok());     // its id is free again once finished
}

namespace {

struct Sampled {
  std::vector<int32_t> ids;
  std::vector<float> logprobs;
  std::vector<std::vector<TokenLogprob>> tops;
};

// The expectation for a sampled request: run alone on one process, the full logits of each
// step fed to sample() with the request's history, seed and step.
Sampled sampled_alone(const GenerationRequest& r) {
  EngineOptions eo;
  eo.n_slots = 1;
  auto e = Engine::open(kModel, eo);
  REQUIRE(e.ok());
  Sampled out;
  std::vector<int32_t> history = r.prompt;
  std::vector<int32_t> feed = r.prompt;
  int32_t pos = 0;
  for (int64_t step = 0; step < r.max_tokens; ++step) {
    Batch b;
    b.add_sequence(0, pos, feed);
    pos += int32_t(feed.size());
    REQUIRE((*e)->submit(b, {b.n_tokens() - 1}, /*want_logits=*/true).ok());
    auto res = (*e)->next_result();
    REQUIRE(res.ok());
    const SampleResult s = sample(res->logits, *r.sampling, history, r.prompt.size(), r.seed, step);
    out.ids.push_back(s.id);
    if (s.logprob) out.logprobs.push_back(*s.logprob);
    out.tops.push_back(s.top);
    history.push_back(s.id);
    feed = {s.id};
  }
  return out;
}

}  // namespace

TEST_CASE("the head samples each request as it would alone, on one process and over ranks", "[scheduler][sampling]") {
  std::vector<GenerationRequest> requests = make_requests();
  for (auto& r : requests) r.max_tokens = 6;
  // Mixed: greedy rows (no sampling), plain temperature, truncations, penalties (the history
  // travels), logprobs, an explicit seed and a caller's seed.
  SamplingParams hot;
  hot.temperature = 1.5f;
  requests[0].sampling = hot;
  requests[0].seed = 11;
  SamplingParams nucleus = hot;
  nucleus.top_p = 0.9f;
  nucleus.top_k = 50;
  nucleus.min_p = 0.01f;
  nucleus.top_logprobs = 3;
  nucleus.seed = 1234;
  requests[2].sampling = nucleus;
  SamplingParams penal = hot;
  penal.repetition_penalty = 1.3f;
  penal.presence_penalty = 0.5f;
  penal.frequency_penalty = 0.7f;
  penal.top_logprobs = 0;
  requests[4].sampling = penal;
  requests[4].seed = 99;
  SamplingParams greedy_lp;
  greedy_lp.temperature = 0.0f;
  greedy_lp.top_logprobs = 5;
  requests[5].sampling = greedy_lp;

  std::map<uint64_t, Sampled> want;
  for (const auto& r : requests)
    if (r.sampling) want[r.id] = sampled_alone(r);
  // The sampled requests differ from greedy (the draws are real draws).
  CHECK(want[requests[0].id].ids != alone(requests[0]));

  for (int ranks : {0, 3}) {
    INFO("ranks " << ranks);
    std::unique_ptr<Executor> ex = open_executor(ranks, 3);
    SchedulerOptions so;
    so.max_batch_tokens = 8;
    Scheduler s(*ex, so);
    for (const auto& r : requests) REQUIRE(s.add(r).ok());
    std::map<uint64_t, Sampled> got;
    for (int k = 0; k < 10000 && !s.idle(); ++k) {
      auto events = s.step();
      REQUIRE(events.ok());
      for (const TokenEvent& e : *events) {
        if (e.token < 0) continue;
        got[e.request].ids.push_back(e.token);
        if (e.logprob) got[e.request].logprobs.push_back(*e.logprob);
        got[e.request].tops.push_back(e.top);
      }
    }
    REQUIRE(s.idle());
    for (const auto& r : requests) {
      INFO("request " << r.id);
      if (!r.sampling) {
        CHECK(got[r.id].ids == alone(r));
        CHECK(got[r.id].logprobs.empty());
        continue;
      }
      const Sampled& w = want[r.id];
      CHECK(got[r.id].ids == w.ids);
      REQUIRE(got[r.id].logprobs.size() == w.logprobs.size());
      CHECK(w.logprobs.size() == (r.sampling->top_logprobs >= 0 ? w.ids.size() : 0));
      for (size_t i = 0; i < w.logprobs.size(); ++i) {
        CHECK(got[r.id].logprobs[i] == Approx(w.logprobs[i]).margin(1e-6));
        REQUIRE(got[r.id].tops[i].size() == w.tops[i].size());
        CHECK(w.tops[i].size() == size_t(std::max(0, r.sampling->top_logprobs)));
        for (size_t k = 0; k < w.tops[i].size(); ++k) CHECK(got[r.id].tops[i][k].id == w.tops[i][k].id);
      }
    }
  }
}

namespace {

// Allows, at step k, only the ids with id % 7 == k % 7 (the stop ids too from step 2 on);
// finished after `length` tokens.
class ModuloConstraint : public TokenConstraint {
 public:
  ModuloConstraint(int64_t vocab, int length) : vocab_(vocab), length_(length) {}
  void allowed(std::vector<uint64_t>& mask, bool& may_end) override {
    mask.assign(size_t((vocab_ + 63) / 64), 0);
    for (int64_t id = 0; id < vocab_; ++id)
      if (id % 7 == step_ % 7) mask[size_t(id >> 6)] |= uint64_t(1) << (id & 63);
    may_end = step_ >= 2;
  }
  bool accept(int32_t token) override {
    if (token % 7 != step_ % 7) return false;
    ++step_;
    return true;
  }
  bool finished() const override { return step_ >= length_; }
  std::shared_ptr<TokenConstraint> fresh() const override { return std::make_shared<ModuloConstraint>(vocab_, length_); }

 private:
  int64_t vocab_;
  int length_;
  int step_ = 0;
};

// The expectation, from the logits alone: at each step the best id with id % 7 == k % 7.
std::vector<int32_t> constrained_alone(const std::vector<int32_t>& prompt, int length) {
  EngineOptions eo;
  auto e = Engine::open(kModel, eo);
  REQUIRE(e.ok());
  std::vector<int32_t> seq = prompt, out;
  for (int k = 0; k < length; ++k) {
    auto g = generate_greedy(**e, {seq}, 1, /*want_prompt_logits=*/true, false);
    REQUIRE(g.ok());
    const std::vector<float>& last = g->prompt_logits[0].back();
    int32_t best = -1;
    for (int32_t id = k % 7; id < int32_t(last.size()); id += 7)
      if (best < 0 || last[size_t(id)] > last[size_t(best)]) best = id;
    out.push_back(best);
    seq.push_back(best);
  }
  return out;
}

}  // namespace

TEST_CASE("a constrained request gets the best allowed token at every step; its neighbours are untouched",
          "[scheduler][constraint]") {
  std::vector<GenerationRequest> requests = make_requests();
  std::map<uint64_t, std::vector<int32_t>> want;
  for (const auto& r : requests) want[r.id] = alone(r);
  want[101] = constrained_alone(requests[1].prompt, 4);
  want[104] = constrained_alone(requests[4].prompt, 6);
  for (int ranks : {0, 3}) {
    INFO("ranks " << ranks);
    std::unique_ptr<Executor> ex = open_executor(ranks, 3);
    const int64_t vocab = ex->config().vocab_size;
    requests[1].constraint = std::make_shared<ModuloConstraint>(vocab, 4);
    requests[1].max_tokens = 20;
    requests[4].constraint = std::make_shared<ModuloConstraint>(vocab, 6);
    requests[4].sampling = SamplingParams{};
    requests[4].sampling->temperature = 0.0f;  // greedy through sample(): the same argmax
    requests[4].max_tokens = 20;
    SchedulerOptions so;
    so.max_batch_tokens = 8;
    Scheduler s(*ex, so);
    for (const auto& r : requests) REQUIRE(s.add(r).ok());
    const auto got = run_all(s);
    for (const auto& r : requests) {
      INFO("request " << r.id);
      CHECK(got.at(r.id).ids == want[r.id]);
      // The constrained ones end when their constraint is finished, before max_tokens.
      CHECK(got.at(r.id).finish == (r.constraint ? FinishReason::kStop : FinishReason::kLength));
    }
  }
}

namespace {

// An executor that passes everything on to another; the test wrappers below watch some of it.
class Forwarding : public Executor {
 public:
  explicit Forwarding(Executor& inner) : in_(inner) {}
  const ModelConfig& config() const override { return in_.config(); }
  int64_t max_seq_len() const override { return in_.max_seq_len(); }
  int64_t n_slots() const override { return in_.n_slots(); }
  int64_t pipeline_depth() const override { return in_.pipeline_depth(); }
  StatusOr<uint64_t> submit(const Batch& b, const std::vector<int64_t>& rows, bool want_logits,
                            const std::vector<RowSampler>& samplers) override {
    return in_.submit(b, rows, want_logits, samplers);
  }
  StatusOr<StepResult> next_result() override { return in_.next_result(); }

 protected:
  Executor& in_;
};

// Counts the token rows and KV copies the scheduler submits, and passes everything on.
class Counting : public Forwarding {
 public:
  using Forwarding::Forwarding;
  StatusOr<uint64_t> submit(const Batch& b, const std::vector<int64_t>& rows, bool want_logits,
                            const std::vector<RowSampler>& samplers) override {
    tokens += b.n_tokens();
    copies += int64_t(b.copies.size());
    return in_.submit(b, rows, want_logits, samplers);
  }
  int64_t tokens = 0, copies = 0;
};

}  // namespace

TEST_CASE("choices that share a prompt prefill it once and each sample as they would alone", "[scheduler][share]") {
  // Request 1 and its choices 2 and 3 (same prompt, their own seeds); request 4 beside them.
  std::vector<GenerationRequest> requests = make_requests();
  GenerationRequest parent = requests[2];  // the 40-token prompt
  parent.id = 1;
  parent.max_tokens = 5;
  parent.sampling = SamplingParams{};
  parent.sampling->temperature = 1.2f;
  parent.sampling->top_logprobs = 2;
  parent.seed = 500;
  std::vector<GenerationRequest> all{parent};
  for (uint64_t c = 1; c < 3; ++c) {
    GenerationRequest choice = parent;
    choice.id = 1 + c;
    choice.seed = parent.seed + c;
    choice.shares_prompt_of = parent.id;
    all.push_back(choice);
  }
  GenerationRequest other = requests[4];
  other.id = 4;
  all.push_back(other);
  std::map<uint64_t, Sampled> want;
  for (const auto& r : all)
    if (r.sampling) want[r.id] = sampled_alone(r);
  const std::vector<int32_t> other_want = alone(other);
  CHECK(want[2].ids != want[1].ids);  // the seeds differ: so do the choices

  for (int ranks : {0, 3}) {
    INFO("ranks " << ranks);
    std::unique_ptr<Executor> ex = open_executor(ranks, 4);
    Counting counting(*ex);
    SchedulerOptions so;
    so.max_batch_tokens = 16;
    Scheduler s(counting, so);
    for (const auto& r : all) REQUIRE(s.add(r).ok());
    std::map<uint64_t, Sampled> got;
    while (!s.idle()) {
      auto events = s.step();
      REQUIRE(events.ok());
      for (const TokenEvent& e : *events) {
        if (e.token < 0) continue;
        got[e.request].ids.push_back(e.token);
        if (e.logprob) got[e.request].logprobs.push_back(*e.logprob);
        got[e.request].tops.push_back(e.top);
      }
    }
    for (uint64_t id : {1, 2, 3}) {
      INFO("request " << id);
      CHECK(got[id].ids == want[id].ids);
      CHECK(got[id].logprobs == want[id].logprobs);
    }
    CHECK(got[4].ids == other_want);
    // The 40-token prompt ran once, each other choice computed only its last token: 40 + 1 + 1
    // prompt rows, plus the other request's prompt, plus one row per decode step.
    const int64_t decodes = (5 - 1) * 3 + int64_t(other.max_tokens) - 1;
    CHECK(counting.copies == 2);
    CHECK(counting.tokens == 40 + 2 + int64_t(other.prompt.size()) + decodes);
  }
}

namespace {

// Records what a pipeline gets: each micro-batch's parts (slot, first position, tokens), how many
// micro-batches are in flight at most, and how many chunks of one slot were in flight at once.
class Recording : public Forwarding {
 public:
  struct Part {
    int32_t slot;
    int64_t begin, count;
  };
  using Forwarding::Forwarding;
  StatusOr<uint64_t> submit(const Batch& b, const std::vector<int64_t>& rows, bool want_logits,
                            const std::vector<RowSampler>& samplers) override {
    std::vector<Part> parts;
    for (const SeqRange& s : b.seqs) {
      parts.push_back({s.slot, b.positions[size_t(s.begin)], s.count});
      most_per_slot = std::max(most_per_slot, ++per_slot[s.slot]);
    }
    batches.push_back(parts);
    most_in_flight = std::max(most_in_flight, ++in_flight);
    auto id = in_.submit(b, rows, want_logits, samplers);
    if (id.ok()) open[*id] = parts;
    return id;
  }
  // Decode chains pass through when `chains` is set (the submit is recorded, not the head's steps).
  bool chains_decode() const override { return chains && in_.chains_decode(); }
  StatusOr<uint64_t> submit_chain(const Batch& b, const std::vector<int64_t>& rows, bool want_logits, int64_t more,
                                  const std::vector<int32_t>& stop_ids) override {
    std::vector<Part> parts;
    for (const SeqRange& s : b.seqs) parts.push_back({s.slot, b.positions[size_t(s.begin)], s.count});
    batches.push_back(parts);
    return in_.submit_chain(b, rows, want_logits, more, stop_ids);
  }
  StatusOr<StepResult> next_result() override {
    auto r = in_.next_result();
    if (r.ok()) {
      --in_flight;
      for (const Part& p : open[r->id]) --per_slot[p.slot];
      open.erase(r->id);
      if (r->continued) ++continued;
    }
    return r;
  }
  std::vector<std::vector<Part>> batches;
  int64_t most_in_flight = 0, most_per_slot = 0, continued = 0;
  bool chains = false;

 private:
  int64_t in_flight = 0;
  std::map<int32_t, int64_t> per_slot;
  std::map<uint64_t, std::vector<Part>> open;
};

}  // namespace

TEST_CASE("prefill micro-batches: 8 per stage of at least 32 tokens, one on one stage", "[scheduler][pipeline]") {
  CHECK(prefill_chunk_tokens(1, 512) == 512);
  CHECK(prefill_chunk_tokens(2, 1024) == 64);   // 16 micro-batches
  CHECK(prefill_chunk_tokens(3, 2048) == 86);   // ceil(2048 / 24)
  CHECK(prefill_chunk_tokens(2, 512) == 32);
  CHECK(prefill_chunk_tokens(8, 512) == 32);    // not below 32 tokens
  CHECK(prefill_chunk_tokens(2, 40) == 32);
  CHECK(prefill_chunk_tokens(2, 40, 5) == 8);   // asked for: no floor
  CHECK(prefill_chunk_tokens(1, 40, 1) == 40);
}

TEST_CASE("generate_greedy over a pipeline: prompts in pieces that follow each other, the same bits",
          "[scheduler][pipeline]") {
  const std::vector<std::vector<int32_t>> prompts = {make_requests()[2].prompt, make_requests()[7].prompt,
                                                     make_requests()[1].prompt};  // 40, 25 and 5 tokens
  std::unique_ptr<Executor> one = open_executor(0, 3);
  auto want = generate_greedy(*one, prompts, 4, true, true);
  REQUIRE(want.ok());
  std::unique_ptr<Executor> ex = open_executor(3, 3);
  REQUIRE(ex->pipeline_depth() >= 2);
  for (int64_t micro_batches : {0, 1, 5, 70}) {
    INFO("micro-batches asked " << micro_batches);
    Recording rec(*ex);
    auto got = generate_greedy(rec, prompts, 4, true, true, {}, {}, {}, micro_batches);
    REQUIRE(got.ok());
    CHECK(got->ids == want->ids);
    CHECK(got->prompt_logits == want->prompt_logits);  // bitwise
    CHECK(got->step_logits == want->step_logits);
    // 70 tokens: one micro-batch when asked, 5 of 14 tokens, 70 of one; by default 8 per stage
    // but not under 32 tokens: 3 of 32, 32 and 6.
    const int64_t chunk = prefill_chunk_tokens(ex->pipeline_depth(), 70, micro_batches);
    const int64_t pieces = (70 + chunk - 1) / chunk;
    int64_t prefill = 0;
    for (size_t k = 0; k < size_t(pieces); ++k) {
      int64_t n = 0;
      for (const auto& p : rec.batches[k]) n += p.count;
      CHECK(n == std::min<int64_t>(chunk, 70 - prefill));
      prefill += n;
    }
    CHECK(prefill == 70);
    if (pieces > 1) CHECK(rec.most_per_slot >= 2);  // a prompt's next piece went while its last was in flight
  }
  SECTION("one prompt alone is cut too") {
    const std::vector<int32_t> prompt = make_requests()[2].prompt;  // 40 tokens: 32 and 8
    auto one_want = generate_greedy(*one, {prompt}, 3, true, false);
    REQUIRE(one_want.ok());
    Recording rec(*ex);
    auto got = generate_greedy(rec, {prompt}, 3, true, false);
    REQUIRE(got.ok());
    CHECK(got->prompt_logits == one_want->prompt_logits);
    CHECK(got->ids == one_want->ids);
    REQUIRE(rec.batches.size() == 2 + 2);  // 2 pieces, then 2 decode steps
    CHECK(rec.batches[0][0].count == 32);
    CHECK(rec.batches[1][0].count == 8);
    CHECK(rec.most_per_slot == 2);
  }
}

TEST_CASE("the scheduler over a pipeline: ready sequences shared among micro-batches, a prompt's chunks back to back",
          "[scheduler][pipeline]") {
  std::unique_ptr<Executor> ex = open_executor(3, 8);
  const int64_t depth = ex->pipeline_depth();
  REQUIRE(depth >= 2);
  SECTION("prompts in chunks of 32 tokens, the next behind the last, each request's tokens as alone") {
    std::vector<GenerationRequest> requests = make_requests();
    std::map<uint64_t, std::vector<int32_t>> want;
    for (const auto& r : requests) want[r.id] = alone(r);
    Recording rec(*ex);
    SchedulerOptions so;
    so.max_batch_tokens = 64;
    REQUIRE(prefill_chunk_tokens(depth, so.max_batch_tokens) == 32);
    Scheduler s(rec, so);
    for (const auto& r : requests) REQUIRE(s.add(r).ok());
    const auto got = run_all(s);
    for (const auto& r : requests) {
      INFO("request " << r.id);
      CHECK(got.at(r.id).ids == want[r.id]);
    }
    CHECK(rec.most_in_flight == depth);
    CHECK(rec.most_per_slot >= 2);  // the 40-token prompt's second chunk went behind its first
    for (const auto& batch : rec.batches) {
      int64_t tokens = 0;
      for (const auto& p : batch) tokens += p.count;
      CHECK(tokens <= 32 + int64_t(batch.size()));  // prompt chunks up to 32, and decodes
    }
  }
  SECTION("8 sequences decoding: each micro-batch its share") {
    const int64_t share = (8 + depth - 1) / depth;
    Recording rec(*ex);
    Scheduler s(rec);
    for (int i = 0; i < 8; ++i) {
      GenerationRequest r;
      r.id = uint64_t(i + 1);
      r.prompt = {int32_t(10 + i)};
      r.max_tokens = 4;
      REQUIRE(s.add(r).ok());
    }
    run_all(s);
    REQUIRE(rec.batches.size() >= size_t(depth));
    size_t first = 0;
    for (size_t k = 0; k < size_t(depth); ++k) first += rec.batches[k].size();
    CHECK(first == 8);  // the first micro-batches take all 8, shared
    for (const auto& batch : rec.batches) CHECK(int64_t(batch.size()) <= share);
    CHECK(rec.most_in_flight == depth);
  }
}

TEST_CASE("decode chains: the head sends each next step to the embedding rank, the same bits and stops",
          "[scheduler][pipeline][chain]") {
  const std::vector<std::vector<int32_t>> prompts = {make_requests()[2].prompt, make_requests()[7].prompt,
                                                     make_requests()[1].prompt};
  std::unique_ptr<Executor> one = open_executor(0, 3);
  auto want = generate_greedy(*one, prompts, 6, false, true);
  REQUIRE(want.ok());
  // A stop id: the second prompt's third token ends it there (the others go on).
  const std::vector<int32_t> stop = {want->ids[1][2]};
  auto want_stop = generate_greedy(*one, prompts, 6, false, true, stop);
  REQUIRE(want_stop.ok());
  REQUIRE(want_stop->ids[1].size() == 3);
  std::unique_ptr<Executor> ex = open_executor(3, 3);
  REQUIRE(ex->chains_decode());
  const int64_t depth = ex->pipeline_depth(), groups = std::min<int64_t>(depth, 3);
  for (bool with_stop : {false, true}) {
    INFO("stop id " << with_stop);
    Recording rec(*ex);
    rec.chains = true;
    auto got = generate_greedy(rec, prompts, 6, false, true, with_stop ? stop : std::vector<int32_t>{});
    REQUIRE(got.ok());
    const GreedyResult& w = with_stop ? *want_stop : *want;
    CHECK(got->ids == w.ids);
    CHECK(got->step_logits == w.step_logits);  // bitwise
    // The coordinator sent the prompts' pieces and one decode step per group; the head the rest.
    const int64_t pieces = (70 + prefill_chunk_tokens(depth, 70) - 1) / prefill_chunk_tokens(depth, 70);
    CHECK(int64_t(rec.batches.size()) == pieces + groups);
    CHECK(rec.continued > 0);
  }
  // A chain past the context, or with rows that are not each sequence's last token, is refused.
  Batch b;
  b.add_sequence(0, 5, {7});
  CHECK(ex->submit_chain(b, {0}, false, ex->max_seq_len(), {}).status().code() == Code::kInvalidArgument);
  CHECK(ex->submit_chain(b, {0, 1}, false, 2, {}).status().code() == Code::kInvalidArgument);
  CHECK(ex->submit_chain(b, {0}, false, -1, {}).status().code() == Code::kInvalidArgument);
}
