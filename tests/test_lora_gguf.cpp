// LoRA adapters in llama.cpp's GGUF format (model/lora_gguf.h): the fixtures
// tests/fixtures/lora-gguf/*.gguf, made from the PEFT fixtures lora-tiny-v3-a and -b by
// tools/lora_to_gguf.py (llama.cpp's naming and shapes), load with the PEFT folders' modules,
// ranks, scales and values; applied to tiny-v3-bf16 they give the PEFT adapters' logits bit for
// bit (so the adapted model's goldens hold); Q8_0 A works; every bad file is refused naming the
// file and the key or tensor, through the library and `shoal inspect --lora`.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>

#include "coordinator/engine.h"
#include "kernels/kernels.h"
#include "model/config.h"
#include "model/gguf.h"
#include "model/gguf_checkpoint.h"
#include "model/gguf_writer.h"
#include "model/lora.h"
#include "model/lora_gguf.h"
#include "model/tensor_names.h"
#include "support/expect.h"
#include "support/files.h"
#include "support/process.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace shoal;
using shoal::test::TempDir;

namespace {

const fs::path kFixtures = SHOAL_FIXTURES;
const fs::path kBase = kFixtures / "tiny-v3-bf16";
const fs::path kGguf = kFixtures / "lora-gguf";

using shoal::test::config_of;
using shoal::test::expect_error;

std::vector<float> rows_f32(const kernels::Matrix& m) {
  std::vector<float> out(size_t(m.rows * m.cols));
  for (int64_t r = 0; r < m.rows; ++r) kernels::dequantize_row(out.data() + r * m.cols, m, r);
  return out;
}

// A GGUF file as values to edit and write back: its metadata and tensors.
struct Image {
  std::vector<std::pair<std::string, GgufValue>> kv;
  std::vector<GgufTensorBlob> tensors;

  static Image read(const fs::path& path) {
    auto f = GgufFile::open(path);
    REQUIRE(f.ok());
    Image im;
    im.kv = (*f)->header().kv;
    for (const GgufTensor& t : (*f)->header().tensors) {
      const std::byte* d = (*f)->data(t);
      im.tensors.push_back({t.name, t.dtype, t.ne, std::vector<std::byte>(d, d + t.bytes)});
    }
    return im;
  }
  void write(const fs::path& path) const {
    std::vector<const GgufTensorBlob*> ptrs;
    for (const GgufTensorBlob& t : tensors) ptrs.push_back(&t);
    REQUIRE(write_gguf(path, kv, ptrs).ok());
  }
  void set(const std::string& key, GgufValue v) {
    for (auto& [k, old] : kv)
      if (k == key) {
        old = std::move(v);
        return;
      }
    kv.emplace_back(key, std::move(v));
  }
  void erase(const std::string& key) {
    std::erase_if(kv, [&](const auto& e) { return e.first == key; });
  }
  GgufTensorBlob& tensor(const std::string& name) {
    for (GgufTensorBlob& t : tensors)
      if (t.name == name) return t;
    FAIL("no tensor " << name);
    return tensors.front();
  }
  // A zero F32 pair `base`.lora_a {in, r} / .lora_b {r, out} added.
  void add_pair(const std::string& base, int64_t in, int64_t out, int64_t r) {
    tensors.push_back({base + ".lora_a", DType::kF32, {in, r}, std::vector<std::byte>(size_t(4 * in * r))});
    tensors.push_back({base + ".lora_b", DType::kF32, {r, out}, std::vector<std::byte>(size_t(4 * r * out))});
  }
};

// The same refusal through the CLI: a non-zero exit and the message.
void expect_cli_error(const fs::path& lora, const std::string& says) {
  int status = 0;
  const std::string out = test::run_command(std::string(SHOAL_BINARY) + " inspect --lora '" + lora.string() +
                                                "' --model '" + kBase.string() + "' 2>&1",
                                            &status);
  INFO(out);
  CHECK(status != 0);
  CHECK(out.find(says) != std::string::npos);
}

// Every prompt position's and greedy step's logits of the golden's cases, with `lora` applied.
struct Run {
  std::vector<GreedyResult> cases;
};

Run run_golden(const json& golden, const fs::path& lora, AttnImpl impl) {
  Run run;
  for (const json& c : golden["cases"]) {
    const auto prompts = c["prompt_ids"].get<std::vector<std::vector<int32_t>>>();
    EngineOptions eo;
    eo.n_slots = int64_t(prompts.size());
    eo.attn_impl = impl;
    eo.loras = {{"", lora}};  // one unnamed adapter: every sequence's
    auto engine = Engine::open(kBase, eo);
    INFO((engine.ok() ? std::string() : engine.status().to_string()));
    REQUIRE(engine.ok());
    auto r = generate_greedy(**engine, prompts, golden["greedy_steps"].get<int64_t>(), true, true);
    REQUIRE(r.ok());
    run.cases.push_back(std::move(*r));
  }
  return run;
}

// The worst |got - want| - (atol + rtol |want|) over a run against the golden (<= 0: within).
double worst_excess(const Run& run, const json& golden) {
  const double atol = golden["tolerance"]["atol"], rtol = golden["tolerance"]["rtol"];
  double worst = -1e30;
  const auto over = [&](const std::vector<float>& got, const json& want) {
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      const double w = want[i].get<double>();
      worst = std::max(worst, std::fabs(double(got[i]) - w) - (atol + rtol * std::fabs(w)));
    }
  };
  for (size_t k = 0; k < run.cases.size(); ++k) {
    const json& c = golden["cases"][k];
    const GreedyResult& r = run.cases[k];
    for (size_t b = 0; b < r.ids.size(); ++b) {
      CHECK(r.ids[b] == c["greedy_ids"][b].get<std::vector<int32_t>>());
      for (size_t p = 0; p < r.prompt_logits[b].size(); ++p) over(r.prompt_logits[b][p], c["prompt_logits"][b][p]);
      for (size_t s = 0; s < r.step_logits[b].size(); ++s) over(r.step_logits[b][s], c["greedy_logits"][b][s]);
    }
  }
  return worst;
}

