// The CLI contracts of `shoal tokenize` (one JSON line out per line in, in order) and of
// `shoal run --prompt/--chat`, against the Hugging Face fixtures.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "model/synth.h"
#include "support/files.h"

using nlohmann::json;
namespace fs = std::filesystem;
using shoal::test::exit_code;

namespace {

const std::string kTok = std::string(SHOAL_FIXTURES) + "/tokenizer-deepseek-v3";

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  std::vector<json> out;
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

struct Result {
  int status;
  std::vector<std::string> lines;
  std::string err;
};

// Runs `shoal <args>` with `input` on stdin; stdout split into lines, stderr kept.
Result run_shoal(const std::string& args, const std::string& input) {
  const fs::path dir = fs::temp_directory_path() / ("shoal-cli-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  { std::ofstream(dir / "in") << input; }
  const std::string cmd = std::string(SHOAL_BINARY) + " " + args + " < " + (dir / "in").string() + " > " +
                          (dir / "out").string() + " 2> " + (dir / "err").string();
  Result r;
  r.status = std::system(cmd.c_str());
  std::ifstream out(dir / "out");
  std::string line;
  while (std::getline(out, line)) r.lines.push_back(line);
  std::stringstream err;
  err << std::ifstream(dir / "err").rdbuf();
  r.err = err.str();
  fs::remove_all(dir);
  return r;
}

}  // namespace

TEST_CASE("tokenize encode: every fixture line, one output line each, in order", "[cli][tokenizer]") {
  const auto cases = read_jsonl(kTok + "/encode.jsonl");
  std::string input;
  for (const json& c : cases) input += json{{"text", c["text"]}, {"add_bos", c["add_bos"]}}.dump() + "\n";
  const Result r = run_shoal("tokenize --tokenizer " + kTok + " encode", input);
  CHECK(exit_code(r.status) == 0);
  REQUIRE(r.lines.size() == cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    INFO("line " << i + 1 << ": " << cases[i]["text"].dump());
    CHECK(json::parse(r.lines[i])["ids"] == cases[i]["ids"]);
  }
}

TEST_CASE("tokenize decode and count: fixture lines, and a bad line keeps its place", "[cli][tokenizer]") {
  const auto cases = read_jsonl(kTok + "/decode.jsonl");
  std::string input;
  for (const json& c : cases) input += json{{"ids", c["ids"]}, {"skip_special_tokens", c["skip_special_tokens"]}}.dump() + "\n";
  input += "{\"ids\": [5, \"x\"]}\n";           // not an id
  input += "not json\n";
  input += "{\"ids\": [129280]}\n";             // past the model's vocabulary
  input += json{{"ids", {19923, 14}}}.dump() + "\n";
  // A model folder: the tokenizer files beside DeepSeek-V3's config.json, whose vocab_size
  // (129280) is the decode limit; ids 128815 and 129279 have no token and decode to nothing.
  const fs::path model = fs::temp_directory_path() / ("shoal-tokmodel-" + std::to_string(::getpid()));
  fs::create_directories(model);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    fs::copy_file(kTok + "/" + f, model / f, fs::copy_options::overwrite_existing);
  fs::copy_file(std::string(SHOAL_FIXTURES) + "/configs/deepseek-v3-671b/config.json", model / "config.json",
                fs::copy_options::overwrite_existing);
  const Result r = run_shoal("tokenize --model " + model.string() + " decode", input);
  fs::remove_all(model);
  CHECK(exit_code(r.status) == 1);  // some lines failed
  REQUIRE(r.lines.size() == cases.size() + 4);
  for (size_t i = 0; i < cases.size(); ++i) CHECK(json::parse(r.lines[i])["text"] == cases[i]["text"]);
  const size_t n = cases.size();
  CHECK(json::parse(r.lines[n])["error"]["line"] == n + 1);
  CHECK(json::parse(r.lines[n + 1])["error"]["message"].get<std::string>().find("JSON") != std::string::npos);
  CHECK(json::parse(r.lines[n + 2])["error"]["message"].get<std::string>().find("129280") != std::string::npos);
  CHECK(json::parse(r.lines[n + 3])["text"] == "Hello,");

  const auto enc = read_jsonl(kTok + "/encode.jsonl");
  const auto chats = read_jsonl(kTok + "/chat.jsonl");
  std::string count_in = json{{"text", enc[0]["text"]}, {"add_bos", enc[0]["add_bos"]}}.dump() + "\n" +
                         json{{"ids", {1, 2, 3}}}.dump() + "\n" +
                         json{{"messages", chats[0]["messages"]},
                              {"add_generation_prompt", chats[0]["add_generation_prompt"]}}.dump() + "\n";
  const Result c = run_shoal("tokenize --tokenizer " + kTok + " count", count_in);
  CHECK(exit_code(c.status) == 0);
  REQUIRE(c.lines.size() == 3);
  CHECK(json::parse(c.lines[0])["n_tokens"] == enc[0]["ids"].size());
  CHECK(json::parse(c.lines[1])["n_tokens"] == 3);
  CHECK(json::parse(c.lines[2])["n_tokens"] == chats[0]["ids"].size());
}

TEST_CASE("tokenize chat: rendered and ids of every fixture conversation", "[cli][chat]") {
  const auto cases = read_jsonl(kTok + "/chat.jsonl");
  std::string input;
  for (const json& c : cases)
    input += json{{"messages", c["messages"]}, {"add_generation_prompt", c["add_generation_prompt"]}}.dump() + "\n";
  const Result r = run_shoal("tokenize --tokenizer " + kTok + " chat", input);
  CHECK(exit_code(r.status) == 0);
  REQUIRE(r.lines.size() == cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    const json out = json::parse(r.lines[i]);
    CHECK(out["rendered"] == cases[i]["rendered"]);
    CHECK(out["ids"] == cases[i]["ids"]);
  }
}

TEST_CASE("tokenize without a tokenizer folder fails with a message", "[cli]") {
  const Result r = run_shoal("tokenize --tokenizer /nonexistent/tok encode", "{\"text\": \"a\"}\n");
  CHECK(exit_code(r.status) == 1);
  CHECK(r.err.find("/nonexistent/tok") != std::string::npos);
}

TEST_CASE("run --prompt and --chat on a model that carries the DeepSeek tokenizer", "[cli][run]") {
  const fs::path dir = fs::temp_directory_path() / ("shoal-textmodel-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  // A tiny DeepSeek-V3 with the real vocabulary size, so every tokenizer id is a model id.
  json config = json::parse(std::ifstream(std::string(SHOAL_FIXTURES) + "/tiny-v3-bf16/config.json"));
  config["vocab_size"] = 129280;
  { std::ofstream(dir / "config.json") << config.dump(2); }
  shoal::SynthOptions so;
  so.config = dir / "config.json";
  so.out = dir / "model";
  REQUIRE(shoal::synth_checkpoint(so).ok());
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    fs::copy_file(kTok + "/" + f, dir / "model" / f);

  const Result p = run_shoal("run --model " + (dir / "model").string() + " --prompt 'Hello, world' --max-tokens 5", "");
  REQUIRE(exit_code(p.status) == 0);
  REQUIRE(p.lines.size() >= 4);
  CHECK(p.lines[0].rfind("generated:", 0) == 0);
  CHECK(p.lines[1].rfind("text: \"", 0) == 0);
  CHECK(p.lines[2].rfind("prefill: 4 tokens in ", 0) == 0);  // BOS, "Hello", ",", " world"

  // R1's template opens a <think> block, so all of the (random) answer is reasoning.
  fs::copy_file(std::string(SHOAL_FIXTURES) + "/chat-template-deepseek-r1/tokenizer_config.json",
                dir / "model" / "tokenizer_config.json", fs::copy_options::overwrite_existing);
  const Result c = run_shoal("run --model " + (dir / "model").string() +
                             " --chat '[{\"role\":\"user\",\"content\":\"Hi\"}]' --max-tokens 6", "");
  REQUIRE(exit_code(c.status) == 0);
  bool saw_reasoning = false;
  for (const auto& l : c.lines) saw_reasoning |= l.rfind("reasoning: ", 0) == 0;
  CHECK(saw_reasoning);
  fs::remove_all(dir);
}
