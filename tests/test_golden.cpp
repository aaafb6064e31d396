// The forward pass against golden logits from DeepSeek's inference/model.py (tests/fixtures/*/
// golden.json, see their README.md): every prompt position and greedy step within
// |got - want| <= atol + rtol |want|, greedy ids exact. Both MLA paths, both fixtures; the dense
// distills' fixtures; the GGUF fixtures.
#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <unistd.h>
#include <fstream>
#include <nlohmann/json.hpp>

#include "coordinator/engine.h"
#include "support/process.h"

using nlohmann::json;
using namespace shoal;
using shoal::test::run_command;

namespace {

json read_json(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  return json::parse(in);
}

struct Tolerance {
  double atol, rtol;
};

// Returns the worst excess over the tolerance (<= 0 when every value is within it).
double worst_excess(const std::vector<float>& got, const json& want, const Tolerance& tol) {
  REQUIRE(got.size() == want.size());
  double worst = -1e30;
  for (size_t i = 0; i < got.size(); ++i) {
    const double w = want[i].get<double>();
    worst = std::max(worst, std::fabs(double(got[i]) - w) - (tol.atol + tol.rtol * std::fabs(w)));
  }
  return worst;
}

// Each prompt's logits and greedy ids over `steps` steps, on an engine with `eo` (one slot per prompt).
GreedyResult run_prompts(const std::string& dir, EngineOptions eo, const std::vector<std::vector<int32_t>>& prompts,
                         int64_t steps) {
  eo.n_slots = int64_t(prompts.size());
  auto engine = Engine::open(dir, eo);
  REQUIRE(engine.ok());
  auto r = generate_greedy(**engine, prompts, steps, true, true);
  REQUIRE(r.ok());
  return std::move(*r);
}

// The model at `model` (a fixture folder or a file in one) against the golden of `golden_dir`,
// with the LoRA adapter fixture `lora` applied when given.
void check_fixture(const std::string& model, const std::string& golden_dir, AttnImpl impl, const std::string& lora = "",
                   bool merge_lora = false) {
  const std::string name = model;
  const std::string dir = std::string(SHOAL_FIXTURES) + "/" + model;
  const json golden = read_json(std::string(SHOAL_FIXTURES) + "/" + golden_dir + "/golden.json");
  const Tolerance tol{golden["tolerance"]["atol"].get<double>(), golden["tolerance"]["rtol"].get<double>()};
  const int64_t steps = golden["greedy_steps"].get<int64_t>();
  for (const json& c : golden["cases"]) {
    const auto prompts = c["prompt_ids"].get<std::vector<std::vector<int32_t>>>();
    EngineOptions eo;
    eo.attn_impl = impl;
    eo.exact = true;  // GGUF: the golden is the exact function of the dequantized weights
    if (!lora.empty()) eo.loras = {{"", std::string(SHOAL_FIXTURES) + "/" + lora}};
    eo.merge_lora = merge_lora;
    const GreedyResult g = run_prompts(dir, eo, prompts, steps);
    const GreedyResult* r = &g;
    for (size_t b = 0; b < prompts.size(); ++b) {
      INFO(name << " case " << c["name"].get<std::string>() << " sequence " << b);
      CHECK(r->ids[b] == c["greedy_ids"][b].get<std::vector<int32_t>>());
      for (size_t p = 0; p < prompts[b].size(); ++p) {
        INFO("prompt position " << p);
        CHECK(worst_excess(r->prompt_logits[b][p], c["prompt_logits"][b][p], tol) <= 0.0);
      }
      for (int64_t k = 0; k < steps; ++k) {
        INFO("greedy step " << k);
        CHECK(worst_excess(r->step_logits[b][size_t(k)], c["greedy_logits"][b][size_t(k)], tol) <= 0.0);
      }
    }
  }
}
void check_fixture(const std::string& name, AttnImpl impl) { check_fixture(name, name, impl); }

}  // namespace

TEST_CASE("bf16 fixture matches DeepSeek's reference, absorbed MLA", "[golden]") {
  check_fixture("tiny-v3-bf16", AttnImpl::kAbsorb);
}
TEST_CASE("bf16 fixture matches DeepSeek's reference, naive MLA", "[golden]") {
  check_fixture("tiny-v3-bf16", AttnImpl::kNaive);
}
TEST_CASE("fp8 fixture matches DeepSeek's reference, absorbed MLA", "[golden]") {
  check_fixture("tiny-v3-fp8", AttnImpl::kAbsorb);
}
TEST_CASE("fp8 fixture matches DeepSeek's reference, naive MLA", "[golden]") {
  check_fixture("tiny-v3-fp8", AttnImpl::kNaive);
}

