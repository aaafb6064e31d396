// shoal synth and shoal inspect. Synthesized checkpoints are checked against the tensor table,
// Hugging Face's layout and sharding, the quantizer's precision, the engine and the router;
// inspect's counts against the 671B release's numbers and independent sums over safetensors
// headers. The CLI is run as a process (SHOAL_BINARY), as a user runs it.
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>

#include "coordinator/engine.h"
#include "kernels/cpu/formats/ggml/block.h"
#include "model/checkpoint.h"
#include "model/gguf.h"
#include "model/inspect.h"
#include "model/layers.h"
#include "model/synth.h"
#include "model/tensor_names.h"
#include "node/stage.h"
#include "support/files.h"
#include "support/process.h"
#include "text/reasoning.h"
#include "text/tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using shoal::test::TempDir;
using shoal::test::read_file;
using shoal::test::write_file;
using nlohmann::json;
using namespace shoal;

namespace {

const fs::path kFixtures = SHOAL_FIXTURES;
const fs::path kConfig671b = kFixtures / "configs" / "deepseek-v3-671b" / "config.json";
const fs::path kTokenizerV3 = kFixtures / "tokenizer-deepseek-v3";
// The synth runs most tests share (--config as a folder for one, as a file for the other).
const std::string kTinyBf16 =
    "--config '" + (kFixtures / "tiny-v3-bf16").string() + "' --dtype bf16 --seed 7 --shard-size-mb 0.1";
const std::string kTinyFp8 =
    "--config '" + (kFixtures / "tiny-v3-fp8" / "config.json").string() + "' --dtype fp8 --seed 7 --shard-size-mb 1";

// ---- helpers --------------------------------------------------------------------------------

std::string quoted(const fs::path& p) {
  std::string s = p.string();
  s.insert(s.begin(), '\'');
  s.push_back('\'');
  return s;
}

using shoal::test::CliRun;
using shoal::test::shoal_cli;

// Runs `shoal synth ARGS --out <temp>/ckpt` once per key; the folders are removed at exit.
fs::path synthesized(const std::string& args) {
  static std::map<std::string, std::unique_ptr<TempDir>> made;
  auto& slot = made[args];
  if (!slot) {
    slot = std::make_unique<TempDir>();
    const CliRun r = shoal_cli("synth " + args + " --out " + quoted(slot->path / "ckpt"));
    INFO("synth " << args << "\n" << r.out << r.err);
    REQUIRE(r.rc == 0);
  }
  return slot->path / "ckpt";
}

// Every tensor header of every *.safetensors in dir, with the file holding it.
struct Header {
  TensorInfo info;
  std::string file;
};
std::map<std::string, Header> read_headers(const fs::path& dir) {
  std::map<std::string, Header> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".safetensors") continue;
    auto f = SafetensorsFile::open(entry.path());
    REQUIRE(f.ok());
    for (const TensorInfo& t : (*f)->tensors()) {
      INFO(t.name);
      REQUIRE(out.emplace(t.name, Header{t, entry.path().filename().string()}).second);
    }
  }
  return out;
}

json read_json(const fs::path& p) {
  const std::string text = read_file(p);
  REQUIRE(!text.empty());
  return json::parse(text);
}

// The 671B config with small widths, so a layer of it fits a test.
fs::path write_scaled_671b_config(const fs::path& dir) {
  json c = read_json(kConfig671b);
  const std::map<std::string, int> small{{"hidden_size", 256},      {"intermediate_size", 512},
                                         {"moe_intermediate_size", 64}, {"vocab_size", 1024},
                                         {"num_attention_heads", 4}, {"num_key_value_heads", 4},
                                         {"q_lora_rank", 64},        {"kv_lora_rank", 32},
                                         {"qk_nope_head_dim", 32},   {"qk_rope_head_dim", 16},
                                         {"v_head_dim", 32}};
  for (const auto& [k, v] : small) c[k] = v;
  fs::create_directories(dir);
  write_file(dir / "config.json", c.dump(2));
  return dir / "config.json";
}

DType expected_dtype(const TensorSpec& t, bool fp8) {
  if (t.name.ends_with("e_score_correction_bias")) return DType::kF32;  // F32 in the release
  return fp8 && t.quantized ? DType::kF8E4M3 : DType::kBF16;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- checks on a synthesized folder ---------------------------------------------------------

// Every tensor of the table is there with its shape and dtype (plus F32 block scales for fp8
// weights), and nothing else is.
void check_tensors(const fs::path& dir, bool fp8) {
  auto c = load_config(dir);
  REQUIRE(c.ok());
  REQUIRE(c->fp8 == fp8);
  const auto headers = read_headers(dir);
  size_t expected = 0;
  for (const TensorSpec& t : model_tensors(*c, /*with_mtp=*/true)) {
    INFO(t.name);
    REQUIRE(headers.count(t.name) == 1);
    const TensorInfo& info = headers.at(t.name).info;
    CHECK(info.shape == t.shape);
    CHECK(info.dtype == expected_dtype(t, fp8));
    ++expected;
    if (info.dtype != DType::kF8E4M3) continue;
    const std::string s = names::scale_inv(t.name);
    REQUIRE(headers.count(s) == 1);
    CHECK(headers.at(s).info.dtype == DType::kF32);
    CHECK(headers.at(s).info.shape == std::vector<int64_t>{ceil_div(t.shape[0], 128), ceil_div(t.shape[1], 128)});
    ++expected;
  }
  CHECK(headers.size() == expected);
}

// The index names every tensor's shard, the shards are model-0000k-of-0000n, total_size is the
// tensor bytes, and shards split where HF's greedy split puts the cut.
size_t check_index_and_sharding(const fs::path& dir, uint64_t limit) {
  const json index = read_json(dir / "model.safetensors.index.json");
  const auto headers = read_headers(dir);
  const json& map = index.at("weight_map");
  REQUIRE(map.size() == headers.size());
  uint64_t total = 0;
  std::set<std::string> files;
  for (const auto& [name, h] : headers) {
    INFO(name);
    REQUIRE(map.contains(name));
    CHECK(map[name].get<std::string>() == h.file);
    total += h.info.end - h.info.begin;
    files.insert(h.file);
  }
  CHECK(index.at("metadata").at("total_size").get<uint64_t>() == total);
  const size_t n = files.size();
  for (size_t k = 1; k <= n; ++k) {
    char want[64];
    std::snprintf(want, sizeof want, "model-%05zu-of-%05zu.safetensors", k, n);
    CHECK(files.count(want) == 1);
  }
  // Walk the tensors in table order (each fp8 weight followed by its scale). A tensor over the
  // limit is alone in its shard, numbered before the shard being filled (HF appends it at once).
  // For the others shard numbers never go back, each shard is within the limit, and a new shard
  // starts only when the next tensor would have passed it.
  auto c = load_config(dir);
  REQUIRE(c.ok());
  std::vector<std::string> order;
  for (const TensorSpec& t : model_tensors(*c, true)) {
    order.push_back(t.name);
    if (headers.at(t.name).info.dtype == DType::kF8E4M3) order.push_back(names::scale_inv(t.name));
  }
  std::map<std::string, int> per_file;
  for (const auto& [name, h] : headers) ++per_file[h.file];
  uint64_t size = 0;
  std::string file;  // of the shard being filled
  for (const std::string& name : order) {
    const Header& h = headers.at(name);
    const uint64_t bytes = h.info.end - h.info.begin;
    if (bytes > limit) {
      CHECK(per_file[h.file] == 1);
      if (!file.empty()) CHECK(h.file < file);
      continue;
    }
    REQUIRE(h.file >= file);
    if (h.file != file) {
      if (!file.empty()) CHECK(size + bytes > limit);
      size = 0;
      file = h.file;
    }
    size += bytes;
    CHECK(size <= limit);
  }
  return n;
}

// The written config is the input with synth's edits and nothing else changed.
void check_config(const fs::path& dir, const fs::path& source, bool fp8, int64_t layers, bool mtp) {
  json got = read_json(dir / "config.json");
  json want = read_json(fs::is_directory(source) ? source / "config.json" : source);
  if (layers > 0) want["num_hidden_layers"] = layers;
  if (!mtp) want["num_nextn_predict_layers"] = 0;
  want.erase("quantization_config");
  if (fp8) {
    want["quantization_config"] = json::parse(
        R"({"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]})");
  }
  CHECK(got == want);
}

