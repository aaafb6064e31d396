// The dense R1 distills (Qwen2, Llama) outside the forward pass: the real configs of
// R1-Distill-Qwen-1.5B/7B/14B/32B and R1-Distill-Llama-8B/70B (tests/fixtures/configs, from the
// model cards) and the tiny fixtures through `shoal inspect` (parameter counts), `shoal plan`
// (placement, memory per rank, the decode prediction, refusals), `shoal synth` (safetensors that
// load and run) and `shoal shard`. Every expected figure is computed here from the config's JSON
// fields, not from shoal's tensor table.
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <string>

#include "cluster/fit.h"
#include "cluster/plan.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/gguf_writer.h"
#include "model/synth.h"
#include "support/files.h"
#include "support/process.h"

using Catch::Matchers::Contains;
using nlohmann::json;
using namespace shoal;
namespace fs = std::filesystem;
using shoal::test::TempDir;
using shoal::test::read_file;
using shoal::test::write_file;
using namespace std::chrono_literals;

namespace {

const fs::path kFixtures = SHOAL_FIXTURES;
const fs::path kConfigs = kFixtures / "configs";
const fs::path kLlama70b = kConfigs / "r1-distill-llama-70b";
const fs::path kQwen32b = kConfigs / "r1-distill-qwen-32b";
const char* const kRealConfigs[] = {"r1-distill-qwen-1.5b", "r1-distill-qwen-7b", "r1-distill-qwen-14b",
                                    "r1-distill-qwen-32b", "r1-distill-llama-8b", "r1-distill-llama-70b"};
const char* const kTinyFixtures[] = {"tiny-qwen2", "tiny-qwen2-tied", "tiny-llama3"};
constexpr int64_t kGiB = int64_t(1) << 30;

std::string quoted(const fs::path& p) { return "'" + p.string() + "'"; }

using shoal::test::CliRun;
using shoal::test::shoal_cli;

json read_json(const fs::path& p) {
  const std::string text = read_file(p);
  INFO(p.string());
  REQUIRE_FALSE(text.empty());
  return json::parse(text);
}

json config_json(const fs::path& dir) { return read_json(dir / "config.json"); }

// ---- the architecture, from config.json's fields --------------------------------------------

// What a Qwen2 or Llama config.json says, with transformers' defaults for absent fields.
struct Dense {
  bool qwen2 = false, tied = false;
  int64_t hidden = 0, inter = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0, vocab = 0;
  bool qkv_bias = false, o_bias = false;

  explicit Dense(const json& j) {
    qwen2 = j.at("model_type") == "qwen2";
    hidden = j.at("hidden_size");
    inter = j.at("intermediate_size");
    layers = j.at("num_hidden_layers");
    heads = j.at("num_attention_heads");
    kv_heads = j.value("num_key_value_heads", heads);
    head_dim = j.contains("head_dim") ? j.at("head_dim").get<int64_t>() : hidden / heads;
    vocab = j.at("vocab_size");
    tied = j.value("tie_word_embeddings", false);
    // Qwen2's attention always has q/k/v biases; Llama's attention_bias gives all four.
    qkv_bias = qwen2 || j.value("attention_bias", false);
    o_bias = !qwen2 && j.value("attention_bias", false);
  }

