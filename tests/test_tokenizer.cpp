// Tokenizer: every fixture vector of tests/fixtures/tokenizer-deepseek-v3 (encode, decode with
// every prefix, chat ids), streaming, invalid UTF-8, malformed files, threads, and speed.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "text/tokenizer/tokenizer.h"

namespace {

using nlohmann::json;
using shoal::Code;
using shoal::StreamDecoder;
using shoal::Tokenizer;
namespace fs = std::filesystem;

const fs::path kDir = fs::path(SHOAL_FIXTURES) / "tokenizer-deepseek-v3";
constexpr int64_t kModelVocab = 129280;  // configs/deepseek-v3-671b/config.json vocab_size

std::vector<json> read_jsonl(const char* name) {
  std::ifstream in(kDir / name);
  REQUIRE(in);
  std::vector<json> lines;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) lines.push_back(json::parse(line));
  }
  return lines;
}

// The fixture tokenizer, loaded once, with the model's vocab limit (ids 128815.. decode to "").
const Tokenizer& deepseek() {
  static const std::unique_ptr<Tokenizer> tok = [] {
    auto loaded = Tokenizer::load(kDir);
    if (!loaded.ok()) FAIL(loaded.status().to_string());
    auto t = std::move(loaded).value();
    t->set_vocab_limit(kModelVocab);
    return t;
  }();
  return *tok;
}

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

std::string decode(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip = false) {
  auto text = tok.decode(ids, skip);
  REQUIRE(text.ok());
  return text.value();
}

// Streams `ids`, checking after each push that what was emitted is final (a prefix of the
// whole decode) and that emitted + finish() there equals the decode of that prefix.
std::string stream(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip, const std::string& full) {
  StreamDecoder dec(tok, skip);
  std::string emitted;
  std::vector<int32_t> prefix;
  for (int32_t id : ids) {
    auto piece = dec.push(id);
    REQUIRE(piece.ok());
    emitted += piece.value();
    prefix.push_back(id);
    CHECK(full.compare(0, emitted.size(), emitted) == 0);
    StreamDecoder stopped_here = dec;
    CHECK(emitted + stopped_here.finish() == decode(tok, prefix, skip));
  }
  return emitted + dec.finish();
}

TEST_CASE("tokenizer: loads the DeepSeek-V3 files", "[tokenizer]") {
  auto loaded = Tokenizer::load(kDir / "tokenizer.json");  // the file itself also works
  REQUIRE(loaded.ok());
  const Tokenizer& tok = *loaded.value();
  CHECK(tok.vocab_limit() == 128815);  // no config.json beside these files
  CHECK(tok.add_bos_default());
  CHECK(tok.bos_id() == 0);
  CHECK(tok.eos_id() == 1);
  CHECK(tok.bos_token() == "<｜begin▁of▁sentence｜>");
  CHECK(tok.eos_token() == "<｜end▁of▁sentence｜>");
  CHECK(tok.chat_template().rfind("{% if not add_generation_prompt is defined %}", 0) == 0);
  CHECK(tok.token_id("<｜User｜>") == 128803);
  CHECK(tok.token_id("Ġ") == 223);
  CHECK(tok.token_id("<think>") == -1);
}

TEST_CASE("tokenizer: every encode.jsonl vector", "[tokenizer]") {
  const Tokenizer& tok = deepseek();
  const auto cases = read_jsonl("encode.jsonl");
  REQUIRE(cases.size() == 306);
  int exact = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const json& c = cases[i];
    INFO("encode.jsonl line " << i + 1 << ": " << c["text"].dump());
    const auto expected = ids_of(c["ids"]);
    const auto ids = tok.encode(c["text"].get<std::string>(), c["add_bos"].get<bool>());
    CHECK(ids == expected);
    const std::string decoded = decode(tok, expected);
    CHECK(decoded == c["decoded"].get<std::string>());
    CHECK(stream(tok, expected, false, decoded) == decoded);
    exact += ids == expected;
  }
  CHECK(exact == 306);
}

