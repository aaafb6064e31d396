// LoRA adapters in PEFT's layout (model/lora.h): the fixtures (tests/fixtures/lora-tiny-v3-a, -b:
// PEFT-saved adapters of tiny-v3-bf16) load with the modules, ranks and scales their
// adapter_config.json implies, counted here from the base's tensor table; every bad adapter is
// refused naming the file and the key or tensor, through the library and `shoal inspect --lora`.
#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "common/dtype.h"
#include "model/config.h"
#include "model/lora.h"
#include "model/safetensors.h"
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

ModelConfig base_config() { return shoal::test::config_of(kBase); }

json read_json(const fs::path& p) { return json::parse(std::ifstream(p)); }

// A copy of fixture adapter `name` in dir, its config edited.
void copy_adapter(const std::string& name, const fs::path& dir, const std::function<void(json&)>& edit = {}) {
  fs::create_directories(dir);
  fs::copy_file(kFixtures / name / "adapter_model.safetensors", dir / "adapter_model.safetensors");
  json c = read_json(kFixtures / name / "adapter_config.json");
  if (edit) edit(c);
  std::ofstream(dir / "adapter_config.json") << c.dump(2);
}

// Rewrites dir's adapter_model.safetensors through `edit` on its tensors (names, dtypes, shapes,
// bytes), keeping the rest.
void edit_tensors(const fs::path& dir, const std::function<void(std::vector<TensorBlob>&)>& edit) {
  std::vector<TensorBlob> blobs;
  {
    auto f = SafetensorsFile::open(dir / "adapter_model.safetensors");
    REQUIRE(f.ok());
    for (const TensorInfo& t : (*f)->tensors()) {
      const std::byte* d = (*f)->data(t);
      blobs.push_back({t.name, t.dtype, t.shape, std::vector<std::byte>(d, d + (t.end - t.begin))});
    }
  }
  edit(blobs);
  std::vector<const TensorBlob*> ptrs;
  for (const TensorBlob& b : blobs) ptrs.push_back(&b);
  REQUIRE(write_safetensors(dir / "adapter_model.safetensors", ptrs).ok());
}

using shoal::test::expect_error;

// The same refusal through the CLI: a non-zero exit and the message.
void expect_cli_error(const fs::path& dir, std::initializer_list<std::string> parts) {
  int status = 0;
  const std::string out = test::run_command(std::string(SHOAL_BINARY) + " inspect --lora '" + dir.string() +
                                                "' --model '" + kBase.string() + "' 2>&1",
                                            &status);
  INFO(out);
  CHECK(status != 0);
  for (const std::string& p : parts) CHECK(out.find(p) != std::string::npos);
}

}  // namespace

TEST_CASE("the PEFT fixtures load with the modules, ranks and scales their configs imply", "[lora]") {
  const ModelConfig base = base_config();
  for (const std::string name : {"lora-tiny-v3-a", "lora-tiny-v3-b"}) {
    INFO(name);
    const json cfg = read_json(kFixtures / name / "adapter_config.json");
    auto a = load_lora(kFixtures / name, &base);
    INFO((a.ok() ? std::string() : a.status().to_string()));
    REQUIRE(a.ok());
    // Expected modules: every linear weight of the base whose module ends in a target name.
    std::vector<std::string> targets = cfg["target_modules"];
    int64_t want_modules = 0, want_params = 0;
    const int64_t r = cfg["r"];
    for (const TensorSpec& t : model_tensors(base, false)) {
      if (t.shape.size() != 2 || t.unit == Unit::kEmbed || t.unit == Unit::kHead || t.name.ends_with("mlp.gate.weight")) continue;
      const std::string module = t.name.substr(0, t.name.size() - std::string(".weight").size());
      for (const std::string& target : targets)
        if (module.ends_with("." + target)) {
          ++want_modules;
          want_params += r * (t.shape[0] + t.shape[1]);
        }
    }
    CHECK(int64_t((*a)->modules.size()) == want_modules);
    CHECK((*a)->parameters() == want_params);
    const double alpha = cfg["lora_alpha"];
    const double scale = cfg["use_rslora"].get<bool>() ? alpha / std::sqrt(double(r)) : alpha / double(r);
    for (const auto& [weight, m] : (*a)->modules) {
      CHECK(m.rank == r);
      CHECK(m.scale == Approx(scale).epsilon(1e-6));
      CHECK(m.a.rows == r);
      CHECK(m.b.cols == r);
    }
    CHECK((*a)->find("model.layers.1.self_attn.kv_b_proj.weight") != nullptr);  // both adapt kv_b_proj
    CHECK((*a)->find("model.layers.1.mlp.gate.weight") == nullptr);
  }
  // The READMEs' counts: 104 modules (a: every linear) and 12 (b: attention only).
  auto a = load_lora(kFixtures / "lora-tiny-v3-a", &base);
  auto b = load_lora(kFixtures / "lora-tiny-v3-b", &base);
  REQUIRE((a.ok() && b.ok()));
  CHECK((*a)->modules.size() == 104);
  CHECK((*b)->modules.size() == 12);
}

