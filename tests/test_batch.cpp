// shoal batch through the binary, on a small synthesized model with DeepSeek-V3's tokenizer:
// an uninterrupted run is the reference; runs killed with kill -9 at random points (and a torn
// last line) and rerun, and a run stopped by SIGTERM and rerun, end with every line of the
// input answered exactly once and every response body equal to the reference's (sampled ones
// too: a request without a seed gets one from its custom_id). Bad lines become error records;
// request fields are checked; stop strings cut the text; sampling, seeds and logprobs give the
// bodies `shoal serve` gives.
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "support/batch_records.h"
#include "support/files.h"
#include "support/process.h"

namespace fs = std::filesystem;
using shoal::test::TempDir;
using shoal::test::comparable;
using shoal::test::count_lines;
using shoal::test::exit_code;
using shoal::test::read_file;
using json = nlohmann::json;
using shoal::test::Child;
using shoal::test::run_command;
using namespace std::chrono_literals;

namespace {

const std::string kShoal = SHOAL_BINARY;
const std::string kTokenizer = std::string(SHOAL_FIXTURES) + "/tokenizer-deepseek-v3";

// DeepSeek-V3's architecture at hidden 64: 2 layers (one dense, one MoE with 8 routed experts
// in 4 groups), the tokenizer's 129,280 ids (synth --tokenizer sets vocab_size).
const char* kConfig = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
  "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32,
  "num_hidden_layers": 2, "first_k_dense_replace": 1, "moe_layer_freq": 1,
  "num_attention_heads": 4, "num_key_value_heads": 4,
  "q_lora_rank": 48, "kv_lora_rank": 32, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32,
  "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2,
  "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": true, "routed_scaling_factor": 2.5,
  "hidden_act": "silu", "rms_norm_eps": 1e-06, "max_position_embeddings": 512,
  "rope_theta": 10000, "rope_scaling": {"type": "yarn", "factor": 8, "original_max_position_embeddings": 64,
    "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
  "tie_word_embeddings": false, "num_nextn_predict_layers": 0, "vocab_size": 129280,
  "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "bfloat16"
})";

std::string synth_model(const TempDir& dir) {
  { std::ofstream(dir / "config.json") << kConfig; }
  int status = -1;
  const std::string out = run_command(kShoal + " synth --config " + dir / "config.json" + " --tokenizer " + kTokenizer +
                                          " --out " + dir / "model" + " 2>&1", &status);
  INFO(out);
  REQUIRE(exit_code(status) == 0);
  return dir / "model";
}

const char* kWords[] = {"the", "sky", "is", "blue", "why", "does", "water", "boil", "at", "100", "degrees",
                        "Paris", "tell", "me", "a", "story", "about", "你好", "世界", "🙂", "cats", "and",
                        "dogs", "in", "Rust", "C++", "code:", "fn main() {}", "\n", "?"};

std::string words(std::mt19937& rng, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) {
    if (i) s += ' ';
    s += kWords[rng() % std::size(kWords)];
  }
  return s;
}

// n requests, chat and completions mixed, small max_tokens, some with stop strings and
// sampling fields; then a line that is not JSON, one without custom_id and a duplicate.
std::string make_input(int n) {
  std::mt19937 rng(1234);
  std::string in;
  for (int i = 0; i < n; ++i) {
    json body;
    std::string url;
    switch (i % 4) {
      case 0:
        url = "/v1/chat/completions";
        body = {{"model", "deepseek-v3"}, {"messages", {{{"role", "user"}, {"content", words(rng, 3 + rng() % 20)}}}}};
        break;
      case 1:
        url = "/v1/chat/completions";
        body = {{"messages",
                 {{{"role", "system"}, {"content", words(rng, 4)}}, {{"role", "user"}, {"content", words(rng, 2 + rng() % 10)}}}},
                {"temperature", 0.7}, {"top_p", 0.9}, {"seed", i}};
        break;
      case 2:
        url = "/v1/completions";
        body = {{"model", "deepseek-v3"}, {"prompt", words(rng, 1 + rng() % 25)}};
        break;
      default:
        url = "/v1/completions";
        body = {{"prompt", words(rng, 5)}, {"stop", {"e", "a"}}};
        break;
    }
    body[i % 8 == 0 ? "max_completion_tokens" : "max_tokens"] = 1 + int(rng() % 6);
    in += json{{"custom_id", "req-" + std::to_string(i)}, {"method", "POST"}, {"url", url}, {"body", body}}.dump() + "\n";
    if (i == n / 3) in += "{\"custom_id\": \"broken\", \"method\": \"POST\"\n";  // not JSON
    if (i == n / 2) in += "\n" + json{{"method", "POST"}, {"url", "/v1/completions"}, {"body", {{"prompt", "x"}}}}.dump() + "\n";
    if (i == 2 * n / 3) in += json{{"custom_id", "req-7"}, {"method", "POST"}, {"url", "/v1/completions"},
                                   {"body", {{"prompt", "again"}}}}.dump() + "\n";
  }
  return in;
}

