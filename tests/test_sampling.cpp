// Sampling on the head rank (node/sampling.h) against expectations computed here:
// distributions written out by hand or computed in double with a full sort, 200,000 seeded
// draws per case against them, penalties by hand, logprobs as a double log-softmax, seeds,
// and validate(). docs/sampling.md defines the semantics checked.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cfloat>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <thread>

#include "node/sampling.h"
#include "node/sampling_wire.h"

using namespace shoal;

namespace {

constexpr size_t kVocab = 129280;  // DeepSeek-V3's
const std::vector<int32_t> kNoHistory;

std::vector<float> random_logits(size_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> z(n);
  for (float& v : z) v = dist(rng);
  return z;
}

// Logits whose softmax is q (up to float rounding of log q).
std::vector<float> logits_of(const std::vector<double>& q) {
  std::vector<float> z;
  for (double v : q) z.push_back(static_cast<float>(std::log(v)));
  return z;
}

std::vector<double> normalised(std::vector<double> w) {
  const double s = std::accumulate(w.begin(), w.end(), 0.0);
  for (double& v : w) v /= s;
  return w;
}

// The documented pipeline after penalties, in double with a full sort: temperature, top_k,
// top_p (renormalised over the top_k set), min_p, renormalise. Returns a probability per id.
std::vector<double> reference(const std::vector<float>& logits, const SamplingParams& p) {
  const size_t n = logits.size();
  std::vector<int32_t> rank(n);
  std::iota(rank.begin(), rank.end(), 0);
  std::sort(rank.begin(), rank.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  std::vector<double> prob(n, 0.0);
  if (p.temperature == 0.0f) {
    prob[rank[0]] = 1.0;
    return prob;
  }
  const double max = logits[rank[0]];
  std::vector<double> w(n);
  for (size_t i = 0; i < n; ++i) w[i] = std::exp((static_cast<double>(logits[i]) - max) / p.temperature);
  size_t len = (p.top_k >= 1 && static_cast<size_t>(p.top_k) < n) ? p.top_k : n;
  if (p.top_p < 1.0f) {
    double mass = 0;
    for (size_t j = 0; j < len; ++j) mass += w[rank[j]];
    double cum = 0;
    for (size_t j = 0; j < len; ++j) {
      cum += w[rank[j]];
      if (cum >= p.top_p * mass) {
        len = j + 1;
        break;
      }
    }
  }
  for (size_t j = 0; j < len; ++j)
    if (w[rank[j]] >= p.min_p * 1.0) prob[rank[j]] = w[rank[j]];
  return normalised(prob);
}

std::vector<double> log_softmax(const std::vector<float>& z) {
  double max = -std::numeric_limits<double>::infinity();
  for (float v : z) max = std::max(max, static_cast<double>(v));
  double s = 0;
  for (float v : z) s += std::exp(v - max);
  std::vector<double> out;
  for (float v : z) out.push_back(v - max - std::log(s));
  return out;
}

// n draws at steps 0..n-1; every token's count within 5 standard deviations of n * prob, and
// exactly 0 for tokens of probability 0.
void check_draws(const std::vector<float>& logits, const SamplingParams& p, const std::vector<double>& expected,
                 uint64_t seed = 12345, int64_t n = 200000) {
  REQUIRE(expected.size() == logits.size());
  std::vector<int64_t> count(logits.size(), 0);
  for (int64_t step = 0; step < n; ++step) {
    const int32_t id = sample(logits, p, kNoHistory, 0, seed, step).id;
    REQUIRE(id >= 0);
    REQUIRE(static_cast<size_t>(id) < logits.size());
    ++count[id];
  }
  for (size_t i = 0; i < logits.size(); ++i) {
    INFO("token " << i << ": expected p=" << expected[i] << ", drawn " << count[i] << " of " << n);
    if (expected[i] == 0.0) {
      CHECK(count[i] == 0);
    } else {
      const double mean = n * expected[i];
      const double sd = std::sqrt(n * expected[i] * (1.0 - expected[i]));
      CHECK(std::abs(count[i] - mean) <= 5.0 * sd);
    }
  }
}

// Six tokens; the id order is not the rank order, and ids 2 and 5 tie.
// rank: 1 (0.30), 3 (0.25), 4 (0.20), 2 (0.10), 5 (0.10), 0 (0.05)
const std::vector<double> kQ = {0.05, 0.30, 0.10, 0.25, 0.20, 0.10};

SamplingParams with(std::initializer_list<std::pair<const char*, double>> kv) {
  SamplingParams p;
  for (const auto& [k, v] : kv) {
    const std::string key = k;
    if (key == "temperature") p.temperature = static_cast<float>(v);
    else if (key == "top_k") p.top_k = static_cast<int32_t>(v);
    else if (key == "top_p") p.top_p = static_cast<float>(v);
    else if (key == "min_p") p.min_p = static_cast<float>(v);
    else FAIL("unknown key " << key);
  }
  return p;
}

}  // namespace

TEST_CASE("the uniform of (seed, step) is flat, below 1 and stateless", "[sampling]") {
  constexpr int kBins = 10, kN = 1000000;
  std::vector<int> bins(kBins, 0);
  double sum = 0;
  for (int64_t step = 0; step < kN; ++step) {
    const double u = sample_uniform(99, step);
    REQUIRE(u >= 0.0);
    REQUIRE(u < 1.0);
    sum += u;
    ++bins[static_cast<int>(u * kBins)];
  }
  CHECK(std::abs(sum / kN - 0.5) < 5 * std::sqrt(1.0 / 12 / kN));
  for (int b = 0; b < kBins; ++b) {
    INFO("bin " << b);
    CHECK(std::abs(bins[b] - kN / kBins) < 5 * std::sqrt(kN * 0.1 * 0.9));
  }
  CHECK(sample_uniform(99, 5) == sample_uniform(99, 5));
  CHECK(sample_uniform(99, 5) != sample_uniform(100, 5));
  CHECK(sample_uniform(99, 5) != sample_uniform(99, 6));
  // Seeds next to each other do not give shifted copies of one stream.
  CHECK(sample_uniform(1, 1) != sample_uniform(2, 0));
}

TEST_CASE("greedy is the argmax, ties to the lowest id, whatever the other knobs", "[sampling]") {
  auto z = random_logits(kVocab, 1, 2.0f);
  const float top = *std::max_element(z.begin(), z.end()) + 1.0f;
  z[100000] = top;
  z[77777] = top;
  z[120000] = top;
  SamplingParams p;
  p.temperature = 0.0f;
  CHECK(sample(z, p, kNoHistory, 0, 1, 0).id == 77777);
  p.top_k = 50;
  p.top_p = 0.3f;
  p.min_p = 0.5f;
  for (int64_t step = 0; step < 20; ++step) CHECK(sample(z, p, kNoHistory, 0, step * 7, step).id == 77777);
  const auto d = sampling_distribution(z, p, kNoHistory, 0);
  REQUIRE(d.size() == 1);
  CHECK(d[0].id == 77777);
  CHECK(d[0].prob == 1.0);

  // A tie at the start and the end of the row.
  std::vector<float> small = {5.0f, 1.0f, 5.0f};
  CHECK(sample(small, p, kNoHistory, 0, 0, 0).id == 0);
  small = {1.0f, 2.0f, 3.0f, 3.0f};
  CHECK(sample(small, p, kNoHistory, 0, 0, 0).id == 2);
  // -inf loses to any finite logit.
  small = {-std::numeric_limits<float>::infinity(), -100.0f};
  CHECK(sample(small, p, kNoHistory, 0, 0, 0).id == 1);
}

TEST_CASE("temperature 0 and a tiny temperature agree on a clear maximum, and top_k 1 is greedy", "[sampling]") {
  const auto z = random_logits(kVocab, 2, 1.5f);
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  const int32_t best = sample(z, greedy, kNoHistory, 0, 0, 0).id;
  CHECK(best == static_cast<int32_t>(std::max_element(z.begin(), z.end()) - z.begin()));

  SamplingParams tiny;
  tiny.temperature = 1e-4f;
  SamplingParams k1;
  k1.top_k = 1;  // temperature 1
  for (int64_t step = 0; step < 200; ++step) {
    CHECK(sample(z, tiny, kNoHistory, 0, 3, step).id == best);
    CHECK(sample(z, k1, kNoHistory, 0, 3, step).id == best);
  }
  // With a tie at the top, top_k = 1 keeps the lower id, as greedy does; a tiny temperature
  // does not choose: the tied tokens are equally likely (documented).
  std::vector<float> tie = {0.0f, 3.0f, 1.0f, 3.0f, 2.0f};
  for (int64_t step = 0; step < 200; ++step) CHECK(sample(tie, k1, kNoHistory, 0, 3, step).id == 1);
  check_draws(tie, tiny, {0, 0.5, 0, 0.5, 0}, 4, 20000);
}

TEST_CASE("draws follow the exact distribution: temperature", "[sampling]") {
  const auto z = logits_of(kQ);
  SECTION("temperature 1 is the softmax") { check_draws(z, SamplingParams{}, kQ); }
  SECTION("temperature 0.5 squares the probabilities") {
    std::vector<double> e;
    for (double q : kQ) e.push_back(q * q);
    check_draws(z, with({{"temperature", 0.5}}), normalised(e));
  }
  SECTION("temperature 2 takes their square roots") {
    std::vector<double> e;
    for (double q : kQ) e.push_back(std::sqrt(q));
    check_draws(z, with({{"temperature", 2.0}}), normalised(e), 777);
  }
  SECTION("a larger top_k than the vocabulary is no top_k") { check_draws(z, with({{"top_k", 100}}), kQ); }
}

TEST_CASE("draws follow the exact distribution: top_k", "[sampling]") {
  const auto z = logits_of(kQ);
  SECTION("top_k 3 keeps 1, 3, 4") {
    check_draws(z, with({{"top_k", 3}}), normalised({0, 0.30, 0, 0.25, 0.20, 0}));
  }
  SECTION("top_k 4 cuts inside the tie of 2 and 5: the lower id stays") {
    check_draws(z, with({{"top_k", 4}}), normalised({0, 0.30, 0.10, 0.25, 0.20, 0}));
  }
}

TEST_CASE("draws follow the exact distribution: top_p keeps the token that crosses p", "[sampling]") {
  const auto z = logits_of(kQ);
  SECTION("0.5: 0.30 < 0.5 <= 0.55") {
    check_draws(z, with({{"top_p", 0.5}}), normalised({0, 0.30, 0, 0.25, 0, 0}));
  }
  SECTION("0.6: 0.55 < 0.6 <= 0.75") {
    check_draws(z, with({{"top_p", 0.6}}), normalised({0, 0.30, 0, 0.25, 0.20, 0}));
  }
  SECTION("0.8: 0.75 < 0.8 <= 0.85, the tie goes to the lower id") {
    check_draws(z, with({{"top_p", 0.8}}), normalised({0, 0.30, 0.10, 0.25, 0.20, 0}));
  }
  SECTION("after top_k, over the renormalised top_k set") {
    // top_k 3: 0.4, 0.333, 0.267; top_p 0.7: 0.4 < 0.7 <= 0.733 keeps two.
    check_draws(z, with({{"top_k", 3}, {"top_p", 0.7}}), normalised({0, 0.30, 0, 0.25, 0, 0}));
  }
}

TEST_CASE("draws follow the exact distribution: min_p", "[sampling]") {
  const auto z = logits_of(kQ);
  SECTION("0.5: p >= 0.15") {
    check_draws(z, with({{"min_p", 0.5}}), normalised({0, 0.30, 0, 0.25, 0.20, 0}));
  }
  SECTION("0.3: p >= 0.09 keeps both tied tokens") {
    check_draws(z, with({{"min_p", 0.3}}), normalised({0, 0.30, 0.10, 0.25, 0.20, 0.10}));
  }
  SECTION("relative to the tempered distribution") {
    // temperature 0.5: w ~ q^2 = 0.09, 0.0625, 0.04, ...; min_p 0.5 keeps w >= 0.045.
    check_draws(z, with({{"temperature", 0.5}, {"min_p", 0.5}}), normalised({0, 0.09, 0, 0.0625, 0, 0}));
  }
  SECTION("1: only the maximum") { check_draws(z, with({{"min_p", 1.0}}), {0, 1, 0, 0, 0, 0}); }
}

TEST_CASE("draws follow the exact distribution: everything at once", "[sampling]") {
  // temperature 0.5 -> q^2/0.215: 1 .419, 3 .291, 4 .186, 2 .047, 5 .047, 0 .012;
  // top_k 5 drops 0; top_p 0.9 over the rest: .424, .718, .906 >= .9 keeps 1, 3, 4;
  // min_p 0.5: w 0.04 < 0.5 * 0.09 drops 4.
  const auto z = logits_of(kQ);
  const auto p = with({{"temperature", 0.5}, {"top_k", 5}, {"top_p", 0.9}, {"min_p", 0.5}});
  const std::vector<double> e = normalised({0, 0.09, 0, 0.0625, 0, 0});
  check_draws(z, p, e);
  const auto d = sampling_distribution(z, p, kNoHistory, 0);
  REQUIRE(d.size() == 2);
  CHECK(d[0].id == 1);
  CHECK(d[1].id == 3);
  CHECK(d[0].prob == Approx(e[1]).epsilon(1e-6));
  CHECK(d[1].prob == Approx(e[3]).epsilon(1e-6));
}

TEST_CASE("the distribution over 129,280 tokens equals a full sort in double", "[sampling]") {
  struct Case {
    const char* name;
    float scale;
    SamplingParams p;
  };
  std::vector<Case> cases = {
      {"plain", 2.0f, with({})},
      {"temperature 1.3", 2.0f, with({{"temperature", 1.3}})},
      {"top_k 50", 2.0f, with({{"top_k", 50}})},
      {"top_k 5000, top_p 0.8", 1.0f, with({{"top_k", 5000}, {"top_p", 0.8}})},
      {"top_p 0.9, nearly flat (most of the vocabulary)", 0.3f, with({{"top_p", 0.9}})},
      {"top_p 0.95, peaked", 4.0f, with({{"top_p", 0.95}, {"temperature", 0.7}})},
      {"top_p 0.5", 1.0f, with({{"top_p", 0.5}})},
      {"min_p 0.01", 2.0f, with({{"min_p", 0.01}})},
      {"all", 2.0f, with({{"temperature", 0.8}, {"top_k", 2000}, {"top_p", 0.9}, {"min_p", 0.001}})},
  };
  // scale 0: every logit equal, so the ranking is by id alone (top_p 0.5 keeps exactly the
  // first half: 64,640 tokens of weight 1 reach 0.5 * 129,280 exactly).
  cases.push_back({"equal logits, top_p 0.5", 0.0f, with({{"top_p", 0.5}})});
  cases.push_back({"equal logits, top_k 1000", 0.0f, with({{"top_k", 1000}})});
  uint32_t seed = 10;
  for (const Case& c : cases) {
    INFO(c.name);
    const auto z = c.scale > 0 ? random_logits(kVocab, seed++, c.scale) : std::vector<float>(kVocab, 0.25f);
    const auto e = reference(z, c.p);
    const auto d = sampling_distribution(z, c.p, kNoHistory, 0);
    size_t nonzero = 0;
    for (double v : e) nonzero += v > 0;
    REQUIRE(d.size() == nonzero);
    double err = 0, total = 0;
    for (size_t j = 0; j < d.size(); ++j) {
      if (j > 0) REQUIRE(d[j - 1].id < d[j].id);
      REQUIRE(e[d[j].id] > 0);
      err = std::max(err, std::abs(d[j].prob - e[d[j].id]) / e[d[j].id]);
      total += d[j].prob;
    }
    CHECK(err < 1e-9);
    if (c.scale == 0) {
      const size_t n = c.p.top_k > 0 ? 1000 : kVocab / 2;
      REQUIRE(d.size() == n);
      CHECK(d.back().id == static_cast<int32_t>(n - 1));
    }
    CHECK(total == Approx(1.0).epsilon(1e-9));
    // Draws stay inside the kept set.
    for (int64_t step = 0; step < 50; ++step) {
      const int32_t id = sample(z, c.p, kNoHistory, 0, 5, step).id;
      CHECK(e[id] > 0);
    }
  }
}

TEST_CASE("logits of -inf are never drawn and have logprob -inf", "[sampling]") {
  const float ninf = -std::numeric_limits<float>::infinity();
  const std::vector<float> z = {ninf, 0.0f, ninf, std::log(3.0f)};
  check_draws(z, SamplingParams{}, {0, 0.25, 0, 0.75}, 8, 20000);
  SamplingParams p;
  p.top_logprobs = 4;
  const auto r = sample(z, p, kNoHistory, 0, 1, 0);
  REQUIRE(r.top.size() == 4);
  CHECK(r.top[2].id == 0);
  CHECK(r.top[3].id == 2);
  CHECK(r.top[3].logprob == ninf);
}

TEST_CASE("penalties change exactly the logits they should", "[sampling]") {
  const std::vector<float> z0 = {1.0f, -2.0f, 0.5f, 3.0f, -0.5f, 0.0f, 2.0f};
  // prompt 0 1 0, output 3 1 3 3 6: output counts 3:3, 1:1, 6:1; token 0 only in the prompt.
  const std::vector<int32_t> history = {0, 1, 0, 3, 1, 3, 3, 6};
  const size_t n_prompt = 3;
  auto penalised = [&](SamplingParams p) {
    std::vector<float> z = z0;
    apply_penalties(z, p, history, n_prompt);
    return z;
  };
  SECTION("repetition over prompt and output: positive / p, negative * p, once per token") {
    SamplingParams p;
    p.repetition_penalty = 2.0f;
    CHECK(penalised(p) == std::vector<float>{0.5f, -4.0f, 0.5f, 1.5f, -0.5f, 0.0f, 1.0f});
    p.repetition_penalty = 0.5f;
    CHECK(penalised(p) == std::vector<float>{2.0f, -1.0f, 0.5f, 6.0f, -0.5f, 0.0f, 4.0f});
  }
  SECTION("frequency: count * penalty over the output only") {
    SamplingParams p;
    p.frequency_penalty = 0.5f;
    CHECK(penalised(p) == std::vector<float>{1.0f, -2.5f, 0.5f, 1.5f, -0.5f, 0.0f, 1.5f});
    p.frequency_penalty = -1.0f;
    CHECK(penalised(p) == std::vector<float>{1.0f, -1.0f, 0.5f, 6.0f, -0.5f, 0.0f, 3.0f});
  }
  SECTION("presence: once per token in the output") {
    SamplingParams p;
    p.presence_penalty = 0.25f;
    CHECK(penalised(p) == std::vector<float>{1.0f, -2.25f, 0.5f, 2.75f, -0.5f, 0.0f, 1.75f});
  }
  SECTION("all three: repetition first, then frequency and presence") {
    SamplingParams p;
    p.repetition_penalty = 2.0f;
    p.frequency_penalty = 0.5f;
    p.presence_penalty = 0.25f;
    const std::vector<float> expected = {0.5f, -4.75f, 0.5f, -0.25f, -0.5f, 0.0f, 0.25f};
    CHECK(penalised(p) == expected);
    // sample() uses them: logprobs are the log-softmax of the penalised logits, and the greedy
    // choice moves from 3 (raw maximum) to 0 (penalised maximum, tied with 2: lower id).
    p.top_logprobs = 7;
    p.temperature = 0.0f;
    const auto r = sample(z0, p, history, n_prompt, 0, 5);
    CHECK(r.id == 0);
    const auto lp = log_softmax(expected);
    REQUIRE(r.top.size() == 7);
    for (const auto& t : r.top) CHECK(std::abs(t.logprob - lp[t.id]) < 1e-5);
    CHECK(r.top[0].id == 0);
    CHECK(r.top[1].id == 2);
    // and the sampled distribution is the softmax of the penalised logits
    p.temperature = 1.0f;
    std::vector<double> e;
    for (double v : lp) e.push_back(std::exp(v));
    const auto d = sampling_distribution(z0, p, history, n_prompt);
    REQUIRE(d.size() == 7);
    for (const auto& t : d) CHECK(t.prob == Approx(e[t.id]).epsilon(1e-6));
  }
  SECTION("with no output yet, only repetition applies (to the prompt)") {
    SamplingParams p;
    p.repetition_penalty = 2.0f;
    p.frequency_penalty = 2.0f;
    p.presence_penalty = 2.0f;
    std::vector<float> z = z0;
    apply_penalties(z, p, std::span(history).first(3), 3);
    CHECK(z == std::vector<float>{0.5f, -4.0f, 0.5f, 3.0f, -0.5f, 0.0f, 2.0f});
  }
  SECTION("no penalty leaves the row alone; overflow is clamped") {
    CHECK(penalised(SamplingParams{}) == z0);
    SamplingParams p;
    p.repetition_penalty = 1e-39f;  // positive logits / 1e-39 overflow
    auto z = penalised(p);
    CHECK(z[0] == FLT_MAX);
    CHECK(z[3] == FLT_MAX);
    CHECK(z[6] == FLT_MAX);
    CHECK(z[1] == static_cast<float>(-2.0 * static_cast<double>(1e-39f)));
    CHECK(z[5] == 0.0f);  // 0 is not positive: 0 * p
    // FLT_MAX at 0, 3 and 6: three equal tokens to draw from; greedy takes the lowest id.
    const auto d = sampling_distribution(z0, p, history, n_prompt);
    REQUIRE(d.size() == 3);
    CHECK(d[0].id == 0);
    CHECK(d[1].id == 3);
    CHECK(d[2].id == 6);
    CHECK(d[1].prob == Approx(1.0 / 3));
    p.temperature = 0.0f;
    CHECK(sample(z0, p, history, n_prompt, 0, 0).id == 0);
    p.temperature = 1.0f;
    p.repetition_penalty = FLT_MAX;  // negative logits * FLT_MAX overflow
    z = penalised(p);
    CHECK(z[1] == -FLT_MAX);
    CHECK(z[4] == -0.5f);  // not in the history
  }
}

TEST_CASE("same seed and step, same token, whatever else is sampled in between", "[sampling]") {
  const auto z = random_logits(1000, 3, 0.5f);
  const SamplingParams p;
  constexpr int kSteps = 100;
  std::vector<int32_t> alone;
  for (int64_t step = 0; step < kSteps; ++step) alone.push_back(sample(z, p, kNoHistory, 0, 42, step).id);

  // Interleaved with other sequences (other logits, seeds, steps, params), in reverse order.
  std::mt19937 rng(9);
  std::vector<int32_t> mixed(kSteps);
  for (int64_t step = kSteps - 1; step >= 0; --step) {
    for (int other = 0; other < 3; ++other) {
      const auto zo = random_logits(1000, rng(), 2.0f);
      SamplingParams po;
      po.top_k = 10 + other;
      (void)sample(zo, po, kNoHistory, 0, rng(), rng() % 1000);
    }
    mixed[step] = sample(z, p, kNoHistory, 0, 42, step).id;
  }
  CHECK(mixed == alone);

  // Another seed gives another sequence.
  int differ = 0;
  for (int64_t step = 0; step < kSteps; ++step) differ += sample(z, p, kNoHistory, 0, 43, step).id != alone[step];
  CHECK(differ > 90);

  // The request's own seed wins over the caller's per-request one.
  SamplingParams seeded;
  seeded.seed = 42;
  for (int64_t step = 0; step < kSteps; ++step) {
    CHECK(sample(z, seeded, kNoHistory, 0, 7, step).id == alone[step]);
    CHECK(sample(z, seeded, kNoHistory, 0, 8, step).id == alone[step]);
  }
}

TEST_CASE("threads sampling at once draw what one thread draws", "[sampling]") {
  // Four sequences over the full vocabulary with different parameters, sampled on one thread,
  // then by four threads at once, each walking the sequences in its own order.
  std::vector<std::vector<float>> rows;
  for (uint32_t s = 0; s < 4; ++s) rows.push_back(random_logits(kVocab, 100 + s, 1.0f + s));
  std::vector<SamplingParams> params = {with({}), with({{"top_p", 0.9}}), with({{"top_k", 100}}),
                                        with({{"min_p", 0.05}, {"temperature", 0.8}})};
  params[3].repetition_penalty = 1.3f;
  params[3].top_logprobs = 5;
  const std::vector<int32_t> history = {5, 6, 7, 8, 5, 6};
  constexpr int kSteps = 30;
  auto run = [&](int order, std::vector<int32_t>& out) {
    out.assign(4 * kSteps, -1);
    for (int step = 0; step < kSteps; ++step)
      for (int j = 0; j < 4; ++j) {
        const int s = (j + order) % 4;
        out[s * kSteps + step] = sample(rows[s], params[s], history, 2, 1000 + s, step).id;
      }
  };
  std::vector<int32_t> alone;
  run(0, alone);
  std::vector<std::vector<int32_t>> got(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) threads.emplace_back([&, t] { run(t, got[t]); });
  for (auto& t : threads) t.join();
  for (int t = 0; t < 4; ++t) CHECK(got[t] == alone);
}

TEST_CASE("logprobs are the log-softmax of the penalised logits, the top list sorted", "[sampling]") {
  const auto z = random_logits(kVocab, 4, 3.0f);
  const auto lp = log_softmax(z);
  std::vector<int32_t> rank(kVocab);
  std::iota(rank.begin(), rank.end(), 0);
  std::partial_sort(rank.begin(), rank.begin() + 20, rank.end(),
                    [&](int32_t a, int32_t b) { return lp[a] > lp[b] || (lp[a] == lp[b] && a < b); });
  for (float t : {0.0f, 0.7f, 1.0f}) {
    for (int32_t n : {0, 1, 5, 20}) {
      INFO("temperature " << t << ", top_logprobs " << n);
      SamplingParams p;
      p.temperature = t;
      p.top_k = 40;  // truncation does not change the reported logprobs
      p.top_logprobs = n;
      for (int64_t step = 0; step < 3; ++step) {
        const auto r = sample(z, p, kNoHistory, 0, 11, step);
        REQUIRE(r.logprob.has_value());
        CHECK(std::abs(*r.logprob - lp[r.id]) < 1e-5);
        REQUIRE(r.top.size() == static_cast<size_t>(n));
        for (int32_t j = 0; j < n; ++j) {
          CHECK(r.top[j].id == rank[j]);
          CHECK(std::abs(r.top[j].logprob - lp[r.top[j].id]) < 1e-5);
          if (j > 0) CHECK(r.top[j - 1].logprob >= r.top[j].logprob);
        }
      }
    }
  }
  SECTION("no logprobs unless asked") {
    const auto r = sample(z, SamplingParams{}, kNoHistory, 0, 11, 0);
    CHECK_FALSE(r.logprob.has_value());
    CHECK(r.top.empty());
  }
  SECTION("ties in the top list: lower id first; fewer tokens than asked: all of them") {
    const std::vector<float> tie = {1.0f, 2.0f, 1.0f, 2.0f};
    SamplingParams p;
    p.top_logprobs = 20;
    const auto r = sample(tie, p, kNoHistory, 0, 0, 0);
    REQUIRE(r.top.size() == 4);
    CHECK(r.top[0].id == 1);
    CHECK(r.top[1].id == 3);
    CHECK(r.top[2].id == 0);
    CHECK(r.top[3].id == 2);
    CHECK(std::abs(r.top[0].logprob - std::log(std::exp(2.0) / (2 * std::exp(1.0) + 2 * std::exp(2.0)))) < 1e-6);
  }
}

TEST_CASE("logit_bias adds to its tokens after the penalties, bans, forces and shows in logprobs", "[sampling]") {
  const std::vector<float> z0 = {1.0f, -2.0f, 0.5f, 3.0f, -0.5f, -std::numeric_limits<float>::infinity()};
  const std::vector<int32_t> history = {0, 3, 3};
  SamplingParams p;
  p.logit_bias = {{1, 2.5f}, {3, -1.0f}, {5, 100.0f}};
  std::vector<float> z = z0;
  apply_penalties(z, p, history, 1);
  CHECK(z == std::vector<float>{1.0f, 0.5f, 0.5f, 2.0f, -0.5f, -std::numeric_limits<float>::infinity()});
  // After the penalties: 3 appears twice in the output, 3 - 2*0.5 - 1 (bias) = 1.
  p.frequency_penalty = 0.5f;
  z = z0;
  apply_penalties(z, p, history, 1);
  CHECK(z[3] == 1.0f);

  // Greedy follows the biased logits; -100 bans the argmax, +100 forces a token.
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  CHECK(sample(z0, greedy, {}, 0, 1, 0).id == 3);
  greedy.logit_bias = {{3, -100.0f}};
  CHECK(sample(z0, greedy, {}, 0, 1, 0).id == 0);
  SamplingParams drawn;  // temperature 1: +100 leaves every other token e^-100 behind
  drawn.logit_bias = {{4, 100.0f}};
  drawn.top_logprobs = 2;
  for (int64_t step = 0; step < 50; ++step) CHECK(sample(z0, drawn, {}, 0, 9, step).id == 4);
  const SampleResult r = sample(z0, drawn, {}, 0, 9, 0);
  REQUIRE(r.logprob);
  CHECK(*r.logprob > -1e-6f);
  REQUIRE(r.top.size() == 2);
  CHECK(r.top[0].id == 4);
  CHECK(r.top[1].id == 3);
  CHECK(r.top[1].logprob == Approx(3.0 - 99.5).margin(1e-3));
}

TEST_CASE("validate names every field out of range", "[sampling]") {
  CHECK(SamplingParams{}.validate().ok());
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  SamplingParams edge;  // the ends of every range are allowed
  edge.temperature = 0.0f;
  edge.top_k = -1;
  edge.top_p = 1.0f;
  edge.min_p = 1.0f;
  edge.repetition_penalty = 1e-6f;
  edge.presence_penalty = -2.0f;
  edge.frequency_penalty = 2.0f;
  edge.top_logprobs = 20;
  edge.seed = std::numeric_limits<uint64_t>::max();
  edge.logit_bias = {{0, -100.0f}, {7, 100.0f}};
  CHECK(edge.validate().ok());
  for (const std::vector<TokenBias>& bad : std::vector<std::vector<TokenBias>>{
           {{-1, 1.0f}}, {{2, 1.0f}, {2, 1.0f}}, {{3, 1.0f}, {2, 1.0f}}, {{1, 100.5f}}, {{1, nan}}, {{1, -inf}}}) {
    SamplingParams p;
    p.logit_bias = bad;
    CHECK_THAT(std::string(p.validate().message()), Catch::Contains("logit_bias"));
  }
  edge.top_logprobs = 0;
  edge.top_p = 1e-6f;
  edge.min_p = 0.0f;
  edge.top_k = 129280 * 2;
  edge.presence_penalty = 2.0f;
  edge.frequency_penalty = -2.0f;
  edge.temperature = 100.0f;
  CHECK(edge.validate().ok());

  struct Bad {
    const char* field;
    void (*set)(SamplingParams&, float);
    std::vector<float> values;
  };
  const std::vector<Bad> bad = {
      {"temperature", [](SamplingParams& p, float v) { p.temperature = v; }, {-0.01f, -inf, inf, nan}},
      {"top_k", [](SamplingParams& p, float v) { p.top_k = static_cast<int32_t>(v); }, {-2.0f, -100.0f}},
      {"top_p", [](SamplingParams& p, float v) { p.top_p = v; }, {0.0f, -0.5f, 1.01f, nan}},
      {"min_p", [](SamplingParams& p, float v) { p.min_p = v; }, {-0.01f, 1.01f, nan}},
      {"repetition_penalty", [](SamplingParams& p, float v) { p.repetition_penalty = v; }, {0.0f, -1.0f, inf, nan}},
      {"presence_penalty", [](SamplingParams& p, float v) { p.presence_penalty = v; }, {-2.01f, 2.01f, nan}},
      {"frequency_penalty", [](SamplingParams& p, float v) { p.frequency_penalty = v; }, {-2.01f, 2.01f, nan}},
      {"top_logprobs", [](SamplingParams& p, float v) { p.top_logprobs = static_cast<int32_t>(v); }, {-2.0f, 21.0f}},
  };
  for (const Bad& b : bad) {
    for (float v : b.values) {
      SamplingParams p;
      b.set(p, v);
      const Status s = p.validate();
      INFO(b.field << " = " << v << ": " << s.to_string());
      CHECK(s.code() == Code::kInvalidArgument);
      CHECK(s.message().rfind(b.field, 0) == 0);  // starts with the field's name
      CHECK(s.message().find("got") != std::string::npos);
    }
  }
}

TEST_CASE("timing over 129,280 tokens", "[.][perf]") {
  const auto z = random_logits(kVocab, 5, 2.0f);
  std::vector<int32_t> history(4000);
  for (size_t i = 0; i < history.size(); ++i) history[i] = static_cast<int32_t>((i * 7919) % kVocab);
  const std::vector<std::pair<const char*, SamplingParams>> cases = {
      {"greedy", with({{"temperature", 0}})},
      {"temperature 0.7", with({{"temperature", 0.7}})},
      {"top_k 50", with({{"top_k", 50}})},
      {"top_p 0.9", with({{"top_p", 0.9}})},
      {"top_p 0.9 flat", with({{"top_p", 0.9}, {"temperature", 10}})},
      {"min_p 0.05", with({{"min_p", 0.05}})},
      {"top_k 50 top_p 0.9 min_p 0.05", with({{"top_k", 50}, {"top_p", 0.9}, {"min_p", 0.05}})},
  };
  for (auto [name, p] : cases) {
    for (int variant = 0; variant < 2; ++variant) {
      if (variant == 1) {
        p.top_logprobs = 20;
        p.repetition_penalty = 1.1f;
        p.frequency_penalty = 0.2f;
      }
      constexpr int kN = 200;
      const auto t0 = std::chrono::steady_clock::now();
      int64_t sink = 0;
      for (int i = 0; i < kN; ++i) sink += sample(z, p, history, 2000, 1, i).id;
      const double us =
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / kN;
      WARN(name << (variant ? " + logprobs 20 + penalties (4000 tokens)" : "") << ": " << us << " us/token ("
                << sink % 2 << ")");
    }
  }
}

TEST_CASE("an allowed-token mask: only its tokens are chosen, and it crosses the wire intact", "[sampling][constraint]") {
  const int64_t vocab = 200;
  std::vector<float> logits(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) logits[size_t(i)] = float((i * 37) % 101) / 10.0f;
  RowSampler s;
  s.params.temperature = 0.0f;
  s.allowed.assign(4, 0);
  for (int32_t id : {3, 70, 130, 199}) s.allowed[size_t(id) >> 6] |= uint64_t(1) << (id & 63);
  // The best of the four by hand: (id * 37) % 101.
  int32_t best = 3;
  for (int32_t id : {70, 130, 199})
    if ((id * 37) % 101 > (best * 37) % 101) best = id;
  CHECK(choose_tokens(logits.data(), 1, vocab, {s})[0].id == best);
  s.params.temperature = 1.0f;
  s.params.top_logprobs = 2;
  for (int64_t step = 0; step < 200; ++step) {
    s.step = step;
    const SampleResult r = choose_tokens(logits.data(), 1, vocab, {s})[0];
    CHECK((r.id == 3 || r.id == 70 || r.id == 130 || r.id == 199));
    for (const TokenLogprob& t : r.top) CHECK((s.allowed[size_t(t.id) >> 6] >> (t.id & 63)) & 1);
  }
  wire::RowSampling w;
  to_wire(s, w);
  auto back = from_wire(w, vocab);
  REQUIRE(back.ok());
  CHECK(back->allowed == s.allowed);
  // A mask of another size, or one that allows nothing, is refused by name.
  auto wrong = from_wire(w, 300);
  REQUIRE_FALSE(wrong.ok());
  CHECK_THAT(wrong.status().message(), Catch::Contains("allowed-token mask has 32 bytes, not the 40"));
  w.set_allowed(std::string(32, '\0'));
  auto none = from_wire(w, vocab);
  REQUIRE_FALSE(none.ok());
  CHECK_THAT(none.status().message(), Catch::Contains("allows no token"));
}
