// GGUF reading: the fixtures' metadata and tensors (tests/fixtures/gguf-a-*, their README.md
// lists what gguf-py reads), split files, the deepseek2 config, and every kind of bad file.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "model/checkpoint.h"
#include "model/gguf.h"
#include "model/gguf_writer.h"
#include "model/rope.h"
#include "model/synth.h"
#include "support/expect.h"
#include "support/process.h"

using namespace shoal;
namespace fs = std::filesystem;

namespace {

const fs::path kFixtures = SHOAL_FIXTURES;
const fs::path kSplit = kFixtures / "gguf-a-q4_k_m-split";

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("shoal-gguf-" + std::to_string(::getpid()) + "-" + std::to_string(counter()++));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  static int& counter() { static int n = 0; return n; }
};

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}
void write_file(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary);
  out.write(s.data(), std::streamsize(s.size()));
}

using shoal::test::expect_error;

StatusOr<GgufHeader> parse(const std::string& image) {
  return parse_gguf(reinterpret_cast<const std::byte*>(image.data()), image.size());
}

// A small valid image: two metadata keys and two tensors (F32 [4, 2], Q8_0 [32, 1]).
struct Small {
  GgufTensorBlob a{"a.weight", DType::kF32, {4, 2}, std::vector<std::byte>(32, std::byte{0})};
  GgufTensorBlob b{"b.weight", DType::kQ8_0, {32, 1}, std::vector<std::byte>(34, std::byte{0})};
  std::vector<std::pair<std::string, GgufValue>> kv{{"general.architecture", gguf_str("deepseek2")},
                                                    {"x.count", gguf_u32(7)}};
  std::string image() const { return gguf_image(kv, {&a, &b}); }
};

// Byte offset of the first occurrence of `needle` in image.
size_t find_bytes(const std::string& image, const std::string& needle) {
  const size_t at = image.find(needle);
  REQUIRE(at != std::string::npos);
  return at;
}

template <class T>
void poke(std::string& image, size_t at, T v) {
  std::memcpy(image.data() + at, &v, sizeof(T));
}

}  // namespace

TEST_CASE("the Q4_K_M fixture's metadata and tensors read as gguf-py reads them", "[gguf]") {
  auto m = GgufModel::open(kSplit);
  REQUIRE(m.ok());
  REQUIRE((*m)->parts().size() == 3);
  CHECK((*m)->parts()[0]->header().tensors.size() == 20);
  CHECK((*m)->parts()[1]->header().tensors.size() == 20);
  CHECK((*m)->parts()[2]->header().tensors.size() == 12);
  const GgufHeader& h = (*m)->meta();
  CHECK(h.version == 3);
  CHECK(h.kv.size() == 51);
  CHECK(h.find("general.name")->s == "gguf-A");
  CHECK(h.find("deepseek2.expert_gating_func")->u == 2);
  CHECK(h.find("tokenizer.ggml.tokens")->count == 1024);
  CHECK(h.find("tokenizer.ggml.tokens")->strings.size() == 1024);
  CHECK(h.find("tokenizer.ggml.merges")->strings == std::vector<std::string>{"\u0120 \u0120"});
  CHECK(h.find("tokenizer.ggml.token_type")->ints.size() == 1024);
  CHECK(h.find("split.tensors.count")->i == 52);
  auto t = (*m)->find("blk.2.ffn_down_exps.weight");
  REQUIRE(t);
  CHECK(t->tensor->dtype == DType::kQ6_K);
  CHECK(t->tensor->ne == std::vector<int64_t>{256, 256, 8});
  CHECK(t->tensor->bytes == 430080);
  CHECK(t->file == (*m)->parts()[2].get());
  auto kb = (*m)->find("blk.0.attn_k_b.weight");
  REQUIRE(kb);
  CHECK(kb->tensor->dtype == DType::kQ5_0);
  CHECK(kb->tensor->ne == std::vector<int64_t>{64, 256, 4});
}