bool same_bits(const Run& x, const Run& y) {
  if (x.cases.size() != y.cases.size()) return false;
  const auto eq = [](const std::vector<std::vector<std::vector<float>>>& a, const std::vector<std::vector<std::vector<float>>>& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
      if (a[i].size() != b[i].size()) return false;
      for (size_t j = 0; j < a[i].size(); ++j)
        if (a[i][j].size() != b[i][j].size() ||
            std::memcmp(a[i][j].data(), b[i][j].data(), a[i][j].size() * sizeof(float)) != 0)
          return false;
    }
    return true;
  };
  for (size_t k = 0; k < x.cases.size(); ++k)
    if (x.cases[k].ids != y.cases[k].ids || !eq(x.cases[k].prompt_logits, y.cases[k].prompt_logits) ||
        !eq(x.cases[k].step_logits, y.cases[k].step_logits))
      return false;
  return true;
}

double max_abs_diff(const Run& x, const Run& y) {
  double d = 0;
  for (size_t k = 0; k < x.cases.size(); ++k)
    for (size_t b = 0; b < x.cases[k].prompt_logits.size(); ++b)
      for (size_t p = 0; p < x.cases[k].prompt_logits[b].size(); ++p)
        for (size_t i = 0; i < x.cases[k].prompt_logits[b][p].size(); ++i)
          d = std::max(d, double(std::fabs(x.cases[k].prompt_logits[b][p][i] - y.cases[k].prompt_logits[b][p][i])));
  return d;
}

json read_json(const fs::path& p) { return json::parse(std::ifstream(p)); }

}  // namespace

