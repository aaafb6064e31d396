// shoal inspect and shoal plan on GGUF models: the split Q4_K_M fixture's types, file type,
// parts and bytes against its README (tests/fixtures/gguf-a-q4_k_m-split/README.md), text and
// --json; plan's unit bytes from the real tensor infos; the quant recipes
// (cluster/quant_recipe.h) against the published sizes of Unsloth's DeepSeek-R1 dynamic quants;
// metadata-only GGUFs (the header of each part, no data) sized like the whole files.
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "cluster/fit.h"
#include "cluster/plan.h"
#include "cluster/quant_recipe.h"
#include "cluster/spec.h"
#include "model/checkpoint.h"
#include "model/gguf.h"
#include "model/gguf_writer.h"
#include "model/inspect.h"
#include "support/files.h"
#include "support/process.h"

using Catch::Matchers::Contains;
using nlohmann::json;
using namespace shoal;
using namespace shoal::cluster;
namespace fs = std::filesystem;
using shoal::test::read_file;
using shoal::test::TempDir;
using shoal::test::write_file;

namespace {

const fs::path kFixtures = SHOAL_FIXTURES;
const fs::path kSplit = kFixtures / "gguf-a-q4_k_m-split";
const fs::path kSplitPart1 = kSplit / "gguf-a-q4_k_m-00001-of-00003.gguf";
const fs::path kQ8 = kFixtures / "gguf-a-q8_0" / "gguf-a-q8_0.gguf";
const fs::path kConfig671b = kFixtures / "configs" / "deepseek-v3-671b" / "config.json";
constexpr double kGiB = double(int64_t(1) << 30);

// The fixture README's tensor table, summed: type -> (tensors, bytes), and per unit.
const std::map<std::string, std::pair<int64_t, uint64_t>> kSplitTypes = {
    {"F32", {17, 29760}}, {"Q4_K", {26, 2539008}}, {"Q5_0", {3, 135168}}, {"Q5_K", {3, 135168}}, {"Q6_K", {3, 698880}}};
constexpr uint64_t kSplitTensorBytes = 3537984;
const uint64_t kSplitParts[] = {958880, 1351584, 1250720};

// Model A's Hugging Face config (the fixture README's table; its MTP layer is not in the GGUF).
const char* kModelAConfig = R"({
  "model_type": "deepseek_v3", "vocab_size": 1024, "hidden_size": 256, "num_hidden_layers": 3,
  "first_k_dense_replace": 1, "num_attention_heads": 4, "q_lora_rank": 256, "kv_lora_rank": 256,
  "qk_nope_head_dim": 64, "qk_rope_head_dim": 32, "v_head_dim": 64, "intermediate_size": 512,
  "moe_intermediate_size": 256, "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2,
  "n_group": 4, "topk_group": 2, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": true,
  "routed_scaling_factor": 2.5, "rope_theta": 10000, "max_position_embeddings": 256,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 8, "mscale": 1.0, "mscale_all_dim": 1.0,
                   "original_max_position_embeddings": 32, "type": "yarn"},
  "rms_norm_eps": 1e-06, "num_nextn_predict_layers": 0, "tie_word_embeddings": false})";

using shoal::test::CliRun;
using shoal::test::shoal_cli;

json plan_json(const std::string& args) {
  TempDir tmp;
  const json spec = {{"nodes", {{{"name", "a"}, {"ram_gib", 512}, {"link_gbps", 10}}}}};
  write_file(tmp.path / "cluster.json", spec.dump());
  const CliRun r = shoal_cli("plan " + args + " --cluster '" + (tmp.path / "cluster.json").string() + "' --json");
  INFO(r.err);
  REQUIRE(r.rc == 0);
  return json::parse(r.out);
}

int64_t sum_units(const UnitBytes& b) {
  int64_t n = b.embed + b.head;
  for (size_t i = 0; i < b.attn.size(); ++i) {
    n += b.attn[i];
    for (int64_t e : b.experts[i]) n += e;
  }
  return n;
}