TEST_CASE("tokenizer: every decode.jsonl vector and every prefix, also streamed", "[tokenizer]") {
  const Tokenizer& tok = deepseek();
  const auto cases = read_jsonl("decode.jsonl");
  REQUIRE(cases.size() == 54);
  size_t prefixes = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const json& c = cases[i];
    INFO("decode.jsonl line " << i + 1);
    const auto ids = ids_of(c["ids"]);
    const bool skip = c["skip_special_tokens"].get<bool>();
    const std::string text = c["text"].get<std::string>();
    CHECK(decode(tok, ids, skip) == text);
    REQUIRE(c["prefixes"].size() == ids.size());
    for (size_t k = 0; k < ids.size(); ++k, ++prefixes) {
      const std::vector<int32_t> prefix(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(k) + 1);
      CHECK(decode(tok, prefix, skip) == c["prefixes"][k].get<std::string>());
    }
    CHECK(stream(tok, ids, skip, text) == text);
  }
  CHECK(prefixes == 340);
}

TEST_CASE("tokenizer: every chat.jsonl rendering encodes to its ids", "[tokenizer]") {
  const Tokenizer& tok = deepseek();
  const auto cases = read_jsonl("chat.jsonl");
  REQUIRE(cases.size() == 20);
  for (size_t i = 0; i < cases.size(); ++i) {
    INFO("chat.jsonl line " << i + 1);
    CHECK(tok.encode(cases[i]["rendered"].get<std::string>(), false) == ids_of(cases[i]["ids"]));
  }
}

TEST_CASE("tokenizer: invalid UTF-8 input encodes as its U+FFFD replacement", "[tokenizer]") {
  const Tokenizer& tok = deepseek();
  const std::string fffd = "\xEF\xBF\xBD";
  CHECK(tok.encode("\xFF", false) == tok.encode(fffd, false));
  CHECK(tok.encode("a\xE2\x82" "b", false) == tok.encode("a" + fffd + "b", false));  // truncated: one U+FFFD
  CHECK(tok.encode("\xE0\x80\xAF", false) == tok.encode(fffd + fffd + fffd, false));  // overlong: three
  CHECK(tok.encode("\xED\xA0\x80 x", false) == tok.encode(fffd + fffd + fffd + " x", false));  // surrogate
  CHECK(tok.encode(std::string("<｜User｜>") + "\xC0" + "hi", false) == tok.encode("<｜User｜>" + fffd + "hi", false));
  for (const std::string bad : {"\xFF", "abc\xF0\x9F\x98", "\x80\x80", "x\xF5y\xC1z"}) {
    CHECK(decode(tok, tok.encode(bad, false)) == shoal::utf8_lossy(bad));
  }
}

TEST_CASE("tokenizer: utf8_lossy and utf8_complete_prefix", "[tokenizer]") {
  using shoal::utf8_complete_prefix;
  using shoal::utf8_lossy;
  const std::string r = "\xEF\xBF\xBD";
  CHECK(utf8_lossy("\xE0\x80\xAF") == r + r + r);
  CHECK(utf8_lossy("ab\xF0\x9F\x98") == "ab" + r);
  CHECK(utf8_lossy("\xC0\xAF") == r + r);
  CHECK(utf8_lossy("\xF4\x90\x80\x80") == r + r + r + r);
  CHECK(utf8_lossy("\xE2\x82\xAC\xF0\x9F\x98\x80") == "€😀");
  CHECK(utf8_complete_prefix("") == 0);
  CHECK(utf8_complete_prefix("a\xC3") == 1);               // held: may become é
  CHECK(utf8_complete_prefix("\xF0\x9F\x98") == 0);        // held: may become 😀
  CHECK(utf8_complete_prefix("\xF0\x9F\x98\x80") == 4);
  CHECK(utf8_complete_prefix("\x80") == 1);                // lone continuation: never valid
  CHECK(utf8_complete_prefix("\xC0") == 1);
  CHECK(utf8_complete_prefix("\xF5") == 1);
  CHECK(utf8_complete_prefix("\xE0\x80") == 2);            // E0 80 is an overlong start
  CHECK(utf8_complete_prefix("\xED\xA0") == 2);            // a surrogate
  CHECK(utf8_complete_prefix("x\xF0\x9F\x98\x80\x80") == 6);
}