TEST_CASE("GGUF adapters load with the PEFT folders' modules, ranks, scales and values", "[lora][gguf]") {
  const ModelConfig base = config_of(kBase);
  for (const std::string name : {"lora-tiny-v3-a", "lora-tiny-v3-b"}) {
    INFO(name);
    auto peft = load_lora(kFixtures / name, &base);
    auto gguf = load_lora(kGguf / (name + ".gguf"), &base);
    INFO((gguf.ok() ? std::string() : gguf.status().to_string()));
    REQUIRE((peft.ok() && gguf.ok()));
    REQUIRE((*gguf)->gguf != nullptr);
    CHECK((*gguf)->file == nullptr);
    REQUIRE((*gguf)->modules.size() == (*peft)->modules.size());
    CHECK((*gguf)->parameters() == (*peft)->parameters());
    CHECK((*gguf)->r == (*peft)->r);
    CHECK((*gguf)->targets.find("kv_b_proj") != std::string::npos);
    for (const auto& [weight, p] : (*peft)->modules) {
      INFO(weight);
      const LoraModule* g = (*gguf)->find(weight);
      REQUIRE(g != nullptr);
      CHECK(g->module == p.module);
      CHECK(g->rank == p.rank);
      // The alpha written makes llama.cpp's float32 alpha / rank PEFT's scale exactly (rsLoRA for b).
      CHECK(g->scale == p.scale);
      CHECK((g->a.rows == p.a.rows && g->a.cols == p.a.cols && g->b.rows == p.b.rows && g->b.cols == p.b.cols));
      CHECK(rows_f32(g->a) == rows_f32(p.a));
      CHECK(rows_f32(g->b) == rows_f32(p.b));
    }
  }
  // b's scale is rsLoRA's alpha / sqrt(r), from the alpha llama.cpp needs (docs/lora.md).
  auto b = load_lora(kGguf / "lora-tiny-v3-b.gguf", &base);
  REQUIRE(b.ok());
  CHECK((*b)->modules.size() == 12);
  CHECK((*b)->find("model.layers.2.self_attn.o_proj.weight")->scale == float(7 / std::sqrt(5.0)));
  CHECK((*b)->alpha == Approx(7 * std::sqrt(5.0)).epsilon(1e-6));
  // Alone, without a base: the adapter's own shapes.
  auto alone = load_lora(kGguf / "lora-tiny-v3-a.gguf", nullptr);
  REQUIRE(alone.ok());
  CHECK((*alone)->modules.size() == 104);
  CHECK((*alone)->find("model.layers.3.mlp.experts.7.down_proj.weight") != nullptr);
}

TEST_CASE("gguf_hf_name inverts gguf_source on every tensor of the bases", "[lora][gguf]") {
  for (const std::string model : {"tiny-v3-bf16", "tiny-qwen2", "tiny-llama3"}) {
    ModelConfig c = config_of(kFixtures / model);
    for (const bool split : {false, true}) {
      c.mla_split_kv_b = split && c.uses_mla();
      for (const TensorSpec& t : model_tensors(c, /*with_mtp=*/false)) {
        const GgufSource src = gguf_source(t);
        INFO(t.name << " <- " << src.name);
        CHECK(gguf_hf_name(src.name, src.expert) == t.name);
      }
    }
  }
  CHECK_FALSE(gguf_hf_name("blk.1.ffn_up_exps.weight").has_value());  // a stacked tensor needs its expert
  CHECK_FALSE(gguf_hf_name("blk.01.attn_q_b.weight").has_value());
  CHECK_FALSE(gguf_hf_name("blk.1.attn_q_b.weight", 3).has_value());
  CHECK_FALSE(gguf_hf_name("blk.x.attn_q_b.weight").has_value());
}

TEST_CASE("a folder holding one GGUF adapter loads; two are refused", "[lora][gguf]") {
  const ModelConfig base = config_of(kBase);
  TempDir d;
  fs::create_directories(d.path / "one");
  fs::copy_file(kGguf / "lora-tiny-v3-b.gguf", d.path / "one" / "adapter.gguf");
  auto a = load_lora(d.path / "one", &base);
  INFO((a.ok() ? std::string() : a.status().to_string()));
  REQUIRE(a.ok());
  CHECK((*a)->modules.size() == 12);
  CHECK((*a)->dir == d.path / "one");
  fs::copy_file(kGguf / "lora-tiny-v3-a.gguf", d.path / "one" / "other.gguf");
  expect_error(load_lora(d.path / "one", &base), {"2 .gguf files", "adapter.gguf, other.gguf", "pass the adapter's file"});
  // A PEFT folder that also holds a .gguf stays a PEFT folder.
  fs::create_directories(d.path / "peft");
  for (const char* f : {"adapter_config.json", "adapter_model.safetensors"})
    fs::copy_file(kFixtures / "lora-tiny-v3-b" / f, d.path / "peft" / f);
  fs::copy_file(kGguf / "lora-tiny-v3-a.gguf", d.path / "peft" / "converted.gguf");
  auto peft = load_lora(d.path / "peft", &base);
  REQUIRE(peft.ok());
  CHECK((*peft)->file != nullptr);
  CHECK((*peft)->gguf == nullptr);
  // A missing file: the error names it.
  expect_error(load_lora(d.path / "missing.gguf", &base), {(d.path / "missing.gguf").string(), "cannot open"});
}

