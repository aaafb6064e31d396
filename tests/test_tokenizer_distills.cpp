// The tokenizers of DeepSeek-R1's dense distills against Hugging Face's Rust tokenizers and
// Python's Jinja2 (vectors by tests/tokenizer-vectors/generate.mjs): Qwen2.5's and Llama 3.1's
// tokenizer.json (encode, decode, random ids, Qwen2.5's NFC), and the R1-Distill folders made
// from them (DeepSeek's chat tokens added; chat renders of R1's template and their ids).
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "text/chat_template.h"
#include "text/tokenizer/normalizer.h"
#include "text/tokenizer/tokenizer.h"

namespace {

using nlohmann::json;
using shoal::StreamDecoder;
using shoal::Tokenizer;
namespace fs = std::filesystem;

const fs::path kFixtures = SHOAL_FIXTURES;

std::vector<json> read_jsonl(const fs::path& file) {
  std::ifstream in(file);
  REQUIRE(in);
  std::vector<json> lines;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) lines.push_back(json::parse(line));
  }
  REQUIRE_FALSE(lines.empty());
  return lines;
}

// Each fixture folder's tokenizer, loaded once.
const Tokenizer& tokenizer(const std::string& folder) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> loaded;
  auto& tok = loaded[folder];
  if (!tok) {
    auto t = Tokenizer::load(kFixtures / folder);
    if (!t.ok()) FAIL(t.status().to_string());
    tok = std::move(t).value();
  }
  return *tok;
}

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

std::string decode(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip) {
  auto text = tok.decode(ids, skip);
  REQUIRE(text.ok());
  return text.value();
}

std::string stream(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip) {
  StreamDecoder dec(tok, skip);
  std::string out;
  for (int32_t id : ids) {
    auto piece = dec.push(id);
    REQUIRE(piece.ok());
    out += piece.value();
  }
  return out + dec.finish();
}

// add_special_tokens=true is encode(text, add_bos_default()): the BOS that tokenizer_config.json's
// add_bos_token or else tokenizer.json's post-processor asks for.
void check_encode_vectors(const std::string& folder) {
  const Tokenizer& tok = tokenizer(folder);
  const auto cases = read_jsonl(kFixtures / folder / "encode.jsonl");
  size_t exact = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const json& c = cases[i];
    INFO(folder << "/encode.jsonl line " << i + 1 << " (" << c["group"].get<std::string>() << "): "
                << c["text"].dump());
    const auto expected = ids_of(c["ids"]);
    const bool add_bos = c["add_special_tokens"].get<bool>() && tok.add_bos_default();
    const auto ids = tok.encode(c["text"].get<std::string>(), add_bos);
    CHECK(ids == expected);
    exact += ids == expected;
    CHECK(decode(tok, expected, false) == c["decoded"].get<std::string>());
    CHECK(decode(tok, expected, true) == c["decoded_skip_special"].get<std::string>());
    CHECK(stream(tok, expected, false) == c["decoded"].get<std::string>());
  }
  CHECK(exact == cases.size());
}

void check_decode_vectors(const std::string& folder) {
  const Tokenizer& tok = tokenizer(folder);
  const auto cases = read_jsonl(kFixtures / folder / "decode.jsonl");
  for (size_t i = 0; i < cases.size(); ++i) {
    const json& c = cases[i];
    INFO(folder << "/decode.jsonl line " << i + 1);
    const bool skip = c["skip_special_tokens"].get<bool>();
    CHECK(decode(tok, ids_of(c["ids"]), skip) == c["text"].get<std::string>());
    CHECK(stream(tok, ids_of(c["ids"]), skip) == c["text"].get<std::string>());
  }
}