std::vector<float> row_values(const kernels::Matrix& m, int64_t r) {
  std::vector<float> out(size_t(m.cols));
  kernels::dequantize_row(out.data(), m, r);
  return out;
}

// The experts layer `layer` routes to for the tokens `ids` (one prefilled sequence): the real
// gate input, i.e. the embedding through layers [0, layer), then this layer's attention and
// post_attention_layernorm.
std::set<int32_t> experts_hit(Checkpoint& ck, int64_t layer, const std::vector<int32_t>& ids) {
  const ModelConfig& c = ck.config();
  const int64_t n = int64_t(ids.size()), dim = c.dim;
  const float eps = float(c.rms_norm_eps);
  kernels::Context ctx;
  Batch batch;
  batch.add_sequence(0, 0, ids);
  auto embed = load_embedding(ck);
  REQUIRE(embed.ok());
  std::vector<float> x(size_t(n * dim)), h(x.size()), y(x.size());
  kernels::embedding(x.data(), ids.data(), *embed, n, ctx);
  StageOptions so;
  so.last_layer = layer;
  so.max_seq_len = n;
  auto stage = Stage::load(ck, so);
  REQUIRE(stage.ok());
  (*stage)->forward(x.data(), batch);

  auto w = load_layer(ck, layer, ExpertFilter{});
  REQUIRE(w.ok());
  REQUIRE(w->moe);
  const RopeTable rope = make_rope_table(c);
  const LayerContext lc{&c, &rope, AttnImpl::kAuto, ctx};
  std::vector<float> kv(size_t(n * c.kv_lora_rank)), pe(size_t(n * c.qk_rope_head_dim));
  kernels::rms_norm(h.data(), x.data(), w->attn_norm, n, eps, ctx);
  mla_forward(y.data(), h.data(), w->attn, batch, {SeqKv{kv.data(), pe.data(), n}}, lc);
  for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
  kernels::rms_norm(h.data(), x.data(), w->ffn_norm, n, eps, ctx);
  std::vector<int32_t> indices;
  std::vector<float> weights;
  gate_forward(indices, weights, h.data(), *w, n, lc);
  return {indices.begin(), indices.end()};
}

std::vector<int32_t> random_ids(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, int32_t(vocab - 1));
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = pick(rng);
  return ids;
}

void check_generates(const fs::path& dir) {
  EngineOptions eo;
  eo.max_seq_len = 64;
  auto engine = Engine::open(dir, eo);
  INFO(engine.status().to_string());
  REQUIRE(engine.ok());
  const int64_t vocab = (*engine)->config().vocab_size;
  auto r = generate_greedy(**engine, {random_ids(9, vocab, 3)}, 4, true, true);
  REQUIRE(r.ok());
  REQUIRE(r->ids[0].size() == 4);
  for (const auto& logits : r->step_logits[0]) {
    REQUIRE(int64_t(logits.size()) == vocab);
    float lo = logits[0], hi = logits[0];
    for (float v : logits) {
      REQUIRE(std::isfinite(v));
      lo = std::min(lo, v), hi = std::max(hi, v);
    }
    CHECK(hi - lo > 0.1f);  // logits that tell tokens apart
    CHECK(hi - lo < 100.0f);  // and O(1) activations, not blown up
  }
}

}  // namespace

// ---- the quantizer --------------------------------------------------------------------------

TEST_CASE("quantize_fp8_blocks: per 128x128 block, scale max|w|/448 and e4m3 round to nearest") {
  const int64_t rows = 300, cols = 200, block = 128;  // 3 x 2 blocks, partial both ways
  const float magnitude[6] = {1.0f, 1e-3f, 37.0f, 0.0f, 2.5f, 1e-6f};  // one all-zero block
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  auto tile = [&](int64_t i) { return size_t(i / cols / block * 2 + i % cols / block); };
  std::vector<float> w(size_t(rows * cols));
  for (int64_t i = 0; i < rows * cols; ++i) w[size_t(i)] = normal(rng) * magnitude[tile(i)];
  std::vector<uint8_t> q(w.size());
  std::vector<float> scale(6);
  quantize_fp8_blocks(q.data(), scale.data(), w.data(), rows, cols, block);

  std::vector<float> amax(6, 0.0f);
  for (int64_t i = 0; i < rows * cols; ++i) amax[tile(i)] = std::max(amax[tile(i)], std::fabs(w[size_t(i)]));
  for (size_t b = 0; b < 6; ++b) CHECK(scale[b] == (amax[b] > 0 ? amax[b] / 448.0f : 1.0f));
  // Error over the round-to-nearest bound: half a step, 2^-4 relative, or 2^-10 among subnormals.
  double worst = 0;
  for (int64_t i = 0; i < rows * cols; ++i) {
    const float s = scale[tile(i)], x = w[size_t(i)];
    const float got = fp8_e4m3_to_float(q[size_t(i)]) * s;
    worst = std::max(worst, std::fabs(double(got) - x) / (std::fabs(x) * 0x1p-4 + s * 0x1p-10));
  }
  CHECK(worst <= 1.0 + 1e-5);
  CHECK(worst > 0.5);  // the bound is tight: rounding does reach half a step
}

