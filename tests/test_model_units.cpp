// Model-level units: YaRN constants (the fixture's documented numbers and the 671B release's),
// MLA naive vs absorbed over long contexts, batching and chunked prefill against single runs on
// both fixtures, and the router/MoE semantics of V2 and V3 configs against plain references.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <numbers>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "coordinator/engine.h"
#include "model/config.h"
#include "model/expert_combine.h"
#include "model/layers.h"
#include "model/rope.h"

using namespace shoal;

namespace {

std::string fixture(const std::string& name) { return std::string(SHOAL_FIXTURES) + "/" + name; }

ModelConfig fixture_config(const std::string& name) {
  auto c = load_config(fixture(name));
  INFO(c.status().to_string());
  REQUIRE(c.ok());
  return *c;
}

bool close_rel(double got, double want, double rel) { return std::fabs(got - want) <= rel * std::fabs(want); }

// DeepSeek's yarn_find_correction_dim: the rotary dimension whose wavelength turns `rotations`
// times over the original context.
double correction_dim(double rotations, double dim, double base, double orig) {
  return dim * std::log(orig / (rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(base));
}

// inv_freq_i = base^(-2i/d) * (w_i + (1 - w_i) / factor), w_i = 1 - clamp((i - low) / (high - low), 0, 1).
std::vector<double> yarn_inv_freq(double base, int64_t dim, double factor, double low, double high) {
  std::vector<double> f;
  for (int64_t i = 0; i < dim / 2; ++i) {
    const double w = 1.0 - std::clamp((double(i) - low) / (high - low), 0.0, 1.0);
    f.push_back(std::pow(base, -2.0 * double(i) / double(dim)) * (w + (1.0 - w) / factor));
  }
  return f;
}

}  // namespace

// ============================================================================================
// YaRN
// ============================================================================================

TEST_CASE("YaRN on the fixture config reproduces the README numbers", "[model][rope]") {
  const ModelConfig c = fixture_config("tiny-v3-bf16");
  REQUIRE(c.yarn.enabled);
  REQUIRE(c.yarn.factor == 8.0);
  REQUIRE(c.yarn.original_max_position_embeddings == 64);
  REQUIRE(c.qk_rope_head_dim == 16);
  REQUIRE(c.qk_head_dim() == 48);
  const RopeTable t = make_rope_table(c);
  REQUIRE(t.inv_freq.size() == 8);

  // README: correction range low = 0, high = 3 (raw -0.9943, 2.0160).
  CHECK(std::fabs(correction_dim(32, 16, 10000, 64) - -0.9943) < 1e-4);
  CHECK(std::fabs(correction_dim(1, 16, 10000, 64) - 2.0160) < 1e-4);

  // README: w = [1.0, 0.6667, 0.3333, 0, 0, 0, 0, 0].
  const double w[8] = {1.0, 2.0 / 3.0, 1.0 / 3.0, 0, 0, 0, 0, 0};
  for (int i = 0; i < 8; ++i) {
    const double want = std::pow(10000.0, -2.0 * i / 16.0) * (w[i] + (1.0 - w[i]) / 8.0);
    INFO("pair " << i << " got " << t.inv_freq[size_t(i)] << " want " << want);
    CHECK(close_rel(t.inv_freq[size_t(i)], want, 1e-6));
  }
  // README: softmax scale = 48^-0.5 * 1.207944^2 = 48^-0.5 * 1.459129, cos/sin unscaled.
  CHECK(close_rel(t.softmax_scale, 1.459129 / std::sqrt(48.0), 1e-6));
  CHECK(close_rel(t.softmax_scale, 1.207944 * 1.207944 / std::sqrt(48.0), 2e-6));
  CHECK(std::fabs(t.attn_factor - 1.0f) < 1e-7);
}

TEST_CASE("YaRN with the 671B release values", "[model][rope]") {
  // DeepSeek-V3 config.json: qk_rope_head_dim 64, qk_nope_head_dim 128, rope_theta 10000,
  // rope_scaling {factor 40, original 4096, beta_fast 32, beta_slow 1, mscale 1, mscale_all_dim 1}.
  ModelConfig c;
  c.qk_rope_head_dim = 64;
  c.qk_nope_head_dim = 128;
  c.rope_theta = 10000;
  c.yarn.enabled = true;
  c.yarn.factor = 40;
  c.yarn.original_max_position_embeddings = 4096;
  c.yarn.beta_fast = 32;
  c.yarn.beta_slow = 1;
  c.yarn.mscale = 1.0;
  c.yarn.mscale_all_dim = 1.0;

  const double low = std::max(std::floor(correction_dim(32, 64, 10000, 4096)), 0.0);
  const double high = std::min(std::ceil(correction_dim(1, 64, 10000, 4096)), 63.0);
  REQUIRE(low == 10.0);  // the published range for V3
  REQUIRE(high == 23.0);
  const auto want = yarn_inv_freq(10000, 64, 40, low, high);
  const double m = 0.1 * std::log(40.0) + 1.0;

  SECTION("mscale == mscale_all_dim: softmax scale grows by mscale^2, cos/sin unscaled") {
    const RopeTable t = make_rope_table(c);
    REQUIRE(t.inv_freq.size() == 32);
    for (size_t i = 0; i < 32; ++i) {
      INFO("pair " << i);
      CHECK(close_rel(t.inv_freq[i], want[i], 1e-6));
    }
    // Pairs below low keep their frequency, pairs from high on are divided by the factor.
    CHECK(close_rel(t.inv_freq[3], std::pow(10000.0, -6.0 / 64.0), 1e-6));
    CHECK(close_rel(t.inv_freq[30], std::pow(10000.0, -60.0 / 64.0) / 40.0, 1e-6));
    CHECK(close_rel(t.softmax_scale, m * m / std::sqrt(192.0), 1e-6));
    CHECK(std::fabs(t.attn_factor - 1.0f) < 1e-7);
  }
  SECTION("mscale != mscale_all_dim: cos/sin carry their ratio") {
    c.yarn.mscale_all_dim = 0.707;
    const RopeTable t = make_rope_table(c);
    const double m_all = 0.1 * 0.707 * std::log(40.0) + 1.0;
    CHECK(close_rel(t.attn_factor, m / m_all, 1e-6));
    CHECK(close_rel(t.softmax_scale, m_all * m_all / std::sqrt(192.0), 1e-6));
  }
  SECTION("mscale_all_dim 0 (absent): softmax scale unchanged") {
    c.yarn.mscale_all_dim = 0.0;
    const RopeTable t = make_rope_table(c);
    CHECK(close_rel(t.softmax_scale, 1.0 / std::sqrt(192.0), 1e-6));
    CHECK(close_rel(t.attn_factor, m, 1e-6));
  }
  SECTION("no rope_scaling: plain frequencies") {
    c.yarn.enabled = false;
    const RopeTable t = make_rope_table(c);
    for (size_t i = 0; i < 32; ++i) CHECK(close_rel(t.inv_freq[i], std::pow(10000.0, -2.0 * double(i) / 64.0), 1e-6));
    CHECK(close_rel(t.softmax_scale, 1.0 / std::sqrt(192.0), 1e-6));
    CHECK(t.attn_factor == 1.0f);
  }
}

// ============================================================================================
// Engine-level equivalences on the fixtures
// ============================================================================================

namespace {

std::unique_ptr<Engine> open_engine(const std::string& name, int64_t slots, AttnImpl impl, const std::string& lora = "") {
  EngineOptions eo;
  eo.n_slots = slots;
  eo.max_seq_len = 512;
  eo.attn_impl = impl;
  if (!lora.empty()) eo.loras = {{"", fixture(lora)}};
  auto e = Engine::open(fixture(name), eo);
  INFO(e.status().to_string());
  REQUIRE(e.ok());
  return std::move(*e);
}

std::vector<int32_t> random_ids(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> ids = {0};  // bos
  while (ids.size() < n) ids.push_back(int32_t(2 + rng() % 1022));
  ids.resize(n);
  return ids;
}

std::vector<int64_t> all_rows(const Batch& b) {
  std::vector<int64_t> r(static_cast<size_t>(b.n_tokens()));
  for (size_t i = 0; i < r.size(); ++i) r[i] = int64_t(i);
  return r;
}

std::vector<float> run(Engine& e, const Batch& b, const std::vector<int64_t>& rows) {
  auto r = e.forward(b, rows);
  INFO(r.status().to_string());
  REQUIRE(r.ok());
  return std::move(*r);
}

// Rows [a0, a0 + n) of a against rows [b0, b0 + n) of b: the worst |a - b| / (atol + rtol |b|)
// (<= 1 passes) and, for the failure message, the largest absolute difference.
struct Diff {
  double ratio = 0, max_abs = 0;
};
std::ostream& operator<<(std::ostream& o, const Diff& d) {
  return o << "worst |diff| / tolerance " << d.ratio << ", max |diff| " << d.max_abs;
}
Diff compare(const std::vector<float>& a, int64_t a0, const std::vector<float>& b, int64_t b0, int64_t n, int64_t V,
             double atol, double rtol) {
  REQUIRE(int64_t(a.size()) >= (a0 + n) * V);
  REQUIRE(int64_t(b.size()) >= (b0 + n) * V);
  Diff d;
  for (int64_t i = 0; i < n * V; ++i) {
    const double x = a[size_t(a0 * V + i)], y = b[size_t(b0 * V + i)];
    if (!std::isfinite(x) || !std::isfinite(y)) return {INFINITY, INFINITY};
    d.ratio = std::max(d.ratio, std::fabs(x - y) / (atol + rtol * std::fabs(y)));
    d.max_abs = std::max(d.max_abs, std::fabs(x - y));
  }
  return d;
}

#define CHECK_CLOSE(diff)         \
  do {                            \
    const Diff d_ = (diff);       \
    INFO(d_);                     \
    CHECK(d_.ratio <= 1.0);       \
  } while (0)

const char* impl_name(AttnImpl i) {
  return i == AttnImpl::kNaive ? "naive" : i == AttnImpl::kAbsorb ? "absorb" : "auto";
}

}  // namespace

TEST_CASE("MLA naive and absorbed agree far beyond the original context", "[model][mla]") {
  for (const std::string name : {"tiny-v3-bf16", "tiny-v3-fp8"}) {
    INFO(name);
    auto naive = open_engine(name, 1, AttnImpl::kNaive);
    auto absorb = open_engine(name, 1, AttnImpl::kAbsorb);
    const int64_t V = naive->config().vocab_size, L = 300;
    REQUIRE(naive->config().yarn.original_max_position_embeddings < L);
    const auto prompt = random_ids(size_t(L), 2024);
    Batch b;
    b.add_sequence(0, 0, prompt);
    const auto ln = run(*naive, b, all_rows(b)), la = run(*absorb, b, all_rows(b));
    CHECK_CLOSE(compare(ln, 0, la, 0, L, V, 1e-4, 0.0));
    // The two paths must not be the same computation in disguise: they differ in rounding.
    CHECK(ln != la);
    const auto steps = random_ids(6, 77);
    for (int64_t k = 0; k < 5; ++k) {
      INFO("decode step " << k);
      Batch d;
      d.add_sequence(0, int32_t(L + k), {steps[size_t(k + 1)]});
      const auto dn = run(*naive, d, {0}), da = run(*absorb, d, {0});
      CHECK_CLOSE(compare(dn, 0, da, 0, 1, V, 1e-4, 0.0));
    }
  }
}

TEST_CASE("a batch of sequences equals each sequence run alone", "[model][batch]") {
  const std::vector<size_t> lengths = {1, 7, 30, 70};  // 70 > 64 tokens: kAuto expands (naive)
  const int64_t n_seq = int64_t(lengths.size()), steps = 4;
  for (const std::string name : {"tiny-v3-bf16", "tiny-v3-fp8"}) {
    for (AttnImpl impl : {AttnImpl::kAuto, AttnImpl::kNaive, AttnImpl::kAbsorb}) {
      INFO(name << " " << impl_name(impl));
      std::vector<std::vector<int32_t>> prompts, decode_ids;
      for (int64_t s = 0; s < n_seq; ++s) {
        prompts.push_back(random_ids(lengths[size_t(s)], uint32_t(100 + s)));
        decode_ids.push_back(random_ids(steps + 1, uint32_t(200 + s)));  // [0] unused (bos)
      }
      // Sequence s lives in slot n_seq - 1 - s, so batch order and slot differ.
      auto batched = open_engine(name, n_seq, impl);
      Batch pre;
      for (int64_t s = 0; s < n_seq; ++s) pre.add_sequence(int32_t(n_seq - 1 - s), 0, prompts[size_t(s)]);
      const auto lb = run(*batched, pre, all_rows(pre));
      std::vector<std::vector<float>> db;
      for (int64_t k = 0; k < steps; ++k) {
        Batch d;
        for (int64_t s = 0; s < n_seq; ++s)
          d.add_sequence(int32_t(n_seq - 1 - s), int32_t(lengths[size_t(s)] + size_t(k)), {decode_ids[size_t(s)][size_t(k + 1)]});
        db.push_back(run(*batched, d, all_rows(d)));
      }
      const int64_t V = batched->config().vocab_size;
      for (int64_t s = 0; s < n_seq; ++s) {
        INFO("sequence " << s << " of length " << lengths[size_t(s)]);
        auto alone = open_engine(name, 1, impl);
        Batch p1;
        p1.add_sequence(0, 0, prompts[size_t(s)]);
        const auto la = run(*alone, p1, all_rows(p1));
        CHECK_CLOSE(compare(lb, pre.seqs[size_t(s)].begin, la, 0, int64_t(lengths[size_t(s)]), V, 1e-6, 1e-5));
        for (int64_t k = 0; k < steps; ++k) {
          INFO("decode step " << k);
          Batch d;
          d.add_sequence(0, int32_t(lengths[size_t(s)] + size_t(k)), {decode_ids[size_t(s)][size_t(k + 1)]});
          const auto da = run(*alone, d, {0});
          CHECK_CLOSE(compare(db[size_t(k)], s, da, 0, 1, V, 1e-6, 1e-5));
        }
      }
    }
  }
}

TEST_CASE("chunked prefill equals one prefill", "[model][batch]") {
  for (const std::string name : {"tiny-v3-bf16", "tiny-v3-fp8"}) {
    for (AttnImpl impl : {AttnImpl::kAuto, AttnImpl::kNaive, AttnImpl::kAbsorb}) {
      INFO(name << " " << impl_name(impl));
      const auto prompt = random_ids(110, 5);
      auto whole = open_engine(name, 1, impl);
      Batch one;
      one.add_sequence(0, 0, prompt);
      const auto lw = run(*whole, one, all_rows(one));
      const int64_t V = whole->config().vocab_size;
      // Chunks [0, 37) and [37, 110): under kAuto the second (73 tokens) is expanded naively
      // over the cached latents of the first.
      auto chunked = open_engine(name, 2, impl);
      const std::vector<int32_t> c1(prompt.begin(), prompt.begin() + 37), c2(prompt.begin() + 37, prompt.end());
      Batch b1;
      b1.add_sequence(1, 0, c1);
      const auto l1 = run(*chunked, b1, all_rows(b1));
      // The second chunk shares its batch with an unrelated fresh sequence in the other slot.
      Batch b2;
      const auto other = random_ids(9, 6);
      b2.add_sequence(0, 0, other);
      b2.add_sequence(1, 37, c2);
      REQUIRE(b2.positions[9] == 37);
      const auto l2 = run(*chunked, b2, all_rows(b2));
      // kAuto chooses by the tokens a sequence brings: the whole prompt (110) is expanded
      // naively, the first chunk (37) absorbed, so there the bound is naive vs absorbed's.
      const double atol = impl == AttnImpl::kAuto ? 1e-4 : 1e-6, rtol = impl == AttnImpl::kAuto ? 0.0 : 1e-5;
      CHECK_CLOSE(compare(l1, 0, lw, 0, 37, V, atol, rtol));
      CHECK_CLOSE(compare(l2, 9, lw, 37, 73, V, atol, rtol));
    }
  }
}

namespace {
// Rows [a0, a0 + n) of a against rows [b0, b0 + n) of b: how many logits differ in any bit.
int64_t bits_differ(const std::vector<float>& a, int64_t a0, const std::vector<float>& b, int64_t b0, int64_t n,
                    int64_t V) {
  REQUIRE(int64_t(a.size()) >= (a0 + n) * V);
  REQUIRE(int64_t(b.size()) >= (b0 + n) * V);
  int64_t differ = 0;
  for (int64_t i = 0; i < n * V; ++i) differ += std::memcmp(&a[size_t(a0 * V + i)], &b[size_t(b0 * V + i)], 4) != 0;
  return differ;
}
}  // namespace

TEST_CASE("logits are bitwise the same alone, in a batch of 32, one token at a time and in chunks of 16", "[model][batch][batch-invariance]") {
  // Exactness whatever the batch: a sequence's logits may not change in any bit with the batch
  // around it (32 sequences: routed experts then run grouped on many rows, alone on one), with
  // decode vs prefill of the same tokens, or with the prefill chunking (16 vs all at once).
  const int64_t n_seq = 32;
  for (const std::string name : {"tiny-v3-bf16", "tiny-v3-fp8", "tiny-qwen2", "tiny-llama3"}) {
    const bool dense = name.starts_with("tiny-qwen2") || name.starts_with("tiny-llama3");  // one attention path
    for (AttnImpl impl : {AttnImpl::kNaive, AttnImpl::kAbsorb}) {
      if (dense && impl == AttnImpl::kAbsorb) continue;
      INFO(name << " " << impl_name(impl));
      std::mt19937 rng(77);
      std::vector<std::vector<int32_t>> prompts;
      for (int64_t s = 0; s < n_seq; ++s) prompts.push_back(random_ids(1 + rng() % 40, uint32_t(300 + s)));
      auto alone = open_engine(name, 1, impl);
      const int64_t V = alone->config().vocab_size;
      std::vector<std::vector<float>> ref;  // each prompt alone, one prefill
      for (const auto& p : prompts) {
        Batch b;
        b.add_sequence(0, 0, p);
        ref.push_back(run(*alone, b, all_rows(b)));
      }
      auto batched = open_engine(name, n_seq, impl);
      Batch all;
      for (int64_t s = 0; s < n_seq; ++s) all.add_sequence(int32_t(n_seq - 1 - s), 0, prompts[size_t(s)]);
      const auto lb = run(*batched, all, all_rows(all));
      for (int64_t s = 0; s < n_seq; ++s) {
        INFO("sequence " << s << " in the batch of 32");
        CHECK(bits_differ(lb, all.seqs[size_t(s)].begin, ref[size_t(s)], 0, int64_t(prompts[size_t(s)].size()), V) == 0);
      }
      for (int64_t s : {int64_t(0), int64_t(5)}) {
        const auto& p = prompts[size_t(s)];
        const int64_t L = int64_t(p.size());
        for (int64_t chunk : {int64_t(1), int64_t(16)}) {
          INFO("sequence " << s << " in chunks of " << chunk << " tokens");
          auto e = open_engine(name, 1, impl);
          for (int64_t t0 = 0; t0 < L; t0 += chunk) {
            Batch b;
            b.add_sequence(0, int32_t(t0), std::vector<int32_t>(p.begin() + t0, p.begin() + std::min(L, t0 + chunk)));
            const auto lc = run(*e, b, all_rows(b));
            CHECK(bits_differ(lc, 0, ref[size_t(s)], t0, b.n_tokens(), V) == 0);
          }
        }
      }
    }
  }
}

TEST_CASE("with a LoRA adapter, logits are bitwise the same alone, in a batch of 16 and in chunks", "[model][batch][batch-invariance][lora]") {
  // The adapter's terms (y += scale * B (A x)) are computed row by row like the base product.
  const int64_t n_seq = 16;
  for (AttnImpl impl : {AttnImpl::kNaive, AttnImpl::kAbsorb}) {
    INFO(impl_name(impl));
    std::mt19937 rng(91);
    std::vector<std::vector<int32_t>> prompts;
    for (int64_t s = 0; s < n_seq; ++s) prompts.push_back(random_ids(1 + rng() % 30, uint32_t(700 + s)));
    auto alone = open_engine("tiny-v3-bf16", 1, impl, "lora-tiny-v3-a");
    const int64_t V = alone->config().vocab_size;
    std::vector<std::vector<float>> ref;
    for (const auto& p : prompts) {
      Batch b;
      b.add_sequence(0, 0, p);
      ref.push_back(run(*alone, b, all_rows(b)));
    }
    auto batched = open_engine("tiny-v3-bf16", n_seq, impl, "lora-tiny-v3-a");
    Batch all;
    for (int64_t s = 0; s < n_seq; ++s) all.add_sequence(int32_t(s), 0, prompts[size_t(s)]);
    const auto lb = run(*batched, all, all_rows(all));
    for (int64_t s = 0; s < n_seq; ++s) {
      INFO("sequence " << s);
      CHECK(bits_differ(lb, all.seqs[size_t(s)].begin, ref[size_t(s)], 0, int64_t(prompts[size_t(s)].size()), V) == 0);
    }
    const auto& p = prompts[0];
    auto e = open_engine("tiny-v3-bf16", 1, impl, "lora-tiny-v3-a");
    for (int64_t t0 = 0; t0 < int64_t(p.size()); t0 += 7) {
      Batch b;
      b.add_sequence(0, int32_t(t0), std::vector<int32_t>(p.begin() + t0, p.begin() + std::min<int64_t>(int64_t(p.size()), t0 + 7)));
      CHECK(bits_differ(run(*e, b, all_rows(b)), 0, ref[0], t0, b.n_tokens(), V) == 0);
    }
  }
}

TEST_CASE("several adapters in one batch: each row is bitwise its own model served alone", "[model][batch][batch-invariance][lora]") {
  // Sequences of the base, adapter a (every linear) and adapter b (attention only) mixed in one
  // batch, their rows grouped per adapter inside each product: every sequence's logits are the
  // bits of an engine serving only its model, whatever its neighbours ask for.
  const int64_t n_seq = 9;
  for (AttnImpl impl : {AttnImpl::kNaive, AttnImpl::kAbsorb}) {
    INFO(impl_name(impl));
    std::vector<std::vector<int32_t>> prompts;
    for (int64_t s = 0; s < n_seq; ++s) prompts.push_back(random_ids(size_t(2 + 3 * s), uint32_t(900 + s)));
    const std::vector<std::string> single = {"", "lora-tiny-v3-a", "lora-tiny-v3-b"};  // by adapter id
    std::vector<std::vector<std::vector<float>>> ref(single.size());
    int64_t V = 0;
    for (size_t id = 0; id < single.size(); ++id) {
      auto alone = open_engine("tiny-v3-bf16", 1, impl, single[id]);
      V = alone->config().vocab_size;
      for (const auto& p : prompts) {
        Batch b;
        b.add_sequence(0, 0, p);
        ref[id].push_back(run(*alone, b, all_rows(b)));
      }
    }
    EngineOptions eo;
    eo.n_slots = n_seq;
    eo.max_seq_len = 512;
    eo.attn_impl = impl;
    eo.loras = {{"a", fixture("lora-tiny-v3-a")}, {"b", fixture("lora-tiny-v3-b")}};
    auto mixed = Engine::open(fixture("tiny-v3-bf16"), eo);
    REQUIRE(mixed.ok());
    CHECK((*mixed)->adapter_names() == std::vector<std::string>{"a", "b"});
    // Two orders of the same sequences: grouping must not depend on where a row sits.
    for (int order = 0; order < 2; ++order) {
      Batch all;
      std::vector<int64_t> seq_of;
      for (int64_t k = 0; k < n_seq; ++k) {
        const int64_t s = order == 0 ? k : n_seq - 1 - k;
        all.add_sequence(int32_t(s), 0, prompts[size_t(s)], int32_t(s % 3));
        seq_of.push_back(s);
      }
      const auto got = run(**mixed, all, all_rows(all));
      for (size_t i = 0; i < seq_of.size(); ++i) {
        const int64_t s = seq_of[i];
        INFO("order " << order << ", sequence " << s << ", adapter " << s % 3);
        CHECK(bits_differ(got, all.seqs[i].begin, ref[size_t(s % 3)][size_t(s)], 0, int64_t(prompts[size_t(s)].size()), V) == 0);
      }
    }
    // The adapters do change the logits (so the checks above compare different models).
    CHECK(bits_differ(ref[1][0], 0, ref[0][0], 0, int64_t(prompts[0].size()), V) > 0);
    Batch bad;
    bad.add_sequence(0, 0, prompts[0], 3);
    auto r = (*mixed)->forward(bad, {0});
    REQUIRE(!r.ok());
    CHECK_THAT(r.status().to_string(), Catch::Matchers::Contains("adapter 3"));
  }
}

// ============================================================================================
// Router and MoE semantics of V2 and V3 configs
// ============================================================================================

namespace {

// A deepseek_v2-style config.json (DeepSeek-V2's routing keys) with the MoE fields given.
std::string v2_json(const std::string& moe) {
  return R"({"model_type": "deepseek_v2", "vocab_size": 64, "hidden_size": 8, "intermediate_size": 16,
    "num_hidden_layers": 2, "num_attention_heads": 2, "q_lora_rank": null, "kv_lora_rank": 8,
    "qk_nope_head_dim": 4, "qk_rope_head_dim": 4, "v_head_dim": 4, "rms_norm_eps": 1e-6,
    "rope_theta": 10000, "max_position_embeddings": 128, "n_routed_experts": 16,
    "moe_intermediate_size": 6, "n_shared_experts": 2, "num_experts_per_tok": 4,
    "first_k_dense_replace": 1, "moe_layer_freq": 1, )" +
         moe + "}";
}

ModelConfig parse(const std::string& json) {
  auto c = parse_config(json);
  INFO(c.status().to_string());
  REQUIRE(c.ok());
  return *c;
}

struct Rule {
  bool sigmoid;
  int group;  // 0: none, 1: max, 2: top-2 sum
  int64_t n_groups, topk_groups, topk;
  bool norm;
  double scale;
  bool v3;  // V3: normalise (when asked, top-k > 1) then always scale; V2: scale only when not normalising
};

// HF modeling_deepseek MoEGate.forward, in double: returns (indices ascending, weights).
void ref_gate(std::vector<int32_t>& idx, std::vector<double>& wt, const std::vector<double>& logits,
              const std::vector<double>& bias, const Rule& r) {
  const int64_t E = int64_t(logits.size()), per = E / r.n_groups;
  std::vector<double> p(logits.size()), sel(logits.size());
  if (r.sigmoid) {
    for (size_t e = 0; e < p.size(); ++e) p[e] = 1 / (1 + std::exp(-logits[e]));
  } else {
    const double mx = *std::max_element(logits.begin(), logits.end());
    double z = 0;
    for (size_t e = 0; e < p.size(); ++e) z += (p[e] = std::exp(logits[e] - mx));
    for (double& x : p) x /= z;
  }
  for (size_t e = 0; e < p.size(); ++e) sel[e] = p[e] + (bias.empty() ? 0.0 : bias[e]);
  std::vector<bool> ok(p.size(), true);
  if (r.group != 0 && r.n_groups > 1) {
    std::vector<std::pair<double, int64_t>> g;
    for (int64_t k = 0; k < r.n_groups; ++k) {
      std::vector<double> s(sel.begin() + k * per, sel.begin() + (k + 1) * per);
      std::sort(s.rbegin(), s.rend());
      g.push_back({r.group == 1 ? s[0] : s[0] + s[1], k});
    }
    std::sort(g.rbegin(), g.rend());
    std::fill(ok.begin(), ok.end(), false);
    for (int64_t k = 0; k < r.topk_groups; ++k)
      for (int64_t e = 0; e < per; ++e) ok[size_t(g[size_t(k)].second * per + e)] = true;
  }
  std::vector<std::pair<double, int32_t>> c;
  for (int64_t e = 0; e < E; ++e)
    if (ok[size_t(e)]) c.push_back({sel[size_t(e)], int32_t(e)});
  std::sort(c.rbegin(), c.rend());
  idx.clear();
  for (int64_t k = 0; k < r.topk; ++k) idx.push_back(c[size_t(k)].second);
  std::sort(idx.begin(), idx.end());
  wt.clear();
  double sum = 0;
  for (int32_t e : idx) sum += p[size_t(e)];
  for (int32_t e : idx) {
    double w = p[size_t(e)];
    if (r.topk > 1 && r.norm) w /= sum + 1e-20;
    if (r.v3 || !(r.topk > 1 && r.norm)) w *= r.scale;
    wt.push_back(w);
  }
}

struct GateSetup {
  std::vector<float> gate;  // [E, dim] F32
  std::vector<float> h;     // [n, dim]
  LayerWeights lw;
};

GateSetup make_gate(const ModelConfig& c, int64_t n, uint32_t seed, bool with_bias) {
  GateSetup g;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  g.gate.resize(static_cast<size_t>(c.n_routed_experts * c.dim));
  g.h.resize(static_cast<size_t>(n * c.dim));
  for (float& x : g.gate) x = nd(rng);
  for (float& x : g.h) x = nd(rng);
  g.lw.moe = true;
  g.lw.gate.data = g.gate.data();
  g.lw.gate.dtype = DType::kF32;
  g.lw.gate.rows = c.n_routed_experts;
  g.lw.gate.cols = c.dim;
  if (with_bias)
    for (int64_t e = 0; e < c.n_routed_experts; ++e) g.lw.gate_bias.push_back(0.3f * nd(rng));
  return g;
}

// Runs gate_forward and compares every token with ref_gate; returns how many tokens' expert sets
// would change under `wrong` (to show the case tells the rules apart).
int check_gate(const ModelConfig& c, const Rule& r, const Rule* wrong, int64_t n, uint32_t seed, bool with_bias) {
  GateSetup g = make_gate(c, n, seed, with_bias);
  const RopeTable rope = make_rope_table(c);
  const LayerContext lc{&c, &rope, AttnImpl::kAuto, {}};
  std::vector<int32_t> idx;
  std::vector<float> wt;
  gate_forward(idx, wt, g.h.data(), g.lw, n, lc);
  REQUIRE(int64_t(idx.size()) == n * r.topk);
  REQUIRE(int64_t(wt.size()) == n * r.topk);
  const std::vector<double> bias(g.lw.gate_bias.begin(), g.lw.gate_bias.end());
  int differ = 0;
  for (int64_t t = 0; t < n; ++t) {
    std::vector<double> logits(static_cast<size_t>(c.n_routed_experts));
    for (int64_t e = 0; e < c.n_routed_experts; ++e)
      for (int64_t d = 0; d < c.dim; ++d)
        logits[size_t(e)] += double(g.h[size_t(t * c.dim + d)]) * g.gate[size_t(e * c.dim + d)];
    std::vector<int32_t> want_idx;
    std::vector<double> want_w;
    ref_gate(want_idx, want_w, logits, bias, r);
    std::vector<std::pair<int32_t, float>> got;
    for (int64_t k = 0; k < r.topk; ++k) got.push_back({idx[size_t(t * r.topk + k)], wt[size_t(t * r.topk + k)]});
    std::sort(got.begin(), got.end());
    INFO("token " << t);
    for (int64_t k = 0; k < r.topk; ++k) {
      REQUIRE(got[size_t(k)].first == want_idx[size_t(k)]);
      CHECK(std::fabs(got[size_t(k)].second - want_w[size_t(k)]) <= 2e-6 * std::fabs(want_w[size_t(k)]) + 1e-9);
    }
    if (wrong) {
      std::vector<int32_t> wi;
      std::vector<double> ww;
      ref_gate(wi, ww, logits, bias, *wrong);
      differ += wi != want_idx;
    }
  }
  return differ;
}

}  // namespace