TEST_CASE("tokenizer: streaming emits bytes that can never be valid at once", "[tokenizer]") {
  const Tokenizer& tok = deepseek();
  auto id_of_byte = [&](unsigned char b) {
    for (int32_t id = 0; id < 300; ++id) {
      auto bytes = tok.token_bytes(id, false);
      if (bytes.ok() && bytes.value() == std::string(1, static_cast<char>(b))) return id;
    }
    FAIL("no token for byte " << int(b));
    return -1;
  };
  StreamDecoder dec(tok, false);
  CHECK(dec.push(id_of_byte(0x80)).value() == "\xEF\xBF\xBD");
  CHECK(dec.push(id_of_byte(0xF0)).value().empty());
  CHECK(dec.push(id_of_byte(0x9F)).value().empty());
  CHECK(dec.push(id_of_byte(0x98)).value().empty());
  CHECK(dec.push(id_of_byte(0x80)).value() == "😀");
  CHECK(dec.push(id_of_byte(0xE0)).value().empty());
  CHECK(dec.push(id_of_byte(0x80)).value() == "\xEF\xBF\xBD\xEF\xBF\xBD");  // E0 80: dead at once
  CHECK(dec.push(id_of_byte(0xE2)).value().empty());
  CHECK(dec.finish() == "\xEF\xBF\xBD");
  CHECK(dec.finish().empty());
}

TEST_CASE("tokenizer: ids outside the vocabulary are a clear error", "[tokenizer]") {
  const Tokenizer& tok = deepseek();
  CHECK(decode(tok, {128815, 129279}).empty());  // inside the model's table, no token
  for (int32_t bad : {-1, 129280, 1 << 30}) {
    auto text = tok.decode({19923, bad}, false);
    REQUIRE_FALSE(text.ok());
    CHECK(text.status().code() == Code::kInvalidArgument);
    CHECK_THAT(text.status().message(), Catch::Contains(std::to_string(bad)) && Catch::Contains("129280"));
    CHECK_FALSE(tok.token_bytes(bad, false).ok());
    StreamDecoder dec(tok, false);
    CHECK_FALSE(dec.push(bad).ok());
  }
}

TEST_CASE("tokenizer: encoding from two threads at once gives the same ids", "[tokenizer]") {
  const Tokenizer& tok = deepseek();
  const auto cases = read_jsonl("encode.jsonl");
  std::vector<int> mismatches(2, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 5; ++round) {
        for (const json& c : cases) {
          mismatches[t] += tok.encode(c["text"].get<std::string>(), c["add_bos"].get<bool>()) != ids_of(c["ids"]);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(mismatches == std::vector<int>{0, 0});
}

TEST_CASE("tokenizer: encode speed (printed, not asserted)", "[tokenizer][speed]") {
  const Tokenizer& tok = deepseek();
  std::vector<std::string> texts;
  size_t bytes = 0;
  for (const json& c : read_jsonl("encode.jsonl")) {
    texts.push_back(c["text"].get<std::string>());
    bytes += texts.back().size();
  }
  const int rounds = 20;
  size_t tokens = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < rounds; ++r) {
    for (const auto& text : texts) tokens += tok.encode(text, false).size();
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("tokenizer: encode.jsonl x %d: %zu tokens, %zu KB in %.3f s on one thread: %.2f M tokens/s, %.1f MB/s\n",
              rounds, tokens, bytes * rounds / 1024, s, tokens / s / 1e6, bytes * rounds / s / 1e6);
}

// ---- Small hand-written tokenizers: loading errors and the generic features ----

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("shoal-tok-" + std::to_string(::getpid()) + "-" + std::to_string(counter()++));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  static int& counter() {
    static int n = 0;
    return n;
  }
  void write(const std::string& name, const std::string& text) const { std::ofstream(path / name, std::ios::binary) << text; }
};

// A tiny byte-level-free BPE: a, b, -, and merges a+- , -+b, -+-.
json tiny_tokenizer() {
  return json::parse(R"({
    "added_tokens": [{"id": 6, "content": "<x>", "special": true, "normalized": false}],
    "normalizer": null,
    "pre_tokenizer": {"type": "Split", "pattern": {"String": "-"}, "behavior": "Isolated", "invert": false},
    "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "-": 2, "a-": 3, "-b": 4, "--": 5},
              "merges": ["a -", "- b", "- -"]}
  })");
}

shoal::StatusOr<std::unique_ptr<Tokenizer>> load_json(const TempDir& dir, const json& j) {
  dir.write("tokenizer.json", j.dump());
  return Tokenizer::load(dir.path);
}

void expect_error(const json& j, Code code, const std::vector<std::string>& mentions) {
  TempDir dir;
  auto loaded = load_json(dir, j);
  REQUIRE_FALSE(loaded.ok());
  INFO(loaded.status().to_string());
  CHECK(loaded.status().code() == code);
  CHECK_THAT(loaded.status().message(), Catch::Contains("tokenizer.json"));
  for (const auto& m : mentions) CHECK_THAT(loaded.status().message(), Catch::Contains(m));
}