// The KV cache in bf16 (--kv-dtype bf16, docs/serving.md): the latents (or keys and values)
// rounded once as they are stored. It does not hold the goldens' tolerance (2e-4 + 1e-4 |want|)
// on these random models, which is why f32 stays the default; its deviation is what
// docs/serving.md states.
struct KvDeviation {
  double max_abs = 0;
  int64_t top1_same = 0, top1_all = 0;  // prompt and step logits whose argmax is the golden's
  int64_t greedy_same = 0, greedy_all = 0;
};
KvDeviation kv_deviation(const std::string& model, AttnImpl impl, DType kv_dtype) {
  const std::string dir = std::string(SHOAL_FIXTURES) + "/" + model;
  const json golden = read_json(dir + "/golden.json");
  const int64_t steps = golden["greedy_steps"].get<int64_t>();
  KvDeviation d;
  auto argmax = [](const auto& v) {
    size_t best = 0;
    for (size_t i = 1; i < v.size(); ++i)
      if (double(v[i]) > double(v[best])) best = i;
    return best;
  };
  auto compare = [&](const std::vector<float>& got, const json& want) {
    const std::vector<double> w = want.get<std::vector<double>>();
    for (size_t i = 0; i < got.size(); ++i) d.max_abs = std::max(d.max_abs, std::fabs(double(got[i]) - w[i]));
    d.top1_same += argmax(got) == argmax(w);
    ++d.top1_all;
  };
  for (const json& c : golden["cases"]) {
    const auto prompts = c["prompt_ids"].get<std::vector<std::vector<int32_t>>>();
    EngineOptions eo;
    eo.attn_impl = impl;
    eo.kv_dtype = kv_dtype;
    const GreedyResult g = run_prompts(dir, eo, prompts, steps);
    const GreedyResult* r = &g;
    for (size_t b = 0; b < prompts.size(); ++b) {
      for (size_t p = 0; p < prompts[b].size(); ++p) compare(r->prompt_logits[b][p], c["prompt_logits"][b][p]);
      for (int64_t k = 0; k < steps; ++k) compare(r->step_logits[b][size_t(k)], c["greedy_logits"][b][size_t(k)]);
      const auto want = c["greedy_ids"][b].get<std::vector<int32_t>>();
      for (size_t k = 0; k < want.size(); ++k) d.greedy_same += r->ids[b][k] == want[k];
      d.greedy_all += int64_t(want.size());
    }
  }
  return d;
}

TEST_CASE("bf16 and fp8 KV caches: their deviation from the golden on every fixture", "[golden][kv]") {
  struct Bound {
    double max_abs;  // as docs/serving.md states it (measured, rounded up)
    int64_t top1_same, greedy_same;
  };
  struct Case {
    const char* model;
    AttnImpl impl;
    Bound bf16, fp8;
  };
  const Case cases[] = {
      {"tiny-v3-bf16", AttnImpl::kAbsorb, {0.062, 165, 56}, {20.4, 127, 24}},
      {"tiny-v3-bf16", AttnImpl::kNaive, {0.062, 165, 56}, {20.4, 127, 24}},
      {"tiny-v3-fp8", AttnImpl::kAbsorb, {1.62, 147, 56}, {17.7, 85, 13}},
      {"tiny-v3-fp8", AttnImpl::kNaive, {1.62, 147, 56}, {17.7, 85, 13}},
      {"tiny-qwen2", AttnImpl::kAuto, {15.0, 156, 45}, {15.1, 151, 42}},
      {"tiny-qwen2-tied", AttnImpl::kAuto, {8.65, 120, 46}, {8.51, 115, 41}},
      {"tiny-llama3", AttnImpl::kAuto, {0.025, 191, 56}, {0.313, 189, 56}},
  };
  for (const Case& c : cases) {
    const KvDeviation f32 = kv_deviation(c.model, c.impl, DType::kF32);
    INFO(c.model);
    CHECK(f32.max_abs <= 2e-4);  // the golden's own bound, as everywhere
    for (DType dtype : {DType::kBF16, DType::kF8E4M3}) {
      const KvDeviation d = kv_deviation(c.model, c.impl, dtype);
      const Bound& b = dtype == DType::kBF16 ? c.bf16 : c.fp8;
      std::printf("kv %s %s %s: max |d| %.4g (f32 %.3g), top-1 %lld/%lld, greedy %lld/%lld\n", kv_dtype_name(dtype),
                  c.model, c.impl == AttnImpl::kNaive ? "naive" : "absorb", d.max_abs, f32.max_abs,
                  (long long)d.top1_same, (long long)d.top1_all, (long long)d.greedy_same, (long long)d.greedy_all);
      INFO(kv_dtype_name(dtype));
      CHECK(d.max_abs > 2e-4);        // rounding the cache is seen: not within the golden's tolerance...
      CHECK(d.max_abs <= b.max_abs);  // ...and as large as documented
      CHECK(d.top1_same >= b.top1_same);
      CHECK(d.greedy_same >= b.greedy_same);
    }
  }
}

