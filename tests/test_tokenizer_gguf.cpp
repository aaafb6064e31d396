// The tokenizer from a GGUF's metadata (text/tokenizer/tokenizer_gguf.cpp) against the
// tokenizer.json path on the DeepSeek-V3 fixtures. fixtures/tokenizer-deepseek-v3-gguf/
// tokenizer.gguf is the same vocabulary written by llama.cpp's gguf-py following its converter
// (tools/make_tokenizer_gguf.py); the tiny gguf-a-q8_0 model carries a synthetic byte-level
// vocab. Then refusals (SentencePiece, unknown pre-tokenizer names) and `shoal tokenize` with
// --model naming a GGUF.
#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "model/gguf.h"
#include "model/gguf_writer.h"
#include "support/files.h"
#include "text/chat_template.h"
#include "text/tokenizer/tokenizer.h"

namespace {

using nlohmann::json;
using shoal::GgufHeader;
using shoal::GgufValue;
using shoal::Tokenizer;
using shoal::test::exit_code;
using shoal::test::TempDir;
namespace fs = std::filesystem;
using Kv = std::vector<std::pair<std::string, GgufValue>>;

const fs::path kFixtures = SHOAL_FIXTURES;
const fs::path kJsonDir = kFixtures / "tokenizer-deepseek-v3";
const fs::path kGguf = kFixtures / "tokenizer-deepseek-v3-gguf" / "tokenizer.gguf";
const fs::path kTinyGguf = kFixtures / "gguf-a-q8_0" / "gguf-a-q8_0.gguf";
const std::string kBos = "<｜begin▁of▁sentence｜>";
const std::string kEos = "<｜end▁of▁sentence｜>";

std::vector<json> read_jsonl(const fs::path& p) {
  std::ifstream in(p);
  REQUIRE(in.good());
  std::vector<json> lines;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(json::parse(line));
  return lines;
}

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

std::unique_ptr<Tokenizer> load(const fs::path& path) {
  auto t = Tokenizer::load(path);
  INFO(path.string());
  REQUIRE(t.status().message() == "");
  return std::move(t).value();
}

// Both DeepSeek-V3 tokenizers, loaded once.
const Tokenizer& json_tok() {
  static const std::unique_ptr<Tokenizer> t = [] {
    auto t = load(kJsonDir);
    t->set_vocab_limit(129280);  // DeepSeek-V3's vocab_size (its config.json is not in the folder)
    return t;
  }();
  return *t;
}
const Tokenizer& gguf_tok() {
  static const std::unique_ptr<Tokenizer> t = load(kGguf);
  return *t;
}

std::string decode(const Tokenizer& t, const std::vector<int32_t>& ids, bool skip) {
  auto s = t.decode(ids, skip);
  REQUIRE(s.status().message() == "");
  return *s;
}

// The tiny model's metadata with `key` set to `value` (appended if absent), or removed.
Kv tiny_kv(const std::string& key, std::optional<GgufValue> value) {
  auto model = shoal::GgufModel::open(kTinyGguf);
  REQUIRE(model.ok());
  Kv kv;
  bool seen = false;
  for (const auto& [k, v] : (*model)->meta().kv) {
    if (k != key) {
      kv.emplace_back(k, v);
    } else if (value) {
      kv.emplace_back(k, *value);
      seen = true;
    }
  }
  if (value && !seen) kv.emplace_back(key, *value);
  return kv;
}

shoal::StatusOr<std::unique_ptr<Tokenizer>> from_kv(const Kv& kv) {
  GgufHeader h;
  h.kv = kv;
  return Tokenizer::from_gguf(h, "test.gguf");
}

// Runs `shoal <args>` with `input` on stdin: exit code and stdout lines.
std::pair<int, std::vector<std::string>> run_shoal(const std::string& args, const std::string& input) {
  TempDir dir;
  shoal::test::write_file(dir.path / "in", input);
  const std::string cmd = std::string(SHOAL_BINARY) + " " + args + " < " + (dir / "in") + " > " + (dir / "out") +
                          " 2> " + (dir / "err");
  const int status = std::system(cmd.c_str());
  std::vector<std::string> lines;
  std::istringstream out(shoal::test::read_file(dir.path / "out"));
  for (std::string line; std::getline(out, line);) lines.push_back(line);
  INFO("stderr: " << shoal::test::read_file(dir.path / "err"));
  CHECK(exit_code(status) == 0);
  return {exit_code(status), lines};
}

// The ids the GGUF gives type 3 (control): the converter marks every added token of DeepSeek-V3
// control (each is special or looks special: "<｜...｜>", "<|...|>").
std::vector<int64_t> gguf_token_types() {
  auto model = shoal::GgufModel::open(kGguf);
  REQUIRE(model.ok());
  const GgufValue* types = (*model)->meta().find("tokenizer.ggml.token_type");
  REQUIRE(types != nullptr);
  return types->ints;
}

// Added tokens that tokenizer.json does not mark special (kept by skip_special_tokens there).
bool hf_non_special_added(int32_t id) { return (id >= 128800 && id <= 128804) || (id >= 128806 && id <= 128814); }

}  // namespace