TEST_CASE("GGUF adapters give the PEFT adapters' logits bit for bit, within the adapted goldens", "[lora][gguf][golden]") {
  for (const std::string name : {"lora-tiny-v3-a", "lora-tiny-v3-b"}) {
    INFO(name);
    const json golden = read_json(kFixtures / name / "golden.json");
    const Run gguf = run_golden(golden, kGguf / (name + ".gguf"), AttnImpl::kAbsorb);
    CHECK(worst_excess(gguf, golden) <= 0.0);
    CHECK(same_bits(gguf, run_golden(golden, kFixtures / name, AttnImpl::kAbsorb)));
  }
  const json golden = read_json(kFixtures / "lora-tiny-v3-a" / "golden.json");
  const Run naive = run_golden(golden, kGguf / "lora-tiny-v3-a.gguf", AttnImpl::kNaive);
  CHECK(worst_excess(naive, golden) <= 0.0);
  CHECK(same_bits(naive, run_golden(golden, kFixtures / "lora-tiny-v3-a", AttnImpl::kNaive)));
}

TEST_CASE("a Q8_0 GGUF adapter applies its blocks as the same values in F32 do", "[lora][gguf]") {
  // tools/lora_to_gguf.py --outtype q8_0: A Q8_0 where its rows are whole blocks (expert slices
  // included), F16 elsewhere (B, rank 8). The twin holds the same values as F32.
  const ModelConfig base = config_of(kBase);
  const fs::path q8 = kGguf / "lora-tiny-v3-a-q8_0.gguf";
  auto a = load_lora(q8, &base);
  INFO((a.ok() ? std::string() : a.status().to_string()));
  REQUIRE(a.ok());
  const LoraModule* m = (*a)->find("model.layers.2.mlp.experts.5.down_proj.weight");
  REQUIRE(m != nullptr);
  CHECK(m->a.dtype == DType::kQ8_0);
  CHECK(m->b.dtype == DType::kF16);
  uint64_t bytes = 0;
  for (const auto& [w, mod] : (*a)->modules)
    bytes += uint64_t(mod.a.rows * dtype_row_bytes(mod.a.dtype, mod.a.cols) + mod.b.rows * dtype_row_bytes(mod.b.dtype, mod.b.cols));
  CHECK((*a)->bytes() == bytes);
  CHECK((*a)->bytes() < uint64_t(2 * (*a)->parameters()));

  TempDir d;
  Image im = Image::read(q8);
  for (GgufTensorBlob& t : im.tensors) {
    kernels::Matrix whole;
    whole.data = t.bytes.data();
    whole.dtype = t.dtype;
    whole.cols = t.ne[0];
    whole.rows = int64_t(t.bytes.size()) / dtype_row_bytes(t.dtype, t.ne[0]);
    const std::vector<float> v = rows_f32(whole);
    t.dtype = DType::kF32;
    t.bytes.resize(v.size() * 4);
    std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
  }
  im.write(d.path / "twin.gguf");
  auto twin = load_lora(d.path / "twin.gguf", &base);
  REQUIRE(twin.ok());
  for (const auto& [w, mod] : (*a)->modules) {
    INFO(w);
    CHECK(rows_f32(mod.a) == rows_f32((*twin)->find(w)->a));
    CHECK(rows_f32(mod.b) == rows_f32((*twin)->find(w)->b));
  }
  const json golden = read_json(kFixtures / "lora-tiny-v3-a" / "golden.json");
  const Run got = run_golden(golden, q8, AttnImpl::kAbsorb), want = run_golden(golden, d.path / "twin.gguf", AttnImpl::kAbsorb);
  for (size_t k = 0; k < got.cases.size(); ++k) CHECK(got.cases[k].ids == want.cases[k].ids);
  CHECK(max_abs_diff(got, want) < 1e-4);
}

