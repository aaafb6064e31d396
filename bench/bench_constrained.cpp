// What constrained decoding (response_format, forced tool calls) costs, at DeepSeek's vocabulary.
//   bench_constrained [--tokenizer DIR] [--model DIR] [--sequences N] [--tokens N] [--rounds N]
// 1. The mask alone: a realistic answer for an extraction schema (and for json_object), written
//    by the tokenizer, replayed token by token; each step asks for the allowed tokens and takes
//    one. Mean microseconds per step, cold (a fresh grammar: every state's mask computed) and
//    warm (the same grammar again: what a batch job repeating the schema sees).
// 2. With --model (a checkpoint whose vocabulary is the tokenizer's, e.g. dist-2048 synthesized
//    with vocab_size 129280): decode tokens/s of N sequences through the scheduler, greedy,
//    unconstrained and constrained by the schema (a fresh grammar each round), interleaved,
//    median of the rounds.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "coordinator/engine.h"
#include "coordinator/scheduler.h"
#include "serve/grammar_constraint.h"
#include "text/grammar/output_grammar.h"
#include "text/tokenizer/tokenizer.h"

using namespace shoal;
using Clock = std::chrono::steady_clock;

namespace {

const char* kSchema = R"({
  "type": "object",
  "properties": {
    "title": {"type": "string"},
    "authors": {"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string"}, "affiliation": {"type": "string"}}, "required": ["name", "affiliation"]},
      "minItems": 1, "maxItems": 8},
    "year": {"type": "integer"},
    "venue": {"enum": ["NeurIPS", "ICML", "ICLR", "ACL", "other"]},
    "open_access": {"type": "boolean"},
    "summary": {"type": "string"},
    "keywords": {"type": "array", "items": {"type": "string"}, "maxItems": 10}
  },
  "required": ["title", "authors", "year", "venue", "open_access", "summary", "keywords"],
  "additionalProperties": false
})";

const char* kAnswer = R"({"title": "DeepSeek-V3 Technical Report", "authors": [{"name": "DeepSeek-AI", "affiliation": "DeepSeek, Hangzhou"}, {"name": "张三", "affiliation": "北京大学"}], "year": 2024, "venue": "other", "open_access": true, "summary": "A 671B-parameter Mixture-of-Experts language model with 37B activated per token, trained on 14.8T tokens with FP8 mixed precision; multi-head latent attention, auxiliary-loss-free load balancing and multi-token prediction.\nIt matches leading closed models on many benchmarks.", "keywords": ["MoE", "MLA", "FP8", "长上下文"]})";

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Replays `answer` through a matcher of `compiled`: mean seconds per step of allowed() + accept.
double replay(const std::shared_ptr<CompiledGrammar>& compiled, const std::vector<int32_t>& ids, bool& ok) {
  GrammarMatcher m(compiled);
  const auto t0 = Clock::now();
  ok = true;
  for (int32_t id : ids) {
    const TokenMask& mask = m.allowed();
    ok = ok && mask_has(mask, id) && m.accept_token(id);
  }
  ok = ok && m.accepting();
  return std::chrono::duration<double>(Clock::now() - t0).count() / double(ids.size());
}

}  // namespace