  int64_t q_out() const { return heads * head_dim; }
  int64_t kv_out() const { return kv_heads * head_dim; }
  // Weights of the matrices of a layer (q, k, v, o, gate, up, down), and of its vectors (two
  // norms and the biases).
  int64_t layer_matrix_params() const {
    return q_out() * hidden + 2 * kv_out() * hidden + hidden * q_out() + 3 * hidden * inter;
  }
  int64_t layer_vector_params() const {
    return 2 * hidden + (qkv_bias ? q_out() + 2 * kv_out() : 0) + (o_bias ? hidden : 0);
  }
  int64_t layer_params() const { return layer_matrix_params() + layer_vector_params(); }
  int64_t embed_params() const { return vocab * hidden; }
  int64_t head_params() const { return hidden + (tied ? 0 : vocab * hidden); }
  int64_t total_params() const { return embed_params() + layers * layer_params() + head_params(); }
  // Tensors a checkpoint holds: embedding, per layer 2 norms + 7 matrices + biases, final norm,
  // lm_head unless tied.
  int64_t tensors() const {
    return 1 + layers * (9 + (qkv_bias ? 3 : 0) + (o_bias ? 1 : 0)) + 1 + (tied ? 0 : 1);
  }
  // Floats of KV cache per token and layer: keys and values of the KV heads.
  int64_t kv_floats() const { return 2 * kv_heads * head_dim; }
  // Float32 activations of a prefill token (docs/plan.md "Workspace", GQA): residual and norms,
  // q and the heads' output, k and v, the MLP's gate and up.
  int64_t activation_floats() const { return 4 * hidden + 2 * q_out() + 2 * kv_out() + 2 * inter; }
};

// Bytes of the units in a format: bf16 everything at 2 bytes; q8_0 matrices at 34 bytes per 32
// weights (every row here is a multiple of 32) and vectors F32.
struct Bytes {
  int64_t embed = 0, layer = 0, head = 0;
};
Bytes unit_bytes_of(const Dense& d, const std::string& format) {
  Bytes b;
  if (format == "bf16") {
    b.embed = 2 * d.embed_params();
    b.layer = 2 * d.layer_params();
    b.head = 2 * d.head_params();
  } else {
    REQUIRE(format == "q8_0");
    REQUIRE(d.hidden % 32 == 0);
    REQUIRE(d.inter % 32 == 0);
    b.embed = d.embed_params() / 32 * 34;
    b.layer = d.layer_matrix_params() / 32 * 34 + 4 * d.layer_vector_params();
    b.head = 4 * d.hidden + (d.tied ? 0 : d.vocab * d.hidden / 32 * 34);
  }
  return b;
}

// ---- shoal plan ----------------------------------------------------------------------------

json node(const std::string& name, std::vector<double> gpus, double ram, double link = 25) {
  return {{"name", name}, {"gpus_gib", gpus}, {"ram_gib", ram}, {"link_gbps", link}};
}

struct PlanRun {
  int rc;
  json j;
  std::string err;
};

PlanRun plan_cli(const fs::path& model, const json& spec, const std::string& args) {
  TempDir tmp;
  write_file(tmp.path / "cluster.json", spec.dump());
  const CliRun r = shoal_cli("plan --model " + quoted(model) + " --cluster " + quoted(tmp.path / "cluster.json") +
                             " --json " + args);
  INFO(r.err);
  json j;
  REQUIRE_NOTHROW(j = json::parse(r.out));
  return {r.rc, j, r.err};
}

struct Asked {
  std::string format = "bf16";
  int64_t context = 4096, concurrency = 1;
  int64_t kv_value_bytes = 4;  // --kv-dtype's default, f32 (as the runtime's)
};

// Every rank of a plan that fits holds what the config says its layers, embedding and head
// weigh, the KV cache of its layers at the asked context and concurrency, and the workspace of
// docs/plan.md, within its capacity; the layers form one contiguous pipeline in rank order.
// `given`: the units' bytes when they are not the format's (a GGUF's own tensor types).
void check_ranks(const json& j, const Dense& d, const Asked& a, const std::vector<double>& capacity_gib,
                 const Bytes* given = nullptr) {
  REQUIRE(j["fits"] == true);
  const Bytes b = given ? *given : unit_bytes_of(d, a.format);
  const int64_t kv_layer = a.context * a.concurrency * d.kv_floats() * a.kv_value_bytes;
  CHECK(j["kv_bytes_per_layer"].get<int64_t>() == kv_layer);
  CHECK(j["placed_weight_bytes"].get<int64_t>() == b.embed + d.layers * b.layer + b.head);
  CHECK(j["mtp_weight_bytes"] == 0);
  CHECK(j["total_params"].get<int64_t>() == d.total_params());
  const double act = double(d.activation_floats()) * 4.0 * double(std::max<int64_t>(512, a.concurrency)) +
                     double(d.vocab) * 4.0 * double(a.concurrency);
  REQUIRE(j["ranks"].size() == capacity_gib.size());
  int64_t next_layer = 0, embeds = 0, heads = 0;
  for (size_t k = 0; k < capacity_gib.size(); ++k) {
    const json& r = j["ranks"][k];
    INFO("rank " << k << ": " << r.dump());
    const bool gpu = r["device"].get<std::string>().rfind("gpu", 0) == 0;
    const std::vector<int64_t> layers = r["layers"];
    for (int64_t i : layers) CHECK(i == next_layer++);  // contiguous, in rank order
    const bool embed = r["embed"], head = r["head"];
    embeds += embed;
    heads += head;
    const int64_t weights = (embed ? b.embed : 0) + (head ? b.head : 0) + int64_t(layers.size()) * b.layer;
    CHECK(r["weight_bytes"].get<int64_t>() == weights);
    CHECK(r["kv_bytes"].get<int64_t>() == int64_t(layers.size()) * kv_layer);
    const bool used = embed || head || !layers.empty();
    const int64_t workspace = used ? int64_t(act) + (gpu ? kGiB : (int64_t{64} << 20)) : 0;
    CHECK(r["workspace_bytes"].get<int64_t>() == workspace);
    CHECK(r["total_bytes"].get<int64_t>() == weights + int64_t(layers.size()) * kv_layer + workspace);
    CHECK(r["capacity_bytes"].get<int64_t>() == std::llround(capacity_gib[k] * double(kGiB)));
    CHECK(r["total_bytes"].get<int64_t>() <= r["capacity_bytes"].get<int64_t>());
    // Nothing of a dense model is an expert, on the device or in host memory.
    CHECK(r["experts"] == 0);
    CHECK(r["host_experts"] == 0);
    CHECK(r["host_weight_bytes"] == 0);
    CHECK(r["host_expert_ranges"].empty());
  }
  CHECK(next_layer == d.layers);
  CHECK(embeds == 1);
  CHECK(heads == 1);
  CHECK(j["expert_exchange_bytes_per_token"] == 0);
  CHECK(j["hop_bytes_per_token"].get<double>() == 4.0 * double(d.hidden) + 12);
  // The plan file has no experts.
  for (const json& l : j["plan"]["layers"]) CHECK_FALSE(l.contains("experts"));
}

}  // namespace