// ---- DeepSeek-V3 from GGUF == from tokenizer.json -------------------------------------------

TEST_CASE("GGUF DeepSeek-V3 vocab: every encode vector gives the fixture's ids and text", "[tokenizer][gguf]") {
  const auto cases = read_jsonl(kJsonDir / "encode.jsonl");
  REQUIRE(cases.size() == 306);
  for (size_t i = 0; i < cases.size(); ++i) {
    const json& c = cases[i];
    INFO("encode.jsonl line " << i + 1 << ": " << c["text"].dump());
    const std::string text = c["text"].get<std::string>();
    const bool add_bos = c["add_bos"].get<bool>();
    const std::vector<int32_t> ids = gguf_tok().encode(text, add_bos);
    CHECK(ids == ids_of(c["ids"]));
    CHECK(ids == json_tok().encode(text, add_bos));
    CHECK(decode(gguf_tok(), ids, false) == c["decoded"].get<std::string>());
  }
}

TEST_CASE("GGUF DeepSeek-V3 vocab: decode vectors and every prefix", "[tokenizer][gguf]") {
  const std::vector<int64_t> types = gguf_token_types();
  const auto cases = read_jsonl(kJsonDir / "decode.jsonl");
  REQUIRE(cases.size() == 54);
  size_t differ = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const json& c = cases[i];
    INFO("decode.jsonl line " << i + 1);
    const std::vector<int32_t> ids = ids_of(c["ids"]);
    const bool skip = c["skip_special_tokens"].get<bool>();
    // The GGUF drops control tokens where tokenizer.json drops its special ones. They differ only
    // on the added tokens tokenizer.json keeps (<｜User｜>, the tool and FIM tokens): a GGUF has no
    // flag for them beyond "control". With those removed first, the GGUF gives the reference's text.
    std::vector<int32_t> kept;
    bool has_non_special = false;
    for (int32_t id : ids) {
      const bool control = id < int32_t(types.size()) && types[id] == 3;
      if (!(skip && control)) kept.push_back(id);
      has_non_special |= skip && hf_non_special_added(id);
    }
    const std::string got = decode(gguf_tok(), ids, skip);
    CHECK(got == decode(json_tok(), kept, skip));
    if (!has_non_special) {
      CHECK(got == c["text"].get<std::string>());
      for (size_t k = 0; k < ids.size(); ++k) {
        const std::vector<int32_t> prefix(ids.begin(), ids.begin() + k + 1);
        CHECK(decode(gguf_tok(), prefix, skip) == c["prefixes"][k].get<std::string>());
      }
    } else {
      differ += got != c["text"].get<std::string>();
    }
  }
  CHECK(differ > 0);  // the fixture has such cases; they are the only ones that differ
}

TEST_CASE("GGUF DeepSeek-V3 vocab: chat template renders every fixture conversation", "[tokenizer][gguf][chat]") {
  const json config = json::parse(shoal::test::read_file(kJsonDir / "tokenizer_config.json"));
  CHECK(gguf_tok().chat_template() == config["chat_template"].get<std::string>());
  CHECK(gguf_tok().chat_template() == json_tok().chat_template());
  const auto cases = read_jsonl(kJsonDir / "chat.jsonl");
  REQUIRE(cases.size() == 20);
  for (size_t i = 0; i < cases.size(); ++i) {
    INFO("chat.jsonl line " << i + 1);
    shoal::ChatRequest req;
    req.messages = cases[i]["messages"];
    req.add_generation_prompt = cases[i]["add_generation_prompt"].get<bool>();
    auto rendered = shoal::render_chat(gguf_tok(), req);
    REQUIRE(rendered.status().message() == "");
    CHECK(*rendered == cases[i]["rendered"].get<std::string>());
    CHECK(gguf_tok().encode(*rendered, false) == ids_of(cases[i]["ids"]));
  }
}