// The header of a GGUF file with its padding, without the tensor data (as llama.cpp's
// gguf_write_to_file(..., only_meta) writes it).
void write_header_only(const fs::path& from, const fs::path& to) {
  const std::string bytes = read_file(from);
  auto h = parse_gguf(reinterpret_cast<const std::byte*>(bytes.data()), bytes.size());
  REQUIRE(h.ok());
  write_file(to, bytes.substr(0, size_t(h->data_offset)));
}

}  // namespace

TEST_CASE("inspect of the split Q4_K_M fixture: types, file type, parts and bytes as its README", "[gguf][inspect]") {
  for (const fs::path& path : {kSplitPart1, kSplit}) {
    INFO(path);
    auto s = inspect_model(path);
    REQUIRE(s.ok());
    REQUIRE(s->gguf.has_value());
    const GgufSummary& g = *s->gguf;
    CHECK(g.version == 3);
    CHECK(g.architecture == "deepseek2");
    CHECK(g.name == "gguf-A");
    CHECK(g.file_type == 15);
    CHECK(llama_file_type_name(g.file_type) == "MOSTLY_Q4_K_M");
    REQUIRE(g.parts.size() == 3);
    for (size_t k = 0; k < 3; ++k) {
      CHECK(g.parts[k].file == "gguf-a-q4_k_m-0000" + std::to_string(k + 1) + "-of-00003.gguf");
      CHECK(g.parts[k].bytes == kSplitParts[k]);
    }
    REQUIRE(g.by_type.size() == kSplitTypes.size());
    for (const auto& [type, want] : kSplitTypes) {
      INFO(type);
      REQUIRE(g.by_type.count(type));
      CHECK(g.by_type.at(type).tensors == want.first);
      CHECK(g.by_type.at(type).bytes == want.second);
      CHECK(s->bytes_by_dtype.at(type) == want.second);
    }
    CHECK(s->n_tensors == 52);
    CHECK(s->has_weights);
    CHECK(s->license == "unknown");  // no general.license, no LICENSE beside it
    // The same model summary as a Hugging Face folder: the config through the tensor table.
    CHECK(s->config.n_layers == 3);
    CHECK(s->n_dense_layers == 1);
    CHECK(s->n_moe_layers == 2);
    CHECK(s->params.total == count_params(s->config).total);

    const std::string text = summary_text(*s);
    CHECK_THAT(text, Contains("file_type     15 MOSTLY_Q4_K_M"));
    CHECK_THAT(text, Contains("F32 17 x 29,760, Q4_K 26 x 2,539,008, Q5_0 3 x 135,168, Q5_K 3 x 135,168, "
                              "Q6_K 3 x 698,880, total 0.00 GB in 52 tensors"));
    CHECK_THAT(text, Contains("general.name \"gguf-A\""));
    CHECK_THAT(text, Contains("parts         3, 0.00 GB: gguf-a-q4_k_m-00001-of-00003.gguf (958,880 bytes), "
                              "gguf-a-q4_k_m-00002-of-00003.gguf (1,351,584 bytes)"));
    CHECK_THAT(text, Contains("model_type    deepseek_v3"));
    CHECK_THAT(text, Contains("parameters    "));
  }
}

TEST_CASE("inspect --json of a GGUF model: the summary's fields plus gguf{}", "[gguf][inspect]") {
  auto s = inspect_model(kSplitPart1);
  REQUIRE(s.ok());
  const json j = json::parse(summary_json(*s));
  CHECK(j["total_params"] == s->params.total);
  CHECK(j["n_tensors"] == 52);
  CHECK(j["total_bytes"] == kSplitTensorBytes);
  CHECK(j["bytes_by_dtype"]["Q6_K"] == 698880);
  CHECK(j["license"] == "unknown");
  const json& g = j["gguf"];
  CHECK(g["version"] == 3);
  CHECK(g["architecture"] == "deepseek2");
  CHECK(g["name"] == "gguf-A");
  CHECK(g["file_type"] == 15);
  CHECK(g["file_type_name"] == "MOSTLY_Q4_K_M");
  REQUIRE(g["parts"].size() == 3);
  CHECK(g["parts"][1]["file"] == "gguf-a-q4_k_m-00002-of-00003.gguf");
  CHECK(g["parts"][1]["bytes"] == 1351584);
  for (const auto& [type, want] : kSplitTypes) {
    CHECK(g["tensors_by_type"][type]["tensors"] == want.first);
    CHECK(g["tensors_by_type"][type]["bytes"] == want.second);
  }
  // A Hugging Face folder has no gguf{}.
  auto hf = inspect_model(kFixtures / "tiny-v3-bf16");
  REQUIRE(hf.ok());
  CHECK_FALSE(json::parse(summary_json(*hf)).contains("gguf"));
}

