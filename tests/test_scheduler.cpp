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
    std::unique_ptr<Executor> ex;
    if (ranks == 0) {
      EngineOptions eo;
      eo.n_slots = 3;
      auto e = Engine::open(kModel, eo);
      REQUIRE(e.ok());
      ex = std::move(*e);
    } else {
      ClusterOptions co;
      co.model_dir = kModel;
      co.n_slots = 3;
      auto c = start_local_cluster(ranks, co);
      REQUIRE(c.ok());
      ex = std::move(*c);
    }
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