// R1's dense distills (tests/fixtures/tiny-qwen2*, tiny-llama3: golden from transformers'
// Qwen2/Llama semantics, cross-checked against llama.cpp; their READMEs list the traps).
TEST_CASE("qwen2 fixture (q/k/v biases, GQA 4:2, untied head) matches the reference", "[golden][dense]") {
  check_fixture("tiny-qwen2", AttnImpl::kAuto);
}
TEST_CASE("qwen2 fixture with a tied head and rope_theta 1e6 matches the reference", "[golden][dense]") {
  check_fixture("tiny-qwen2-tied", AttnImpl::kAuto);
}
TEST_CASE("llama3 fixture (llama3 rope scaling, past original_max_position_embeddings) matches", "[golden][dense]") {
  check_fixture("tiny-llama3", AttnImpl::kAuto);
}
// The same weights as llama.cpp's `qwen2` and `llama` GGUF files (tests/fixtures/gguf-tiny-dense):
// `llama` with q/k permuted to interleaved rope pairs and llama3 scaling as rope_freqs.
TEST_CASE("dense GGUF files in BF16 match the distills' reference, exact numerics", "[golden][dense][gguf]") {
  check_fixture("gguf-tiny-dense/tiny-qwen2-bf16.gguf", "tiny-qwen2", AttnImpl::kAuto);
  check_fixture("gguf-tiny-dense/tiny-llama3-bf16.gguf", "tiny-llama3", AttnImpl::kAuto);
}

// LoRA adapters on tiny-v3-bf16 (tests/fixtures/lora-tiny-v3-a: every linear, BF16, r 8;
// lora-tiny-v3-b: attention only, F32, rsLoRA r 5), applied unmerged in float32, against
// model.py's logits of the adapted model; kv_b_proj is adapted, so both MLA paths must see it.
TEST_CASE("LoRA adapters unmerged match the adapted model's reference, absorbed and naive MLA", "[golden][lora]") {
  for (const std::string lora : {"lora-tiny-v3-a", "lora-tiny-v3-b"}) {
    check_fixture("tiny-v3-bf16", lora, AttnImpl::kAbsorb, lora);
    check_fixture("tiny-v3-bf16", lora, AttnImpl::kNaive, lora);
  }
}
TEST_CASE("LoRA adapters merged into float32 weights match the adapted model's reference", "[golden][lora]") {
  for (const std::string lora : {"lora-tiny-v3-a", "lora-tiny-v3-b"}) {
    check_fixture("tiny-v3-bf16", lora, AttnImpl::kAbsorb, lora, /*merge_lora=*/true);
    check_fixture("tiny-v3-bf16", lora, AttnImpl::kNaive, lora, /*merge_lora=*/true);
  }
}