// ---- synth ----------------------------------------------------------------------------------

TEST_CASE("synth of the tiny fixture configs: every table tensor, HF index and sharding, config edits") {
  for (const bool fp8 : {false, true}) {
    INFO((fp8 ? "fp8" : "bf16"));
    const fs::path dir = synthesized(fp8 ? kTinyFp8 : kTinyBf16);
    const fs::path source = kFixtures / (fp8 ? "tiny-v3-fp8" : "tiny-v3-bf16");
    check_tensors(dir, fp8);
    // fp8: ~8 MB in 1 MiB shards; bf16: ~0.9 MB in 0.1 MiB shards, its embedding and lm_head over the limit.
    CHECK(check_index_and_sharding(dir, fp8 ? 1u << 20 : uint64_t(0.1 * (1 << 20))) >= 5);
    check_config(dir, source, fp8, 0, false);
  }
}

TEST_CASE("synth: the default is bf16 in one shard, --mtp writes the MTP layer") {
  const fs::path source = kFixtures / "tiny-v3-fp8" / "config.json";
  const fs::path plain = synthesized("--config " + quoted(source));
  check_tensors(plain, false);
  check_config(plain, source, false, 0, false);
  CHECK(fs::exists(plain / "model-00001-of-00001.safetensors"));

  const fs::path with_mtp = synthesized("--config " + quoted(source) + " --mtp --dtype fp8");
  check_config(with_mtp, source, true, 0, true);
  check_tensors(with_mtp, true);  // the table with_mtp: layer 4's MTP tensors included
  auto s = inspect_model(with_mtp);
  REQUIRE(s.ok());
  CHECK(s->has_mtp_weights);
  check_generates(with_mtp);
}

TEST_CASE("synth: weights are scaled for O(1) activations") {
  const fs::path dir = synthesized(kTinyBf16);
  auto ck = Checkpoint::open(dir);
  REQUIRE(ck.ok());
  for (const TensorSpec& t : model_tensors((*ck)->config(), false)) {
    INFO(t.name);
    auto ref = (*ck)->tensor(t.name);
    REQUIRE(ref.ok());
    const int64_t rows = t.shape.size() == 1 ? 1 : t.shape[0], cols = t.shape.back();
    kernels::Matrix m{ref->data, ref->info->dtype, rows, cols};
    double sum = 0, sum2 = 0, lo = 1e30, hi = -1e30;
    for (int64_t r = 0; r < rows; ++r) {
      for (double v : row_values(m, r)) {
        sum += v, sum2 += v * v;
        lo = std::min(lo, v), hi = std::max(hi, v);
      }
    }
    const double n = double(rows * cols), mean = sum / n, sd = std::sqrt(sum2 / n - mean * mean);
    if (t.name.ends_with("e_score_correction_bias")) {
      CHECK((lo >= -0.05 && hi <= 0.05 && hi > lo));
    } else if (t.shape.size() == 1) {  // norms: 1 + small noise
      CHECK((lo >= 0.89 && hi <= 1.11 && hi > lo));
    } else {
      const double want = t.unit == Unit::kEmbed ? 1.0 : 1.0 / std::sqrt(double(cols));
      CHECK(sd == Approx(want).epsilon(0.1));
      CHECK(std::fabs(mean) < 4 * want / std::sqrt(n));  // 4 sigma
    }
  }
}

TEST_CASE("synth: fp8 weights dequantize to the bf16 synth of the same seed within e4m3 precision") {
  const fs::path b = synthesized("--config " + quoted(kFixtures / "tiny-v3-fp8") + " --dtype bf16 --seed 7");
  const fs::path f = synthesized(kTinyFp8);
  auto cb = Checkpoint::open(b);
  auto cf = Checkpoint::open(f);
  REQUIRE((cb.ok() && cf.ok()));
  int64_t checked = 0;
  for (const TensorSpec& t : model_tensors((*cf)->config(), false)) {
    if (!t.quantized) continue;
    INFO(t.name);
    auto mb = (*cb)->matrix(t.name, t.shape[0], t.shape[1]);
    auto mf = (*cf)->matrix(t.name, t.shape[0], t.shape[1]);
    REQUIRE((mb.ok() && mf.ok()));
    REQUIRE(mf->dtype == DType::kF8E4M3);
    double worst = 0;
    for (int64_t r = 0; r < t.shape[0]; ++r) {
      const auto vb = row_values(*mb, r), vf = row_values(*mf, r);
      for (int64_t c = 0; c < t.shape[1]; ++c) {
        const float s = mf->scale_inv[r / 128 * mf->scale_cols() + c / 128];
        const double bound = std::fabs(vb[size_t(c)]) * (0x1p-4 + 0x1p-8) + s * 0x1p-10;
        worst = std::max(worst, std::fabs(double(vf[size_t(c)]) - vb[size_t(c)]) / bound);
      }
    }
    CHECK(worst <= 1.0);
    ++checked;
  }
  CHECK(checked > 30);
}

TEST_CASE("synth: the engine runs a synthesized model and gives finite logits") {
  check_generates(synthesized(kTinyBf16));
  check_generates(synthesized(kTinyFp8));
}

TEST_CASE("synth: the same seed writes the same bytes, another seed other weights") {
  const fs::path config = kFixtures / "tiny-v3-fp8";
  const fs::path a = synthesized(kTinyFp8);
  const fs::path a2 = synthesized("--seed 7 --dtype fp8 --shard-size-mb 1 --config " + quoted(config));
  const fs::path b = synthesized("--config " + quoted(config) + " --dtype fp8 --seed 8 --shard-size-mb 1");
  size_t files = 0;
  for (const auto& entry : fs::directory_iterator(a)) {
    const std::string name = entry.path().filename().string();
    INFO(name);
    const std::string bytes = read_file(entry.path());
    CHECK(bytes == read_file(a2 / name));
    if (entry.path().extension() == ".safetensors") CHECK(bytes != read_file(b / name));
    else CHECK(bytes == read_file(b / name));  // config and index do not depend on the seed
    ++files;
  }
  CHECK(files == size_t(std::distance(fs::directory_iterator(a2), fs::directory_iterator())));
  CHECK(files >= 7);  // config.json, index, 5 or more shards
}