// ---- the configs and inspect ---------------------------------------------------------------------

TEST_CASE("the R1 distills' configs parse as dense GQA models", "[dense]") {
  for (const char* name : kRealConfigs) {
    INFO(name);
    const json j = config_json(kConfigs / name);
    auto c = load_config(kConfigs / name);
    INFO(c.status().to_string());
    REQUIRE(c.ok());
    const Dense d(j);
    CHECK_FALSE(c->uses_mla());
    CHECK(c->model_type == (d.qwen2 ? ModelType::kQwen2 : ModelType::kLlama));
    CHECK(c->n_routed_experts == 0);
    CHECK(c->n_kv_heads == d.kv_heads);
    CHECK(c->head_dim == d.head_dim);
    CHECK(c->qkv_bias == d.qkv_bias);
    CHECK(c->kv_cache_width() == d.kv_floats());
    CHECK(c->llama3.enabled == j.contains("rope_scaling"));
  }
}

TEST_CASE("inspect counts a dense config's parameters from the config alone; active is all of them",
          "[dense]") {
  for (const char* name : kRealConfigs) {
    INFO(name);
    const Dense d(config_json(kConfigs / name));
    const CliRun r = shoal_cli("inspect --json --model " + quoted(kConfigs / name));
    INFO(r.err);
    REQUIRE(r.rc == 0);
    const json i = json::parse(r.out);
    CHECK(i["total_params"].get<int64_t>() == d.total_params());
    // Dense: every weight of every layer and the head works on each token; the embedding table
    // is read one row a token (as for DeepSeek's count), and in full when it is the head too.
    CHECK(i["active_params"].get<int64_t>() == d.total_params());
    CHECK(i["model_type"] == (d.qwen2 ? "qwen2" : "llama"));
    CHECK(i["n_layers"] == d.layers);
    CHECK(i["n_dense_layers"] == d.layers);
    CHECK(i["n_moe_layers"] == 0);
    CHECK(i["num_key_value_heads"] == d.kv_heads);
    CHECK(i["head_dim"] == d.head_dim);
    CHECK(i["qkv_bias"] == d.qkv_bias);
    CHECK(i["has_weights"] == false);
    // No MLA, expert or MTP fields for a model that has none of them.
    for (const char* k : {"kv_lora_rank", "q_lora_rank", "n_routed_experts", "num_experts_per_tok", "topk_method",
                          "mtp_params", "num_nextn_predict_layers"})
      CHECK_FALSE(i.contains(k));
  }
  // The text form says what the attention is.
  const json l = config_json(kLlama70b);
  const CliRun text = shoal_cli("inspect --model " + quoted(kLlama70b));
  REQUIRE(text.rc == 0);
  const Dense d(l);
  CHECK_THAT(text.out, Contains("model_type    llama") &&
                           Contains("GQA, " + std::to_string(d.heads) + " heads, " + std::to_string(d.kv_heads) +
                                    " KV heads, head_dim " + std::to_string(d.head_dim)) &&
                           Contains("llama3 factor 8") && Contains("from 8192") && Contains("none (no MoE layers)"));
  CHECK_FALSE(text.out.find("MLA") != std::string::npos);
  CHECK_FALSE(text.out.find("routing") != std::string::npos);
  const json i = json::parse(shoal_cli("inspect --json --model " + quoted(kLlama70b)).out);
  const json& rs = l["rope_scaling"];
  CHECK(i["rope_scaling"]["type"] == "llama3");
  CHECK(i["rope_scaling"]["factor"] == rs["factor"]);
  CHECK(i["rope_scaling"]["low_freq_factor"] == rs["low_freq_factor"]);
  CHECK(i["rope_scaling"]["high_freq_factor"] == rs["high_freq_factor"]);
  CHECK(i["rope_scaling"]["original_max_position_embeddings"] == rs["original_max_position_embeddings"]);
  const CliRun qwen = shoal_cli("inspect --model " + quoted(kQwen32b));
  CHECK_THAT(qwen.out, Contains("q/k/v bias") && Contains("theta 1000000,"));
}