TEST_CASE("tokenizer: each kind of malformed tokenizer.json is named", "[tokenizer]") {
  SECTION("missing file") {
    TempDir dir;
    auto loaded = Tokenizer::load(dir.path);
    REQUIRE_FALSE(loaded.ok());
    CHECK(loaded.status().code() == Code::kNotFound);
  }
  SECTION("not JSON") {
    TempDir dir;
    dir.write("tokenizer.json", "{\"model\": ");
    auto loaded = Tokenizer::load(dir.path);
    REQUIRE_FALSE(loaded.ok());
    CHECK(loaded.status().code() == Code::kInvalidArgument);
    CHECK_THAT(loaded.status().message(), Catch::Contains("tokenizer.json") && Catch::Contains("not valid JSON"));
  }
  SECTION("top level not an object") { expect_error(json::array(), Code::kInvalidArgument, {"object"}); }
  SECTION("missing model") {
    json j = tiny_tokenizer();
    j.erase("model");
    expect_error(j, Code::kInvalidArgument, {"model", "missing"});
  }
  SECTION("vocab of the wrong type") {
    json j = tiny_tokenizer();
    j["model"]["vocab"] = json::array();
    expect_error(j, Code::kInvalidArgument, {"model.vocab"});
  }
  SECTION("vocab id not an integer") {
    json j = tiny_tokenizer();
    j["model"]["vocab"]["a"] = "0";
    expect_error(j, Code::kInvalidArgument, {"model.vocab[\"a\"]"});
  }
  SECTION("duplicate vocab ids") {
    json j = tiny_tokenizer();
    j["model"]["vocab"]["c"] = 1;
    expect_error(j, Code::kInvalidArgument, {"model.vocab", "id 1"});
  }
  SECTION("merge naming an unknown token") {
    json j = tiny_tokenizer();
    j["model"]["merges"].push_back("a z");
    expect_error(j, Code::kInvalidArgument, {"model.merges[3]", "\"z\""});
  }
  SECTION("merge whose result is not in the vocabulary") {
    json j = tiny_tokenizer();
    j["model"]["merges"].push_back("b a");
    expect_error(j, Code::kInvalidArgument, {"model.merges[3]", "\"ba\""});
  }
  SECTION("merge without one space") {
    json j = tiny_tokenizer();
    j["model"]["merges"][1] = "a-b";
    expect_error(j, Code::kInvalidArgument, {"model.merges[1]"});
  }
  SECTION("duplicate added-token ids") {
    json j = tiny_tokenizer();
    j["added_tokens"].push_back({{"id", 6}, {"content", "<y>"}});
    expect_error(j, Code::kInvalidArgument, {"added_tokens[1].id", "id 6", "id 7"});
  }
  SECTION("added-token id other than the reference would give it") {
    json j = tiny_tokenizer();
    j["added_tokens"].push_back({{"id", 9}, {"content", "a-"}});  // in model.vocab as 3
    expect_error(j, Code::kInvalidArgument, {"added_tokens[1].id", "id 9", "id 3"});
  }
  SECTION("added token used twice") {
    json j = tiny_tokenizer();
    j["added_tokens"].push_back({{"id", 7}, {"content", "<x>"}});
    expect_error(j, Code::kInvalidArgument, {"added_tokens[1].content"});
  }
  SECTION("added token without content") {
    json j = tiny_tokenizer();
    j["added_tokens"][0].erase("content");
    expect_error(j, Code::kInvalidArgument, {"added_tokens[0].content"});
  }
  SECTION("added token flag of the wrong type") {
    json j = tiny_tokenizer();
    j["added_tokens"][0]["lstrip"] = "yes";
    expect_error(j, Code::kInvalidArgument, {"added_tokens[0].lstrip"});
  }
  SECTION("unsupported model") {
    json j = tiny_tokenizer();
    j["model"]["type"] = "WordPiece";
    expect_error(j, Code::kUnimplemented, {"model.type", "WordPiece"});
  }
  SECTION("unsupported normalizer") {
    json j = tiny_tokenizer();
    j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}, {{"type", "NFKC"}}}}};
    expect_error(j, Code::kUnimplemented, {"normalizer.normalizers[1]", "NFKC"});
  }
  SECTION("unsupported post-processor") {
    json j = tiny_tokenizer();
    j["post_processor"] = {{"type", "BertProcessing"}};
    expect_error(j, Code::kUnimplemented, {"post_processor", "BertProcessing"});
  }
  SECTION("post-processor template that adds a token after the text") {
    json j = tiny_tokenizer();
    j["post_processor"] = json::parse(R"({"type": "TemplateProcessing",
        "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<x>", "type_id": 0}}],
        "special_tokens": {"<x>": {"id": "<x>", "ids": [6], "tokens": ["<x>"]}}})");
    expect_error(j, Code::kUnimplemented, {"post_processor.single"});
  }
  // Found by fuzz_tokenizer_json: an id that is no token (or another token's) was put first by
  // encode(text, true), and decode refused it.
  SECTION("post-processor BOS id that is not its token's") {
    json j = tiny_tokenizer();
    j["post_processor"] = json::parse(R"({"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<x>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "special_tokens": {"<x>": {"id": "<x>", "ids": [48], "tokens": ["<x>"]}}})");
    expect_error(j, Code::kInvalidArgument, {"post_processor.special_tokens[\"<x>\"].ids[0]", "48", "token 6"});
    j["post_processor"]["special_tokens"]["<x>"]["ids"] = {1};
    expect_error(j, Code::kInvalidArgument, {"post_processor.special_tokens[\"<x>\"].ids[0]", "token 6"});
  }
  SECTION("post-processor BOS that is no token") {
    json j = tiny_tokenizer();
    j["post_processor"] = json::parse(R"({"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [7], "tokens": ["<s>"]}}})");
    expect_error(j, Code::kInvalidArgument, {"post_processor.special_tokens[\"<s>\"]", "not a token"});
  }
  SECTION("unsupported pre-tokenizer") {
    json j = tiny_tokenizer();
    j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Whitespace"}}}}};
    expect_error(j, Code::kUnimplemented, {"pre_tokenizer.pretokenizers[0]", "Whitespace"});
  }
  SECTION("bad regex") {
    json j = tiny_tokenizer();
    j["pre_tokenizer"]["pattern"] = {{"Regex", "(["}};
    expect_error(j, Code::kInvalidArgument, {"pre_tokenizer.pattern.Regex"});
  }
  SECTION("unknown split behavior") {
    json j = tiny_tokenizer();
    j["pre_tokenizer"]["behavior"] = "Sideways";
    expect_error(j, Code::kInvalidArgument, {"pre_tokenizer.behavior", "Sideways"});
  }
  SECTION("unsupported decoder") {
    json j = tiny_tokenizer();
    j["decoder"] = {{"type", "WordPiece"}};
    expect_error(j, Code::kUnimplemented, {"decoder", "WordPiece"});
  }
  SECTION("BPE dropout") {
    json j = tiny_tokenizer();
    j["model"]["dropout"] = 0.1;
    expect_error(j, Code::kUnimplemented, {"model.dropout"});
  }
}