// ---- synth --format gguf --------------------------------------------------------------------

namespace {

// Model A's sizes (tests/fixtures/gguf-a-q4_k_m-split/README.md) on the tiny fixture's config:
// rows of 256 and 512 take the 256-weight K- and i-quant blocks; attn_k_b's rows of
// qk_nope_head_dim 64 do not, and fall back.
fs::path write_gguf_a_config(const fs::path& dir) {
  json c = read_json(kFixtures / "tiny-v3-bf16" / "config.json");
  const std::map<std::string, int> sizes{{"hidden_size", 256},      {"intermediate_size", 512},
                                         {"moe_intermediate_size", 256}, {"q_lora_rank", 256},
                                         {"kv_lora_rank", 256},     {"qk_nope_head_dim", 64},
                                         {"qk_rope_head_dim", 32},  {"v_head_dim", 64},
                                         {"num_hidden_layers", 3}};
  for (const auto& [k, v] : sizes) c[k] = v;
  fs::create_directories(dir);
  write_file(dir / "config.json", c.dump(2));
  return dir / "config.json";
}

// The fields of a config that change the computation, GGUF against the source config (BOS/EOS
// are the synthetic vocabulary's, MTP is not in a GGUF).
void check_same_config(const ModelConfig& got, const ModelConfig& want) {
  CHECK(got.vocab_size == want.vocab_size);
  CHECK(got.dim == want.dim);
  CHECK(got.inter_dim == want.inter_dim);
  CHECK(got.moe_inter_dim == want.moe_inter_dim);
  CHECK(got.n_layers == want.n_layers);
  CHECK(got.n_dense_layers == want.n_dense_layers);
  CHECK(got.n_heads == want.n_heads);
  CHECK(got.n_routed_experts == want.n_routed_experts);
  CHECK(got.n_shared_experts == want.n_shared_experts);
  CHECK(got.n_activated_experts == want.n_activated_experts);
  CHECK(got.n_expert_groups == want.n_expert_groups);
  CHECK(got.n_limited_groups == want.n_limited_groups);
  CHECK(got.score_func == want.score_func);
  CHECK(got.topk_method == want.topk_method);
  CHECK(got.model_type == want.model_type);
  CHECK(got.norm_topk_prob == want.norm_topk_prob);
  CHECK(float(got.route_scale) == float(want.route_scale));
  CHECK(got.q_lora_rank == want.q_lora_rank);
  CHECK(got.kv_lora_rank == want.kv_lora_rank);
  CHECK(got.qk_nope_head_dim == want.qk_nope_head_dim);
  CHECK(got.qk_rope_head_dim == want.qk_rope_head_dim);
  CHECK(got.v_head_dim == want.v_head_dim);
  CHECK(float(got.rope_theta) == float(want.rope_theta));
  CHECK(float(got.rms_norm_eps) == float(want.rms_norm_eps));
  CHECK(got.max_position_embeddings == want.max_position_embeddings);
  CHECK(got.tie_word_embeddings == want.tie_word_embeddings);
  CHECK(got.yarn.enabled == want.yarn.enabled);
  CHECK(float(got.yarn.factor) == float(want.yarn.factor));
  CHECK(got.yarn.original_max_position_embeddings == want.yarn.original_max_position_embeddings);
  CHECK(float(got.yarn.mscale_all_dim) == float(want.yarn.mscale_all_dim));
  CHECK(got.mla_split_kv_b);
  CHECK(got.bos_token_id == 0);
  CHECK(got.eos_token_id == 1);
}

ModelConfig source_config(const fs::path& config, int64_t layers) {
  auto c = load_config(config);
  REQUIRE(c.ok());
  if (layers > 0) c->n_layers = layers;
  return *c;
}

// Every tensor of a GGUF dequantizes to finite values; returns the RMS of each 2-D-or-more one.
std::map<std::string, double> dequantized_rms(const GgufModel& m) {
  std::map<std::string, double> out;
  for (const auto& part : m.parts()) {
    for (const GgufTensor& t : part->header().tensors) {
      const auto* p = reinterpret_cast<const uint8_t*>(part->data(t));
      const int64_t n = t.ne[0] * t.rows();
      std::vector<float> y(static_cast<size_t>(n));
      if (dtype_is_block(t.dtype)) {
        for (int64_t b = 0; b < n / dtype_block(t.dtype); ++b)
          kernels::cpu::ggml::dequantize_block(t.dtype, p + b * dtype_bytes(t.dtype), y.data() + b * dtype_block(t.dtype));
      } else {
        for (int64_t i = 0; i < n; ++i) {
          uint16_t h;
          std::memcpy(&h, p + 2 * i, 2);
          if (t.dtype == DType::kF32) std::memcpy(&y[size_t(i)], p + 4 * i, 4);
          else y[size_t(i)] = t.dtype == DType::kF16 ? f16_to_float(h) : bf16_to_float(h);
        }
      }
      double s2 = 0;
      int64_t bad = 0;
      for (float v : y) bad += !std::isfinite(v), s2 += double(v) * v;
      INFO(t.name << " " << dtype_name(t.dtype));
      CHECK(bad == 0);
      if (t.ne.size() >= 2) out[t.name] = std::sqrt(s2 / double(n));
    }
  }
  return out;
}

// Each matrix has about the HF synth's std: 1/sqrt(fan_in = ne[0]), 1 for the embedding.
void check_rms(const GgufModel& m) {
  for (const auto& [name, rms] : dequantized_rms(m)) {
    const auto t = m.find(name);
    const double want = name == "token_embd.weight" ? 1.0 : 1.0 / std::sqrt(double(t->tensor->ne[0]));
    INFO(name << " " << dtype_name(t->tensor->dtype) << " rms " << rms << " want " << want);
    CHECK(rms > want / 2);
    CHECK(rms < want * 2);
  }
}

void check_finite_json(const json& j) {
  if (j.is_array()) {
    for (const json& x : j) check_finite_json(x);
  } else if (j.is_object()) {
    for (const auto& [k, v] : j.items()) check_finite_json(v);
  } else if (j.is_number_float()) {
    REQUIRE(std::isfinite(j.get<double>()));
  }
}

}  // namespace