TEST_CASE("gate_forward: V2 semantics (softmax, group_limited_greedy, scale when not normalising)", "[model][moe]") {
  const std::string groups = R"("n_group": 4, "topk_group": 2, "topk_method": "group_limited_greedy",
      "scoring_func": "softmax", "routed_scaling_factor": 16.0, )";
  const int64_t n = 64;
  SECTION("norm_topk_prob false: softmax probabilities times 16") {
    const ModelConfig c = parse(v2_json(groups + R"("norm_topk_prob": false)"));
    REQUIRE(c.model_type == ModelType::kDeepseekV2);
    REQUIRE(c.score_func == ScoringFunc::kSoftmax);
    REQUIRE(c.topk_method == TopkMethod::kGroupLimitedGreedy);
    REQUIRE(c.route_scale == 16.0);
    const Rule right{false, 1, 4, 2, 4, false, 16.0, false};
    const Rule top2sum{false, 2, 4, 2, 4, false, 16.0, false};
    const Rule no_limit{false, 0, 4, 2, 4, false, 16.0, false};
    CHECK(check_gate(c, right, &top2sum, n, 1, false) > 0);
    CHECK(check_gate(c, right, &no_limit, n, 1, false) > 0);
  }
  SECTION("norm_topk_prob true: normalised, routed_scaling_factor not applied") {
    const ModelConfig c = parse(v2_json(groups + R"("norm_topk_prob": true)"));
    const Rule right{false, 1, 4, 2, 4, true, 16.0, false};
    check_gate(c, right, nullptr, n, 2, false);
    // Directly: each token's weights sum to 1.
    GateSetup g = make_gate(c, 8, 2, false);
    const RopeTable rope = make_rope_table(c);
    const LayerContext lc{&c, &rope, AttnImpl::kAuto, {}};
    std::vector<int32_t> idx;
    std::vector<float> wt;
    gate_forward(idx, wt, g.h.data(), g.lw, 8, lc);
    for (int64_t t = 0; t < 8; ++t) {
      double sum = 0;
      for (int64_t k = 0; k < 4; ++k) sum += wt[size_t(t * 4 + k)];
      CHECK(std::fabs(sum - 1.0) < 1e-5);
    }
  }
  SECTION("topk_method greedy: no group limit") {
    const ModelConfig c = parse(v2_json(R"("topk_method": "greedy", "routed_scaling_factor": 1.0,
        "norm_topk_prob": false)"));
    REQUIRE(c.score_func == ScoringFunc::kSoftmax);  // V2's default
    const Rule right{false, 0, 1, 1, 4, false, 1.0, false};
    check_gate(c, right, nullptr, n, 3, false);
  }
}