TEST_CASE("rank_pattern, alpha_pattern and a regex target_modules follow PEFT's rules", "[lora]") {
  const ModelConfig base = base_config();
  TempDir d;
  // A regex over whole module names, and layer 1's o_proj with its own alpha.
  copy_adapter("lora-tiny-v3-b", d.path / "x", [](json& c) {
    c["target_modules"] = R"(model\.layers\.\d+\.self_attn\.(q_b_proj|kv_b_proj|o_proj))";
    c["alpha_pattern"] = {{"layers.1.self_attn.o_proj", 10}};
  });
  auto a = load_lora(d.path / "x", &base);
  INFO((a.ok() ? std::string() : a.status().to_string()));
  REQUIRE(a.ok());
  CHECK((*a)->find("model.layers.1.self_attn.o_proj.weight")->scale == Approx(10 / std::sqrt(5.0)));
  CHECK((*a)->find("model.layers.0.self_attn.o_proj.weight")->scale == Approx(7 / std::sqrt(5.0)));
  // A regex that leaves a module out refuses that module's tensors.
  copy_adapter("lora-tiny-v3-b", d.path / "y", [](json& c) { c["target_modules"] = R"(.*\.(q_b_proj|o_proj))"; });
  expect_error(load_lora(d.path / "y", &base), {"kv_b_proj", "not in target_modules"});
  // rank_pattern naming a rank the tensors do not have: the shape error names both.
  copy_adapter("lora-tiny-v3-b", d.path / "z", [](json& c) { c["rank_pattern"] = {{"o_proj", 4}}; });
  expect_error(load_lora(d.path / "z", &base), {"o_proj.lora_A.weight", "expected [4,", "rank 4"});
}