TEST_CASE("synth --format gguf: llama.cpp's layout in the asked type with llama-quantize's fallbacks", "[gguf]") {
  TempDir tmp;
  const fs::path config = write_gguf_a_config(tmp.path / "a");
  struct Case {
    const char* quant;
    DType matrices, k_b;  // attn_k_b: rows of 64
  };
  for (const Case& k : {Case{"Q4_K", DType::kQ4_K, DType::kQ5_0}, Case{"IQ2_XXS", DType::kIQ2_XXS, DType::kIQ4_NL},
                        Case{"q8_0", DType::kQ8_0, DType::kQ8_0}}) {
    INFO(k.quant);
    const fs::path out = tmp.path / (std::string(k.quant) + ".gguf");
    const CliRun r = shoal_cli("synth --format gguf --quant " + std::string(k.quant) + " --seed 3 --config " +
                               quoted(config) + " --out " + quoted(out));
    INFO(r.out << r.err);
    REQUIRE(r.rc == 0);
    auto ck = Checkpoint::open(out);
    INFO(ck.status().to_string());
    REQUIRE(ck.ok());
    check_same_config((*ck)->config(), source_config(config, 0));
    const GgufModel& m = *(*ck)->gguf();
    auto type = [&](const std::string& name) {
      const auto t = m.find(name);
      REQUIRE(t.has_value());
      return t->tensor->dtype;
    };
    CHECK(type("token_embd.weight") == k.matrices);
    CHECK(type("output.weight") == k.matrices);
    CHECK(type("blk.1.attn_q_b.weight") == k.matrices);
    CHECK(type("blk.1.ffn_down_exps.weight") == k.matrices);
    CHECK(type("blk.0.attn_k_b.weight") == k.k_b);
    CHECK(type("blk.0.attn_v_b.weight") == k.matrices);
    for (const char* f32 : {"blk.1.ffn_gate_inp.weight", "blk.1.exp_probs_b.bias", "blk.1.attn_norm.weight",
                            "output_norm.weight"})
      CHECK(type(f32) == DType::kF32);
    CHECK(m.find("blk.1.ffn_up_exps.weight")->tensor->ne == std::vector<int64_t>{256, 256, 8});
    CHECK(m.find("blk.2.attn_k_b.weight")->tensor->ne == std::vector<int64_t>{64, 256, 4});
    CHECK(m.meta().find("general.file_type")->u == gguf_file_type(k.matrices));
    check_rms(m);  // the scales give each matrix about the HF synth's std
    check_generates(out);
  }
}

TEST_CASE("synth --format gguf of the tiny config: shoal run and logits, every ggml type, same seed same bytes", "[gguf]") {
  TempDir tmp;
  const fs::path config = kFixtures / "tiny-v3-bf16" / "config.json";
  auto synth = [&](const std::string& quant, const std::string& out, const std::string& extra = "") {
    const CliRun r = shoal_cli("synth --format gguf --quant " + quant + " --layers 2 --seed 5 --config " +
                               quoted(config) + " --out " + quoted(tmp.path / out) + extra);
    INFO(r.out << r.err);
    REQUIRE(r.rc == 0);
    return tmp.path / out;
  };
  for (const std::string quant : {"Q4_K", "IQ2_XXS", "Q8_0"}) {
    INFO(quant);
    const fs::path file = synth(quant, quant + ".gguf");
    auto ck = Checkpoint::open(file);
    REQUIRE(ck.ok());
    check_same_config((*ck)->config(), source_config(config, 2));
    const CliRun run = shoal_cli("run --model " + quoted(file) + " --ids \"1 2 3\" --max-tokens 4");
    INFO(run.out << run.err);
    CHECK(run.rc == 0);
    const CliRun logits = shoal_cli("logits --model " + quoted(file) + " --ids \"1 2 3\" --greedy 2");
    INFO(logits.err);
    REQUIRE(logits.rc == 0);
    const json j = json::parse(logits.out);
    REQUIRE(j.contains("prompt_logits"));
    check_finite_json(j);
  }
  // The same seed writes the same bytes (a folder --out gets model.gguf); another seed others.
  const fs::path again = synth("Q4_K", "again");
  CHECK(read_file(again / "model.gguf") == read_file(tmp.path / "Q4_K.gguf"));
  const CliRun other = shoal_cli("synth --format gguf --quant Q4_K --layers 2 --seed 6 --config " + quoted(config) +
                                 " --out " + quoted(tmp.path / "other.gguf"));
  REQUIRE(other.rc == 0);
  CHECK(read_file(tmp.path / "other.gguf") != read_file(tmp.path / "Q4_K.gguf"));
  CHECK(read_file(tmp.path / "other.gguf").size() == read_file(tmp.path / "Q4_K.gguf").size());

  // Split as llama-gguf-split names and keys it: the same tensors with the same bytes.
  const fs::path split = synth("Q4_K", "split/m.gguf", " --split-max-mb 0.05");
  (void)split;
  std::vector<fs::path> parts;
  for (const auto& e : fs::directory_iterator(tmp.path / "split")) parts.push_back(e.path());
  std::sort(parts.begin(), parts.end());
  REQUIRE(parts.size() >= 3);
  CHECK(parts[0].filename() == "m-00001-of-" + [&] {
    char b[8];
    std::snprintf(b, sizeof b, "%05zu", parts.size());
    return std::string(b);
  }() + ".gguf");
  auto whole = GgufModel::open(tmp.path / "Q4_K.gguf");
  auto parted = GgufModel::open(parts[0]);
  REQUIRE(whole.ok());
  REQUIRE(parted.ok());
  CHECK((*parted)->parts().size() == parts.size());
  CHECK((*parted)->meta().find("split.count")->i == int64_t(parts.size()));
  CHECK((*parted)->parts()[1]->header().kv.size() == 3);  // split.no, split.count, split.tensors.count
  size_t n = 0;
  for (const GgufTensor& t : (*whole)->parts()[0]->header().tensors) {
    INFO(t.name);
    const auto a = (*whole)->find(t.name);
    const auto b = (*parted)->find(t.name);
    REQUIRE(b.has_value());
    REQUIRE(b->tensor->bytes == t.bytes);
    CHECK(std::equal(a->data, a->data + t.bytes, b->data));
    ++n;
  }
  CHECK(n > 20);
  const CliRun logits = shoal_cli("logits --model " + quoted(parts[0]) + " --ids \"1 2 3\"");
  CHECK(logits.rc == 0);
  CHECK(logits.out == shoal_cli("logits --model " + quoted(tmp.path / "Q4_K.gguf") + " --ids \"1 2 3\"").out);

  // Every ggml type llama-quantize writes: a model that opens, with finite weights of the HF
  // synth's std.
  for (const DTypeInfo& info : kDTypes) {
    if (info.ggml_id < 0 || info.dtype == DType::kQ8_K) continue;
    INFO(info.name);
    const fs::path file = tmp.path / ("all-" + std::string(info.name) + ".gguf");
    const CliRun r = shoal_cli("synth --format gguf --quant " + std::string(info.name) + " --layers 1 --config " +
                               quoted(write_gguf_a_config(tmp.path / "a")) + " --out " + quoted(file));
    INFO(r.err);
    REQUIRE(r.rc == 0);
    auto ck = Checkpoint::open(file);
    INFO(ck.status().to_string());
    REQUIRE(ck.ok());
    CHECK((*ck)->gguf()->find("blk.0.attn_q_a.weight")->tensor->dtype == info.dtype);
    check_rms(*(*ck)->gguf());
  }
}