TEST_CASE("gate_forward: V3 semantics (sigmoid, noaux_tc, bias for selection, normalise then scale)", "[model][moe]") {
  std::string json = v2_json(R"("n_group": 4, "topk_group": 2, "topk_method": "noaux_tc", "scoring_func": "sigmoid",
      "routed_scaling_factor": 2.5, "norm_topk_prob": NORM)");
  json.replace(json.find("deepseek_v2"), 11, "deepseek_v3");
  const int64_t n = 64;
  for (bool norm : {true, false}) {
    INFO("norm_topk_prob " << norm);
    std::string j = json;
    j.replace(j.find("NORM"), 4, norm ? "true" : "false");
    const ModelConfig c = parse(j);
    REQUIRE(c.model_type == ModelType::kDeepseekV3);
    const Rule right{true, 2, 4, 2, 4, norm, 2.5, true};
    const Rule max_groups{true, 1, 4, 2, 4, norm, 2.5, true};
    CHECK(check_gate(c, right, &max_groups, n, 4, true) > 0);
    // Bias ignored: the reference with no bias must pick differently for some tokens.
    GateSetup g = make_gate(c, n, 4, true);
    int differ = 0;
    for (int64_t t = 0; t < n; ++t) {
      std::vector<double> logits(16);
      for (int64_t e = 0; e < 16; ++e)
        for (int64_t d = 0; d < c.dim; ++d) logits[size_t(e)] += double(g.h[size_t(t * c.dim + d)]) * g.gate[size_t(e * c.dim + d)];
      std::vector<int32_t> a, b;
      std::vector<double> wa, wb;
      ref_gate(a, wa, logits, {g.lw.gate_bias.begin(), g.lw.gate_bias.end()}, right);
      ref_gate(b, wb, logits, {}, right);
      differ += a != b;
    }
    CHECK(differ > 0);
  }
}