TEST_CASE("inspect reads general.license; llama.cpp's file type names", "[gguf][inspect]") {
  // The Q8_0 fixture written again with general.license (its tensors as they are).
  auto m = GgufModel::open(kQ8);
  REQUIRE(m.ok());
  auto kv = (*m)->meta().kv;
  kv.emplace_back("general.license", gguf_str("mit"));
  std::vector<GgufTensorBlob> blobs;
  for (const GgufTensor& t : (*m)->meta().tensors) {
    const auto loc = (*m)->find(t.name);
    REQUIRE(loc.has_value());
    blobs.push_back({t.name, t.dtype, t.ne, std::vector<std::byte>(loc->data, loc->data + t.bytes)});
  }
  std::vector<const GgufTensorBlob*> ptrs;
  for (const auto& b : blobs) ptrs.push_back(&b);
  TempDir tmp;
  REQUIRE(write_gguf(tmp.path / "licensed.gguf", kv, ptrs).ok());
  auto s = inspect_model(tmp.path / "licensed.gguf");
  REQUIRE(s.ok());
  CHECK(s->license == "mit");
  CHECK(s->gguf->file_type == 7);
  CHECK(s->gguf->by_type.at("Q8_0").tensors > 0);
  CHECK_THAT(summary_text(*s), Contains("file_type     7 MOSTLY_Q8_0"));

  CHECK(llama_file_type_name(0) == "ALL_F32");
  CHECK(llama_file_type_name(10) == "MOSTLY_Q2_K");
  CHECK(llama_file_type_name(24) == "MOSTLY_IQ1_S");
  CHECK(llama_file_type_name(31) == "MOSTLY_IQ1_M");
  CHECK(llama_file_type_name(32) == "MOSTLY_BF16");
  CHECK(llama_file_type_name(4) == "UNKNOWN");
  CHECK(llama_file_type_name(1024) == "GUESSED");
}

TEST_CASE("inspect and plan through the binary on the split fixture", "[gguf][inspect][plan]") {
  const CliRun r = shoal_cli("inspect --model '" + kSplitPart1.string() + "' --json");
  INFO(r.err);
  REQUIRE(r.rc == 0);
  const json j = json::parse(r.out);
  CHECK(j["gguf"]["file_type_name"] == "MOSTLY_Q4_K_M");
  CHECK(j["total_bytes"] == kSplitTensorBytes);
  const CliRun t = shoal_cli("inspect --model '" + kSplit.string() + "'");
  REQUIRE(t.rc == 0);
  CHECK_THAT(t.out, Contains("15 MOSTLY_Q4_K_M"));

  // plan of the real file: its real bytes, in its own types.
  const json p = plan_json("--model '" + kSplitPart1.string() + "'");
  CHECK(p["fits"] == true);
  CHECK(p["weights"] == "gguf");
  CHECK(p["placed_weight_bytes"] == kSplitTensorBytes);
  CHECK(p["weight_bytes"] == kSplitTensorBytes);
  CHECK(p["mtp_weight_bytes"] == 0);
  CHECK_THAT(p["notes"].dump(), Contains("file type 15 MOSTLY_Q4_K_M"));
  // --weights converts Hugging Face checkpoints only.
  const CliRun w = shoal_cli("plan --model '" + kSplitPart1.string() + "' --local-nodes 1 --weights q8_0");
  CHECK(w.rc == 1);
  CHECK_THAT(w.err, Contains("own tensor types"));
}