// Each conversation rendered by shoal's Jinja engine with the folder's template and special
// tokens equals Jinja2's render byte for byte, and the render encodes to the reference's ids.
void check_chats(const std::string& folder) {
  const Tokenizer& tok = tokenizer(folder);
  const auto cases = read_jsonl(kFixtures / folder / "chat.jsonl");
  for (size_t i = 0; i < cases.size(); ++i) {
    const json& c = cases[i];
    INFO(folder << "/chat.jsonl line " << i + 1);
    shoal::ChatRequest req;
    req.messages = c["messages"];
    req.add_generation_prompt = c["add_generation_prompt"].get<bool>();
    auto rendered = shoal::render_chat(tok, req);
    REQUIRE(rendered.status().message() == "");
    CHECK(*rendered == c["rendered"].get<std::string>());
    CHECK(tok.encode(c["rendered"].get<std::string>(), false) == ids_of(c["ids"]));
  }
}

}  // namespace

TEST_CASE("distill tokenizers: Qwen2.5 encode and decode vectors", "[tokenizer][distill]") {
  check_encode_vectors("tokenizer-qwen2.5");
  check_decode_vectors("tokenizer-qwen2.5");
}

TEST_CASE("distill tokenizers: Llama 3.1 encode and decode vectors", "[tokenizer][distill]") {
  check_encode_vectors("tokenizer-llama3.1");
  check_decode_vectors("tokenizer-llama3.1");
}

TEST_CASE("distill tokenizers: NFC equals the reference normalizer's", "[tokenizer][distill][nfc]") {
  const auto cases = read_jsonl(kFixtures / "tokenizer-qwen2.5" / "nfc.jsonl");
  for (size_t i = 0; i < cases.size(); ++i) {
    INFO("nfc.jsonl line " << i + 1 << ": " << cases[i]["text"].dump());
    const std::string text = cases[i]["text"].get<std::string>(), want = cases[i]["nfc"].get<std::string>();
    std::string got;
    shoal::nfc_append(text, got);
    CHECK(got == want);
    if (shoal::nfc_quick_check(text)) CHECK(want == text);  // the quick check never skips a change
  }
}

TEST_CASE("distill tokenizers: R1-Distill-Qwen folder (DeepSeek tokens on Qwen2.5)", "[tokenizer][distill][chat]") {
  check_encode_vectors("tokenizer-r1-distill-qwen");
  check_chats("tokenizer-r1-distill-qwen");
}

TEST_CASE("distill tokenizers: R1-Distill-Llama folder (DeepSeek tokens on Llama 3.1)", "[tokenizer][distill][chat]") {
  check_encode_vectors("tokenizer-r1-distill-llama");
  check_chats("tokenizer-r1-distill-llama");
}

TEST_CASE("distill tokenizers: BOS and EOS come from the files", "[tokenizer][distill]") {
  for (const char* folder : {"tokenizer-r1-distill-qwen", "tokenizer-r1-distill-llama"}) {
    INFO(folder);
    const Tokenizer& tok = tokenizer(folder);
    // tokenizer_config.json's add_bos_token and tokens, resolved against the distill's added tokens.
    const json config = json::parse(std::ifstream(kFixtures / folder / "tokenizer_config.json"));
    CHECK(tok.add_bos_default() == config["add_bos_token"].get<bool>());
    CHECK(tok.bos_token() == config["bos_token"]["content"].get<std::string>());
    CHECK(tok.eos_token() == config["eos_token"]["content"].get<std::string>());
    CHECK(tok.encode(tok.bos_token(), false) == std::vector<int32_t>{tok.bos_id()});
    CHECK(tok.encode(tok.eos_token(), false) == std::vector<int32_t>{tok.eos_id()});
  }
  // Llama 3.1's own folder has no add_bos_token: its post-processor's <|begin_of_text|> is the BOS.
  const Tokenizer& llama = tokenizer("tokenizer-llama3.1");
  CHECK(llama.add_bos_default());
  CHECK(llama.encode(llama.bos_token(), false) == std::vector<int32_t>{llama.bos_id()});
  CHECK_FALSE(tokenizer("tokenizer-qwen2.5").add_bos_default());
}