TEST_CASE("bad adapters are refused naming the file and what is wrong, and the CLI exits non-zero", "[lora][errors]") {
  const ModelConfig base = base_config();
  struct Case {
    std::string what;
    std::function<void(json&)> config;
    std::function<void(std::vector<TensorBlob>&)> tensors;
    std::vector<std::string> says;
  };
  const auto drop = [](const std::string& suffix) {
    return [suffix](std::vector<TensorBlob>& t) {
      std::erase_if(t, [&](const TensorBlob& b) { return b.name.ends_with(suffix); });
    };
  };
  const std::vector<Case> cases = {
      {"DoRA", [](json& c) { c["use_dora"] = true; }, {}, {"adapter_config.json", "'use_dora'", "DoRA"}},
      {"modules_to_save", [](json& c) { c["modules_to_save"] = {"lm_head"}; }, {}, {"'modules_to_save'", "lm_head"}},
      {"bias", [](json& c) { c["bias"] = "lora_only"; }, {}, {"'bias'", "lora_only"}},
      {"rank 0", [](json& c) { c["r"] = 0; }, {}, {"'r'", "positive"}},
      {"negative alpha", [](json& c) { c["lora_alpha"] = -2; }, {}, {"'lora_alpha'", "positive"}},
      {"not LoRA", [](json& c) { c["peft_type"] = "PREFIX_TUNING"; }, {}, {"'peft_type'", "PREFIX_TUNING"}},
      {"fan_in_fan_out", [](json& c) { c["fan_in_fan_out"] = true; }, {}, {"'fan_in_fan_out'"}},
      {"bad regex", [](json& c) { c["target_modules"] = "(unclosed"; }, {}, {"'target_modules'", "regular expression"}},
      {"no targets", [](json& c) { c.erase("target_modules"); }, {}, {"'target_modules'", "missing"}},
      {"lora_B missing", {}, drop("layers.0.self_attn.o_proj.lora_B.weight"),
       {"adapter_model.safetensors", "model.layers.0.self_attn.o_proj", "no lora_B"}},
      {"a module the base lacks", {},
       [](std::vector<TensorBlob>& t) {
         for (TensorBlob& b : t)
           if (b.name.find("layers.0.self_attn.o_proj") != std::string::npos) b.name.replace(b.name.find("layers.0"), 8, "layers.9");
       },
       {"model.layers.9.self_attn.o_proj", "does not exist in the base"}},
      {"the router adapted", [](json& c) { c["target_modules"].push_back("gate"); },
       [](std::vector<TensorBlob>& t) {
         std::vector<TensorBlob> extra;
         for (const TensorBlob& b : t)
           if (b.name.find("layers.1.self_attn.o_proj") != std::string::npos) {
             TensorBlob c = b;
             c.name.replace(c.name.find("self_attn.o_proj"), 16, "mlp.gate");
             extra.push_back(c);
           }
         t.insert(t.end(), extra.begin(), extra.end());
       },
       {"model.layers.1.mlp.gate", "router"}},
      {"a shape that differs", {},
       [](std::vector<TensorBlob>& t) {
         for (TensorBlob& b : t)
           if (b.name.ends_with("layers.0.self_attn.o_proj.lora_A.weight")) {
             b.shape[1] /= 2;
             b.bytes.resize(b.bytes.size() / 2);
           }
       },
       {"layers.0.self_attn.o_proj.lora_A.weight", "expected"}},
      {"a stray tensor", {},
       [](std::vector<TensorBlob>& t) { t.push_back({"base_model.model.extra.weight", DType::kF32, {2}, std::vector<std::byte>(8)}); },
       {"'base_model.model.extra.weight'", "lora_A/lora_B"}},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    TempDir d;
    copy_adapter("lora-tiny-v3-b", d.path / "a", c.config);
    if (c.tensors) edit_tensors(d.path / "a", c.tensors);
    auto r = load_lora(d.path / "a", &base);
    REQUIRE_FALSE(r.ok());
    INFO(r.status().message());
    for (const std::string& s : c.says) CHECK(r.status().message().find(s) != std::string::npos);
    expect_cli_error(d.path / "a", {c.says.front()});
  }
  {  // A pickle alone: never loaded.
    TempDir d;
    copy_adapter("lora-tiny-v3-b", d.path / "a");
    fs::rename(d.path / "a" / "adapter_model.safetensors", d.path / "a" / "adapter_model.bin");
    expect_error(load_lora(d.path / "a", &base), {"adapter_model.bin", "pickle", "safetensors"});
    expect_cli_error(d.path / "a", {"adapter_model.bin", "pickle"});
  }
  {  // Another base: the first module it lacks is named.
    auto q = load_config(kFixtures / "tiny-qwen2");
    REQUIRE(q.ok());
    expect_error(load_lora(kFixtures / "lora-tiny-v3-b", &*q), {"kv_b_proj", "does not exist in the base"});
  }
  {  // A truncated safetensors file: the reader's error, naming the file.
    TempDir d;
    copy_adapter("lora-tiny-v3-b", d.path / "a");
    fs::resize_file(d.path / "a" / "adapter_model.safetensors", 100);
    expect_error(load_lora(d.path / "a", &base), {"adapter_model.safetensors"});
  }
}