TEST_CASE("plan's unit bytes of a GGUF are its tensors' real bytes, per unit", "[gguf][plan]") {
  auto ck = Checkpoint::open(kSplitPart1);
  REQUIRE(ck.ok());
  auto b = unit_bytes(**ck);
  REQUIRE(b.ok());
  // From the README's table: token_embd; output + output_norm; blk.N without the experts; each
  // stacked expert tensor's bytes / 8.
  CHECK(b->embed == 147456);
  CHECK(b->head == 215040 + 1024);
  CHECK(b->attn == std::vector<int64_t>{485888, 383520, 400416});
  REQUIRE(b->experts[0].empty());
  CHECK(b->experts[1] == std::vector<int64_t>(8, 3 * 294912 / 8));
  CHECK(b->experts[2] == std::vector<int64_t>(8, (430080 + 2 * 294912) / 8));
  CHECK(sum_units(*b) == int64_t(kSplitTensorBytes));

  // fit_plan takes them as they are (kGguf has no bytes of its own).
  ClusterSpec spec;
  NodeSpec n;
  n.name = "a";
  n.ram_gib = 8;
  n.link_gbps = 10;
  spec.nodes.push_back(n);
  FitOptions o;
  o.weights = WeightFormat::kGguf;
  CHECK_FALSE(fit_plan((*ck)->config(), spec, o).ok());
  auto r = fit_plan((*ck)->config(), spec, o, &*b);
  REQUIRE(r.ok());
  CHECK(r->fits);
  CHECK(r->weight_bytes == int64_t(kSplitTensorBytes));
  CHECK(std::string(format_name(r->weights)) == "gguf");
}

TEST_CASE("quant recipes predict Unsloth's DeepSeek-R1 dynamic quants within 5% (10% for IQ1_M, IQ2_XXS)",
          "[gguf][plan][recipe]") {
  auto c = load_config(kConfig671b);
  REQUIRE(c.ok());
  // Published: the sum of the parts on Hugging Face (unsloth/DeepSeek-R1-GGUF), decimal GB:
  // UD-IQ1_S 49.3 + 49.4 + 41.5 = 140.2 GB (the "131GB" of the post is GiB: 130.6);
  // UD-Q2_K_XL 49.8 + 50 + 50 + 50 + 26.8 = 226.6 GB (211.0 GiB, "212GB").
  struct Want {
    const char* name;
    double bytes, tolerance;
  };
  for (const Want& w : {Want{"UD-IQ1_S", 140.2e9, 0.05}, Want{"UD-Q2_K_XL", 226.6e9, 0.05},
                        Want{"UD-IQ1_M", 158 * kGiB, 0.10}, Want{"UD-IQ2_XXS", 183 * kGiB, 0.10}}) {
    INFO(w.name);
    auto r = find_quant_recipe(w.name);
    REQUIRE(r.ok());
    const GgufPrediction p = predict_gguf(*c, **r);
    CHECK(p.total_bytes == sum_units(p.units));
    CHECK(std::abs(double(p.total_bytes) / w.bytes - 1) < w.tolerance);
    // ... and the class of the post's figure (GiB) within 10%.
    CHECK(std::abs(double(p.total_bytes) / ((*r)->published_gib * kGiB) - 1) < 0.10);
  }
  // The types as the recipe says: experts IQ1_S, with the first eighth of layers' down_proj IQ2_XXS.
  auto found = find_quant_recipe("ud-iq1_s");  // case-insensitive
  REQUIRE(found.ok());
  const QuantRecipe& r = **found;
  const GgufPrediction p = predict_gguf(*c, r);
  CHECK(p.by_type.at(DType::kIQ1_S).first == 2 * 58 + 54);   // gate+up of 58 MoE layers, down of 54
  CHECK(p.by_type.at(DType::kIQ2_XXS).first == 4);           // down of layers 3..6
  CHECK(p.by_type.at(DType::kQ5_0).first == 61);             // attn_k_b: rows of 128, Q4_K's fallback
  CHECK(p.by_type.at(DType::kF32).first == 61 * 4 + 58 * 2 + 1);  // norms, router, bias, output_norm
  CHECK_FALSE(find_quant_recipe("UD-IQ9").ok());
  CHECK_THAT(find_quant_recipe("UD-IQ9").status().message(), Contains("UD-Q2_K_XL"));

  // Through the binary: the plan of the 671B config in that recipe.
  const json j = plan_json("--model '" + kConfig671b.string() + "' --quant UD-IQ1_S");
  CHECK(j["weights"] == "gguf");
  CHECK(j["placed_weight_bytes"] == p.total_bytes);
  CHECK_THAT(j["notes"].dump(), Contains("--quant UD-IQ1_S"));
  const CliRun bad = shoal_cli("plan --model '" + kConfig671b.string() + "' --local-nodes 1 --quant UD-IQ9");
  CHECK(bad.rc == 1);
  CHECK_THAT(bad.err, Contains("is not a quant recipe"));
}