// The key a record answers: its custom_id, or the line of a line that owns no custom_id.
std::string key_of(const json& r) {
  const json& e = r["error"];
  if (e.is_object()) {
    const std::string code = e["code"];
    if (code == "invalid_json" || code == "missing_custom_id" || code == "duplicate_custom_id")
      return "line " + std::to_string(e["line"].get<int>());
  }
  return r["custom_id"].get<std::string>();
}

// Every line of a results file: whole (ends with '\n'), JSON, one per key. Returns key -> record.
std::map<std::string, json> read_results(const std::string& path) {
  const std::string text = read_file(path);
  INFO(path);
  REQUIRE((text.empty() || text.back() == '\n'));
  std::map<std::string, json> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    INFO(line);
    const json r = json::parse(line);
    REQUIRE(r.contains("id"));
    REQUIRE(r.contains("custom_id"));
    REQUIRE(r.contains("response"));
    REQUIRE(r.contains("error"));
    const std::string key = key_of(r);
    INFO("key " << key);
    REQUIRE(out.count(key) == 0);  // exactly once
    out[key] = r;
  }
  return out;
}

void check_same_results(const std::map<std::string, json>& want, const std::map<std::string, json>& got) {
  REQUIRE(got.size() == want.size());
  for (const auto& [key, w] : want) {
    INFO("key " << key);
    REQUIRE(got.count(key) == 1);
    CHECK(comparable(got.at(key)) == comparable(w));
  }
}

struct Run {
  int status = -1;
  std::string err;
};

Run run_batch(const std::string& args, const TempDir& dir) {
  Run r;
  run_command("timeout 120 " + kShoal + " batch " + args + " 2>" + dir / "stderr", &r.status);
  r.err = read_file(dir / "stderr");
  return r;
}

// Starts `shoal batch`, waits until the output holds at least `records` lines (or the child
// ends), then signals it. Returns the child's wait status.
int interrupt_at(const std::string& args, const std::string& out, size_t records, int sig, const TempDir& dir,
                 std::chrono::microseconds extra = 0us) {
  Child c(kShoal + " batch " + args, dir / "stderr-child");
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  std::error_code ec;
  uintmax_t seen = uintmax_t(-1);
  while (std::chrono::steady_clock::now() < deadline && c.wait_exit(0ms) == -1) {
    const uintmax_t size = fs::file_size(out, ec);
    if (!ec && size != seen) {
      seen = size;
      if (count_lines(out) >= records) break;
    }
    std::this_thread::sleep_for(1ms);
  }
  std::this_thread::sleep_for(extra);
  c.kill(sig);
  const int status = c.wait_exit(60s);
  INFO(read_file(dir / "stderr-child"));
  REQUIRE(status != -1);
  return status;
}

// A `shoal node` on an ephemeral loopback port.
struct Node {
  std::unique_ptr<Child> child;
  std::string address;
};

// `listen`: where (a restarted node takes its old address); default any free port.
Node start_node(const std::string& token_file, const std::string& log, const std::string& listen = "127.0.0.1:0") {
  Node n;
  n.child = std::make_unique<Child>(kShoal + " node --listen " + listen + " --token-file " + token_file, log);
  std::string line;
  REQUIRE(n.child->read_line(line, 10s));
  std::smatch m;
  REQUIRE(std::regex_search(line, m, std::regex("listening on (127\\.0\\.0\\.1:[0-9]+)")));
  n.address = m[1];
  return n;
}

}  // namespace