int main(int argc, char** argv) {
  std::string tok_dir = SHOAL_FIXTURES "/tokenizer-deepseek-v3", model;
  int64_t sequences = 1, tokens = 64, rounds = 3, vocab = 129280;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--tokenizer")) tok_dir = argv[i + 1];
    else if (!std::strcmp(argv[i], "--model")) model = argv[i + 1];
    else if (!std::strcmp(argv[i], "--sequences")) sequences = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--tokens")) tokens = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--rounds")) rounds = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--vocab")) vocab = std::stoll(argv[i + 1]);
  }
  auto tok = Tokenizer::load(tok_dir);
  if (!tok.ok()) return std::fprintf(stderr, "%s\n", tok.status().to_string().c_str()), 1;
  (*tok)->set_vocab_limit(vocab);
  auto t0 = Clock::now();
  OutputGrammars grammars(**tok);
  std::printf("vocabulary %lld tokens, trie of %zu nodes built in %.0f ms\n", (long long)grammars.vocab().size(),
              grammars.vocab().nodes().size(), std::chrono::duration<double, std::milli>(Clock::now() - t0).count());

  OutputSpec schema_spec;
  schema_spec.format = OutputSpec::Format::kJsonSchema;
  schema_spec.schema = nlohmann::ordered_json::parse(kSchema);
  OutputSpec object_spec;
  object_spec.format = OutputSpec::Format::kJsonObject;
  const std::vector<int32_t> ids = (*tok)->encode(kAnswer, false);
  for (auto [name, spec] : {std::pair{"json_schema", &schema_spec}, std::pair{"json_object", &object_spec}}) {
    std::vector<double> cold, warm;
    bool ok = true;
    for (int64_t r = 0; r < rounds; ++r) {
      OutputGrammars fresh(**tok);
      t0 = Clock::now();
      auto compiled = fresh.get(*spec);
      if (!compiled.ok()) return std::fprintf(stderr, "%s\n", compiled.status().to_string().c_str()), 1;
      const double compile = std::chrono::duration<double>(Clock::now() - t0).count();
      bool a = true, b = true;
      cold.push_back(replay(*compiled, ids, a) + compile / double(ids.size()));
      warm.push_back(replay(*compiled, ids, b));
      ok = ok && a && b;
    }
    std::printf("%s: %zu tokens, %s; per step: cold %.1f us (compile included), warm %.1f us (median of %lld)\n", name,
                ids.size(), ok ? "accepted" : "NOT ACCEPTED", median(cold) * 1e6, median(warm) * 1e6, (long long)rounds);
  }
  if (model.empty()) return 0;

  EngineOptions eo;
  eo.n_slots = sequences;
  auto engine = Engine::open(model, eo);
  if (!engine.ok()) return std::fprintf(stderr, "%s\n", engine.status().to_string().c_str()), 1;
  Executor& ex = **engine;
  if (ex.config().vocab_size != vocab)
    return std::fprintf(stderr, "the model's vocabulary is %lld, not %lld\n", (long long)ex.config().vocab_size,
                        (long long)vocab), 1;
  // One timed generation: N prompts of 16 random tokens, `tokens` greedy tokens each (no stop).
  auto run = [&](bool constrained, uint64_t seed) -> double {
    SchedulerOptions so;
    Scheduler s(ex, so);
    OutputGrammars fresh(**tok);
    auto compiled = fresh.get(schema_spec);
    for (int64_t q = 0; q < sequences; ++q) {
      GenerationRequest r;
      r.id = uint64_t(q + 1);
      for (int k = 0; k < 16; ++k) r.prompt.push_back(int32_t((seed * 7919 + uint64_t(q * 31 + k) * 104729) % 100000));
      r.max_tokens = tokens;
      if (constrained) r.constraint = std::make_shared<GrammarConstraint>(*compiled);
      if (!s.add(r).ok()) std::abort();
    }
    int64_t generated = 0;
    Clock::time_point first{};
    while (!s.idle()) {
      auto ev = s.step();
      if (!ev.ok()) std::abort();
      for (const TokenEvent& e : *ev)
        if (e.token >= 0 && ++generated == sequences) first = Clock::now();  // prefill done
    }
    return double(generated - sequences) / std::chrono::duration<double>(Clock::now() - first).count();
  };
  run(false, 99);  // warm: weights resident, threads started
  std::vector<double> plain, constrained;
  for (int64_t r = 0; r < rounds; ++r) {
    plain.push_back(run(false, uint64_t(r)));
    constrained.push_back(run(true, uint64_t(r)));
  }
  std::printf("decode, %lld sequence(s) x %lld tokens: unconstrained %.2f tok/s, constrained %.2f tok/s: %.3fx "
              "(median of %lld, interleaved)\n",
              (long long)sequences, (long long)tokens, median(plain), median(constrained),
              median(constrained) / median(plain), (long long)rounds);
  return 0;
}