TEST_CASE("inspect of the tiny dense fixtures: the config's count is the tensors' in the safetensors", "[dense]") {
  for (const char* name : kTinyFixtures) {
    INFO(name);
    const fs::path dir = kFixtures / name;
    const Dense d(config_json(dir));
    const CliRun r = shoal_cli("inspect --json --model " + quoted(dir));
    INFO(r.err);
    REQUIRE(r.rc == 0);
    const json i = json::parse(r.out);
    CHECK(i["total_params"].get<int64_t>() == d.total_params());
    CHECK(i["active_params"].get<int64_t>() == d.total_params());
    CHECK(i["has_weights"] == true);
    CHECK(i["n_tensors"] == d.tensors());
    // The fixtures are BF16 throughout: 2 bytes a parameter.
    CHECK(i["bytes_by_dtype"].size() == 1);
    CHECK(i["bytes_by_dtype"]["BF16"].get<int64_t>() == 2 * d.total_params());
    CHECK(i["tie_word_embeddings"] == d.tied);
  }
}

// ---- plan -------------------------------------------------------------------------------------

TEST_CASE("plan: R1-Distill-Llama-70B in BF16 on 4 x 48 GB GPUs, per rank as the config says", "[dense][plan]") {
  const Dense d(config_json(kLlama70b));
  const json spec = {{"nodes", {node("g", {48, 48, 48, 48}, 256)}}};
  const PlanRun r = plan_cli(kLlama70b, spec, "--weights bf16");
  REQUIRE(r.rc == 0);
  check_ranks(r.j, d, {}, {48, 48, 48, 48});
  for (const json& rank : r.j["ranks"]) CHECK_FALSE(rank["layers"].empty());  // a 4-stage pipeline
  CHECK(r.j["prediction"]["pipeline_stages"] == 4);
  // inspect and plan count alike.
  const json i = json::parse(shoal_cli("inspect --json --model " + quoted(kLlama70b)).out);
  CHECK(r.j["total_params"] == i["total_params"]);
  CHECK(r.j["active_params"] == i["active_params"]);
  // A longer context and more sequences: the KV cache grows by exactly that.
  const PlanRun big = plan_cli(kLlama70b, spec, "--context 16384 --concurrency 2");
  REQUIRE(big.rc == 0);
  check_ranks(big.j, d, {"bf16", 16384, 2}, {48, 48, 48, 48});
}

TEST_CASE("plan: R1-Distill-Llama-70B in BF16 on 3 CPU nodes of 64 GB", "[dense][plan]") {
  const Dense d(config_json(kLlama70b));
  const json spec = {{"nodes", {node("a", {}, 64, 10), node("b", {}, 64, 10), node("c", {}, 64, 10)}}};
  const PlanRun r = plan_cli(kLlama70b, spec, "");
  REQUIRE(r.rc == 0);
  CHECK(r.j["weights"] == "bf16");  // the default of a config without quantization_config
  check_ranks(r.j, d, {}, {64, 64, 64});
  for (const json& rank : r.j["ranks"]) CHECK(rank["device"] == "cpu");
  // Two of those nodes are too small: the report says which ranks are over and what would fit.
  const PlanRun two = plan_cli(kLlama70b, {{"nodes", {node("a", {}, 64, 10), node("b", {}, 64, 10)}}}, "");
  CHECK(two.rc == 3);
  CHECK(two.j["fits"] == false);
  const std::string why = two.j["reasons"].dump();
  CHECK_THAT(why, Contains("does not fit") && Contains("over by"));
  const std::string would = two.j["suggestions"].dump();
  CHECK_THAT(would, Contains("--weights q8_0") && Contains("more nodes: 1 more"));
  CHECK_FALSE(would.find("fp8") != std::string::npos);  // DeepSeek's format only
}

TEST_CASE("plan: R1-Distill-Qwen-32B in BF16 on 2 x 48 GB, and Q8_0 on 2 x 24 GB", "[dense][plan]") {
  const Dense d(config_json(kQwen32b));
  const PlanRun bf16 = plan_cli(kQwen32b, {{"nodes", {node("g", {48, 48}, 128)}}}, "");
  REQUIRE(bf16.rc == 0);
  check_ranks(bf16.j, d, {}, {48, 48});

  const json small = {{"nodes", {node("g", {24, 24}, 64)}}};
  const PlanRun no = plan_cli(kQwen32b, small, "--gpu-only");
  CHECK(no.rc == 3);
  CHECK_THAT(no.j["suggestions"].dump(), Contains("--weights q8_0"));
  const PlanRun q8 = plan_cli(kQwen32b, small, "--weights q8_0");
  REQUIRE(q8.rc == 0);
  check_ranks(q8.j, d, {"q8_0"}, {24, 24});
  // The same bytes as llama.cpp's Q8_0 file would have: the recipe of --quant.
  const PlanRun gguf = plan_cli(kQwen32b, small, "--quant Q8_0");
  REQUIRE(gguf.rc == 0);
  CHECK(gguf.j["weights"] == "gguf");
  CHECK_THAT(gguf.j["notes"].dump(), Contains("--quant Q8_0"));
  for (const char* k : {"placed_weight_bytes", "kv_bytes_per_layer", "ranks"}) CHECK(gguf.j[k] == q8.j[k]);
}