TEST_CASE("a metadata-only GGUF (headers, no data) sizes the plan as the whole files do", "[gguf][plan]") {
  TempDir tmp;
  for (int k = 1; k <= 3; ++k) {
    const std::string name = "gguf-a-q4_k_m-0000" + std::to_string(k) + "-of-00003.gguf";
    write_header_only(kSplit / name, tmp.path / name);
    CHECK(fs::file_size(tmp.path / name) < fs::file_size(kSplit / name));
  }
  write_file(tmp.path / "config.json", kModelAConfig);
  const fs::path meta1 = tmp.path / "gguf-a-q4_k_m-00001-of-00003.gguf";
  // The whole model cannot open it (no data) ...
  CHECK_FALSE(GgufModel::open(meta1).ok());
  // ... its headers can.
  auto h = read_gguf_headers(meta1);
  REQUIRE(h.ok());
  CHECK_FALSE(h->data_present);
  REQUIRE(h->headers.size() == 3);
  auto c = load_config(tmp.path / "config.json");
  REQUIRE(c.ok());
  auto u = gguf_unit_bytes(*h, *c);
  REQUIRE(u.ok());
  auto ck = Checkpoint::open(kSplitPart1);
  REQUIRE(ck.ok());
  auto whole_units = unit_bytes(**ck);
  REQUIRE(whole_units.ok());
  CHECK(u->units == *whole_units);
  CHECK(u->mtp_bytes == 0);
  CHECK(u->by_type.at(DType::kQ4_K) == std::pair<int64_t, int64_t>{26, 2539008});
  // The whole files read the same way, with their data.
  auto whole = read_gguf_headers(kSplitPart1);
  REQUIRE(whole.ok());
  CHECK(whole->data_present);
  auto whole_u = gguf_unit_bytes(*whole, *c);
  REQUIRE(whole_u.ok());
  CHECK(whole_u->units == u->units);

  // Through the binary: --model the config, --quant the metadata-only part 1.
  const json j = plan_json("--model '" + (tmp.path / "config.json").string() + "' --quant '" + meta1.string() + "'");
  CHECK(j["placed_weight_bytes"] == kSplitTensorBytes);
  CHECK_THAT(j["notes"].dump(), Contains("metadata only"));

  // A part cut inside its header, or a part missing, is an error naming the file.
  const std::string head = read_file(meta1);
  write_file(meta1, head.substr(0, head.size() / 2));
  auto cut = read_gguf_headers(meta1);
  REQUIRE_FALSE(cut.ok());
  CHECK_THAT(cut.status().message(), Contains(meta1.string()));
  write_file(meta1, head);
  fs::remove(tmp.path / "gguf-a-q4_k_m-00003-of-00003.gguf");
  CHECK_FALSE(read_gguf_headers(meta1).ok());
  // Only two of the three parts' tensors: units are missing.
  GgufHeaders two = *h;
  two.headers.pop_back();
  two.files.pop_back();
  auto partial = gguf_unit_bytes(two, *c);
  REQUIRE_FALSE(partial.ok());
  CHECK_THAT(partial.status().message(), Contains("no tensor of layer 2"));
}