TEST_CASE("bad GGUF adapters are refused naming the file and the key or tensor", "[lora][gguf][errors]") {
  const ModelConfig base = config_of(kBase);
  struct Case {
    std::string what;
    std::string fixture;  // lora-tiny-v3-b (attention, F32) unless it needs experts
    std::function<void(Image&)> edit;
    std::vector<std::string> says;
  };
  const std::string o0 = "blk.0.attn_output.weight";
  const std::vector<Case> cases = {
      {"a model, not an adapter", "", [](Image& im) { im.set("general.type", gguf_str("model")); },
       {"metadata 'general.type'", "\"model\"", "not \"adapter\""}},
      {"no general.type", "", [](Image& im) { im.erase("general.type"); }, {"'general.type'", "missing"}},
      {"not LoRA", "", [](Image& im) { im.set("adapter.type", gguf_str("cvec")); }, {"'adapter.type'", "cvec"}},
      {"no adapter.type", "", [](Image& im) { im.erase("adapter.type"); }, {"'adapter.type'", "missing"}},
      {"another architecture", "", [](Image& im) { im.set("general.architecture", gguf_str("qwen2")); },
       {"'general.architecture'", "qwen2", "deepseek2"}},
      {"alpha not FLOAT32", "", [](Image& im) { im.set("adapter.lora.alpha", gguf_u32(16)); },
       {"'adapter.lora.alpha'", "FLOAT32"}},
      {"alpha negative", "", [](Image& im) { im.set("adapter.lora.alpha", gguf_f32(-2)); }, {"'adapter.lora.alpha'", ">= 0"}},
      {"alpha NaN", "", [](Image& im) { im.set("adapter.lora.alpha", gguf_f32(std::numeric_limits<float>::quiet_NaN())); },
       {"'adapter.lora.alpha'", "finite"}},
      {"aLoRA", "", [](Image& im) { im.set("adapter.alora.invocation_tokens", gguf_ints(GgufType::kU32, {5, 6})); },
       {"'adapter.alora.invocation_tokens'", "not supported"}},
      {"a stray tensor", "",
       [](Image& im) { im.tensors.push_back({"blk.0.attn_norm.weight", DType::kF32, {64}, std::vector<std::byte>(256)}); },
       {"'blk.0.attn_norm.weight'", ".lora_a or .lora_b"}},
      {"lora_b missing", "", [&](Image& im) { std::erase_if(im.tensors, [&](auto& t) { return t.name == o0 + ".lora_b"; }); },
       {"'" + o0 + "'", "lora_a but no lora_b"}},
      {"a layer the base lacks", "",
       [&](Image& im) {
         for (auto& t : im.tensors)
           if (t.name.starts_with(o0)) t.name.replace(0, 5, "blk.9");
       },
       {"'blk.9.attn_output.weight.lora_a'", "model.layers.9.self_attn.o_proj.weight", "does not exist in the base"}},
      {"the router", "", [](Image& im) { im.add_pair("blk.1.ffn_gate_inp.weight", 64, 8, 5); },
       {"'blk.1.ffn_gate_inp.weight.lora_a'", "model.layers.1.mlp.gate.weight", "router"}},
      {"a norm", "", [](Image& im) { im.add_pair("blk.0.attn_norm.weight", 64, 1, 5); },
       {"'blk.0.attn_norm.weight.lora_a'", "input_layernorm", "does not exist in the base"}},
      {"the embedding", "", [](Image& im) { im.add_pair("token_embd.weight", 64, 1024, 5); },
       {"'token_embd.weight.lora_a'", "model.embed_tokens.weight", "embedding"}},
      {"the head", "", [](Image& im) { im.add_pair("output.weight", 64, 1024, 5); }, {"'output.weight.lora_a'", "lm_head.weight"}},
      {"an unknown tensor", "", [](Image& im) { im.add_pair("blk.0.attn_foo.weight", 64, 64, 5); },
       {"'blk.0.attn_foo.weight.lora_a'", "not one of llama.cpp's deepseek2 tensors"}},
      {"split MLA k_b", "", [](Image& im) { im.add_pair("blk.0.attn_k_b.weight", 32, 32, 5); },
       {"'blk.0.attn_k_b.weight.lora_a'", "attn_k_b", "kv_b_proj whole"}},
      {"A's inputs", "",
       [&](Image& im) {
         auto& t = im.tensor(o0 + ".lora_a");
         t.ne = {64, 5};
         t.bytes.resize(4 * 64 * 5);
       },
       {"'" + o0 + ".lora_a'", "is [5, 64], expected [5, 128]"}},
      {"B's rank", "",
       [&](Image& im) {
         auto& t = im.tensor(o0 + ".lora_b");
         t.ne = {4, 64};
         t.bytes.resize(4 * 4 * 64);
       },
       {"'" + o0 + ".lora_b'", "expected [64, 5]", "rank 5"}},
      {"3 dimensions", "",
       [&](Image& im) {
         auto& t = im.tensor(o0 + ".lora_a");
         t.ne = {128, 5, 1};
       },
       {"'" + o0 + ".lora_a'", "2 dimensions"}},
      {"an empty dimension", "",
       [&](Image& im) {
         auto& t = im.tensor(o0 + ".lora_a");
         t.ne = {128, 0};
         t.bytes.clear();
       },
       {"'" + o0 + ".lora_a'", "empty dimension"}},
      {"Q4_0", "",
       [&](Image& im) {
         auto& t = im.tensor(o0 + ".lora_a");
         t.dtype = DType::kQ4_0;
         t.bytes.assign(size_t(5 * 4 * 18), std::byte{0});
       },
       {"'" + o0 + ".lora_a'", "Q4_0", "F32, F16, BF16 or Q8_0"}},
      {"no tensors", "", [](Image& im) { im.tensors.clear(); }, {"holds no LoRA tensors"}},
      {"7 experts of 8", "lora-tiny-v3-a",
       [](Image& im) {
         auto& t = im.tensor("blk.2.ffn_up_exps.weight.lora_a");
         t.ne[2] = 7;
         t.bytes.resize(t.bytes.size() / 8 * 7);
       },
       {"'blk.2.ffn_up_exps.weight.lora_a'", "expected 8 experts", "n_routed_experts"}},
      {"experts not stacked", "lora-tiny-v3-a",
       [](Image& im) {
         auto& t = im.tensor("blk.2.ffn_up_exps.weight.lora_b");
         t.ne = {8, 32 * 8};
       },
       {"'blk.2.ffn_up_exps.weight.lora_b'", "third dimension"}},
      {"experts of a dense layer", "lora-tiny-v3-a",
       [](Image& im) {
         for (auto& t : im.tensors)
           if (t.name.starts_with("blk.1.ffn_up_exps")) t.name.replace(0, 5, "blk.0");
       },
       {"'blk.0.ffn_up_exps.weight.lora_a'", "model.layers.0.mlp.experts.0.up_proj.weight", "does not exist in the base"}},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    TempDir d;
    Image im = Image::read(kGguf / ((c.fixture.empty() ? "lora-tiny-v3-b" : c.fixture) + ".gguf"));
    c.edit(im);
    im.write(d.path / "bad.gguf");
    auto r = load_lora(d.path / "bad.gguf", &base);
    std::vector<std::string> says = c.says;
    says.push_back((d.path / "bad.gguf").string());
    expect_error(r, says);
    expect_cli_error(d.path / "bad.gguf", c.says.front());
  }
  {  // Truncated: the reader's error, naming the file.
    TempDir d;
    fs::copy_file(kGguf / "lora-tiny-v3-b.gguf", d.path / "cut.gguf");
    fs::resize_file(d.path / "cut.gguf", 2000);
    expect_error(load_lora(d.path / "cut.gguf", &base), {(d.path / "cut.gguf").string()});
  }
  {  // Another base: the architecture, then (same architecture) the first module it lacks.
    const ModelConfig qwen = config_of(kFixtures / "tiny-qwen2");
    expect_error(load_lora(kGguf / "lora-tiny-v3-b.gguf", &qwen), {"'general.architecture'", "\"qwen2\""});
    ModelConfig smaller = base;
    smaller.n_layers = 2;
    expect_error(load_lora(kGguf / "lora-tiny-v3-b.gguf", &smaller), {"model.layers.2.", "does not exist in the base"});
  }
}