TEST_CASE("plan --quant of a metadata-only llama GGUF: each tensor in its own type, rope_freqs in no unit",
          "[dense][plan][gguf]") {
  // llama.cpp's names and layout for R1-Distill-Llama-70B, matrices Q8_0 but ffn_down and output
  // Q6_K, vectors F32, and the llama3 rope factors as rope_freqs: only the header is written.
  const Dense d(config_json(kLlama70b));
  std::vector<GgufTensorOut> tensors;
  auto add = [&](const std::string& name, std::vector<int64_t> ne, DType t) {
    int64_t rows = 1;
    for (size_t k = 1; k < ne.size(); ++k) rows *= ne[k];
    const int64_t row_bytes = t == DType::kF32 ? 4 * ne[0] : t == DType::kQ8_0 ? ne[0] / 32 * 34 : ne[0] / 256 * 210;
    REQUIRE(ne[0] % (t == DType::kQ6_K ? 256 : 32) == 0);
    tensors.push_back({name, t, ne, uint64_t(rows * row_bytes)});
    return int64_t(rows * row_bytes);
  };
  Bytes b;
  b.embed = add("token_embd.weight", {d.hidden, d.vocab}, DType::kQ8_0);
  add("rope_freqs.weight", {d.head_dim / 2}, DType::kF32);
  std::vector<int64_t> layer(size_t(d.layers), 0);
  for (int64_t i = 0; i < d.layers; ++i) {
    const std::string blk = "blk." + std::to_string(i) + ".";
    int64_t& n = layer[size_t(i)];
    n += add(blk + "attn_norm.weight", {d.hidden}, DType::kF32);
    n += add(blk + "attn_q.weight", {d.hidden, d.q_out()}, DType::kQ8_0);
    n += add(blk + "attn_k.weight", {d.hidden, d.kv_out()}, DType::kQ8_0);
    n += add(blk + "attn_v.weight", {d.hidden, d.kv_out()}, DType::kQ8_0);
    n += add(blk + "attn_output.weight", {d.q_out(), d.hidden}, DType::kQ8_0);
    n += add(blk + "ffn_norm.weight", {d.hidden}, DType::kF32);
    n += add(blk + "ffn_gate.weight", {d.hidden, d.inter}, DType::kQ8_0);
    n += add(blk + "ffn_up.weight", {d.hidden, d.inter}, DType::kQ8_0);
    n += add(blk + "ffn_down.weight", {d.inter, d.hidden}, DType::kQ6_K);
  }
  b.head = add("output_norm.weight", {d.hidden}, DType::kF32) + add("output.weight", {d.hidden, d.vocab}, DType::kQ6_K);
  b.layer = layer[0];
  for (int64_t n : layer) REQUIRE(n == b.layer);
  TempDir tmp;
  const std::vector<std::pair<std::string, GgufValue>> kv = {{"general.architecture", gguf_str("llama")}};
  write_file(tmp.path / "meta.gguf", gguf_stream_header(kv, tensors));
  const json spec = {{"nodes", {node("g", {48, 48}, 128)}}};
  const PlanRun r = plan_cli(kLlama70b, spec, "--quant " + quoted(tmp.path / "meta.gguf"));
  REQUIRE(r.rc == 0);
  CHECK(r.j["weights"] == "gguf");
  CHECK_THAT(r.j["notes"].dump(), Contains("metadata only") && Contains("Q6_K") && Contains("Q8_0"));
  check_ranks(r.j, d, {}, {48, 48}, &b);
}

TEST_CASE("plan of the dense GGUF fixtures (llama-quantize's Q8_0): the file, its tensor infos, the recipe and "
          "--weights q8_0 agree", "[dense][plan][gguf]") {
  // Two ranks of 4 GiB on one CPU node.
  const json spec = {{"nodes", {{{"name", "c"}, {"ram_gib", 8}, {"link_gbps", 10}, {"cpu_ranks", 2}}}}};
  for (const char* name : {"tiny-qwen2", "tiny-llama3"}) {
    INFO(name);
    const fs::path hf = kFixtures / name;
    const fs::path gguf = kFixtures / "gguf-tiny-dense" / (std::string(name) + "-q8_0.gguf");
    const Dense d(config_json(hf));
    const PlanRun file = plan_cli(gguf, spec, "");
    REQUIRE(file.rc == 0);
    CHECK(file.j["weights"] == "gguf");
    check_ranks(file.j, d, {"q8_0"}, {4, 4});
    // The file's tensors but llama's rope_freqs (head_dim / 2 floats, part of the config).
    const json i = json::parse(shoal_cli("inspect --json --model " + quoted(gguf)).out);
    CHECK(i["total_params"].get<int64_t>() == d.total_params());
    const int64_t rope_freqs = d.qwen2 ? 0 : d.head_dim / 2 * 4;
    CHECK(file.j["placed_weight_bytes"].get<int64_t>() == i["total_bytes"].get<int64_t>() - rope_freqs);
    for (const std::string& args : {"--quant " + quoted(gguf), std::string("--quant Q8_0"), std::string("--weights q8_0")}) {
      INFO(args);
      const PlanRun other = plan_cli(hf, spec, args);
      REQUIRE(other.rc == 0);
      CHECK(other.j["ranks"] == file.j["ranks"]);
      CHECK(other.j["plan"] == file.j["plan"]);
    }
  }
}