TEST_CASE("moe_forward: routed experts weighted plus shared experts", "[model][moe]") {
  // A V3 MoE layer with F32 weights: out = Σ_k w_k expert_{i_k}(h) + shared(h),
  // expert(h) = down(silu(gate h) * up h).
  std::string json = v2_json(R"("n_group": 4, "topk_group": 2, "topk_method": "noaux_tc", "scoring_func": "sigmoid",
      "routed_scaling_factor": 2.5, "norm_topk_prob": true)");
  json.replace(json.find("deepseek_v2"), 11, "deepseek_v3");
  const ModelConfig c = parse(json);
  const int64_t n = 9, D = c.dim, E = c.n_routed_experts, I = c.moe_inter_dim, IS = I * c.n_shared_experts;
  GateSetup g = make_gate(c, n, 8, true);
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.0f, 0.5f);
  auto fill = [&](std::vector<float>& v, size_t size) {
    v.resize(size);
    for (float& x : v) x = nd(rng);
  };
  std::vector<std::vector<float>> store(size_t(3 * (E + 1)));
  auto mlp = [&](int64_t slot, int64_t inter) {
    MlpWeights m;
    fill(store[size_t(3 * slot)], size_t(inter * D));
    fill(store[size_t(3 * slot + 1)], size_t(inter * D));
    fill(store[size_t(3 * slot + 2)], size_t(D * inter));
    m.gate = {store[size_t(3 * slot)].data(), DType::kF32, inter, D};
    m.up = {store[size_t(3 * slot + 1)].data(), DType::kF32, inter, D};
    m.down = {store[size_t(3 * slot + 2)].data(), DType::kF32, D, inter};
    return m;
  };
  for (int64_t e = 0; e < E; ++e) g.lw.experts.push_back(mlp(e, I));
  g.lw.shared = mlp(E, IS);
  auto ref_mlp = [&](int64_t slot, int64_t inter, const float* h, std::vector<double>& out) {
    const auto &wg = store[size_t(3 * slot)], &wu = store[size_t(3 * slot + 1)], &wd = store[size_t(3 * slot + 2)];
    std::vector<double> a(static_cast<size_t>(inter));
    for (int64_t i = 0; i < inter; ++i) {
      double gs = 0, us = 0;
      for (int64_t d = 0; d < D; ++d) {
        gs += double(wg[size_t(i * D + d)]) * h[d];
        us += double(wu[size_t(i * D + d)]) * h[d];
      }
      a[size_t(i)] = gs / (1 + std::exp(-gs)) * us;
    }
    out.assign(size_t(D), 0.0);
    for (int64_t d = 0; d < D; ++d)
      for (int64_t i = 0; i < inter; ++i) out[size_t(d)] += double(wd[size_t(d * inter + i)]) * a[size_t(i)];
  };

  const RopeTable rope = make_rope_table(c);
  const LayerContext lc{&c, &rope, AttnImpl::kAuto, {}};
  std::vector<float> out(static_cast<size_t>(n * D), NAN);
  moe_forward(out.data(), g.h.data(), g.lw, {}, n, lc);

  const Rule rule{true, 2, 4, 2, 4, true, 2.5, true};
  const std::vector<double> bias(g.lw.gate_bias.begin(), g.lw.gate_bias.end());
  for (int64_t t = 0; t < n; ++t) {
    const float* h = g.h.data() + t * D;
    std::vector<double> logits(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e)
      for (int64_t d = 0; d < D; ++d) logits[size_t(e)] += double(h[d]) * g.gate[size_t(e * D + d)];
    std::vector<int32_t> idx;
    std::vector<double> wt, y, want;
    ref_gate(idx, wt, logits, bias, rule);
    ref_mlp(E, IS, h, want);
    std::vector<double> mag(want.size());
    for (size_t d = 0; d < want.size(); ++d) mag[d] = std::fabs(want[d]);
    for (size_t k = 0; k < idx.size(); ++k) {
      ref_mlp(idx[k], I, h, y);
      for (int64_t d = 0; d < D; ++d) {
        want[size_t(d)] += wt[k] * y[size_t(d)];
        mag[size_t(d)] += std::fabs(wt[k] * y[size_t(d)]);
      }
    }
    for (int64_t d = 0; d < D; ++d) {
      INFO("token " << t << " dim " << d);
      CHECK(std::fabs(out[size_t(t * D + d)] - want[size_t(d)]) <= 1e-5 * mag[size_t(d)] + 1e-6);
    }
  }
}