TEST_CASE("shoal inspect --lora prints rank, scale, targets and size, checked against --model", "[lora][cli]") {
  int status = -1;
  const std::string out = test::run_command(std::string(SHOAL_BINARY) + " inspect --json --lora '" +
                                                (kFixtures / "lora-tiny-v3-b").string() + "' --model '" + kBase.string() + "'",
                                            &status);
  INFO(out);
  REQUIRE(status == 0);
  const json j = json::parse(out);
  CHECK(j["r"] == 5);
  CHECK(j["use_rslora"] == true);
  CHECK(j["modules"] == 12);
  CHECK(j["matches_base"] == true);
  auto a = load_lora(kFixtures / "lora-tiny-v3-b", nullptr);
  REQUIRE(a.ok());
  CHECK(j["parameters"] == (*a)->parameters());
  CHECK(j["bytes"] == 4 * (*a)->parameters());  // F32
  // Without a base: the adapter's own facts, no match claimed.
  const std::string alone = test::run_command(std::string(SHOAL_BINARY) + " inspect --json --lora '" +
                                                  (kFixtures / "lora-tiny-v3-a").string() + "'",
                                              &status);
  REQUIRE(status == 0);
  CHECK(json::parse(alone)["matches_base"] == false);
  CHECK(json::parse(alone)["bytes"] == 2 * json::parse(alone)["parameters"].get<int64_t>());  // BF16
}

TEST_CASE("shoal plan --lora counts the adapter's bytes on the ranks that hold its modules", "[lora][plan]") {
  auto plan = [](const std::string& extra) {
    int status = -1;
    const std::string out = test::run_command(std::string(SHOAL_BINARY) + " plan --model '" + kBase.string() +
                                                  "' --local-nodes 2 --ram-bandwidth-gbs 10 --expert-scatter --json " + extra,
                                              &status);
    INFO(out);
    REQUIRE(status == 0);
    return json::parse(out);
  };
  const json base = plan(""), with = plan("--lora '" + (kFixtures / "lora-tiny-v3-a").string() + "'");
  const ModelConfig c = base_config();
  auto a = load_lora(kFixtures / "lora-tiny-v3-a", &c);
  REQUIRE(a.ok());
  // A and B as stored, and the copy of Bᵀ each rank keeps to compute B (A x) (every B here is BF16).
  int64_t held = int64_t((*a)->bytes());
  for (const auto& [name, m] : (*a)->modules) held += m.b.rows * m.b.cols * 2;
  CHECK(with["weight_bytes"].get<int64_t>() - base["weight_bytes"].get<int64_t>() == held);
  int64_t added = 0;
  for (size_t r = 0; r < base["ranks"].size(); ++r) {
    const int64_t d = with["ranks"][r]["weight_bytes"].get<int64_t>() - base["ranks"][r]["weight_bytes"].get<int64_t>();
    CHECK(d > 0);  // every rank holds adapted modules (attention and scattered experts)
    added += d;
  }
  CHECK(added == held);
}