TEST_CASE("tokenizer: malformed tokenizer_config.json and config.json are named", "[tokenizer]") {
  SECTION("bos token that does not exist") {
    TempDir dir;
    dir.write("tokenizer_config.json", R"({"add_bos_token": true, "bos_token": "<s>"})");
    auto loaded = load_json(dir, tiny_tokenizer());
    REQUIRE_FALSE(loaded.ok());
    CHECK_THAT(loaded.status().message(), Catch::Contains("tokenizer_config.json") && Catch::Contains("bos_token"));
  }
  SECTION("add_bos_token of the wrong type") {
    TempDir dir;
    dir.write("tokenizer_config.json", R"({"add_bos_token": "yes"})");
    auto loaded = load_json(dir, tiny_tokenizer());
    REQUIRE_FALSE(loaded.ok());
    CHECK_THAT(loaded.status().message(), Catch::Contains("tokenizer_config.json") && Catch::Contains("add_bos_token"));
  }
  SECTION("vocab_size of the wrong type") {
    TempDir dir;
    dir.write("config.json", R"({"vocab_size": "big"})");
    auto loaded = load_json(dir, tiny_tokenizer());
    REQUIRE_FALSE(loaded.ok());
    CHECK_THAT(loaded.status().message(), Catch::Contains("config.json") && Catch::Contains("vocab_size"));
  }
  SECTION("all present and well formed") {
    TempDir dir;
    dir.write("tokenizer_config.json",
              R"({"add_bos_token": true, "bos_token": {"content": "<x>"}, "eos_token": "b",
                  "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})");
    dir.write("config.json", R"({"vocab_size": 10})");
    auto loaded = load_json(dir, tiny_tokenizer());
    REQUIRE(loaded.ok());
    const Tokenizer& tok = *loaded.value();
    CHECK(tok.bos_id() == 6);
    CHECK(tok.eos_id() == 1);
    CHECK(tok.chat_template() == "D");
    CHECK(tok.vocab_limit() == 10);
    CHECK(tok.encode("a", tok.add_bos_default()) == std::vector<int32_t>{6, 0});
    CHECK(decode(tok, {9}).empty());
    CHECK_FALSE(tok.decode({10}, false).ok());
  }
}