TEST_CASE("gguf_fallback_type and gguf_quant_type follow llama-quantize", "[gguf]") {
  CHECK(gguf_fallback_type(DType::kQ4_K, 512) == DType::kQ4_K);
  CHECK(gguf_fallback_type(DType::kQ4_K, 64) == DType::kQ5_0);
  CHECK(gguf_fallback_type(DType::kQ5_K, 64) == DType::kQ5_1);
  CHECK(gguf_fallback_type(DType::kQ6_K, 128) == DType::kQ8_0);
  CHECK(gguf_fallback_type(DType::kQ2_K, 96) == DType::kQ4_0);
  CHECK(gguf_fallback_type(DType::kIQ1_M, 64) == DType::kIQ4_NL);
  CHECK(gguf_fallback_type(DType::kIQ4_XS, 48) == DType::kF16);
  CHECK(gguf_fallback_type(DType::kQ8_0, 48) == DType::kF16);
  CHECK(gguf_quant_type("iq2_xxs") == DType::kIQ2_XXS);
  CHECK(gguf_quant_type("BF16") == DType::kBF16);
  CHECK_FALSE(gguf_quant_type("Q8_K").has_value());
  CHECK_FALSE(gguf_quant_type("F8_E4M3").has_value());
  const CliRun r = shoal_cli("synth --format gguf --quant Q7_X --out /tmp/x.gguf");
  CHECK(r.rc != 0);
  CHECK_THAT(r.err, Catch::Contains("--quant Q7_X"));
}

TEST_CASE("synth: routing of a synthesized MoE model is not degenerate") {
  TempDir tmp;
  const fs::path scaled = write_scaled_671b_config(tmp.path / "scaled");
  const fs::path models[] = {
      synthesized(kTinyFp8), synthesized(kTinyBf16),
      synthesized("--config " + quoted(scaled) + " --layers 4 --seed 5")};  // layer 3: 256 experts, 8 groups
  for (const fs::path& dir : models) {
    auto ck = Checkpoint::open(dir);
    REQUIRE(ck.ok());
    const ModelConfig& c = (*ck)->config();
    const std::vector<int32_t> ids = random_ids(64, c.vocab_size, 42);
    int64_t moe_layers = 0;
    for (int64_t i = 0; i < c.n_layers; ++i) {
      if (!c.is_moe_layer(i)) continue;
      const std::set<int32_t> hit = experts_hit(**ck, i, ids);
      INFO(dir << " layer " << i << ": " << hit.size() << " of " << c.n_routed_experts << " experts");
      CHECK(int64_t(hit.size()) * 2 >= c.n_routed_experts);
      ++moe_layers;
    }
    CHECK(moe_layers > 0);
  }
}

TEST_CASE("synth --layers 1 of the 671B config, scaled down") {
  TempDir tmp;
  const fs::path config = write_scaled_671b_config(tmp.path / "scaled");
  const fs::path dir = synthesized("--config " + quoted(config) + " --layers 1 --dtype fp8 --seed 1");
  CHECK(read_json(dir / "config.json").at("num_hidden_layers") == 1);
  check_config(dir, config, true, 1, false);
  check_tensors(dir, true);  // layer 0 only: nothing of layers 1..60
  check_generates(dir);
}

// ---- synth --tokenizer ----------------------------------------------------------------------

TEST_CASE("synth_vocab_size: the tokenizer's ids rounded up to a multiple of 1280") {
  CHECK(synth_vocab_size(128815) == 129280);  // DeepSeek-V3: 128,000 BPE + 815 added tokens
  CHECK(synth_vocab_size(1) == 1280);
  CHECK(synth_vocab_size(1280) == 1280);
  CHECK(synth_vocab_size(1281) == 2560);
  CHECK(synth_vocab_size(129280) == 129280);
}

TEST_CASE("synth --tokenizer: DeepSeek-V3's vocab_size, BOS/EOS and files, and `shoal run --prompt` serves text") {
  const fs::path config = kFixtures / "tiny-v3-bf16" / "config.json";  // vocab_size 1024, hidden 64
  const fs::path dir = synthesized("--config " + quoted(config) + " --layers 1 --seed 3 --tokenizer " +
                                   quoted(kTokenizerV3));
  auto tok = Tokenizer::load(kTokenizerV3);
  REQUIRE(tok.ok());
  REQUIRE((*tok)->bos_id() == 0);  // <｜begin▁of▁sentence｜>
  REQUIRE((*tok)->eos_id() == 1);  // <｜end▁of▁sentence｜>

  // config.json: the input with synth's usual edits, and the tokenizer's vocab_size and ids.
  const json got = read_json(dir / "config.json");
  CHECK(got.at("vocab_size") == 129280);
  CHECK(got.at("bos_token_id") == (*tok)->bos_id());
  CHECK(got.at("eos_token_id") == (*tok)->eos_id());
  json want = read_json(config);
  want["num_hidden_layers"] = 1;
  want["num_nextn_predict_layers"] = 0;
  want["vocab_size"] = 129280;
  CHECK(got == want);  // the fixture's bos/eos are already 0 and 1
  check_tensors(dir, false);  // embedding and lm_head with 129,280 rows
  auto ck = Checkpoint::open(dir);
  REQUIRE(ck.ok());
  CHECK((*ck)->config().vocab_size == 129280);

  for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) {
    INFO(name);
    const std::string copy = read_file(dir / name);
    CHECK(!copy.empty());
    CHECK(copy == read_file(kTokenizerV3 / name));
  }
  CHECK_FALSE(fs::exists(dir / "chat_template.jinja"));  // the fixture has none

  // End to end: the tokenizer files in the folder serve a text prompt.
  const CliRun r = shoal_cli("run --model " + quoted(dir) + " --prompt Hello --max-tokens 6");
  INFO(r.out << r.err);
  REQUIRE(r.rc == 0);
  std::istringstream lines(r.out);
  std::string line, text_json;
  std::vector<int32_t> generated;
  bool saw_generated = false;
  while (std::getline(lines, line)) {
    if (line.starts_with("generated:")) {
      saw_generated = true;
      std::istringstream ids(line.substr(10));
      for (int32_t id; ids >> id;) generated.push_back(id);
    }
    if (line.starts_with("text: ")) text_json = line.substr(6);
  }
  REQUIRE(saw_generated);
  REQUIRE(!generated.empty());
  for (int32_t id : generated) CHECK((id >= 0 && id < 129280));
  REQUIRE(!text_json.empty());
  auto decoded = (*tok)->decode(generated, /*skip_special_tokens=*/true);
  REQUIRE(decoded.ok());
  CHECK(json::parse(text_json).get<std::string>() == split_reasoning(*decoded, false).content);
  CHECK(!decoded->empty());  // random weights, but real tokens: there is text
}