// ============================================================================================
// The combine tree (model/expert_combine.h): every split of the experts over ranks gives the
// single process's bits
// ============================================================================================

TEST_CASE("maximal combine nodes cover exactly a rank's experts with aligned power-of-two intervals", "[model][moe][combine]") {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 200; ++trial) {
    const int32_t E = 1 + int32_t(rng() % 70);
    std::vector<bool> mine(static_cast<size_t>(E));
    for (size_t e = 0; e < mine.size(); ++e) mine[e] = rng() % 3 != 0;
    std::vector<bool> covered(static_cast<size_t>(E), false);
    for (const CombineNode& n : maximal_nodes(mine)) {
      REQUIRE(n.size >= 1);
      CHECK((n.size & (n.size - 1)) == 0);
      CHECK(n.lo % n.size == 0);
      for (int32_t e = n.lo; e < n.lo + n.size; ++e) {
        REQUIRE(e < E);
        CHECK(mine[size_t(e)]);
        CHECK_FALSE(covered[size_t(e)]);
        covered[size_t(e)] = true;
      }
    }
    CHECK(covered == mine);
  }
  // Two ranks holding halves of 64 experts: one node each.
  std::vector<bool> low(64, false);
  std::fill(low.begin(), low.begin() + 32, true);
  const auto nodes = maximal_nodes(low);
  REQUIRE(nodes.size() == 1);
  CHECK((nodes[0].lo == 0 && nodes[0].size == 32));
}