TEST_CASE("tokenizer: the post-processor's leading special token is the BOS unless the config says", "[tokenizer]") {
  json j = tiny_tokenizer();
  j["post_processor"] = json::parse(R"({"type": "Sequence", "processors": [
      {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
      {"type": "TemplateProcessing",
       "single": [{"SpecialToken": {"id": "<x>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
       "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
       "special_tokens": {"<x>": {"id": "<x>", "ids": [6], "tokens": ["<x>"]}}}]})");
  TempDir dir;
  auto plain = load_json(dir, j);  // no tokenizer_config.json: as Llama 3's PreTrainedTokenizerFast
  REQUIRE(plain.ok());
  CHECK(plain.value()->add_bos_default());
  CHECK(plain.value()->bos_id() == 6);
  CHECK(plain.value()->encode("a", true) == std::vector<int32_t>{6, 0});
  dir.write("tokenizer_config.json", R"({"add_bos_token": false, "bos_token": "<x>"})");
  auto configured = Tokenizer::load(dir.path);  // add_bos_token decides, as for Llama-style classes
  REQUIRE(configured.ok());
  CHECK_FALSE(configured.value()->add_bos_default());
}

std::vector<int32_t> encode_with(json j, const std::string& text) {
  TempDir dir;
  auto loaded = load_json(dir, j);
  if (!loaded.ok()) FAIL(loaded.status().to_string());
  return loaded.value()->encode(text, false);
}

TEST_CASE("tokenizer: split behaviours and invert", "[tokenizer]") {
  json j = tiny_tokenizer();
  using V = std::vector<int32_t>;
  auto with = [&](const char* behavior, bool invert, const std::string& text) {
    j["pre_tokenizer"]["behavior"] = behavior;
    j["pre_tokenizer"]["invert"] = invert;
    return encode_with(j, text);
  };
  CHECK(with("Isolated", false, "a-b") == V{0, 2, 1});
  CHECK(with("Removed", false, "a-b") == V{0, 1});
  CHECK(with("MergedWithPrevious", false, "a-b") == V{3, 1});
  CHECK(with("MergedWithNext", false, "a-b") == V{0, 4});
  CHECK(with("Contiguous", false, "a--b") == V{0, 5, 1});
  CHECK(with("Isolated", false, "a--b") == V{0, 2, 2, 1});
  CHECK(with("Removed", true, "a-b") == V{2});  // inverted: the text between dashes is removed
  CHECK(with("Isolated", false, "a<x>-b") == V{0, 6, 2, 1});
}

TEST_CASE("tokenizer: ByteLevel prefix space, GPT-2 regex, added-token flags", "[tokenizer]") {
  json j = tiny_tokenizer();
  j["model"]["vocab"]["Ġ"] = 6;
  j["model"]["vocab"]["Ġa"] = 7;
  j["model"]["merges"].push_back("Ġ a");
  j["added_tokens"][0]["id"] = 8;  // the reference numbers added tokens from the vocabulary's size
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}};
  using V = std::vector<int32_t>;
  CHECK(encode_with(j, "a") == V{7});
  CHECK(encode_with(j, "b a") == V{6, 1, 7});  // " b" | " a"
  j["added_tokens"][0]["lstrip"] = true;
  j["added_tokens"][0]["rstrip"] = true;
  CHECK(encode_with(j, "b <x> a") == V{6, 1, 8, 7});  // spaces around <x> go with it
  j["added_tokens"][0]["lstrip"] = false;
  j["added_tokens"][0]["rstrip"] = false;
  j["added_tokens"][0]["single_word"] = true;
  CHECK(encode_with(j, "b <x> a") == V{6, 1, 6, 8, 7});
  CHECK(encode_with(j, "b<x>") == V{6, 1});  // not a single word: <x> is text, and with no
                                             // unk token its characters are dropped
}

}  // namespace