// Merged into the stored dtype (--merge-into stored): the merged weight is rounded to BF16 (or
// requantized into FP8 blocks), which moves the logits beyond the golden tolerance (the fixtures'
// READMEs say so); docs/lora.md gives these measured deviations, and this keeps them there.
struct Deviation {
  double max_abs = 0;
  int64_t top1_same = 0, rows = 0;
};
Deviation deviation_of(const std::string& model, const std::string& lora, MergeInto into, bool merge,
                       const std::string& against_model = "", bool against_merge = false,
                       const std::string& golden_dir = "") {
  const json golden = read_json(std::string(SHOAL_FIXTURES) + "/" + (golden_dir.empty() ? lora : golden_dir) + "/golden.json");
  Deviation d;
  for (const json& c : golden["cases"]) {
    const auto prompts = c["prompt_ids"].get<std::vector<std::vector<int32_t>>>();
    auto logits_of = [&](const std::string& m, bool mg) {
      EngineOptions eo;
      eo.n_slots = int64_t(prompts.size());
      eo.loras = {{"", std::string(SHOAL_FIXTURES) + "/" + lora}};
      eo.merge_lora = mg;
      eo.merge_into = into;
      auto engine = Engine::open(std::string(SHOAL_FIXTURES) + "/" + m, eo);
      REQUIRE(engine.ok());
      auto r = generate_greedy(**engine, prompts, 1, true, false);
      REQUIRE(r.ok());
      return r->prompt_logits;
    };
    const auto got = logits_of(model, merge);
    std::vector<std::vector<std::vector<float>>> want;
    if (!against_model.empty()) want = logits_of(against_model, against_merge);
    for (size_t b = 0; b < prompts.size(); ++b)
      for (size_t p = 0; p < prompts[b].size(); ++p) {
        const auto& g = got[b][p];
        const std::vector<float> w = against_model.empty() ? c["prompt_logits"][b][p].get<std::vector<float>>() : want[b][p];
        for (size_t v = 0; v < g.size(); ++v) d.max_abs = std::max(d.max_abs, std::fabs(double(g[v]) - double(w[v])));
        d.top1_same += std::max_element(g.begin(), g.end()) - g.begin() == std::max_element(w.begin(), w.end()) - w.begin();
        ++d.rows;
      }
  }
  return d;
}

TEST_CASE("LoRA adapters merged into the stored dtype: the deviation docs/lora.md states", "[golden][lora]") {
  for (const std::string lora : {"lora-tiny-v3-a", "lora-tiny-v3-b"}) {
    const Deviation f32 = deviation_of("tiny-v3-bf16", lora, MergeInto::kF32, true);
    const Deviation bf16 = deviation_of("tiny-v3-bf16", lora, MergeInto::kStored, true);
    std::printf("%s: merged f32 max|d| %.3g top-1 %lld/%lld; merged bf16 max|d| %.3g top-1 %lld/%lld\n",
                lora.c_str(), f32.max_abs, (long long)f32.top1_same, (long long)f32.rows, bf16.max_abs,
                (long long)bf16.top1_same, (long long)bf16.rows);
    CHECK(f32.max_abs < 1e-3);
    CHECK(bf16.max_abs > f32.max_abs);  // the rounding is real
  }
  // FP8 blocks (a random adapter for tiny-v3-fp8): merged and requantized against unmerged.
  const Deviation fp8 = deviation_of("tiny-v3-fp8", "lora-tiny-v3-fp8-random", MergeInto::kStored, true, "tiny-v3-fp8",
                                     false, "tiny-v3-fp8");
  std::printf("lora-tiny-v3-fp8-random: merged into FP8 blocks vs unmerged max|d| %.3g top-1 %lld/%lld\n", fp8.max_abs,
              (long long)fp8.top1_same, (long long)fp8.rows);
  CHECK(fp8.max_abs > 0);
}

// GGUF files (tests/fixtures/gguf-a-*, llama-quantize output): exact numerics, the weights
// dequantized bit for bit as ggml does, against DeepSeek's reference on those weights.
TEST_CASE("gguf Q8_0 matches DeepSeek's reference on its dequantized weights", "[golden][gguf]") {
  check_fixture("gguf-a-q8_0", AttnImpl::kAbsorb);
}
TEST_CASE("gguf Q4_K_M (3 split parts) matches, absorbed and naive MLA", "[golden][gguf]") {
  check_fixture("gguf-a-q4_k_m-split", AttnImpl::kAbsorb);
  check_fixture("gguf-a-q4_k_m-split", AttnImpl::kNaive);
}
TEST_CASE("gguf Q2_K matches DeepSeek's reference on its dequantized weights", "[golden][gguf]") {
  check_fixture("gguf-a-q2_k", AttnImpl::kAbsorb);
}
TEST_CASE("gguf IQ2_XXS matches DeepSeek's reference on its dequantized weights", "[golden][gguf]") {
  check_fixture("gguf-a-iq2_xxs", AttnImpl::kAbsorb);
}
TEST_CASE("gguf IQ1_S matches DeepSeek's reference on its dequantized weights", "[golden][gguf]") {
  check_fixture("gguf-a-iq1_s", AttnImpl::kAbsorb);
}