TEST_CASE("partials of any split of the experts add up to the single process's bits", "[model][moe][combine]") {
  std::mt19937 rng(11);
  const int64_t dim = 37;
  for (int trial = 0; trial < 300; ++trial) {
    const int32_t E = 2 + int32_t(rng() % 63), k = 1 + int32_t(rng() % std::min<int32_t>(8, E));
    // A token's k distinct experts (ascending) and leaves with values of mixed magnitude, zeros
    // and negative zeros included.
    std::vector<int32_t> all(static_cast<size_t>(E));
    for (int32_t e = 0; e < E; ++e) all[size_t(e)] = e;
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<int32_t> ids(all.begin(), all.begin() + k);
    std::sort(ids.begin(), ids.end());
    std::vector<float> leaves(static_cast<size_t>(k * dim));
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (float& v : leaves) {
      const uint32_t r = rng() % 10;
      v = r == 0 ? 0.0f : r == 1 ? -0.0f : u(rng) * std::ldexp(1.0f, int(rng() % 40) - 20);
    }
    const CombineNode root{0, combine_width(E)};
    std::vector<CombineTerm> terms;
    for (int32_t j = 0; j < k; ++j) terms.push_back({{ids[size_t(j)], 1}, leaves.data() + j * dim});
    std::vector<float> want(static_cast<size_t>(dim));
    combine_sum(want.data(), root, terms, dim);
    // A random owner per expert (1 to 5 ranks): each rank's partials, then the tree over them.
    const int ranks = 1 + int(rng() % 5);
    std::vector<int> owner(static_cast<size_t>(E));
    for (int& o : owner) o = int(rng() % unsigned(ranks));
    std::vector<std::vector<float>> partials(static_cast<size_t>(ranks));
    std::vector<CombineTerm> got_terms;
    for (int r = 0; r < ranks; ++r) {
      std::vector<bool> mine(static_cast<size_t>(E));
      for (int32_t e = 0; e < E; ++e) mine[size_t(e)] = owner[size_t(e)] == r;
      std::vector<int32_t> my_ids;
      std::vector<float> my_leaves;
      for (int32_t j = 0; j < k; ++j)
        if (mine[size_t(ids[size_t(j)])]) {
          my_ids.push_back(ids[size_t(j)]);
          my_leaves.insert(my_leaves.end(), leaves.begin() + j * dim, leaves.begin() + (j + 1) * dim);
        }
      const auto nodes = maximal_nodes(mine);
      partials[size_t(r)].resize(my_ids.size() * size_t(dim));
      // The leaves as outputs of weight 1 (x * 1 is x, -0.0 included).
      std::vector<const float*> outputs;
      for (size_t j = 0; j < my_ids.size(); ++j) outputs.push_back(my_leaves.data() + j * size_t(dim));
      const std::vector<float> ones(my_ids.size(), 1.0f);
      const auto used = weighted_partials(partials[size_t(r)].data(), nodes, my_ids, outputs, ones, dim);
      for (size_t i = 0; i < used.size(); ++i) got_terms.push_back({used[i], partials[size_t(r)].data() + i * size_t(dim)});
    }
    std::sort(got_terms.begin(), got_terms.end(), [](const CombineTerm& a, const CombineTerm& b) { return a.node.lo < b.node.lo; });
    std::vector<float> got(static_cast<size_t>(dim));
    combine_sum(got.data(), root, got_terms, dim);
    INFO("experts " << E << ", k " << k << ", ranks " << ranks);
    CHECK(std::memcmp(got.data(), want.data(), size_t(dim) * sizeof(float)) == 0);
  }
}