TEST_CASE("a llama GGUF adapter's q and k rows are refused on a Hugging Face base, accepted on its GGUF", "[lora][gguf]") {
  // llama.cpp's converter permutes the rows of q_proj's and k_proj's B as it permutes the base's.
  const ModelConfig hf = config_of(kFixtures / "tiny-llama3");
  auto gguf_base = GgufModel::open(kFixtures / "gguf-tiny-dense" / "tiny-llama3-bf16.gguf");
  REQUIRE(gguf_base.ok());
  auto gc = gguf_model_config(**gguf_base);
  REQUIRE(gc.ok());
  REQUIRE(gc->rope_interleaved);
  TempDir d;
  Image im;
  im.kv = {{"general.architecture", gguf_str("llama")}, {"general.type", gguf_str("adapter")},
           {"adapter.type", gguf_str("lora")}, {"adapter.lora.alpha", gguf_f32(8)}};
  im.add_pair("blk.0.attn_q.weight", hf.dim, hf.n_heads * hf.head_dim, 4);
  im.add_pair("blk.1.ffn_down.weight", hf.inter_dim, hf.dim, 4);
  im.write(d.path / "llama.gguf");
  expect_error(load_lora(d.path / "llama.gguf", &hf), {"'blk.0.attn_q.weight.lora_a'", "permuted", "PEFT adapter"});
  auto ok = load_lora(d.path / "llama.gguf", &*gc);
  INFO((ok.ok() ? std::string() : ok.status().to_string()));
  REQUIRE(ok.ok());
  CHECK((*ok)->modules.size() == 2);
  CHECK((*ok)->find("model.layers.0.self_attn.q_proj.weight")->scale == 2.0f);
  // No alpha: llama.cpp's scale 1.
  im.erase("adapter.lora.alpha");
  im.write(d.path / "llama.gguf");
  auto no_alpha = load_lora(d.path / "llama.gguf", &*gc);
  REQUIRE(no_alpha.ok());
  CHECK((*no_alpha)->find("model.layers.1.mlp.down_proj.weight")->scale == 1.0f);
}