TEST_CASE("batch: after kill -9 three times and after SIGTERM the reruns answer every line once as an uninterrupted run does",
          "[batch]") {
  TempDir dir;
  const std::string model = synth_model(dir);
  constexpr int kRequests = 300;
  { std::ofstream(dir / "in.jsonl") << make_input(kRequests); }
  const size_t kLines = kRequests + 3;  // + not JSON, no custom_id, a duplicate
  const std::string common = " --model " + model + " -i " + dir / "in.jsonl" + " --local-nodes 2 --max-seq-len 128 --slots 8";

  // The reference: one uninterrupted run.
  const auto t0 = std::chrono::steady_clock::now();
  Run ref_run = run_batch(common + " -o " + dir / "ref.jsonl", dir);
  const double ref_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  INFO(ref_run.err);
  REQUIRE(exit_code(ref_run.status) == 0);
  const auto ref = read_results(dir / "ref.jsonl");
  REQUIRE(ref.size() == kLines);
  int errors = 0;
  for (const auto& [key, r] : ref) {
    if (r["error"].is_object()) {
      ++errors;
      continue;
    }
    const json& body = r["response"]["body"];
    CHECK(r["response"]["status_code"] == 200);
    CHECK(body["usage"]["completion_tokens"].get<int>() >= 1);
    CHECK(body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"].get<int>() + body["usage"]["completion_tokens"].get<int>());
  }
  CHECK(errors == 3);
  CHECK(ref.at("line " + std::to_string(kRequests / 3 + 2))["error"]["code"] == "invalid_json");
  CHECK(ref.at("req-7")["error"].is_null());  // the first req-7 owns the id; the later line is the duplicate
  WARN("reference run: " << ref_s << " s");

  // kill -9 at three random points, rerunning the same command each time; once, a torn line
  // is appended by hand (what a kill in the middle of a write leaves).
  std::random_device rd;
  const unsigned seed = rd();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  const std::string out = dir / "out.jsonl";
  const std::string args = common + " -o " + out;
  std::vector<size_t> points;
  for (int k = 0; k < 3; ++k) points.push_back(5 + rng() % (kLines - 60));
  std::sort(points.begin(), points.end());
  bool cut_seen = false;
  for (int k = 0; k < 3; ++k) {
    INFO("kill " << k << " at " << points[k] << " records");
    const int status = interrupt_at(args, out, points[k], SIGKILL, dir, std::chrono::microseconds(rng() % 20000));
    CHECK(WIFSIGNALED(status));
    if (k == 2) cut_seen = read_file(dir / "stderr-child").find("cut") != std::string::npos;
    if (k == 1) {
      std::ofstream(out, std::ios::app) << R"({"id": "batch_req_torn", "custom_id": "req-)";
    }
  }
  Run resumed = run_batch(args, dir);
  INFO(resumed.err);
  REQUIRE(exit_code(resumed.status) == 0);
  CHECK_THAT(resumed.err, Catch::Contains("resuming"));
  CHECK((cut_seen || resumed.err.find("cut") != std::string::npos));  // the torn line was cut
  check_same_results(ref, read_results(out));

  // A complete output: nothing to do, nothing written.
  const std::string before = read_file(out);
  Run again = run_batch(args, dir);
  CHECK(exit_code(again.status) == 0);
  CHECK_THAT(again.err, Catch::Contains("all " + std::to_string(kLines) + " records"));
  CHECK(read_file(out) == before);

  // SIGTERM (what Slurm sends before it preempts): exit 143 with a clean output, then resume.
  const std::string term_out = dir / "term.jsonl";
  const int status = interrupt_at(common + " -o " + term_out, term_out, 20 + rng() % 100, SIGTERM, dir);
  const std::string err = read_file(dir / "stderr-child");
  INFO(err);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 143);
  CHECK_THAT(err, Catch::Contains("SIGTERM"));
  const auto partial = read_results(term_out);  // whole lines, each key once
  CHECK(partial.size() < kLines);
  for (const auto& [key, r] : partial) CHECK(comparable(r) == comparable(ref.at(key)));
  Run term_resumed = run_batch(common + " -o " + term_out, dir);
  INFO(term_resumed.err);
  REQUIRE(exit_code(term_resumed.status) == 0);
  check_same_results(ref, read_results(term_out));
}