TEST_CASE("plan of a dense model: --expert-scatter plans the pipeline with a note, fp8 is refused", "[dense][plan]") {
  const json spec = {{"nodes", {node("g", {80, 80, 80}, 256)}}};
  const PlanRun plain = plan_cli(kLlama70b, spec, "");
  const PlanRun scatter = plan_cli(kLlama70b, spec, "--expert-scatter");
  REQUIRE(plain.rc == 0);
  REQUIRE(scatter.rc == 0);
  CHECK(scatter.j["plan"] == plain.j["plan"]);
  CHECK(scatter.j["ranks"] == plain.j["ranks"]);
  CHECK(scatter.j["expert_scatter"] == false);
  CHECK_THAT(scatter.j["notes"].dump(), Contains("--expert-scatter") && Contains("no routed experts"));
  // The library's planner alike.
  auto loaded = load_config(kLlama70b);
  REQUIRE(loaded.ok());
  const ModelConfig c = *loaded;
  const cluster::UnitBytes bytes = cluster::unit_bytes_in(c, cluster::WeightFormat::kBf16);
  cluster::PlannerOptions po;
  auto pipeline = cluster::default_plan(c, bytes, 3, po);
  po.expert_scatter = true;
  auto scattered = cluster::default_plan(c, bytes, 3, po);
  REQUIRE(pipeline.ok());
  REQUIRE(scattered.ok());
  CHECK(*pipeline == *scattered);

  TempDir tmp;
  write_file(tmp.path / "c.json", spec.dump());
  const CliRun fp8 = shoal_cli("plan --model " + quoted(kLlama70b) + " --cluster " + quoted(tmp.path / "c.json") +
                               " --weights fp8");
  CHECK(fp8.rc == 1);
  CHECK_THAT(fp8.err, Contains("--weights fp8") && Contains("llama") && Contains("bf16"));
}

TEST_CASE("plan of a dense model on GPUs and a CPU node: the CPU node takes layers, GPU host memory nothing",
          "[dense][plan]") {
  const Dense d(config_json(kLlama70b));
  // 2 x 48 GB GPUs with 512 GB of host memory hold 141 GB only with the CPU node's help: the
  // GPUs' host memory takes routed experts, and this model has none.
  const json spec = {{"nodes", {node("g", {48, 48}, 512), node("cpu", {}, 128)}}};
  const PlanRun r = plan_cli(kLlama70b, spec, "");
  REQUIRE(r.rc == 0);
  check_ranks(r.j, d, {}, {48, 48, 128});
  CHECK(r.j["ranks"][2]["weight_bytes"].get<int64_t>() > 0);
  CHECK_THAT(r.j["warnings"].dump(), Contains("CPU rank"));
  // --gpu-only: no, and dropping it is what fits.
  const PlanRun gpu_only = plan_cli(kLlama70b, spec, "--gpu-only");
  CHECK(gpu_only.rc == 3);
  CHECK_THAT(gpu_only.j["suggestions"].dump(), Contains("without --gpu-only (CPU nodes take layers)"));
  // The text form has no expert columns or lines.
  TempDir tmp;
  write_file(tmp.path / "c.json", spec.dump());
  const CliRun text = shoal_cli("plan --model " + quoted(kLlama70b) + " --cluster " + quoted(tmp.path / "c.json"));
  REQUIRE(text.rc == 0);
  CHECK_THAT(text.out, Contains("keys and values") && Contains("no routed experts") && Contains("predicted decode") &&
                           Contains("with layers on CPU ranks"));
  for (const char* absent : {"experts  ", "host memory (experts", "expert exchange", "MTP", "latent"})
    CHECK(text.out.find(absent) == std::string::npos);
}