TEST_CASE("shoal inspect --lora reads a GGUF adapter, checked against --model", "[lora][gguf][cli]") {
  int status = -1;
  const std::string out = test::run_command(std::string(SHOAL_BINARY) + " inspect --json --lora '" +
                                                (kGguf / "lora-tiny-v3-b.gguf").string() + "' --model '" + kBase.string() + "'",
                                            &status);
  INFO(out);
  REQUIRE(status == 0);
  const json j = json::parse(out);
  CHECK(j["r"] == 5);
  CHECK(j["modules"] == 12);
  CHECK(j["matches_base"] == true);
  CHECK(j["target_modules"] == "kv_b_proj, o_proj, q_b_proj");
  const ModelConfig base = config_of(kBase);
  auto peft = load_lora(kFixtures / "lora-tiny-v3-b", &base);
  REQUIRE(peft.ok());
  CHECK(j["parameters"] == (*peft)->parameters());
  CHECK(j["bytes"] == 4 * (*peft)->parameters());  // F32
  CHECK(j["modules_by_scale"].size() == 1);
  const std::string alone = test::run_command(std::string(SHOAL_BINARY) + " inspect --json --lora '" +
                                                  (kGguf / "lora-tiny-v3-a.gguf").string() + "'",
                                              &status);
  REQUIRE(status == 0);
  CHECK(json::parse(alone)["matches_base"] == false);
  CHECK(json::parse(alone)["modules"] == 104);
  CHECK(json::parse(alone)["bytes"] == 2 * json::parse(alone)["parameters"].get<int64_t>());  // BF16
}