TEST_CASE("batch: bad lines and bad requests become error records and stop strings cut the text", "[batch]") {
  TempDir dir;
  const std::string model = synth_model(dir);
  auto line = [](const std::string& id, const std::string& url, const json& body) {
    return json{{"custom_id", id}, {"method", "POST"}, {"url", url}, {"body", body}}.dump() + "\n";
  };
  const std::string chat = "/v1/chat/completions", cmpl = "/v1/completions";
  const json hi = {{{"role", "user"}, {"content", "Hi"}}};
  std::string long_prompt;
  for (int i = 0; i < 100; ++i) long_prompt += "word ";
  std::string in;
  in += "this is not json\n";                                                                    // line 1
  in += json{{"method", "POST"}, {"url", cmpl}, {"body", {{"prompt", "x"}}}}.dump() + "\n";     // line 2
  in += "   \n";                                                                                 // line 3: blank
  in += line("a", cmpl, {{"prompt", "The sky is"}, {"max_tokens", 12}, {"seed", 5}});            // line 4
  in += line("a", cmpl, {{"prompt", "again"}});                                                  // line 5
  in += json{{"custom_id", 17}, {"method", "POST"}, {"url", cmpl}, {"body", {{"prompt", "x"}}}}.dump() + "\n";
  in += "[1, 2]\n";
  in += json{{"custom_id", "get"}, {"method", "GET"}, {"url", cmpl}, {"body", {{"prompt", "x"}}}}.dump() + "\n";
  in += line("embeddings", "/v1/embeddings", {{"input", "x"}});
  in += json{{"custom_id", "body-string"}, {"method", "POST"}, {"url", cmpl}, {"body", "x"}}.dump() + "\n";
  in += line("no-messages", chat, {{"messages", "Hi"}});
  in += line("no-role", chat, {{"messages", {{{"content", "Hi"}}}}});
  in += line("temperature", chat, {{"messages", hi}, {"temperature", 3}});
  in += line("top-p", chat, {{"messages", hi}, {"top_p", "high"}});
  in += line("max-tokens-0", cmpl, {{"prompt", "x"}, {"max_tokens", 0}});
  in += line("five-stops", cmpl, {{"prompt", "x"}, {"stop", {"a", "b", "c", "d", "e"}}});
  in += line("stream", chat, {{"messages", hi}, {"stream", true}});
  in += line("n-2", chat, {{"messages", hi}, {"n", 2}});
  in += line("too-long", cmpl, {{"prompt", long_prompt}, {"max_tokens", 4}});
  in += line("too-long-chat", chat, {{"messages", {{{"role", "user"}, {"content", long_prompt}}}}});
  in += line("bad-id", cmpl, {{"prompt", {0, 999999}}});
  in += line("two-prompts", cmpl, {{"prompt", {"one", "two"}}});
  in += line("ids", cmpl, {{"prompt", {0, 5, 6}}, {"max_tokens", 3}});
  in += line("parts", chat, {{"messages", {{{"role", "user"}, {"content", {{{"type", "text"}, {"text", "Hi"}}}}}}}, {"max_tokens", 4}, {"seed", 7}});
  in += line("plain", chat, {{"messages", hi}, {"max_tokens", 4}, {"seed", 7}});
  in += line("sampled", chat, {{"messages", hi}, {"max_tokens", 4}, {"temperature", 0.8}, {"top_p", 0.5}, {"seed", 3}});
  in += line("default-16", cmpl, {{"prompt", "Once upon a time"}});
  { std::ofstream(dir / "in.jsonl") << in; }
  const std::string common = " --model " + model + " --max-seq-len 64 --slots 4 --progress-interval 0.01";
  Run r = run_batch(common + " -i " + dir / "in.jsonl" + " -o " + dir / "out.jsonl", dir);
  INFO(r.err);
  REQUIRE(exit_code(r.status) == 0);  // error records are records: the batch is done
  CHECK_THAT(r.err, Catch::Contains("records (") && Catch::Contains("tokens/s"));  // plain progress lines
  const auto got = read_results(dir / "out.jsonl");
  CHECK(got.size() == 26);  // every non-blank line

  const std::map<std::string, std::string> want_codes = {
      {"line 1", "invalid_json"},       {"line 2", "missing_custom_id"},        {"line 5", "duplicate_custom_id"},
      {"line 6", "missing_custom_id"},  {"line 7", "invalid_json"},             {"get", "invalid_method"},
      {"embeddings", "invalid_url"},    {"body-string", "invalid_body"},        {"no-messages", "invalid_body"},
      {"no-role", "invalid_body"},      {"temperature", "invalid_body"},        {"top-p", "invalid_body"},
      {"max-tokens-0", "invalid_body"}, {"five-stops", "invalid_body"},         {"stream", "unsupported_parameter"},
      {"n-2", "unsupported_parameter"}, {"too-long", "context_length_exceeded"}, {"too-long-chat", "context_length_exceeded"},
      {"bad-id", "invalid_body"},       {"two-prompts", "unsupported_parameter"}};
  for (const auto& [key, code] : want_codes) {
    INFO(key);
    REQUIRE(got.count(key) == 1);
    const json& rec = got.at(key);
    CHECK(rec["response"].is_null());
    CHECK(rec["error"]["code"] == code);
    CHECK(rec["error"]["message"].get<std::string>().size() > 5);
  }
  CHECK(got.at("line 1")["custom_id"].is_null());
  CHECK(got.at("line 5")["custom_id"] == "a");
  CHECK(got.at("line 5")["error"]["line"] == 5);
  CHECK(got.at("get")["error"]["line"] == 8);
  CHECK_THAT(got.at("too-long")["error"]["message"].get<std::string>(), Catch::Contains("64"));

  // Responses: the OpenAI objects.
  const json& a = got.at("a")["response"];
  CHECK(a["status_code"] == 200);
  CHECK(a["body"]["object"] == "text_completion");
  CHECK(a["body"]["model"] == "model");  // the model folder's name
  CHECK(a["body"]["choices"][0]["index"] == 0);
  const std::string text = a["body"]["choices"][0]["text"];
  const int a_tokens = a["body"]["usage"]["completion_tokens"];
  CHECK(a_tokens <= 12);
  CHECK(a["body"]["choices"][0]["finish_reason"] == (a_tokens == 12 ? "length" : "stop"));
  CHECK(got.at("ids")["response"]["body"]["usage"]["prompt_tokens"] == 3);
  CHECK(got.at("default-16")["response"]["body"]["usage"]["completion_tokens"].get<int>() <= 16);
  const json& plain = got.at("plain")["response"]["body"];
  CHECK(plain["object"] == "chat.completion");
  CHECK(plain["choices"][0]["message"]["role"] == "assistant");
  CHECK(plain["choices"][0]["message"]["content"].is_string());
  // Text parts are the string (the same seed: the same sampled text under another custom_id).
  CHECK(comparable(got.at("parts"))["response"]["body"] == comparable(got.at("plain"))["response"]["body"]);
  CHECK(got.at("sampled")["response"]["body"]["usage"]["completion_tokens"].get<int>() <= 4);
  // The chat prompt is the template's rendering, encoded without a second BOS:
  // <｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜> is 4 tokens.
  CHECK(plain["usage"]["prompt_tokens"] == 4);

  // A stop string: one character of the text above (at a character boundary) cuts it before
  // its first occurrence.
  REQUIRE(text.size() >= 2);
  size_t p = text.size() / 2;
  while (p > 0 && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
  size_t q = p + 1;
  while (q < text.size() && (static_cast<unsigned char>(text[q]) & 0xC0) == 0x80) ++q;
  const std::string stop = text.substr(p, q - p);
  {
    std::ofstream(dir / "stop.jsonl")
        << line("a", cmpl, {{"prompt", "The sky is"}, {"max_tokens", 12}, {"seed", 5}, {"stop", stop}})
        << line("b", cmpl, {{"prompt", "The sky is"}, {"max_tokens", 12}, {"seed", 5}, {"stop", {"\x01\x02", stop}}});
  }
  Run s = run_batch(common + " -i " + dir / "stop.jsonl" + " -o " + dir / "stop-out.jsonl", dir);
  INFO(s.err << "stop " << json(stop).dump());
  REQUIRE(exit_code(s.status) == 0);
  const auto cut = read_results(dir / "stop-out.jsonl");
  for (const std::string id : {"a", "b"}) {
    const json& body = cut.at(id)["response"]["body"];
    CHECK(body["choices"][0]["text"] == text.substr(0, text.find(stop)));
    CHECK(body["choices"][0]["finish_reason"] == "stop");
    CHECK(body["usage"]["completion_tokens"].get<int>() <= a_tokens);
  }
}

// The seed of a request without one (docs/batch.md): FNV-1a (64-bit) of its custom_id.
uint64_t fnv1a(const std::string& s) {
  uint64_t h = 14695981039346656037ull;
  for (const unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

TEST_CASE("batch: sampling follows temperature and seed, and bodies with logprobs are those shoal serve gives",
          "[batch]") {
  TempDir dir;
  const std::string model = synth_model(dir);
  auto line = [](const std::string& id, const std::string& url, const json& body) {
    return json{{"custom_id", id}, {"method", "POST"}, {"url", url}, {"body", body}}.dump() + "\n";
  };
  const std::string chat = "/v1/chat/completions", cmpl = "/v1/completions";
  const json hi = {{{"role", "user"}, {"content", "Hi"}}};
  std::map<std::string, std::pair<std::string, json>> requests = {
      {"s1", {chat, {{"messages", hi}, {"max_tokens", 8}, {"temperature", 1.0}, {"seed", 42}}}},
      {"s2", {chat, {{"messages", hi}, {"max_tokens", 8}, {"temperature", 1.0}, {"seed", 42}}}},
      {"g1", {chat, {{"messages", hi}, {"max_tokens", 8}, {"temperature", 0}}}},
      {"g2", {chat, {{"messages", hi}, {"max_tokens", 8}, {"temperature", 0}}}},
      {"d1", {chat, {{"messages", hi}, {"max_tokens", 8}}}},  // OpenAI's default: temperature 1
      {"d2", {chat, {{"messages", hi}, {"max_tokens", 8}}}},
      {"lp-chat", {chat, {{"messages", hi}, {"max_tokens", 5}, {"temperature", 0}, {"logprobs", true}, {"top_logprobs", 3}}}},
      {"lp-sampled", {chat, {{"messages", hi}, {"max_tokens", 5}, {"seed", 11}, {"logprobs", true}, {"top_logprobs", 2}}}},
      {"lp-cmpl", {cmpl, {{"prompt", "The sky is"}, {"max_tokens", 5}, {"seed", 9}, {"logprobs", 2}}}}};
  std::string in;
  for (const auto& [id, r] : requests) in += line(id, r.first, r.second);
  { std::ofstream(dir / "in.jsonl") << in; }
  const std::string common = " --model " + model + " --max-seq-len 64 --slots 4 -i " + dir / "in.jsonl";
  Run first = run_batch(common + " -o " + dir / "out1.jsonl", dir);
  INFO(first.err);
  REQUIRE(exit_code(first.status) == 0);
  Run second = run_batch(common + " -o " + dir / "out2.jsonl", dir);
  INFO(second.err);
  REQUIRE(exit_code(second.status) == 0);
  const auto got = read_results(dir / "out1.jsonl");
  REQUIRE(got.size() == requests.size());
  check_same_results(got, read_results(dir / "out2.jsonl"));  // a rerun samples the same text (d1, d2 too)
  auto body = [&](const std::string& id) {
    INFO(id << ": " << got.at(id).dump());
    REQUIRE(got.at(id)["error"].is_null());
    return comparable(got.at(id))["response"]["body"];
  };
  auto content = [&](const std::string& id) { return body(id)["choices"][0]["message"]["content"].get<std::string>(); };
  CHECK(body("s1") == body("s2"));  // the same seed under another custom_id: the same text
  CHECK(body("g1") == body("g2"));  // greedy
  CHECK(content("s1") != content("g1"));
  CHECK(content("d1") != content("d2"));  // no seed: each custom_id its own
  CHECK(body("g1")["choices"][0]["logprobs"].is_null());

  // Chat logprobs: the chosen token (greedy: the best one) and its 3 best alternatives.
  const json lp = body("lp-chat");
  const json& entries = lp["choices"][0]["logprobs"]["content"];
  REQUIRE(entries.is_array());
  CHECK(lp["choices"][0]["logprobs"]["refusal"].is_null());
  const int n = lp["usage"]["completion_tokens"];
  CHECK((int(entries.size()) == n || (int(entries.size()) == n - 1 && lp["choices"][0]["finish_reason"] == "stop")));
  REQUIRE(!entries.empty());
  for (const json& e : entries) {
    INFO(e.dump());
    CHECK(e["token"].is_string());
    CHECK(e["bytes"].is_array());
    CHECK(e["logprob"].get<double>() <= 0);
    REQUIRE(e["top_logprobs"].size() == 3);
    CHECK(e["top_logprobs"][0]["token"] == e["token"]);
    CHECK(e["top_logprobs"][0]["logprob"] == e["logprob"]);
    CHECK(e["top_logprobs"][0]["logprob"].get<double>() >= e["top_logprobs"][1]["logprob"].get<double>());
  }
  CHECK(body("lp-sampled")["choices"][0]["logprobs"]["content"][0]["top_logprobs"].size() == 2);
  // Completions logprobs: the legacy shape.
  const json cl = body("lp-cmpl")["choices"][0]["logprobs"];
  REQUIRE(cl["tokens"].is_array());
  REQUIRE(!cl["tokens"].empty());
  CHECK(cl["token_logprobs"].size() == cl["tokens"].size());
  CHECK(cl["text_offset"].size() == cl["tokens"].size());
  REQUIRE(cl["top_logprobs"].size() == cl["tokens"].size());
  for (const json& t : cl["top_logprobs"]) CHECK((t.is_object() && !t.empty() && t.size() <= 2));

  // shoal serve on the same model gives the same bodies; a batch request without a seed is the
  // served one with seed = FNV-1a of its custom_id.
  Child serve(kShoal + " serve --model " + model + " --port 0 --max-seq-len 64 --slots 4", dir / "serve.log");
  std::string listening;
  const bool up = serve.read_line(listening, 120s);
  INFO(read_file(dir / "serve.log"));
  REQUIRE(up);
  std::smatch m;
  REQUIRE(std::regex_search(listening, m, std::regex("listening on (http://127\\.0\\.0\\.1:[0-9]+)")));
  const std::string base = m[1];
  for (const std::string id : {"s1", "d1", "lp-chat", "lp-sampled", "lp-cmpl"}) {
    INFO(id);
    json b = requests.at(id).second;
    b["model"] = "model";
    if (!b.contains("seed")) b["seed"] = fnv1a(id);
    { std::ofstream(dir / "req.json") << b.dump(); }
    int status = -1;
    const std::string reply = run_command("curl -sS --max-time 60 -H 'Content-Type: application/json' --data-binary @" +
                                              dir / "req.json" + " " + base + requests.at(id).first, &status);
    INFO(reply);
    REQUIRE(exit_code(status) == 0);
    json served = json::parse(reply);
    served.erase("id");
    served.erase("created");
    CHECK(served == body(id));
  }
  serve.kill(SIGTERM);
  CHECK(serve.wait_exit(15s) != -1);
}

TEST_CASE("batch: fatal errors exit 1 before the model loads and a second runner on one output is refused", "[batch]") {
  TempDir dir;
  const std::string args = " --model " + dir / "no-model" + " --tokenizer " + kTokenizer;
  Run r = run_batch(args + " -i " + dir / "missing.jsonl" + " -o " + dir / "out.jsonl", dir);
  CHECK(exit_code(r.status) == 1);
  CHECK_THAT(r.err, Catch::Contains("cannot open the input"));

  { std::ofstream(dir / "in.jsonl") << "{\"custom_id\": \"x\"}\n"; }
  r = run_batch(args + " -i " + dir / "in.jsonl" + " -o " + dir / "in.jsonl", dir);
  CHECK(exit_code(r.status) == 1);
  CHECK_THAT(r.err, Catch::Contains("is the input"));
  CHECK(read_file(dir / "in.jsonl") == "{\"custom_id\": \"x\"}\n");  // untouched

  const int fd = ::open((dir / "out.jsonl").c_str(), O_RDWR | O_CREAT, 0644);
  REQUIRE(fd >= 0);
  REQUIRE(::flock(fd, LOCK_EX | LOCK_NB) == 0);
  r = run_batch(args + " -i " + dir / "in.jsonl" + " -o " + dir / "out.jsonl", dir);
  ::close(fd);
  CHECK(exit_code(r.status) == 1);
  CHECK_THAT(r.err, Catch::Contains("another shoal batch is writing"));

  // The model is loaded after the files are checked: a missing one is the next error.
  r = run_batch(args + " -i " + dir / "in.jsonl" + " -o " + dir / "out.jsonl", dir);
  CHECK(exit_code(r.status) == 1);
  CHECK_THAT(r.err, Catch::Contains("no-model"));
}

namespace {

// 120 requests (+ 3 bad lines) run once on local ranks for reference, then over two TCP nodes
// with `heal_flags`; node 2 is killed once 30 records are out.
struct NodeLoss {
  static constexpr int kRequests = 120;
  static constexpr size_t kLines = kRequests + 3;
  TempDir dir;
  std::string common, out;
  std::map<std::string, json> ref;
  std::vector<Node> nodes;
  std::unique_ptr<Child> run;

  explicit NodeLoss(const std::string& heal_flags) {
    const std::string model = synth_model(dir);
    { std::ofstream(dir / "in.jsonl") << make_input(kRequests); }
    common = " --model " + model + " -i " + dir / "in.jsonl" + " --max-seq-len 128 --slots 8";
    Run ref_run = run_batch(common + " --local-nodes 2 -o " + dir / "ref.jsonl", dir);
    INFO(ref_run.err);
    REQUIRE(exit_code(ref_run.status) == 0);
    ref = read_results(dir / "ref.jsonl");
    REQUIRE(ref.size() == kLines);

    { std::ofstream(dir / "token") << "batch-test-token\n"; }
    fs::permissions(dir / "token", fs::perms::owner_read | fs::perms::owner_write);
    nodes.push_back(start_node(dir / "token", dir / "node1.err"));
    nodes.push_back(start_node(dir / "token", dir / "node2.err"));
    out = dir / "out.jsonl";
    run = std::make_unique<Child>(kShoal + " batch" + common + " -o " + out + " --nodes " + nodes[0].address + "," +
                                      nodes[1].address + " --token-file " + dir / "token " + heal_flags,
                                  dir / "run.err");
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    while (std::chrono::steady_clock::now() < deadline && run->wait_exit(0ms) == -1 && count_lines(out) < 30)
      std::this_thread::sleep_for(2ms);
    nodes[1].child->kill(SIGKILL);
  }
};

}  // namespace

TEST_CASE("batch: a node lost mid-run with --heal-timeout 0 ends it with exit 1 naming the rank and the rerun completes",
          "[batch][failure]") {
  NodeLoss loss("--heal-timeout 0");
  const int status = loss.run->wait_exit(30s);
  const std::string err = read_file(loss.dir / "run.err");
  INFO(err);
  REQUIRE(status != -1);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 1);
  CHECK_THAT(err, Catch::Contains("rank 2") && Catch::Contains("run the same command again"));
  const auto partial = read_results(loss.out);  // whole lines, each key once
  CHECK(partial.size() < NodeLoss::kLines);
  for (const auto& [key, r] : partial) CHECK(comparable(r) == comparable(loss.ref.at(key)));

  // The rerun (here on local ranks: every placement gives the same tokens) completes it.
  Run resumed = run_batch(loss.common + " --local-nodes 2 -o " + loss.out, loss.dir);
  INFO(resumed.err);
  REQUIRE(exit_code(resumed.status) == 0);
  check_same_results(loss.ref, read_results(loss.out));
}

TEST_CASE("batch: a node lost mid-run and restarted: the run waits, heals and ends with every line once, as uninterrupted",
          "[batch][failure][heal]") {
  NodeLoss loss("--heal-timeout 120");
  CHECK(loss.nodes[1].child->wait_exit(10s) != -1);
  // The run waits (it does not exit), then the node comes back at its address.
  std::this_thread::sleep_for(3s);
  CHECK(loss.run->wait_exit(0ms) == -1);
  loss.nodes[1] = start_node(loss.dir / "token", loss.dir / "node2b.err", loss.nodes[1].address);
  const int status = loss.run->wait_exit(120s);
  const std::string err = read_file(loss.dir / "run.err");
  INFO(err);
  REQUIRE(status != -1);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK_THAT(err, Catch::Contains("a node was lost; waiting") && Catch::Contains("the cluster is back"));
  check_same_results(loss.ref, read_results(loss.out));  // every line once, the same records
}

// LoRA adapters chosen per line (docs/lora.md): tiny-v3-bf16 with the fixtures' adapters a and b.
// Each line's body "model" picks its adapter; the text is what a batch with only that model gives;
// with adapters served an unknown name fails its line (naming the models), and without adapters
// any name stands for the base as before.
TEST_CASE("batch: each line's model picks its LoRA adapter and gets that model's text", "[batch][lora]") {
  TempDir dir;
  const std::string base = std::string(SHOAL_FIXTURES) + "/tiny-v3-bf16";
  const std::string a = std::string(SHOAL_FIXTURES) + "/lora-tiny-v3-a", b = std::string(SHOAL_FIXTURES) + "/lora-tiny-v3-b";
  const std::vector<std::vector<int32_t>> prompts = {{0, 17, 300, 42}, {0, 512, 7, 7, 88}};
  auto lines = [&](const std::vector<std::string>& models) {
    std::string in;
    for (const std::string& m : models)
      for (size_t p = 0; p < prompts.size(); ++p)
        in += json{{"custom_id", m + "-" + std::to_string(p)}, {"method", "POST"}, {"url", "/v1/completions"},
                   {"body", {{"model", m}, {"prompt", prompts[p]}, {"max_tokens", 6}, {"temperature", 0}, {"ignore_eos", true}}}}
                  .dump() + "\n";
    return in;
  };
  const std::string common = " --model " + base + " --tokenizer " + kTokenizer + " --slots 8";
  shoal::test::write_file(dir / "mixed.jsonl", lines({"tiny-v3-bf16", "a", "b", "c"}));
  Run r = run_batch(common + " --lora a=" + a + " --lora b=" + b + " -i " + dir / "mixed.jsonl" + " -o " + dir / "mixed.out", dir);
  INFO(r.err);
  REQUIRE(r.status == 0);
  const auto mixed = read_results(dir / "mixed.out");
  std::map<std::string, std::string> text;  // model -> texts of both prompts
  for (const auto& [model, flag] : std::vector<std::pair<std::string, std::string>>{{"tiny-v3-bf16", ""}, {"a", " --lora " + a}, {"b", " --lora " + b}}) {
    // The same model alone (an unnamed adapter is every line's), under any name.
    shoal::test::write_file(dir / (model + ".jsonl"), lines({model}));
    Run alone = run_batch(common + flag + " -i " + dir / (model + ".jsonl") + " -o " + dir / (model + ".out"), dir);
    INFO(alone.err);
    REQUIRE(alone.status == 0);
    const auto want = read_results(dir / (model + ".out"));
    for (size_t p = 0; p < prompts.size(); ++p) {
      const std::string key = model + "-" + std::to_string(p);
      INFO(key);
      REQUIRE(mixed.count(key) == 1);
      const json& got = mixed.at(key)["response"]["body"];
      CHECK(got["model"] == model);
      CHECK(got["choices"][0]["text"] == want.at(key)["response"]["body"]["choices"][0]["text"]);
      text[model] += got["choices"][0]["text"].get<std::string>() + "|";
    }
  }
  CHECK(text["a"] != text["tiny-v3-bf16"]);
  CHECK(text["b"] != text["tiny-v3-bf16"]);
  for (size_t p = 0; p < prompts.size(); ++p) {
    const json& e = mixed.at("c-" + std::to_string(p));
    INFO(e.dump());
    CHECK(e["response"].is_null());
    CHECK(e["error"]["code"] == "model_not_found");
    const std::string msg = e["error"]["message"];
    for (const char* m : {"`tiny-v3-bf16`", "`a`", "`b`"}) CHECK_THAT(msg, Catch::Contains(m));
  }
}

TEST_CASE("batch: lines that repeat a long prefix find it cached, and their answers are those of a run without reuse", "[batch][kv]") {
  TempDir dir;
  const std::string base = std::string(SHOAL_FIXTURES) + "/tiny-v3-bf16";
  std::vector<int32_t> fewshot;  // a long shared block, then each line's own question
  for (int i = 0; i < 200; ++i) fewshot.push_back(int32_t(2 + (i * 37) % 900));
  std::string in;
  for (int q = 0; q < 6; ++q) {
    std::vector<int32_t> prompt = fewshot;
    for (int k = 0; k < 5 + q; ++k) prompt.push_back(int32_t(100 + q * 11 + k));
    in += json{{"custom_id", "q" + std::to_string(q)}, {"method", "POST"}, {"url", "/v1/completions"},
               {"body", {{"prompt", prompt}, {"max_tokens", 8}, {"temperature", 0}, {"ignore_eos", true}}}}
              .dump() + "\n";
  }
  shoal::test::write_file(dir / "in.jsonl", in);
  const std::string common = " --model " + base + " --tokenizer " + kTokenizer + " -i " + dir / "in.jsonl";
  // --slots 1: one line after another, so each finds the blocks the ones before it left.
  Run reuse = run_batch(common + " --slots 1 -o " + dir / "reuse.out", dir);
  INFO(reuse.err);
  REQUIRE(reuse.status == 0);
  Run fixed = run_batch(common + " --slots 1 --kv-memory 0 -o " + dir / "fixed.out", dir);  // no pool: no reuse
  INFO(fixed.err);
  REQUIRE(fixed.status == 0);
  const auto a = read_results(dir / "reuse.out"), b = read_results(dir / "fixed.out");
  for (int q = 0; q < 6; ++q) {
    const std::string id = "q" + std::to_string(q);
    INFO(id);
    const json& body = a.at(id)["response"]["body"];
    CHECK(body["choices"][0]["text"] == b.at(id)["response"]["body"]["choices"][0]["text"]);
    CHECK(b.at(id)["response"]["body"]["usage"]["prompt_tokens_details"]["cached_tokens"] == 0);
    CHECK(body["usage"]["prompt_tokens_details"]["cached_tokens"] == (q == 0 ? 0 : 192));  // 3 full blocks of 64
  }
}