// --merge-into stored: a merged weight rounded back into its own dtype. With B = 0 the merge adds
// nothing, so BF16 must come back bit for bit, and FP8 blocks (each block's scale recomputed from
// its absolute maximum / 448, as DeepSeek's quantizer made them) must too; with B != 0 every
// element is the float32 merge rounded once, to the nearest BF16 or e4m3 step of its block.
TEST_CASE("merge_lora into the stored dtype: BF16 and FP8 blocks rounded once and unchanged by a zero adapter", "[lora]") {
  const int64_t rows = 160, cols = 200, r = 3, block = 128;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> dense(size_t(rows * cols));
  for (float& v : dense) v = normal(rng) * 0.05f;
  // FP8 with DeepSeek's block scales.
  const int64_t sr = (rows + block - 1) / block, sc = (cols + block - 1) / block;
  std::vector<uint8_t> q(dense.size());
  std::vector<float> scales(size_t(sr * sc));
  for (int64_t bi = 0; bi < sr; ++bi)
    for (int64_t bj = 0; bj < sc; ++bj) {
      float amax = 0;
      for (int64_t i = bi * block; i < std::min(rows, (bi + 1) * block); ++i)
        for (int64_t c = bj * block; c < std::min(cols, (bj + 1) * block); ++c) amax = std::max(amax, std::fabs(dense[size_t(i * cols + c)]));
      scales[size_t(bi * sc + bj)] = amax / 448.0f;
      for (int64_t i = bi * block; i < std::min(rows, (bi + 1) * block); ++i)
        for (int64_t c = bj * block; c < std::min(cols, (bj + 1) * block); ++c)
          q[size_t(i * cols + c)] = float_to_fp8_e4m3(dense[size_t(i * cols + c)] / scales[size_t(bi * sc + bj)]);
    }
  kernels::Matrix fp8{q.data(), DType::kF8E4M3, rows, cols, scales.data(), block};
  std::vector<uint16_t> h(dense.size());
  for (size_t i = 0; i < h.size(); ++i) h[i] = float_to_bf16(dense[i]);
  kernels::Matrix bf16{h.data(), DType::kBF16, rows, cols};
  std::vector<float> a(size_t(r * cols)), zero(size_t(rows * r), 0.0f), b(size_t(rows * r));
  for (float& v : a) v = normal(rng);
  for (float& v : b) v = normal(rng) * 0.01f;
  LoraTerm none{.a = {a.data(), DType::kF32, r, cols}, .b = {zero.data(), DType::kF32, rows, r}, .scale = 2.0f};
  for (const kernels::Matrix& w : {fp8, bf16}) {
    MergedWeight m;
    auto got = merge_lora(w, none, MergeInto::kStored, m);
    REQUIRE(got.ok());
    REQUIRE(got->dtype == w.dtype);
    const size_t bytes = size_t(rows * cols) * (w.dtype == DType::kBF16 ? 2 : 1);
    CHECK(std::memcmp(got->data, w.data, bytes) == 0);
    if (w.dtype == DType::kF8E4M3) CHECK(std::memcmp(got->scale_inv, scales.data(), scales.size() * sizeof(float)) == 0);
  }
  LoraTerm some{.a = {a.data(), DType::kF32, r, cols}, .b = {b.data(), DType::kF32, rows, r}, .scale = 2.0f};
  MergedWeight m32, m16;
  auto f32 = merge_lora(bf16, some, MergeInto::kF32, m32);
  auto st = merge_lora(bf16, some, MergeInto::kStored, m16);
  REQUIRE((f32.ok() && st.ok()));
  std::vector<float> row32(static_cast<size_t>(cols)), row16(static_cast<size_t>(cols));
  int64_t changed = 0;
  for (int64_t i = 0; i < rows; ++i) {
    kernels::dequantize_row(row32.data(), *f32, i);
    kernels::dequantize_row(row16.data(), *st, i);
    for (int64_t c = 0; c < cols; ++c) {
      CHECK(float_to_bf16(row32[size_t(c)]) == std::bit_cast<uint32_t>(row16[size_t(c)]) >> 16);
      changed += float_to_bf16(row32[size_t(c)]) != h[size_t(i * cols + c)];
    }
  }
  CHECK(changed > 0);
  // GGUF blocks have no stored-dtype merge: a clear error naming the dtype.
  kernels::Matrix q8{q.data(), DType::kQ8_0, rows, 192};
  MergedWeight mq;
  auto bad = merge_lora(q8, LoraTerm{.a = {a.data(), DType::kF32, r, 192}, .b = {b.data(), DType::kF32, rows, r}, .scale = 2.0f},
                        MergeInto::kStored, mq);
  REQUIRE(!bad.ok());
  CHECK_THAT(bad.status().to_string(), Catch::Contains("Q8_0"));
}