TEST_CASE("GGUF DeepSeek-V3 vocab: special tokens, ids and the vocabulary limit agree", "[tokenizer][gguf]") {
  const Tokenizer& g = gguf_tok();
  const Tokenizer& j = json_tok();
  CHECK(g.bos_id() == 0);
  CHECK(g.eos_id() == 1);
  CHECK(g.bos_id() == j.bos_id());
  CHECK(g.eos_id() == j.eos_id());
  CHECK(g.bos_token() == kBos);
  CHECK(g.eos_token() == kEos);
  CHECK(g.bos_token() == j.bos_token());
  CHECK(g.eos_token() == j.eos_token());
  CHECK(g.add_bos_default() == j.add_bos_default());
  CHECK(g.add_bos_default());
  for (const char* token : {"<｜User｜>", "<｜Assistant｜>", "<|EOT|>", "<｜tool▁sep｜>", "<｜place▁holder▁no▁799｜>",
                            "Ġthe", "ĠĠ", "Ċ", "a", "<think>"}) {
    INFO(token);
    CHECK(g.token_id(token) == j.token_id(token));
  }
  // The converter pads the token list to the model's vocab_size (129280) with unused
  // "[PAD<id>]" tokens: they decode to nothing and are not text tokens.
  CHECK(g.vocab_limit() == 129280);
  CHECK(decode(g, {128815, 129279}, false).empty());
  CHECK(g.token_id("[PAD128815]") == -1);
  CHECK(g.encode("[PAD128815]", false) == j.encode("[PAD128815]", false));
  CHECK_FALSE(g.decode({129280}, false).ok());
  // Every id's bytes, special or not, as tokenizer.json has them.
  for (int32_t id = 0; id < 128815; ++id) {
    auto a = g.token_bytes(id, false);
    auto b = j.token_bytes(id, false);
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    if (*a != *b) FAIL("token " << id << " decodes differently");
  }
}

// ---- where the tokenizer comes from ------------------------------------------------------------

TEST_CASE("Tokenizer::load takes a GGUF file, a folder with one, and prefers tokenizer.json", "[tokenizer][gguf]") {
  TempDir dir;
  fs::copy_file(kGguf, dir.path / "model.gguf");
  auto from_folder = load(dir.path);
  CHECK(from_folder->vocab_limit() == 129280);  // from the GGUF
  CHECK(from_folder->encode("Hello, world!", true) == std::vector<int32_t>{0, 19923, 14, 2058, 3});
  // tokenizer.json beside it wins (no config.json here, so its limit is its own last id + 1).
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) fs::copy_file(kJsonDir / f, dir.path / f);
  CHECK(load(dir.path)->vocab_limit() == 128815);
  CHECK(load(dir.path / "model.gguf")->vocab_limit() == 129280);  // the file itself still is the GGUF
}

TEST_CASE("GGUF synthetic vocab of the tiny model loads and round-trips", "[tokenizer][gguf]") {
  auto t = load(kTinyGguf);
  CHECK(t->bos_id() == 0);
  CHECK(t->eos_id() == 1);
  CHECK(t->bos_token() == "<|bos|>");
  CHECK(t->eos_token() == "<|eos|>");
  CHECK_FALSE(t->add_bos_default());
  CHECK(t->vocab_limit() == 1024);
  CHECK(t->chat_template().empty());
  for (const std::string text : {"Hello, world!", "  two  spaces  ", "tabs\tand\nnewlines\r\n", "你好, мир 🙂 123456", ""}) {
    INFO(text);
    const auto ids = t->encode(text, true);
    REQUIRE_FALSE(ids.empty());
    CHECK(ids.front() == 0);
    CHECK(decode(*t, ids, false) == "<|bos|>" + text);
    CHECK(decode(*t, ids, true) == text);
  }
  // Bytes are ids 2..257 (in GPT-2's byte order); the one merge makes "ĠĠ" (258) of two spaces.
  CHECK(t->encode("  ", false) == std::vector<int32_t>{258});
  // Control tokens are matched in text and are the special ones.
  const auto eos = t->encode("x<|eos|>", false);
  CHECK(eos.back() == 1);
  CHECK(decode(*t, eos, false) == "x<|eos|>");
  CHECK(decode(*t, eos, true) == "x");
  CHECK(t->encode("A", false).size() == 1);
}

TEST_CASE("Every known pre-tokenizer name loads and round-trips", "[tokenizer][gguf]") {
  for (const char* name : {"deepseek-v3", "deepseek-llm", "deepseek-coder", "default", "gpt2", "gpt-2", "qwen2",
                           "deepseek-r1-qwen", "llama-bpe", "llama3"}) {
    INFO(name);
    auto t = from_kv(tiny_kv("tokenizer.ggml.pre", shoal::gguf_str(name)));
    REQUIRE(t.status().message() == "");
    const std::string text = "I'VE got 12345 apples,\n\n  東京タワー and ſ's. ";
    CHECK(decode(**t, (*t)->encode(text, false), false) == text);
  }
  // llama3's tokenizer adds BOS by default (llama.cpp's default when the key is absent).
  Kv kv = tiny_kv("tokenizer.ggml.pre", shoal::gguf_str("llama-bpe"));
  std::erase_if(kv, [](const auto& p) { return p.first == "tokenizer.ggml.add_bos_token"; });
  auto t = from_kv(kv);
  REQUIRE(t.ok());
  CHECK((*t)->add_bos_default());
  // A missing name is llama.cpp's "default".
  auto d = from_kv(tiny_kv("tokenizer.ggml.pre", std::nullopt));
  CHECK(d.status().message() == "");
}