TEST_CASE("synth --tokenizer with the embedded default config: vocab_size 129,280 replaces 32,768") {
  // The default's hidden size (1024) makes this ~0.5 GB of embedding and head: --layers 1, fp8.
  TempDir tmp;
  const CliRun r = shoal_cli("synth --layers 1 --dtype fp8 --tokenizer " + quoted(kTokenizerV3) + " --out " +
                             quoted(tmp.path / "ckpt"));
  INFO(r.out << r.err);
  REQUIRE(r.rc == 0);
  CHECK(r.out.find("tokenizer: 128815 token ids, vocab_size 129280, bos_token_id 0, eos_token_id 1") !=
        std::string::npos);
  const json got = read_json(tmp.path / "ckpt" / "config.json");
  CHECK(got.at("vocab_size") == 129280);
  CHECK(got.at("bos_token_id") == 0);
  CHECK(got.at("eos_token_id") == 1);
  check_tensors(tmp.path / "ckpt", true);
}

TEST_CASE("synth --tokenizer: BOS/EOS come from tokenizer_config.json, and go when it has none") {
  TempDir tmp;
  const fs::path tk = tmp.path / "tok";
  fs::create_directories(tk);
  fs::copy_file(kTokenizerV3 / "tokenizer.json", tk / "tokenizer.json");
  // EOS as a plain string naming another added token; no BOS; a chat_template.jinja beside it.
  write_file(tk / "tokenizer_config.json", R"({"eos_token": "<｜▁pad▁｜>", "add_bos_token": false})");
  write_file(tk / "chat_template.jinja", "{{ messages[0]['content'] }}");
  const fs::path config = kFixtures / "tiny-v3-bf16" / "config.json";
  const fs::path dir = synthesized("--config " + quoted(config) + " --layers 1 --tokenizer " + quoted(tk));
  const json got = read_json(dir / "config.json");
  CHECK(got.at("vocab_size") == 129280);
  CHECK_FALSE(got.contains("bos_token_id"));
  CHECK(got.at("eos_token_id") == 2);
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}) {
    INFO(name);
    CHECK(read_file(dir / name) == read_file(tk / name));
  }
  auto c = load_config(dir);
  REQUIRE(c.ok());
  CHECK(c->bos_token_id == -1);
  CHECK(c->eos_token_id == 2);
}

TEST_CASE("synth --tokenizer errors name the file, and nothing is written") {
  TempDir tmp;
  const fs::path tiny = kFixtures / "tiny-v3-bf16";
  auto synth_with = [&](const fs::path& tk) {
    return shoal_cli("synth --config " + quoted(tiny) + " --tokenizer " + quoted(tk) + " --out " +
                     quoted(tmp.path / "out"));
  };
  auto expect_error = [&](const CliRun& r, const std::string& names) {
    INFO(r.out << r.err);
    CHECK(r.rc == 1);
    CHECK(r.err.find("shoal: error:") != std::string::npos);
    CHECK(r.err.find(names) != std::string::npos);
    CHECK_FALSE(fs::exists(tmp.path / "out"));
  };

  expect_error(synth_with(tmp.path / "missing"), (tmp.path / "missing").string());

  const fs::path no_config = tmp.path / "no-config";
  fs::create_directories(no_config);
  fs::copy_file(kTokenizerV3 / "tokenizer.json", no_config / "tokenizer.json");
  expect_error(synth_with(no_config), (no_config / "tokenizer_config.json").string());

  const fs::path no_json = tmp.path / "no-json";
  fs::create_directories(no_json);
  fs::copy_file(kTokenizerV3 / "tokenizer_config.json", no_json / "tokenizer_config.json");
  expect_error(synth_with(no_json), (no_json / "tokenizer.json").string());

  const fs::path bad_json = tmp.path / "bad-json";
  fs::create_directories(bad_json);
  fs::copy_file(kTokenizerV3 / "tokenizer_config.json", bad_json / "tokenizer_config.json");
  write_file(bad_json / "tokenizer.json", R"({"model": {"type": "BPE", "vocab": )");
  expect_error(synth_with(bad_json), (bad_json / "tokenizer.json").string());

  const fs::path bad_bos = tmp.path / "bad-bos";
  fs::create_directories(bad_bos);
  fs::copy_file(kTokenizerV3 / "tokenizer.json", bad_bos / "tokenizer.json");
  write_file(bad_bos / "tokenizer_config.json", R"({"bos_token": "<no such token>"})");
  expect_error(synth_with(bad_bos), (bad_bos / "tokenizer_config.json").string());
}

// ---- inspect --------------------------------------------------------------------------------

TEST_CASE("inspect of the 671B config alone: the release's parameter counts") {
  const CliRun r = shoal_cli("inspect --json --model " + quoted(kConfig671b.parent_path()));
  INFO(r.err);
  REQUIRE(r.rc == 0);
  const json j = json::parse(r.out);
  CHECK(j.at("model_type") == "deepseek_v3");
  CHECK(j.at("total_params").get<int64_t>() == 671026419200);
  CHECK(j.at("active_params").get<int64_t>() == 36625618432);
  // The tensor table's MTP count; it reproduces the release's byte total (see the report).
  CHECK(j.at("mtp_params").get<int64_t>() == 13463426304);
  CHECK(j.at("n_layers") == 61);
  CHECK(j.at("n_dense_layers") == 3);
  CHECK(j.at("n_moe_layers") == 58);
  CHECK(j.at("num_nextn_predict_layers") == 1);
  CHECK(j.at("bytes_by_dtype") == json::object());
  CHECK(j.at("has_weights") == false);
  CHECK(j.at("has_mtp_weights") == false);
  CHECK(j.at("license") == "unknown");

  const CliRun text = shoal_cli("inspect --model " + quoted(kConfig671b.parent_path()));
  REQUIRE(text.rc == 0);
  CHECK(text.out.find("671,026,419,200") != std::string::npos);
  CHECK(text.out.find("36,625,618,432") != std::string::npos);
}