TEST_CASE("plan of a dense model: the decode prediction is the bytes a token reads over the bandwidth",
          "[dense][plan]") {
  // One GPU of known bandwidth: a token reads every layer, the head and one embedding row, and
  // the KV cache of the whole context, at 0.7 of 1000 GB/s.
  const fs::path model = kConfigs / "r1-distill-qwen-1.5b";
  const Dense d(config_json(model));
  const json spec = {{"nodes", {node("g", {24}, 64)}}, {"bandwidth_gbs", {{"gpu", 1000}}}};
  const PlanRun r = plan_cli(model, spec, "--context 8192");
  REQUIRE(r.rc == 0);
  check_ranks(r.j, d, {"bf16", 8192, 1}, {24});
  const Bytes b = unit_bytes_of(d, "bf16");
  const double rate = 1000e9 * 0.7;
  const double weight_s = (double(d.layers * b.layer + b.head) + double(b.embed) / double(d.vocab)) / rate;
  const double kv_s = double(d.layers) * 8192.0 * double(d.kv_floats()) * 4.0 / rate;  // f32, the default
  const json& ms = r.j["prediction"]["one_sequence_ms"];
  CHECK(ms["weights"].get<double>() == Approx(weight_s * 1e3).epsilon(1e-9));
  CHECK(ms["kv_cache"].get<double>() == Approx(kv_s * 1e3).epsilon(1e-9));
  CHECK(r.j["hops_per_token"] == 0);
}

// ---- synth and shard ------------------------------------------------------------------------