TEST_CASE("a GGUF's deepseek2 metadata gives the Hugging Face config it came from", "[gguf]") {
  for (const char* name : {"gguf-a-q8_0", "gguf-a-q4_k_m-split", "gguf-a-iq1_s"}) {
    INFO(name);
    auto ck = Checkpoint::open(kFixtures / name);
    REQUIRE(ck.ok());
    const ModelConfig& c = (*ck)->config();
    CHECK(c.vocab_size == 1024);
    CHECK(c.dim == 256);
    CHECK(c.n_layers == 3);
    CHECK(c.n_dense_layers == 1);
    CHECK(c.n_heads == 4);
    CHECK(c.q_lora_rank == 256);
    CHECK(c.kv_lora_rank == 256);
    CHECK(c.qk_nope_head_dim == 64);
    CHECK(c.qk_rope_head_dim == 32);
    CHECK(c.v_head_dim == 64);
    CHECK(c.inter_dim == 512);
    CHECK(c.moe_inter_dim == 256);
    CHECK(c.n_routed_experts == 8);
    CHECK(c.n_shared_experts == 1);
    CHECK(c.n_activated_experts == 2);
    CHECK(c.n_expert_groups == 4);
    CHECK(c.n_limited_groups == 2);
    CHECK(c.topk_method == TopkMethod::kNoauxTc);
    CHECK(c.score_func == ScoringFunc::kSigmoid);
    CHECK(c.norm_topk_prob);
    CHECK(c.route_scale == 2.5);
    CHECK(c.rope_theta == 10000.0);
    CHECK(c.max_position_embeddings == 256);
    CHECK(c.yarn.enabled);
    CHECK(c.yarn.factor == 8.0);
    CHECK(c.yarn.original_max_position_embeddings == 32);
    CHECK(c.yarn.mscale_all_dim == 1.0);
    CHECK(c.yarn.mscale == 1.0);
    CHECK(float(c.rms_norm_eps) == 1e-6f);
    CHECK(c.mla_split_kv_b);
    CHECK_FALSE(c.tie_word_embeddings);
    CHECK(c.bos_token_id == 0);
    CHECK(c.eos_token_id == 1);
  }
}

TEST_CASE("a split GGUF opens from its folder or part 1; other parts, gaps and strangers are refused", "[gguf]") {
  REQUIRE(GgufModel::open(kSplit / "gguf-a-q4_k_m-00001-of-00003.gguf").ok());
  expect_error(GgufModel::open(kSplit / "gguf-a-q4_k_m-00002-of-00003.gguf"), {"part 2 of 3", "pass part 1"});
  {  // a missing part
    TempDir d;
    for (int k : {1, 3}) {
      const std::string f = "gguf-a-q4_k_m-0000" + std::to_string(k) + "-of-00003.gguf";
      fs::copy_file(kSplit / f, d.path / f);
    }
    expect_error(GgufModel::open(d.path), {"gguf-a-q4_k_m-00002-of-00003.gguf", "missing"});
    expect_error(Checkpoint::open(d.path), {"gguf-a-q4_k_m-00002-of-00003.gguf", "missing"});
  }
  {  // a part of another model in place of part 2
    TempDir d;
    fs::copy_file(kSplit / "gguf-a-q4_k_m-00001-of-00003.gguf", d.path / "m-00001-of-00003.gguf");
    fs::copy_file(kFixtures / "gguf-a-q8_0/gguf-a-q8_0.gguf", d.path / "m-00002-of-00003.gguf");
    fs::copy_file(kSplit / "gguf-a-q4_k_m-00003-of-00003.gguf", d.path / "m-00003-of-00003.gguf");
    expect_error(GgufModel::open(d.path), {"m-00002-of-00003.gguf", "split.no/split.count"});
  }
  {  // parts that disagree on the tensor count
    TempDir d;
    for (int k = 1; k <= 3; ++k) {
      const std::string f = "gguf-a-q4_k_m-0000" + std::to_string(k) + "-of-00003.gguf";
      std::string image = read_file(kSplit / f);
      if (k == 2) {  // split.tensors.count is an INT32 after its key
        const size_t at = find_bytes(image, "split.tensors.count") + std::strlen("split.tensors.count") + 4;
        poke<int32_t>(image, at, 53);
      }
      write_file(d.path / f, image);
    }
    expect_error(GgufModel::open(d.path), {"gguf-a-q4_k_m-00002-of-00003.gguf", "split.tensors.count 53"});
  }
  {  // an extra part past the count, or two models in one folder
    TempDir d;
    for (int k = 1; k <= 3; ++k) {
      const std::string f = "gguf-a-q4_k_m-0000" + std::to_string(k) + "-of-00003.gguf";
      fs::copy_file(kSplit / f, d.path / f);
    }
    fs::copy_file(kSplit / "gguf-a-q4_k_m-00003-of-00003.gguf", d.path / "gguf-a-q4_k_m-00004-of-00004.gguf");
    expect_error(GgufModel::open(d.path), {"more than one GGUF model", "gguf-a-q4_k_m-00004-of-00004.gguf"});
  }
  {  // part 1 of a split model renamed as a single file
    TempDir d;
    fs::copy_file(kSplit / "gguf-a-q4_k_m-00001-of-00003.gguf", d.path / "model.gguf");
    expect_error(GgufModel::open(d.path / "model.gguf"), {"model.gguf", "split in 3 parts"});
  }
}