TEST_CASE("inspect of the tiny fixtures agrees with their safetensors headers") {
  for (const std::string name : {"tiny-v3-fp8", "tiny-v3-bf16"}) {
    INFO(name);
    const fs::path dir = kFixtures / name;
    const json config = read_json(dir / "config.json");
    const int64_t layers = config.at("num_hidden_layers"), dim = config.at("hidden_size");
    int64_t main_params = 0, mtp_params = 0;
    std::map<std::string, uint64_t> bytes;
    for (const auto& [tname, h] : read_headers(dir)) {
      bytes[std::string(dtype_name(h.info.dtype))] += h.info.end - h.info.begin;
      if (tname.ends_with(names::scale_inv(""))) continue;
      bool main = tname == names::embed() || tname == names::final_norm() || tname == names::lm_head();
      for (int64_t i = 0; i < layers; ++i) main |= tname.starts_with(names::layer(i, ""));
      (main ? main_params : mtp_params) += h.info.numel();
      if (!main) REQUIRE(tname.starts_with(names::layer(layers, "")));  // the MTP module
    }
    const CliRun r = shoal_cli("inspect --json --model " + quoted(dir));
    INFO(r.err);
    REQUIRE(r.rc == 0);
    const json j = json::parse(r.out);
    CHECK(j.at("total_params").get<int64_t>() == main_params);
    CHECK(j.at("mtp_params").get<int64_t>() == mtp_params);
    CHECK(j.at("bytes_by_dtype").get<std::map<std::string, uint64_t>>() == bytes);
    CHECK(j.at("has_mtp_weights") == true);
    CHECK(j.at("has_weights") == true);
    // Active: less the embedding table and, in each of the 3 MoE layers, the 16 - 4 idle experts.
    const int64_t n_routed = config.at("n_routed_experts"), topk = config.at("num_experts_per_tok");
    const int64_t expert = 3 * dim * config.at("moe_intermediate_size").get<int64_t>();
    const int64_t embed = config.at("vocab_size").get<int64_t>() * dim;
    CHECK(j.at("active_params").get<int64_t>() == main_params - embed - 3 * (n_routed - topk) * expert);
    CHECK(j.at("license") == "unknown");  // their README.md has no front matter
  }
}

TEST_CASE("inspect of a synthesized 671B layer (scaled down) counts what the headers hold") {
  TempDir tmp;
  const fs::path dir = synthesized("--config " + quoted(write_scaled_671b_config(tmp.path / "scaled")) +
                                   " --layers 1 --dtype fp8 --seed 1");
  int64_t params = 0;
  for (const auto& [name, h] : read_headers(dir))
    if (!name.ends_with(names::scale_inv(""))) params += h.info.numel();
  auto s = inspect_model(dir);
  REQUIRE(s.ok());
  CHECK(s->params.total == params);
  CHECK(s->params.active == params - 1024 * 256);  // one dense layer: all but the embedding is active
  CHECK(s->n_dense_layers == 1);
  CHECK(s->n_moe_layers == 0);
  CHECK(s->config.n_mtp_layers == 0);
  CHECK_FALSE(s->has_mtp_weights);
  CHECK(s->bytes_by_dtype.count("F8_E4M3") == 1);
}

TEST_CASE("inspect finds the license: LICENSE file or README front matter") {
  TempDir tmp;
  auto folder = [&](const std::string& name, const std::string& file, const std::string& text) {
    const fs::path d = tmp.path / name;
    fs::create_directories(d);
    fs::copy_file(kFixtures / "tiny-v3-bf16" / "config.json", d / "config.json");
    if (!file.empty()) write_file(d / file, text);
    return d;
  };
  const fs::path readme =
      folder("readme", "README.md", "---\nlibrary_name: transformers\nlicense: mit\n---\n# Model\n");
  CHECK(find_license(readme) == "mit");
  const fs::path mit =
      folder("mit", "LICENSE", "MIT License\n\nCopyright (c) 2023 DeepSeek\n\nPermission is hereby granted");
  CHECK(find_license(mit) == "MIT");
  const fs::path custom = folder("custom", "LICENSE.txt", "\n\n  Custom Model License v2  \nterms\n");
  CHECK(find_license(custom) == "Custom Model License v2");
  const fs::path body_only = folder("body", "README.md", "# Model\n\nlicense: mit\n");
  CHECK(find_license(body_only) == "unknown");
  CHECK(find_license(folder("none", "", "")) == "unknown");

  const CliRun r = shoal_cli("inspect --json --model " + quoted(readme));
  REQUIRE(r.rc == 0);
  CHECK(json::parse(r.out).at("license") == "mit");
}

// ---- errors ---------------------------------------------------------------------------------

TEST_CASE("synth and inspect errors: exit 1 and a message naming the problem") {
  TempDir tmp;
  json config = read_json(kFixtures / "tiny-v3-bf16" / "config.json");
  config.erase("kv_lora_rank");
  write_file(tmp.path / "config.json", config.dump());
  CliRun r = shoal_cli("synth --config " + quoted(tmp.path / "config.json") + " --out " + quoted(tmp.path / "out"));
  CHECK(r.rc == 1);
  CHECK(r.err.find("shoal: error:") != std::string::npos);
  CHECK(r.err.find("kv_lora_rank") != std::string::npos);
  CHECK_FALSE(fs::exists(tmp.path / "out"));

  r = shoal_cli("inspect --model " + quoted(tmp.path / "missing"));
  CHECK(r.rc == 1);
  CHECK(r.err.find("shoal: error:") != std::string::npos);
  CHECK(r.err.find((tmp.path / "missing").string()) != std::string::npos);

  fs::create_directories(tmp.path / "empty");
  r = shoal_cli("inspect --model " + quoted(tmp.path / "empty"));
  CHECK(r.rc == 1);
  CHECK(r.err.find("config.json") != std::string::npos);

  const fs::path existing = synthesized("--config " + quoted(kFixtures / "tiny-v3-bf16"));
  r = shoal_cli("synth --config " + quoted(kFixtures / "tiny-v3-bf16") + " --out " + quoted(existing));
  CHECK(r.rc == 1);
  CHECK(r.err.find("already holds a checkpoint") != std::string::npos);

  const fs::path tiny = kFixtures / "tiny-v3-bf16";
  r = shoal_cli("synth --dtype int4 --config " + quoted(tiny) + " --out " + quoted(tmp.path / "x"));
  CHECK(r.rc == 2);  // a usage error
}