TEST_CASE("A GGUF tokenizer shoal cannot run is refused, naming why", "[tokenizer][gguf]") {
  SECTION("SentencePiece (tokenizer.ggml.model \"llama\")") {
    auto t = from_kv(tiny_kv("tokenizer.ggml.model", shoal::gguf_str("llama")));
    REQUIRE_FALSE(t.ok());
    CHECK(t.status().code() == shoal::Code::kUnimplemented);
    CHECK(t.status().message().find("\"llama\"") != std::string::npos);
    CHECK(t.status().message().find("SentencePiece") != std::string::npos);
    CHECK(t.status().message().find("test.gguf") != std::string::npos);
  }
  SECTION("another model type") {
    auto t = from_kv(tiny_kv("tokenizer.ggml.model", shoal::gguf_str("t5")));
    REQUIRE_FALSE(t.ok());
    CHECK(t.status().message().find("\"t5\"") != std::string::npos);
  }
  SECTION("an unknown pre-tokenizer name") {
    auto t = from_kv(tiny_kv("tokenizer.ggml.pre", shoal::gguf_str("not-a-pre")));
    REQUIRE_FALSE(t.ok());
    CHECK(t.status().message().find("\"not-a-pre\"") != std::string::npos);
    CHECK(t.status().message().find("tokenizer.ggml.pre") != std::string::npos);
  }
  SECTION("no tokenizer at all") {
    auto t = from_kv(tiny_kv("tokenizer.ggml.model", std::nullopt));
    REQUIRE_FALSE(t.ok());
    CHECK(t.status().message().find("tokenizer.ggml.model") != std::string::npos);
  }
  SECTION("a merge of strings that are not tokens") {
    auto t = from_kv(tiny_kv("tokenizer.ggml.merges", shoal::gguf_strings({"Ġ Ġ", "zz zz"})));
    REQUIRE_FALSE(t.ok());
    CHECK(t.status().message().find("tokenizer.ggml.merges[1]") != std::string::npos);
  }
  SECTION("from a file: the error names the file") {
    TempDir dir;
    const fs::path file = dir.path / "sp.gguf";
    REQUIRE(shoal::write_gguf(file, tiny_kv("tokenizer.ggml.model", shoal::gguf_str("llama")), {}).ok());
    auto t = Tokenizer::load(file);
    REQUIRE_FALSE(t.ok());
    CHECK(t.status().message().find(file.string()) != std::string::npos);
    CHECK(t.status().message().find("\"llama\"") != std::string::npos);
  }
}

// ---- the CLI ---------------------------------------------------------------------------------

TEST_CASE("shoal tokenize --model X.gguf: encode, decode and chat as the fixtures say", "[cli][tokenizer][gguf]") {
  const auto enc = read_jsonl(kJsonDir / "encode.jsonl");
  std::string input;
  for (const json& c : enc) input += json{{"text", c["text"]}, {"add_bos", c["add_bos"]}}.dump() + "\n";
  {
    const auto [rc, lines] = run_shoal("tokenize --model " + kGguf.string() + " encode", input);
    REQUIRE(lines.size() == enc.size());
    for (size_t i = 0; i < enc.size(); ++i) {
      INFO("encode.jsonl line " << i + 1);
      CHECK(json::parse(lines[i])["ids"] == enc[i]["ids"]);
    }
  }
  {
    // A folder holding only the GGUF.
    TempDir dir;
    fs::copy_file(kGguf, dir.path / "deepseek.gguf");
    const auto chats = read_jsonl(kJsonDir / "chat.jsonl");
    std::string chat_in;
    for (const json& c : chats)
      chat_in += json{{"messages", c["messages"]}, {"add_generation_prompt", c["add_generation_prompt"]}}.dump() + "\n";
    const auto [rc, lines] = run_shoal("tokenize --model " + dir.path.string() + " chat", chat_in);
    REQUIRE(lines.size() == chats.size());
    for (size_t i = 0; i < chats.size(); ++i) {
      INFO("chat.jsonl line " << i + 1);
      const json out = json::parse(lines[i]);
      CHECK(out["rendered"] == chats[i]["rendered"]);
      CHECK(out["ids"] == chats[i]["ids"]);
    }
  }
  {
    const auto [rc, lines] =
        run_shoal("tokenize --model " + kGguf.string() + " decode", "{\"ids\": [0, 19923, 14, 2058, 3, 128815]}\n");
    REQUIRE(lines.size() == 1);
    CHECK(json::parse(lines[0])["text"] == kBos + "Hello, world!");
  }
}