TEST_CASE("bad GGUF files are refused with what was wrong", "[gguf][errors]") {
  const Small s;
  const std::string good = s.image();
  REQUIRE(parse(good).ok());
  CHECK(parse(good)->tensors.size() == 2);

  SECTION("truncated anywhere") {
    // The image ends with b.weight's 34 bytes and 30 of padding.
    for (size_t n : {size_t(0), size_t(3), size_t(10), size_t(30), good.size() / 2, good.size() - 31}) {
      INFO("first " << n << " bytes");
      CHECK_FALSE(parse(good.substr(0, n)).ok());
    }
    expect_error(parse(good.substr(0, good.size() - 31)), {"b.weight", "past the end"});
  }
  SECTION("wrong magic") {
    std::string bad = good;
    bad[0] = 'X';
    expect_error(parse(bad), {"not a GGUF file"});
  }
  SECTION("unsupported versions") {
    std::string bad = good;
    poke<uint32_t>(bad, 4, 1);
    expect_error(parse(bad), {"version 1"});
    poke<uint32_t>(bad, 4, 4);
    expect_error(parse(bad), {"version 4"});
    poke<uint32_t>(bad, 4, __builtin_bswap32(3u));
    expect_error(parse(bad), {"big-endian"});
  }
  SECTION("absurd counts and string lengths") {
    std::string bad = good;
    poke<uint64_t>(bad, 8, uint64_t(1) << 40);
    expect_error(parse(bad), {"tensor count"});
    bad = good;
    poke<uint64_t>(bad, 16, uint64_t(1) << 40);
    expect_error(parse(bad), {"metadata count"});
    bad = good;
    poke<uint64_t>(bad, 24, uint64_t(1) << 62);  // the first key's length
    expect_error(parse(bad), {"runs past the end"});
  }
  SECTION("a tensor past the end of its file") {
    std::string bad = good;
    const size_t at = find_bytes(bad, "b.weight") + 8 + 4 + 16 + 4;  // name, n_dims, ne[0..1], type -> offset
    poke<uint64_t>(bad, at, 1 << 20);
    expect_error(parse(bad), {"b.weight", "past the end"});
  }
  SECTION("overlapping tensors") {
    std::string bad = good;
    const size_t at = find_bytes(bad, "b.weight") + 8 + 4 + 16 + 4;
    poke<uint64_t>(bad, at, 0);
    expect_error(parse(bad), {"overlap"});
  }
  SECTION("an unknown type id") {
    std::string bad = good;
    const size_t at = find_bytes(bad, "b.weight") + 8 + 4 + 16;
    poke<uint32_t>(bad, at, 77);
    expect_error(parse(bad), {"b.weight", "unknown", "77"});
  }
  SECTION("a row length that is not a whole number of blocks") {
    std::string bad = good;
    const size_t at = find_bytes(bad, "b.weight") + 8 + 4;
    poke<uint64_t>(bad, at, 48);
    expect_error(parse(bad), {"b.weight", "not a multiple", "Q8_0"});
  }
  SECTION("more than 4 dimensions") {
    std::string bad = good;
    poke<uint32_t>(bad, find_bytes(bad, "a.weight") + 8, 5);
    expect_error(parse(bad), {"a.weight", "n_dims is 5"});
  }
  SECTION("an unknown metadata type and a bad bool") {
    std::string bad = good;
    const size_t at = find_bytes(bad, "x.count") + 7;
    poke<uint32_t>(bad, at, 99);
    expect_error(parse(bad), {"x.count", "unknown value type 99"});
  }
  SECTION("a bad file through the CLI: non-zero exit naming the file") {
    TempDir d;
    std::string bad = good;
    poke<uint32_t>(bad, find_bytes(bad, "a.weight") + 8, 5);
    write_file(d.path / "bad.gguf", bad);
    int status = 0;
    const std::string out = test::run_command(std::string(SHOAL_BINARY) + " logits --model " +
                                              (d.path / "bad.gguf").string() + " --ids 1 2>&1", &status);
    CHECK(status != 0);
    CHECK(out.find("bad.gguf") != std::string::npos);
    CHECK(out.find("n_dims is 5") != std::string::npos);
  }
}