// Fast numerics (the GGUF default: activations quantized per block, integer dot products, as
// llama.cpp computes): no worse than llama.cpp's own run of the same file, whose figures the
// fixture's README gives ("this quantized file as is": prompt max |d| and top-1 agreement):
// max |d| at most 1.25x llama.cpp's, top-1 at least llama.cpp's count minus 2.
struct PeerFigures {
  double max_abs_diff;
  int top1, positions;
};

// The row of `readme` whose first cell starts with `label`.
PeerFigures llama_cpp_figures(const std::string& readme, const std::string& label = "this quantized file as is") {
  std::ifstream in(readme);
  REQUIRE(in.good());
  std::string line;
  while (std::getline(in, line)) {
    if (line.find("| " + label) != 0) continue;
    // | run | prompt max abs diff | greedy max abs diff | out of tolerance | top-1 | greedy ids |
    std::vector<std::string> cells;
    size_t a = 1;
    for (size_t b; (b = line.find('|', a)) != std::string::npos; a = b + 1) cells.push_back(line.substr(a, b - a));
    REQUIRE(cells.size() >= 5);
    PeerFigures f{};
    f.max_abs_diff = std::stod(cells[1]);
    REQUIRE(std::sscanf(cells[4].c_str(), " %d/%d", &f.top1, &f.positions) == 2);
    return f;
  }
  FAIL("no llama.cpp row '" << label << "' in " << readme);
  return {};
}

size_t argmax(const std::vector<float>& v) { return size_t(std::max_element(v.begin(), v.end()) - v.begin()); }
size_t argmax(const json& v) {
  size_t best = 0;
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i].get<double>() > v[best].get<double>()) best = i;
  return best;
}

// `model` (a fixture folder or file) in fast numerics against `golden_dir`'s golden, beside
// llama.cpp's figures (`peer`) for the same file.
void check_fast(const std::string& model, const std::string& golden_dir, const PeerFigures& peer) {
  const std::string name = model;
  const std::string dir = std::string(SHOAL_FIXTURES) + "/" + model;
  const json golden = read_json(std::string(SHOAL_FIXTURES) + "/" + golden_dir + "/golden.json");
  double max_d = 0;
  int top1 = 0, positions = 0;
  for (const json& c : golden["cases"]) {
    const auto prompts = c["prompt_ids"].get<std::vector<std::vector<int32_t>>>();
    EngineOptions eo;
    eo.n_slots = int64_t(prompts.size());
    auto engine = Engine::open(dir, eo);
    REQUIRE(engine.ok());
    auto r = generate_greedy(**engine, prompts, 1, true, false);
    REQUIRE(r.ok());
    for (size_t b = 0; b < prompts.size(); ++b)
      for (size_t p = 0; p < prompts[b].size(); ++p) {
        const auto& got = r->prompt_logits[b][p];
        const json& want = c["prompt_logits"][b][p];
        for (size_t i = 0; i < got.size(); ++i) max_d = std::max(max_d, std::fabs(double(got[i]) - want[i].get<double>()));
        top1 += argmax(got) == argmax(want);
        ++positions;
      }
  }
  INFO(name << ": fast max |d| " << max_d << " (llama.cpp " << peer.max_abs_diff << "), top-1 " << top1 << "/"
            << positions << " (llama.cpp " << peer.top1 << "/" << peer.positions << ")");
  WARN(name << ": fast max |d| " << max_d << " (llama.cpp " << peer.max_abs_diff << "), top-1 " << top1 << "/"
            << positions << " (llama.cpp " << peer.top1 << "/" << peer.positions << ")");
  CHECK(positions == peer.positions);
  CHECK(max_d <= 1.25 * peer.max_abs_diff);
  CHECK(top1 >= peer.top1 - 2);
}
void check_fast(const std::string& name) {
  check_fast(name, name, llama_cpp_figures(std::string(SHOAL_FIXTURES) + "/" + name + "/README.md"));
}

TEST_CASE("gguf fast numerics: no worse than llama.cpp on the same files", "[golden][gguf][fast]") {
  for (const char* name : {"gguf-a-q8_0", "gguf-a-q4_k_m-split", "gguf-a-q2_k", "gguf-a-iq2_xxs", "gguf-a-iq1_s"})
    check_fast(name);
}
TEST_CASE("dense GGUF Q8_0 files in fast numerics: no worse than llama.cpp", "[golden][dense][gguf][fast]") {
  const std::string readme = std::string(SHOAL_FIXTURES) + "/gguf-tiny-dense/README.md";
  for (const std::string name : {"tiny-qwen2", "tiny-llama3"}) {
    const std::string file = name + "-q8_0.gguf";
    check_fast("gguf-tiny-dense/" + file, name, llama_cpp_figures(readme, file));
  }
}