namespace {

// A real config scaled down (the architecture's fields kept: GQA ratio, biases, rope scaling).
fs::path scaled_down(const TempDir& tmp, const fs::path& real) {
  json j = config_json(real);
  j["hidden_size"] = 128;
  j["intermediate_size"] = 256;
  j["num_attention_heads"] = 8;
  j["num_key_value_heads"] = 2;
  j["vocab_size"] = 640;
  const fs::path dir = tmp.path / ("config-" + real.filename().string());
  fs::create_directories(dir);
  write_file(dir / "config.json", j.dump(2));
  return dir;
}

float bf16_value(const std::byte* p) {
  uint32_t bits = uint32_t(std::to_integer<uint8_t>(p[0])) | uint32_t(std::to_integer<uint8_t>(p[1])) << 8;
  bits <<= 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// A synthesized dense checkpoint: its tensors are the config's, BF16, lm_head absent when tied,
// biases small random vectors; it loads and `shoal logits` gives finite logits.
void check_synthesized(const fs::path& dir, int64_t layers) {
  const json j = config_json(dir);
  const Dense d(j);
  CHECK(d.layers == layers);
  const CliRun inspect = shoal_cli("inspect --json --model " + quoted(dir));
  REQUIRE(inspect.rc == 0);
  const json i = json::parse(inspect.out);
  CHECK(i["total_params"].get<int64_t>() == d.total_params());
  CHECK(i["n_tensors"] == d.tensors());
  CHECK(i["bytes_by_dtype"]["BF16"].get<int64_t>() == 2 * d.total_params());
  const json index = read_json(dir / "model.safetensors.index.json");
  CHECK(index["weight_map"].contains("lm_head.weight") == !d.tied);
  CHECK(index["weight_map"].contains("model.layers.0.self_attn.k_proj.bias") == d.qkv_bias);

  auto ck = Checkpoint::open(dir);
  REQUIRE(ck.ok());
  if (d.qkv_bias) {
    for (const char* p : {"q_proj", "k_proj", "v_proj"}) {
      const std::string name = "model.layers.0.self_attn." + std::string(p) + ".bias";
      INFO(name);
      auto t = (*ck)->tensor(name);
      REQUIRE(t.ok());
      REQUIRE(t->info->dtype == DType::kBF16);
      float lo = 1e9f, hi = -1e9f;
      for (int64_t k = 0; k < t->info->numel(); ++k) {
        const float v = bf16_value(t->data + 2 * k);
        lo = std::min(lo, v), hi = std::max(hi, v);
      }
      CHECK((lo >= -0.11f && hi <= 0.11f && hi > lo));  // centred random values, not norm-like 1s
    }
  }
  const CliRun logits = shoal_cli("logits --model " + quoted(dir) + " --ids \"1 2 3\"");
  INFO(logits.err);
  REQUIRE(logits.rc == 0);
  const json l = json::parse(logits.out);
  REQUIRE(l["prompt_logits"].size() == 1);
  REQUIRE(l["prompt_logits"][0].size() == 3);
  for (const json& row : l["prompt_logits"][0]) {
    REQUIRE(int64_t(row.size()) == d.vocab);
    double sum2 = 0;
    for (const json& v : row) {
      REQUIRE(v.is_number());
      REQUIRE(std::isfinite(v.get<double>()));
      sum2 += v.get<double>() * v.get<double>();
    }
    const double rms = std::sqrt(sum2 / double(d.vocab));
    CHECK(rms > 0.05);
    CHECK(rms < 20);  // O(1) logits, tied heads included
  }
}

}  // namespace

TEST_CASE("synth of the tiny dense fixtures' configs: the config's tensors, loaded and run", "[dense][synth]") {
  for (const char* name : kTinyFixtures) {
    INFO(name);
    TempDir tmp;
    const CliRun r = shoal_cli("synth --config " + quoted(kFixtures / name) + " --out " + quoted(tmp.path / "m"));
    INFO(r.err);
    REQUIRE(r.rc == 0);
    check_synthesized(tmp.path / "m", config_json(kFixtures / name)["num_hidden_layers"]);
  }
}

TEST_CASE("synth --layers of the real distill configs, scaled down: Qwen-32B and Llama-70B", "[dense][synth]") {
  for (const fs::path& real : {kQwen32b, kLlama70b}) {
    INFO(real.string());
    TempDir tmp;
    const fs::path config = scaled_down(tmp, real);
    const CliRun r = shoal_cli("synth --config " + quoted(config) + " --layers 2 --seed 7 --out " + quoted(tmp.path / "m"));
    INFO(r.err);
    REQUIRE(r.rc == 0);
    check_synthesized(tmp.path / "m", 2);
    // The written config is the real one but for the edits: rope scaling and the rest kept.
    const json in = config_json(config), out = config_json(tmp.path / "m");
    for (const auto& [k, v] : in.items())
      if (k != "num_hidden_layers") CHECK(out[k] == v);
  }
}

// (GGUF synth of the dense configs: tests/test_gguf.cpp.)
TEST_CASE("synth of a dense config refuses fp8 and writes nothing", "[dense][synth]") {
  TempDir tmp;
  const CliRun fp8 = shoal_cli("synth --config " + quoted(kFixtures / "tiny-llama3") + " --dtype fp8 --out " +
                               quoted(tmp.path / "f"));
  CHECK(fp8.rc == 1);
  CHECK_THAT(fp8.err, Contains("--dtype fp8") && Contains("llama"));
  CHECK_FALSE(fs::exists(tmp.path / "f" / "config.json"));
}

TEST_CASE("plan --out and shard of a synthesized dense model: every tensor once, a TCP node on its shard",
          "[dense][shard]") {
  TempDir t;
  const fs::path model = t.path / "m";
  REQUIRE(shoal_cli("synth --config " + quoted(kFixtures / "tiny-llama3") + " --out " + quoted(model)).rc == 0);
  const fs::path plan = t.path / "plan.json";
  const CliRun p = shoal_cli("plan --model " + quoted(model) + " --local-nodes 2 --ram-bandwidth-gbs 20 --out " +
                             quoted(plan));
  INFO(p.out << p.err);
  REQUIRE(p.rc == 0);
  const json pj = read_json(plan);  // the plan file of a small model is written whole
  CHECK(pj["world_size"] == 2);
  const CliRun s = shoal_cli("shard --model " + quoted(model) + " --plan " + quoted(plan) + " --out " +
                             quoted(t.path / "shards"));
  INFO(s.err);
  REQUIRE(s.rc == 0);
  // Every tensor of the model in exactly one rank's shard.
  const Dense d(config_json(model));
  std::set<std::string> seen;
  int64_t tensors = 0;
  for (int r : {0, 1}) {
    const json m = read_json(t.path / "shards" / ("rank-" + std::to_string(r)) / "shoal-shard.json");
    CHECK(m["rank"] == r);
    for (const json& name : m["files"][0]["tensors"]) {
      CHECK(seen.insert(name.get<std::string>()).second);
      ++tensors;
    }
  }
  CHECK(tensors == d.tensors());

  // Rank 1 as a TCP node on its shard gives the single process's logits.
  write_file(t.path / "token", "dense-shard-token\n");
  fs::permissions(t.path / "token", fs::perms::owner_read | fs::perms::owner_write);
  shoal::test::Child n(std::string(SHOAL_BINARY) + " node --listen 127.0.0.1:0 --token-file " + quoted(t.path / "token") +
                           " --model " + quoted(t.path / "shards" / "rank-1"),
                       (t.path / "node.log").string());
  std::string line;
  REQUIRE(n.read_line(line, 10s));
  std::smatch m;
  REQUIRE(std::regex_search(line, m, std::regex("listening on (127\\.0\\.0\\.1:[0-9]+)")));
  const std::string ids = " --ids \"0 17 42 99\" --greedy 3";
  const CliRun want = shoal_cli("logits --model " + quoted(model) + ids);
  const CliRun got = shoal_cli("logits --model " + quoted(model) + ids + " --plan " + quoted(plan) + " --nodes " +
                               m[1].str() + " --token-file " + quoted(t.path / "token"));
  INFO(got.err << "\nnode: " << read_file(t.path / "node.log"));
  REQUIRE(want.rc == 0);
  REQUIRE(got.rc == 0);
  const json a = json::parse(want.out), b = json::parse(got.out);
  CHECK(a["greedy_ids"] == b["greedy_ids"]);
  REQUIRE(a["prompt_logits"][0].size() == b["prompt_logits"][0].size());
  double worst = 0;
  for (size_t pos = 0; pos < a["prompt_logits"][0].size(); ++pos)
    for (size_t v = 0; v < a["prompt_logits"][0][pos].size(); ++v)
      worst = std::max(worst, std::abs(a["prompt_logits"][0][pos][v].get<double>() -
                                       b["prompt_logits"][0][pos][v].get<double>()));
  CHECK(worst <= 1e-5);
}