TEST_CASE("a GGUF missing a key the computation needs, or of another architecture, is refused", "[gguf][errors]") {
  const fs::path src = kFixtures / "gguf-a-q8_0/gguf-a-q8_0.gguf";
  const std::string image = read_file(src);
  {
    TempDir d;
    std::string bad = image;  // rename the key: a different key of the same length
    const size_t at = find_bytes(bad, "deepseek2.attention.kv_lora_rank");
    bad[at + std::strlen("deepseek2.attention.")] = 'X';
    write_file(d.path / "m.gguf", bad);
    expect_error(Checkpoint::open(d.path / "m.gguf"), {"m.gguf", "deepseek2.attention.kv_lora_rank", "missing"});
  }
  {
    TempDir d;
    std::string bad = image;
    const size_t at = find_bytes(bad, "deepseek2");  // general.architecture's value comes first
    std::memcpy(bad.data() + at, "deepseek9", 9);
    write_file(d.path / "m.gguf", bad);
    expect_error(Checkpoint::open(d.path / "m.gguf"), {"deepseek9", "not supported"});
  }
}

// R1's distills as llama.cpp writes them (tests/fixtures/gguf-tiny-dense): the config of the
// Hugging Face fixture they came from, and refusals naming what is wrong.
TEST_CASE("qwen2 and llama GGUF metadata give the distills' Hugging Face configs", "[gguf][dense]") {
  for (const std::string name : {"tiny-qwen2", "tiny-llama3"}) {
    INFO(name);
    auto ck = Checkpoint::open(kFixtures / "gguf-tiny-dense" / (name + "-q8_0.gguf"));
    REQUIRE(ck.ok());
    auto hf = load_config(kFixtures / name);
    REQUIRE(hf.ok());
    const ModelConfig& got = (*ck)->config();
    CHECK(got.model_type == hf->model_type);
    CHECK(got.dim == hf->dim);
    CHECK(got.n_layers == hf->n_layers);
    CHECK(got.inter_dim == hf->inter_dim);
    CHECK(got.n_heads == hf->n_heads);
    CHECK(got.n_kv_heads == hf->n_kv_heads);
    CHECK(got.head_dim == hf->head_dim);
    CHECK(got.vocab_size == hf->vocab_size);
    CHECK(got.qkv_bias == hf->qkv_bias);
    CHECK(got.tie_word_embeddings == hf->tie_word_embeddings);
    CHECK(float(got.rms_norm_eps) == float(hf->rms_norm_eps));
    CHECK(got.rope_theta == hf->rope_theta);
    // llama: interleaved pairs (the converter permuted q/k), llama3 scaling as divisors whose
    // frequencies are the ones transformers computes from the config.
    CHECK(got.rope_interleaved == (name == "tiny-llama3"));
    const RopeTable from_gguf = make_rope_table(got), from_hf = make_rope_table(*hf);
    REQUIRE(from_gguf.inv_freq.size() == from_hf.inv_freq.size());
    for (size_t j = 0; j < from_hf.inv_freq.size(); ++j)
      CHECK(std::fabs(from_gguf.inv_freq[j] - from_hf.inv_freq[j]) <= 1e-6f * from_hf.inv_freq[j]);
  }
  const std::string image = read_file(kFixtures / "gguf-tiny-dense/tiny-llama3-q8_0.gguf");
  {
    TempDir d;
    // head_count_kv renamed away: it defaults to head_count (as llama.cpp defaults it), so the
    // k/v tensors' shapes disagree with the config and the error names the tensor.
    std::string bad = image;
    bad[find_bytes(bad, "llama.attention.head_count_kv") + std::strlen("llama.attention.head_count_")] = 'X';
    write_file(d.path / "m.gguf", bad);
    expect_error(Checkpoint::open(d.path / "m.gguf"), {"m.gguf", "attn_k.weight"});
  }
  {
    TempDir d;
    std::string bad = image;
    bad[find_bytes(bad, "llama.attention.layer_norm_rms_epsilon") + std::strlen("llama.attention.")] = 'X';
    write_file(d.path / "m.gguf", bad);
    expect_error(Checkpoint::open(d.path / "m.gguf"), {"m.gguf", "llama.attention.layer_norm_rms_epsilon", "missing"});
  }
  {
    TempDir d;
    std::string bad = image;
    std::memcpy(bad.data() + find_bytes(bad, "llama"), "lla_a", 5);  // general.architecture's value
    write_file(d.path / "m.gguf", bad);
    expect_error(Checkpoint::open(d.path / "m.gguf"), {"lla_a", "not supported", "qwen2 and llama"});
  }
}