TEST_CASE("shoal logits CLI prints the golden numbers", "[golden][cli]") {
  const std::string dir = std::string(SHOAL_FIXTURES) + "/tiny-v3-bf16";
  const json golden = read_json(dir + "/golden.json");
  const json& c = golden["cases"].back();  // the batched case: two sequences
  std::string cmd = std::string(SHOAL_BINARY) + " logits --model " + dir + " --greedy 8";
  for (const auto& ids : c["prompt_ids"]) {
    std::string s;
    for (const auto& id : ids) s += std::to_string(id.get<int>()) + " ";
    cmd += " --ids \"" + s + "\"";
  }
  int status = -1;
  const std::string out = run_command(cmd, &status);
  REQUIRE(status == 0);
  const json j = json::parse(out);
  const Tolerance tol{2e-4, 1e-4};
  CHECK(j["greedy_ids"] == c["greedy_ids"]);
  for (size_t b = 0; b < c["prompt_ids"].size(); ++b) {
    for (size_t pos = 0; pos < c["prompt_ids"][b].size(); ++pos)
      CHECK(worst_excess(j["prompt_logits"][b][pos].get<std::vector<float>>(), c["prompt_logits"][b][pos], tol) <= 0);
    for (size_t k = 0; k < 8; ++k)
      CHECK(worst_excess(j["greedy_logits"][b][k].get<std::vector<float>>(), c["greedy_logits"][b][k], tol) <= 0);
  }
}

TEST_CASE("shoal run generates the golden greedy ids and reports tokens/s", "[golden][cli]") {
  const std::string dir = std::string(SHOAL_FIXTURES) + "/tiny-v3-fp8";
  const json golden = read_json(dir + "/golden.json");
  const json& c = golden["cases"][2];
  std::string ids, want = "generated:";
  for (const auto& id : c["prompt_ids"][0]) ids += std::to_string(id.get<int>()) + " ";
  for (const auto& id : c["greedy_ids"][0]) want += " " + std::to_string(id.get<int>());
  int status = -1;
  const std::string out =
      run_command(std::string(SHOAL_BINARY) + " run --model " + dir + " --ids \"" + ids + "\" --max-tokens 8", &status);
  REQUIRE(status == 0);
  CHECK(out.find(want + "\n") != std::string::npos);
  CHECK(out.find("prefill: " + std::to_string(c["prompt_ids"][0].size()) + " tokens") != std::string::npos);
  CHECK(out.find("tokens/s") != std::string::npos);
}

TEST_CASE("a single-file checkpoint (model.safetensors, no index) gives the same logits", "[golden]") {
  namespace fs = std::filesystem;
  const std::string src = std::string(SHOAL_FIXTURES) + "/tiny-v3-bf16";
  const fs::path dir = fs::temp_directory_path() / ("shoal-single-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  fs::copy_file(src + "/config.json", dir / "config.json", fs::copy_options::overwrite_existing);
  {
    auto ck = Checkpoint::open(src);
    REQUIRE(ck.ok());
    std::vector<TensorBlob> blobs;
    for (const std::string& name : (*ck)->names()) {
      auto t = (*ck)->tensor(name);
      REQUIRE(t.ok());
      const auto* bytes = t->data;
      blobs.push_back({name, t->info->dtype, t->info->shape,
                       std::vector<std::byte>(bytes, bytes + (t->info->end - t->info->begin))});
    }
    std::vector<const TensorBlob*> ptrs;
    for (const auto& b : blobs) ptrs.push_back(&b);
    REQUIRE(write_safetensors(dir / "model.safetensors", ptrs).ok());
  }
  const json golden = read_json(src + "/golden.json");
  const json& c = golden["cases"][3];
  auto engine = Engine::open(dir, EngineOptions{});
  REQUIRE(engine.ok());
  auto r = generate_greedy(**engine, c["prompt_ids"].get<std::vector<std::vector<int32_t>>>(), 8, true, false);
  REQUIRE(r.ok());
  CHECK(r->ids[0] == c["greedy_ids"][0].get<std::vector<int32_t>>());
  for (size_t p = 0; p < c["prompt_ids"][0].size(); ++p)
    CHECK(worst_excess(r->prompt_logits[0][p], c["prompt_logits"][0][p], {2e-4, 1e-4}) <= 0.0);
  fs::remove_all(dir);
}