// A GGUF base keeps MLA's kv_b_proj split per head (attn_k_b: W_UK transposed, attn_v_b: W_UV);
// a kv_b_proj adapter is still in kv_b_proj's layout and applies per head beside the split
// products. Layer 1 of tiny-v3-bf16 with adapter a (which adapts kv_b_proj), its kv_b written
// out split as the GGUF converter does, must give what the unsplit layout gives (which the
// goldens check), in both MLA paths; without the adapter's kv_b term the outputs would differ.
TEST_CASE("a kv_b_proj adapter on a split (GGUF) kv_b gives the unsplit layout's attention", "[model][lora][gguf]") {
  auto ck = Checkpoint::open(fixture("tiny-v3-bf16"));
  REQUIRE(ck.ok());
  ModelConfig c = (*ck)->config();
  auto lora = load_lora(fixture("lora-tiny-v3-a"), &c);
  REQUIRE(lora.ok());
  const LoraAdapters loras{lora->get()};
  auto layer = load_layer(**ck, 1, ExpertFilter{}, loras);
  REQUIRE(layer.ok());
  REQUIRE(layer->attn.lora.wkv_b.any());
  // Only the kv_b_proj term, so the comparison is about it alone.
  auto& l = layer->attn.lora;
  l.wq = l.wq_a = l.wq_b = l.wkv_a = l.wo = l.wk = l.wv = {};
  const int64_t H = c.n_heads, dn = c.qk_nope_head_dim, dv = c.v_head_dim, C = c.kv_lora_rank;
  // The split weights, float32: k_b [H * C, dn] (W_UK of head h transposed), v_b [H * dv, C].
  std::vector<float> k_b(static_cast<size_t>(H * C * dn)), v_b(static_cast<size_t>(H * dv * C)), row(static_cast<size_t>(C));
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t i = 0; i < dn; ++i) {
      kernels::dequantize_row(row.data(), layer->attn.wkv_b, h * (dn + dv) + i);
      for (int64_t j = 0; j < C; ++j) k_b[size_t((h * C + j) * dn + i)] = row[size_t(j)];
    }
    for (int64_t i = 0; i < dv; ++i) kernels::dequantize_row(v_b.data() + (h * dv + i) * C, layer->attn.wkv_b, h * (dn + dv) + dn + i);
  }
  AttnWeights split = layer->attn;
  split.wk_b = {k_b.data(), DType::kF32, H * C, dn};
  split.wv_b = {v_b.data(), DType::kF32, H * dv, C};
  split.wkv_b = {};
  ModelConfig cs = c;
  cs.mla_split_kv_b = true;
  const RopeTable rope = make_rope_table(c);
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  const int64_t n = 6, cap = 16;
  std::vector<float> h_in(static_cast<size_t>(n * c.dim));
  for (float& v : h_in) v = normal(rng);
  for (AttnImpl impl : {AttnImpl::kNaive, AttnImpl::kAbsorb}) {
    std::vector<float> split_base;
    for (int32_t adapter : {0, 1}) {
      INFO(impl_name(impl) << ", adapter " << adapter);
      std::vector<float> out[2];
      for (int k = 0; k < 2; ++k) {
        const ModelConfig& cfg = k == 0 ? c : cs;
        const LayerContext lc{&cfg, &rope, impl, {}};
        std::vector<float> kv(static_cast<size_t>(cap * C)), pe(static_cast<size_t>(cap * c.qk_rope_head_dim));
        Batch b;
        b.add_sequence(0, 0, std::vector<int32_t>(size_t(n), 5), adapter);
        out[k].resize(static_cast<size_t>(n * c.dim));
        mla_forward(out[k].data(), h_in.data(), k == 0 ? layer->attn : split, b, {SeqKv{kv.data(), pe.data(), cap}}, lc);
      }
      double worst = 0, scale = 0;
      for (size_t i = 0; i < out[0].size(); ++i) {
        worst = std::max(worst, std::fabs(double(out[0][i]) - double(out[1][i])));
        scale = std::max(scale, std::fabs(double(out[0][i])));
      }
      CHECK(worst <= 1e-5 * std::max(1.0, scale));
      if (adapter == 0) split_base = out[1];
      double moved = 0;  // the kv_b term acts on the split layout
      for (size_t i = 0; i < out[1].size(); ++i) moved = std::max(moved, std::fabs(double(out[1][i]) - double(split_base[i])));
      if (adapter == 1) CHECK(moved > 1e-3);
    }
  }
}