// `shoal synth --format gguf` of a distill's config writes what the reader (and llama.cpp: the
// same keys and tensor names as its converter) takes back as that config, llama3 rope included.
TEST_CASE("synth writes qwen2 and llama GGUFs that read back as their configs", "[gguf][dense][synth]") {
  for (const std::string name : {"tiny-qwen2", "tiny-qwen2-tied", "tiny-llama3"}) {
    for (const DType quant : {DType::kQ8_0, DType::kBF16}) {
      INFO(name << " " << dtype_name(quant));
      TempDir d;
      SynthOptions o;
      o.config = kFixtures / name / "config.json";
      o.out = d.path / "m.gguf";
      o.gguf = true;
      o.quant = quant;
      auto r = synth_checkpoint(o);
      INFO((r.ok() ? std::string() : r.status().to_string()));
      REQUIRE(r.ok());
      auto ck = Checkpoint::open(d.path / "m.gguf");
      INFO((ck.ok() ? std::string() : ck.status().to_string()));
      REQUIRE(ck.ok());
      auto hf = load_config(kFixtures / name);
      REQUIRE(hf.ok());
      const ModelConfig& got = (*ck)->config();
      CHECK(got.model_type == hf->model_type);
      CHECK(got.n_kv_heads == hf->n_kv_heads);
      CHECK(got.head_dim == hf->head_dim);
      CHECK(got.qkv_bias == hf->qkv_bias);
      CHECK(got.tie_word_embeddings == hf->tie_word_embeddings);
      const RopeTable from_gguf = make_rope_table(got), from_hf = make_rope_table(*hf);
      REQUIRE(from_gguf.inv_freq.size() == from_hf.inv_freq.size());
      for (size_t j = 0; j < from_hf.inv_freq.size(); ++j)
        CHECK(std::fabs(from_gguf.inv_freq[j] - from_hf.inv_freq[j]) <= 1e-6f * from_hf.inv_freq[j]);
      int status = -1;
      const std::string out = test::run_command(std::string(SHOAL_BINARY) + " logits --model " + (d.path / "m.gguf").string() +
                                                " --ids '1 2 3' --greedy 2 2>&1", &status);
      INFO(out.substr(0, 500));
      CHECK(status == 0);
    }
  }
}

TEST_CASE("written GGUF images read back with every metadata type", "[gguf]") {
  GgufTensorBlob t{"t", DType::kF16, {8}, std::vector<std::byte>(16, std::byte{1})};
  std::vector<std::pair<std::string, GgufValue>> kv{
      {"s", gguf_str("hello")}, {"u", gguf_u32(42)}, {"i", gguf_i32(-5)}, {"f", gguf_f32(0.5f)},
      {"b", gguf_bool(true)},   {"arr", gguf_strings({"x", "yz"})},     {"ints", gguf_ints(GgufType::kI32, {-1, 2, 3})}};
  const std::string image = gguf_image(kv, {&t});
  auto h = parse(image);
  REQUIRE(h.ok());
  CHECK(h->find("s")->s == "hello");
  CHECK(h->find("u")->u == 42);
  CHECK(h->find("i")->i == -5);
  CHECK(h->find("f")->f == 0.5);
  CHECK(h->find("b")->b);
  CHECK(h->find("arr")->strings == std::vector<std::string>{"x", "yz"});
  CHECK(h->find("ints")->ints == std::vector<int64_t>{-1, 2, 3});
  REQUIRE(h->tensors.size() == 1);
  CHECK(h->tensors[0].ne == std::vector<int64_t>{8});
  CHECK(h->tensors[0].dtype == DType::kF16);
  CHECK(h->data_offset % 32 == 0);
}
