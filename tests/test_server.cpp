// shoal serve end to end: the binary started with --port 0 on a synthesized model that has
// DeepSeek-V3's tokenizer, spoken to with curl, raw sockets and the official OpenAI Node client
// (tests/js); plus the pure parts (request validation, stop strings, metrics) called directly.
// Every wait is bounded: curl --max-time, poll deadlines, `timeout` around node.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <catch2/catch.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "model/kv_layout.h"
#include "serve/metrics.h"
#include "serve/openai.h"
#include "support/files.h"
#include "support/process.h"
#include "support/serve.h"
#include "text/tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using shoal::test::TempDir;
using shoal::test::read_file;
using shoal::test::write_file;
using json = nlohmann::json;
using shoal::test::Child;
using shoal::test::run_command;
using namespace std::chrono_literals;
namespace srv = shoal::server;
using namespace shoal::test;

namespace {
// A raw connection, for what curl cannot do: stop reading mid-stream, send half a request.
class RawClient {
 public:
  explicit RawClient(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  }
  ~RawClient() { close(); }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  void send_all(const std::string& s) { REQUIRE(::send(fd_, s.data(), s.size(), MSG_NOSIGNAL) == ssize_t(s.size())); }
  void post(const std::string& path, const std::string& body) {
    send_all("POST " + path + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
             std::to_string(body.size()) + "\r\n\r\n" + body);
  }
  // Reads until `seen` contains `what` (true) or EOF/timeout (false).
  bool read_until(const std::string& what, std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (seen.find(what) == std::string::npos) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, int(left.count())) <= 0) return false;
      char buf[4096];
      const ssize_t got = ::recv(fd_, buf, sizeof buf, 0);
      if (got <= 0) return false;
      seen.append(buf, size_t(got));
    }
    return true;
  }
  // Reads until `what` occurs `n` times (true) or EOF/timeout (false).
  bool read_count(const std::string& what, size_t n, std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (count(what) < n)
      if (read_some(end) <= 0) return false;
    return true;
  }
  // True when the server closes the connection within `timeout`.
  bool closed_within(std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (true) {
      const int got = read_some(end);
      if (got == 0) return true;
      if (got < 0) return false;
    }
  }
  size_t count(const std::string& what) const {
    size_t n = 0;
    for (size_t at = seen.find(what); at != std::string::npos; at = seen.find(what, at + 1)) ++n;
    return n;
  }
  std::string seen;

 private:
  // One recv into `seen` before `end`: the bytes read, 0 when the connection ended, -1 when
  // nothing came in time.
  int read_some(std::chrono::steady_clock::time_point end) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left.count() <= 0) return -1;
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, int(left.count())) <= 0) return -1;
    char buf[4096];
    const ssize_t got = ::recv(fd_, buf, sizeof buf, 0);
    if (got <= 0) return 0;
    seen.append(buf, size_t(got));
    return int(got);
  }

  int fd_ = -1;
};

// Polls /metrics until `done(metrics)` holds or `timeout` passes.
template <typename Done>
bool wait_metrics(Server& s, Done done, std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (done(s.metrics())) return true;
    std::this_thread::sleep_for(50ms);
  }
  return false;
}

}  // namespace

// ---- the pure parts ----

TEST_CASE("stop strings: held back while they may start, cut at the first match", "[server]") {
  srv::StopMatcher m({"STOP", "xy"});
  CHECK(m.push("hello S") == "hello ");
  CHECK(m.push("T") == "");
  CHECK(m.push("ART x") == "START ");
  CHECK(!m.stopped());
  CHECK(m.push("yes") == "");
  CHECK(m.stopped());
  CHECK(m.push("more") == "");
  CHECK(m.finish() == "");

  srv::StopMatcher a({"cd", "bcd"});  // the earliest match wins, whichever string it is
  CHECK(a.push("ab") == "a");
  CHECK(a.push("cd") == "");
  CHECK(a.stopped());

  srv::StopMatcher u({"\xC3\xA9t\xC3\xA9"});  // "été": bytes held on character boundaries
  CHECK(u.push("caf\xC3\xA9 \xC3\xA9") == "caf\xC3\xA9 ");
  CHECK(u.push("t\xC3\xA9!") == "");
  CHECK(u.stopped());

  srv::StopMatcher b({"end"});
  CHECK(b.push("the en") == "the ");
  CHECK(b.finish() == "en");  // never completed: released at the end

  srv::StopMatcher none({});
  CHECK(none.push("anything") == "anything");
}

TEST_CASE("tokens to text: streaming decode, stop strings and the R1 reasoning split together", "[server]") {
  auto tok = shoal::Tokenizer::load(fixture("tokenizer-deepseek-v3"));
  REQUIRE(tok.ok());
  auto run = [&](const std::string& text, bool reasoning, std::vector<std::string> stops, bool* stopped = nullptr) {
    srv::Prepared p;
    p.reasoning = reasoning;
    p.starts_in_reasoning = reasoning;
    srv::TextStream ts(**tok, p, std::move(stops));
    srv::TextStream::Delta all;
    std::vector<int32_t> ids = (*tok)->encode(text, false);
    ids.push_back((*tok)->eos_id());  // EOS is a special token: not shown
    for (int32_t id : ids) {
      const auto d = ts.push(id);
      all.reasoning += d.reasoning;
      all.content += d.content;
      if (ts.stopped()) break;
    }
    const auto d = ts.finish();
    all.reasoning += d.reasoning;
    all.content += d.content;
    if (stopped) *stopped = ts.stopped();
    return all;
  };
  auto d = run("Let me think. 2+2=4</think>\n\nThe answer is 4. Über Straße: 東京.", true, {});
  CHECK(d.reasoning == "Let me think. 2+2=4");
  CHECK(d.content == "The answer is 4. Über Straße: 東京.");
  bool stopped = false;
  d = run("Let me think.</think>\n\nThe answer is 4. Über Straße: 東京.", true, {"Straße", "4. Ü"}, &stopped);
  CHECK(stopped);
  CHECK(d.reasoning == "Let me think.");
  CHECK(d.content == "The answer is ");
  d = run("plain text, 東京 and more", false, {"京 a"}, &stopped);
  CHECK(stopped);
  CHECK(d.content == "plain text, 東");
  CHECK(d.reasoning.empty());
  d = run("plain text", false, {"never"}, &stopped);
  CHECK(!stopped);
  CHECK(d.content == "plain text");
}

TEST_CASE("tool calls: R1 reasoning then a call, through the detokenizer, into the message and the stream", "[server][tools]") {
  // The tokens the model would write (DeepSeek's tool-call markers are added tokens of its
  // vocabulary), fed as token events to a chat completion that has tools.
  auto tok = shoal::Tokenizer::load(fixture("tokenizer-deepseek-v3"));
  REQUIRE(tok.ok());
  const std::string text =
      "The user wants the weather.</think>\n\nChecking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>"
      "get_weather\n```json\n{\"city\": \"Paris\", \"unit\": \"celsius\"}\n```<｜tool▁call▁end｜>\n"
      "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{\"tz\": \"CET\"}\n```<｜tool▁call▁end｜>"
      "<｜tool▁calls▁end｜>";
  std::vector<int32_t> ids = (*tok)->encode(text, false);
  CHECK(std::count(ids.begin(), ids.end(), (*tok)->token_id("<｜tool▁sep｜>")) == 2);  // markers are single tokens
  ids.push_back((*tok)->eos_id());
  srv::CompletionRequest req;
  req.endpoint = srv::Endpoint::kChat;
  srv::Prepared p;
  p.reasoning = p.starts_in_reasoning = true;
  p.tool_calls = true;
  p.generation.stop_ids = {(*tok)->eos_id()};
  srv::Completion answer(**tok, p, req);
  srv::TextStream::Delta total;
  std::vector<json> chunks;
  for (size_t i = 0; i < ids.size(); ++i) {
    shoal::TokenEvent e;
    e.token = ids[i];
    if (i + 1 == ids.size()) e.finish = shoal::FinishReason::kStop;
    const srv::TextStream::Delta d = answer.push(e);
    total.append(d);
    if (!d.tool_calls.empty()) chunks.push_back(srv::tool_calls_json(d.tool_calls, true));
  }
  CHECK(answer.finish() == "tool_calls");
  const json r = srv::full_response(srv::Endpoint::kChat, "chatcmpl-x", 0, "m", total, true, answer.finish(), answer.usage());
  const json& msg = r["choices"][0]["message"];
  CHECK(msg["reasoning_content"] == "The user wants the weather.");
  CHECK(msg["content"] == "Checking.");
  REQUIRE(msg["tool_calls"].size() == 2);
  CHECK(msg["tool_calls"][0]["type"] == "function");
  CHECK(msg["tool_calls"][0]["function"]["name"] == "get_weather");
  CHECK(json::parse(msg["tool_calls"][0]["function"]["arguments"].get<std::string>()) ==
        json({{"city", "Paris"}, {"unit", "celsius"}}));
  CHECK(msg["tool_calls"][1]["function"]["name"] == "get_time");
  CHECK(msg["tool_calls"][1]["function"]["arguments"] == "{\"tz\": \"CET\"}");
  CHECK(msg["tool_calls"][0]["id"] != msg["tool_calls"][1]["id"]);
  CHECK(r["choices"][0]["finish_reason"] == "tool_calls");
  // The stream's pieces: each call's id, type and name once (first piece), arguments in order.
  std::map<int, std::string> args;
  std::map<int, int> firsts;
  for (const json& c : chunks)
    for (const json& piece : c) {
      const int index = piece["index"];
      if (piece.contains("id")) {
        ++firsts[index];
        CHECK(piece["type"] == "function");
        CHECK(piece["function"].contains("name"));
      } else {
        CHECK(!piece["function"].contains("name"));
      }
      args[index] += piece["function"]["arguments"].get<std::string>();
    }
  CHECK(firsts == std::map<int, int>{{0, 1}, {1, 1}});
  CHECK(args[0] == msg["tool_calls"][0]["function"]["arguments"]);
  CHECK(args[1] == msg["tool_calls"][1]["function"]["arguments"]);

  // Without tools in the request the same tokens are plain content.
  p.tool_calls = false;
  srv::Completion plain(**tok, p, req);
  srv::TextStream::Delta all;
  for (size_t i = 0; i < ids.size(); ++i) {
    shoal::TokenEvent e;
    e.token = ids[i];
    if (i + 1 == ids.size()) e.finish = shoal::FinishReason::kStop;
    all.append(plain.push(e));
  }
  CHECK(plain.finish() == "stop");
  CHECK(all.tool_calls.empty());
  CHECK(all.content.find("get_weather") != std::string::npos);
}

TEST_CASE("request parsing: OpenAI's fields, types and ranges, errors name the parameter", "[server]") {
  using srv::Endpoint;
  srv::CompletionRequest r;
  auto parse = [&](const json& body, Endpoint ep = Endpoint::kChat) { return srv::parse_request(body.dump(), ep, {"m"}, r); };
  const json msgs = {{{"role", "user"}, {"content", "hi"}}};

  auto ok = parse({{"model", "m"},
                   {"messages", msgs},
                   {"max_completion_tokens", 7},
                   {"stream", true},
                   {"stream_options", {{"include_usage", true}}},
                   {"stop", "x"},
                   {"temperature", 0.5},
                   {"top_p", 0.9},
                   {"seed", 42},
                   {"logprobs", true},
                   {"top_logprobs", 3},
                   {"presence_penalty", 1},
                   {"frequency_penalty", -1}});
  REQUIRE(!ok);
  CHECK(*r.max_tokens == 7);
  CHECK(r.stream);
  CHECK(r.include_usage);
  CHECK(r.stop == std::vector<std::string>{"x"});
  CHECK(r.sampling.temperature == 0.5f);
  CHECK(r.sampling.top_p == 0.9f);
  CHECK(*r.sampling.seed == 42);
  CHECK(r.sampling.top_logprobs == 3);
  CHECK(r.sampling.presence_penalty == 1.0f);
  CHECK(r.sampling.frequency_penalty == -1.0f);

  // Content parts are joined; "developer" is the system role.
  REQUIRE(!parse({{"model", "m"},
                  {"messages",
                   {{{"role", "developer"}, {"content", "be brief"}},
                    {{"role", "user"}, {"content", {{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}}}}}}}));
  CHECK(r.messages[0]["role"] == "system");
  CHECK(r.messages[1]["content"] == "a\nb");

  struct Bad {
    json body;
    int status;
    std::string param;
  };
  const std::vector<Bad> bad = {
      {{{"model", "other"}, {"messages", msgs}}, 404, "model"},
      {{{"messages", msgs}}, 400, "model"},
      {{{"model", "m"}}, 400, "messages"},
      {{{"model", "m"}, {"messages", "hi"}}, 400, "messages"},
      {{{"model", "m"}, {"messages", json::array()}}, 400, "messages"},
      {{{"model", "m"}, {"messages", {{{"role", "user"}}}}}, 400, "messages[0].content"},
      {{{"model", "m"}, {"messages", {{{"role", "user"}, {"content", {{{"type", "image_url"}}}}}}}}, 400,
       "messages[0].content[0].type"},
      {{{"model", "m"}, {"messages", msgs}, {"n", 17}}, 400, "n"},
      {{{"model", "m"}, {"messages", msgs}, {"max_tokens", 0}}, 400, "max_tokens"},
      {{{"model", "m"}, {"messages", msgs}, {"max_tokens", 1.5}}, 400, "max_tokens"},
      {{{"model", "m"}, {"messages", msgs}, {"stream", "yes"}}, 400, "stream"},
      {{{"model", "m"}, {"messages", msgs}, {"stream_options", {{"include_usage", true}}}}, 400, "stream_options"},
      {{{"model", "m"}, {"messages", msgs}, {"temperature", 2.5}}, 400, "temperature"},
      {{{"model", "m"}, {"messages", msgs}, {"top_p", -0.1}}, 400, "top_p"},
      {{{"model", "m"}, {"messages", msgs}, {"presence_penalty", 3}}, 400, "presence_penalty"},
      {{{"model", "m"}, {"messages", msgs}, {"frequency_penalty", -2.5}}, 400, "frequency_penalty"},
      {{{"model", "m"}, {"messages", msgs}, {"top_logprobs", 5}}, 400, "top_logprobs"},
      {{{"model", "m"}, {"messages", msgs}, {"logprobs", true}, {"top_logprobs", 21}}, 400, "top_logprobs"},
      {{{"model", "m"}, {"messages", msgs}, {"seed", "x"}}, 400, "seed"},
      {{{"model", "m"}, {"messages", msgs}, {"stop", {"a", "b", "c", "d", "e"}}}, 400, "stop"},
      {{{"model", "m"}, {"messages", msgs}, {"stop", {"a", 1}}}, 400, "stop"},
      {{{"model", "m"}, {"messages", msgs}, {"stop", ""}}, 400, "stop"},
      {{{"model", "m"}, {"messages", msgs}, {"tools", {{{"type", "function"}}}}}, 400, "tools[0].function"},
      {{{"model", "m"}, {"messages", msgs}, {"tools", {{{"type", "code"}}}}}, 400, "tools[0].type"},
      {{{"model", "m"}, {"messages", msgs}, {"tools", "f"}}, 400, "tools"},
      {{{"model", "m"}, {"messages", msgs}, {"tools", {{{"type", "function"}, {"function", {{"name", ""}}}}}}}, 400,
       "tools[0].function.name"},
      {{{"model", "m"}, {"messages", msgs}, {"tools", {{{"type", "function"}, {"function", {{"name", "f"}, {"parameters", 3}}}}}}},
       400, "tools[0].function.parameters"},
      {{{"model", "m"}, {"messages", msgs}, {"tool_choice", "required"}}, 400, "tool_choice"},
      {{{"model", "m"}, {"messages", msgs}, {"tools", {{{"type", "function"}, {"function", {{"name", "f"}}}}}}, {"tool_choice", "maybe"}},
       400, "tool_choice"},
      {{{"model", "m"}, {"messages", msgs}, {"tool_choice", "auto"}}, 400, "tool_choice"},
      {{{"model", "m"}, {"messages", msgs}, {"tools", {{{"type", "function"}, {"function", {{"name", "f"}}}}}}, {"parallel_tool_calls", 0}},
       400, "parallel_tool_calls"},
      {{{"model", "m"}, {"messages", msgs}, {"functions", {{{"name", "f"}}}}}, 400, "functions"},
      {{{"model", "m"}, {"messages", msgs}, {"response_format", {{"type", "yaml"}}}}, 400, "response_format"},
      {{{"model", "m"}, {"messages", msgs}, {"logit_bias", {1, 2}}}, 400, "logit_bias"},
      {{{"model", "m"}, {"messages", msgs}, {"logit_bias", {{"x5", 1}}}}, 400, "logit_bias"},
      {{{"model", "m"}, {"messages", msgs}, {"logit_bias", {{"-5", 1}}}}, 400, "logit_bias"},
      {{{"model", "m"}, {"messages", msgs}, {"logit_bias", {{"5", 101}}}}, 400, "logit_bias"},
      {{{"model", "m"}, {"messages", msgs}, {"logit_bias", {{"5", "1"}}}}, 400, "logit_bias.5"},
      {{{"model", "m"}, {"messages", msgs}, {"logit_bias", {{"5", 1}, {"05", 2}}}}, 400, "logit_bias"},
  };
  for (const Bad& b : bad) {
    INFO(b.body.dump());
    auto e = parse(b.body);
    REQUIRE(e);
    CHECK(e->status == b.status);
    CHECK(e->param == b.param);
    const json err = srv::error_body(*e);
    CHECK(err["error"]["message"].is_string());
    CHECK(err["error"]["type"] == "invalid_request_error");
  }
  // tools: kept for the template with tool_choice auto (the default), dropped with none.
  const json tools = {{{"type", "function"}, {"function", {{"name", "get_weather"}, {"parameters", {{"type", "object"}}}}}}};
  REQUIRE(!parse({{"model", "m"}, {"messages", msgs}, {"tools", tools}}));
  CHECK(r.tools == tools);
  REQUIRE(!parse({{"model", "m"}, {"messages", msgs}, {"tools", tools}, {"tool_choice", "none"}, {"parallel_tool_calls", true}}));
  CHECK(r.tools.is_null());
  REQUIRE(!parse({{"model", "m"}, {"messages", msgs}, {"tools", json::array()}}));
  CHECK(r.tools.is_null());
  // logit_bias: ids as strings, sorted into the sampler's form.
  REQUIRE(!parse({{"model", "m"}, {"messages", msgs}, {"logit_bias", {{"50", -100}, {"7", 2.5}}}}));
  REQUIRE(r.sampling.logit_bias.size() == 2);
  CHECK(r.sampling.logit_bias[0].id == 7);
  CHECK(r.sampling.logit_bias[0].bias == 2.5f);
  CHECK(r.sampling.logit_bias[1].id == 50);
  CHECK(r.sampling.logit_bias[1].bias == -100.0f);
  CHECK(srv::parse_request("{not json", Endpoint::kChat, {"m"}, r)->status == 400);
  CHECK(srv::parse_request("[1]", Endpoint::kChat, {"m"}, r)->status == 400);
  // A body nested a million deep is refused before anything recursive copies it.
  const std::string deep = R"({"model": "m", "messages": [{"role": "user", "content": "x", "extra": )" +
                           std::string(1000000, '[') + std::string(1000000, ']') + "}]}";
  auto deep_error = srv::parse_request(deep, Endpoint::kChat, {"m"}, r);
  REQUIRE(deep_error);
  CHECK(deep_error->status == 400);
  CHECK(deep_error->message.find("levels deep") != std::string::npos);

  // Completions: prompt forms, legacy logprobs, what is refused.
  REQUIRE(!parse({{"model", "m"}, {"prompt", {1, 2, 3}}}, Endpoint::kCompletions));
  CHECK(*r.prompt_ids == std::vector<int32_t>{1, 2, 3});
  REQUIRE(!parse({{"model", "m"}, {"prompt", {"one"}}, {"logprobs", 2}}, Endpoint::kCompletions));
  CHECK(r.prompt_text == "one");
  CHECK(r.sampling.top_logprobs == 2);
  CHECK(parse({{"model", "m"}, {"prompt", {"a", "b"}}}, Endpoint::kCompletions)->param == "prompt");
  CHECK(parse({{"model", "m"}, {"prompt", {-1}}}, Endpoint::kCompletions)->param == "prompt");
  REQUIRE(!parse({{"model", "m"}, {"prompt", "x"}, {"echo", true}}, Endpoint::kCompletions));
  CHECK(r.echo);
  CHECK(parse({{"model", "m"}, {"prompt", "x"}, {"echo", true}, {"logprobs", 1}}, Endpoint::kCompletions)->param == "echo");
  CHECK(parse({{"model", "m"}, {"prompt", "x"}, {"echo", "yes"}}, Endpoint::kCompletions)->param == "echo");
  CHECK(parse({{"model", "m"}, {"prompt", "x"}, {"best_of", 2}}, Endpoint::kCompletions)->param == "best_of");
  CHECK(parse({{"model", "m"}, {"prompt", "x"}, {"logprobs", 6}}, Endpoint::kCompletions)->param == "logprobs");
  CHECK(parse({{"model", "m"}}, Endpoint::kCompletions)->param == "prompt");
}

TEST_CASE("prepare: chat renders with BOS once, completions add BOS, EOS stops, the context is checked", "[server]") {
  auto loaded = shoal::Tokenizer::load(fixture("tokenizer-deepseek-v3"));
  REQUIRE(loaded.ok());
  const shoal::Tokenizer& tok = **loaded;
  srv::CompletionRequest r;
  srv::Prepared p;
  REQUIRE(!srv::parse_request(R"({"model": "m", "messages": [{"role": "user", "content": "Hi"}]})", srv::Endpoint::kChat, {"m"}, r));
  REQUIRE(!srv::prepare_request(r, tok, 100, 129280, tok.eos_id(), p));
  const auto& ids = p.generation.prompt;
  REQUIRE(ids.size() >= 3);
  CHECK(ids[0] == tok.bos_id());
  CHECK(ids[1] != tok.bos_id());
  CHECK(ids == tok.encode(p.rendered, false));
  CHECK(p.generation.stop_ids == std::vector<int32_t>{tok.eos_id()});
  CHECK(p.generation.max_tokens == 100 - int64_t(ids.size()));
  CHECK(!p.reasoning);  // V3's template

  REQUIRE(!srv::parse_request(R"({"model": "m", "prompt": "hello there", "max_tokens": 5, "ignore_eos": true})",
                              srv::Endpoint::kCompletions, {"m"}, r));
  REQUIRE(!srv::prepare_request(r, tok, 100, 129280, tok.eos_id(), p));
  CHECK(p.generation.prompt == tok.encode("hello there", true));
  CHECK(p.generation.prompt[0] == tok.bos_id());
  CHECK(p.generation.stop_ids.empty());
  CHECK(p.generation.max_tokens == 5);

  REQUIRE(!srv::parse_request(R"({"model": "m", "prompt": "hello there", "max_tokens": 98})", srv::Endpoint::kCompletions, {"m"}, r));
  auto e = srv::prepare_request(r, tok, 100, 129280, tok.eos_id(), p);
  REQUIRE(e);
  CHECK(e->param == "max_tokens");
  CHECK(e->code == "context_length_exceeded");

  // Completions without max_tokens: 16, as the OpenAI API; chat: the rest of the context.
  REQUIRE(!srv::parse_request(R"({"model": "m", "prompt": "hello there"})", srv::Endpoint::kCompletions, {"m"}, r));
  REQUIRE(!srv::prepare_request(r, tok, 100, 129280, tok.eos_id(), p));
  CHECK(p.generation.max_tokens == 16);
  std::string longer;
  for (int i = 0; i < 200; ++i) longer += "word ";
  REQUIRE(!srv::parse_request(json({{"model", "m"}, {"prompt", longer}}).dump(), srv::Endpoint::kCompletions, {"m"}, r));
  e = srv::prepare_request(r, tok, 100, 129280, tok.eos_id(), p);
  REQUIRE(e);
  CHECK(e->param == "prompt");
  REQUIRE(!srv::parse_request(R"({"model": "m", "prompt": [1, 129280]})", srv::Endpoint::kCompletions, {"m"}, r));
  e = srv::prepare_request(r, tok, 100, 129280, tok.eos_id(), p);
  REQUIRE(e);
  CHECK(e->param == "prompt");

  // R1's template opens <think> in the generation prompt: the output is split.
  TempDir dir;
  fs::copy_file(fixture("tokenizer-deepseek-v3") + "/tokenizer.json", dir / "tokenizer.json");
  fs::copy_file(fixture("chat-template-deepseek-r1") + "/tokenizer_config.json", dir / "tokenizer_config.json");
  auto r1 = shoal::Tokenizer::load(dir / "");
  REQUIRE(r1.ok());
  REQUIRE(!srv::parse_request(R"({"model": "m", "messages": [{"role": "user", "content": "Hi"}]})", srv::Endpoint::kChat, {"m"}, r));
  REQUIRE(!srv::prepare_request(r, **r1, 100, 129280, (*r1)->eos_id(), p));
  CHECK(p.reasoning);
  CHECK(p.starts_in_reasoning);
  CHECK(p.rendered.substr(p.rendered.size() - 8) == "<think>\n");
}

TEST_CASE("metrics render as Prometheus text", "[server]") {
  srv::Metrics m;
  m.request("/v1/completions", 200);
  m.request("/v1/completions", 400);
  m.tokens(10, 5);
  m.time_to_first_token(0.02);
  m.inter_token_latency(0.003);
  m.inter_token_latency(7);
  srv::Gauges g;
  g.slots_total = 4;
  g.running = 1;
  g.slots_in_use = 1;
  g.ranks.push_back({0, 1000, 10, 1, 20, 2});
  const auto v = parse_prometheus(m.render(g));
  CHECK(v.at("shoal_http_requests_total{endpoint=\"/v1/completions\",status=\"400\"}") == 1);
  CHECK(v.at("shoal_prompt_tokens_total") == 10);
  CHECK(v.at("shoal_completion_tokens_total") == 5);
  CHECK(v.at("shoal_time_to_first_token_seconds_bucket{le=\"0.025\"}") == 1);
  CHECK(v.at("shoal_inter_token_latency_seconds_bucket{le=\"0.005\"}") == 1);
  CHECK(v.at("shoal_inter_token_latency_seconds_bucket{le=\"5\"}") == 1);
  CHECK(v.at("shoal_inter_token_latency_seconds_bucket{le=\"+Inf\"}") == 2);
  CHECK(v.at("shoal_inter_token_latency_seconds_count") == 2);
  CHECK(v.at("shoal_kv_slots_in_use") == 1);
  CHECK(v.at("shoal_rank_rss_bytes{rank=\"0\"}") == 1000);
  CHECK(v.at("shoal_rank_sent_bytes_total{rank=\"0\",kind=\"expert\"}") == 20);
}

// ---- the server ----

TEST_CASE("serve: chat and completions, streamed and not, stop strings, usage (one process and --local-nodes 3)",
          "[server][serve]") {
  const std::string mode = GENERATE(as<std::string>{}, "", "--local-nodes 3", "tcp");
  INFO("mode: " << mode);
  Models& m = models();
  std::optional<TcpNodes> tcp;
  if (mode == "tcp") tcp.emplace(2);
  Server s(m.v3, tcp ? tcp->flags : mode);

  // /v1/models, /health
  Reply r = s.get("/v1/models");
  REQUIRE(r.status == 200);
  CHECK(r.j()["object"] == "list");
  CHECK(r.j()["data"].size() == 1);
  CHECK(r.j()["data"][0]["id"] == "tiny-chat");
  r = s.get("/health");
  REQUIRE(r.status == 200);
  json h = r.j();
  CHECK(h["status"] == "ok");
  CHECK(h["ranks"] == (mode.empty() ? 1 : 3));  // tcp: the coordinator and two nodes
  CHECK(h["plan"]["ranks"].size() == h["ranks"].get<size_t>());
  CHECK(h["loaded"].size() == h["ranks"].get<size_t>());
  CHECK(h["slots"]["total"] == 16);
  CHECK(h["slots"]["in_use"] == 0);

  // Chat, not streamed.
  r = s.post("/v1/chat/completions", chat_body("tiny-chat", "Hello! Who are you?", 24));
  INFO(r.body);
  REQUIRE(r.status == 200);
  const json chat = r.j();
  CHECK(chat["object"] == "chat.completion");
  CHECK(chat["id"].get<std::string>().rfind("chatcmpl-", 0) == 0);
  CHECK(chat["model"] == "tiny-chat");
  CHECK(chat["choices"][0]["message"]["role"] == "assistant");
  const std::string content = chat["choices"][0]["message"]["content"];
  const std::string finish = chat["choices"][0]["finish_reason"];
  CHECK((finish == "stop" || finish == "length"));
  const json usage = chat["usage"];
  CHECK(usage["prompt_tokens"].get<int>() > 10);
  CHECK(usage["completion_tokens"].get<int>() >= 1);
  CHECK(usage["completion_tokens"].get<int>() <= 24);
  CHECK(usage["total_tokens"] == usage["prompt_tokens"].get<int>() + usage["completion_tokens"].get<int>());
  CHECK(!chat["choices"][0]["message"].contains("reasoning_content"));

  // The same streamed: same text, role first, one id, finish, usage chunk, [DONE].
  json body = chat_body("tiny-chat", "Hello! Who are you?", 24);
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  r = s.post("/v1/chat/completions", body);
  REQUIRE(r.status == 200);
  Sse sse = parse_sse(r.body, true);
  CHECK(sse.done);
  CHECK(sse.text == content);
  CHECK(sse.finish == finish);
  CHECK(sse.usage == usage);
  REQUIRE(sse.chunks.size() >= 3);
  CHECK(sse.chunks.front()["choices"][0]["delta"]["role"] == "assistant");
  CHECK(sse.chunks.front()["object"] == "chat.completion.chunk");
  CHECK(sse.chunks.back()["choices"].empty());  // the usage chunk
  for (const json& c : sse.chunks) CHECK(c["id"] == sse.chunks.front()["id"]);

  // Completions: text prompt (BOS added), ids prompt, streamed.
  json comp = {{"model", "tiny-chat"}, {"prompt", "The capital of France is"}, {"temperature", 0}, {"max_tokens", 12}, {"ignore_eos", true}};
  r = s.post("/v1/completions", comp);
  REQUIRE(r.status == 200);
  const json c1 = r.j();
  CHECK(c1["object"] == "text_completion");
  CHECK(c1["id"].get<std::string>().rfind("cmpl-", 0) == 0);
  CHECK(c1["choices"][0]["finish_reason"] == "length");
  CHECK(c1["usage"]["completion_tokens"] == 12);
  const std::string text = c1["choices"][0]["text"];
  comp["stream"] = true;
  r = s.post("/v1/completions", comp);
  REQUIRE(r.status == 200);
  sse = parse_sse(r.body, false);
  CHECK(sse.text == text);
  CHECK(sse.finish == "length");
  CHECK(sse.usage.is_null());
  CHECK(sse.chunks.front()["object"] == "text_completion");

  // echo: the prompt's text, then the same completion; streamed, the same text.
  {
    json echoed = comp;
    echoed.erase("stream");
    echoed["echo"] = true;
    r = s.post("/v1/completions", echoed);
    REQUIRE(r.status == 200);
    CHECK(r.j()["choices"][0]["text"] == "The capital of France is" + text);
    echoed["stream"] = true;
    r = s.post("/v1/completions", echoed);
    REQUIRE(r.status == 200);
    CHECK(parse_sse(r.body, false).text == "The capital of France is" + text);
  }

  // logit_bias over every transport: +100 on one token makes greedy choose it at every step, and
  // a token past the model's vocabulary is a 400 naming logit_bias.
  {
    auto tok = shoal::Tokenizer::load(fixture("tokenizer-deepseek-v3"));
    REQUIRE(tok.ok());
    const int32_t x = 300;
    json biased = comp;
    biased.erase("stream");
    biased["max_tokens"] = 4;
    biased["logit_bias"] = {{std::to_string(x), 100}};
    r = s.post("/v1/completions", biased);
    INFO(r.body);
    REQUIRE(r.status == 200);
    auto want = (*tok)->decode({x, x, x, x}, true);
    REQUIRE(want.ok());
    CHECK(r.j()["choices"][0]["text"] == *want);
    CHECK(r.j()["choices"][0]["text"] != text.substr(0, want->size()));
    biased["logit_bias"] = {{"1000000", -100}};
    r = s.post("/v1/completions", biased);
    CHECK(r.status == 400);
    CHECK(r.j()["error"]["param"] == "logit_bias");
  }

  // The prompt as token ids (the BOS and the encoded text): the same answer.
  int status = -1;
  const std::string ids_line = run_command(
      "echo '{\"text\": \"The capital of France is\", \"add_bos\": true}' | " + kShoal + " tokenize --tokenizer " + m.v3 + " encode",
      &status);
  REQUIRE(status == 0);
  json by_ids = {{"model", "tiny-chat"}, {"prompt", json::parse(ids_line)["ids"]}, {"temperature", 0}, {"max_tokens", 12}, {"ignore_eos", true}};
  r = s.post("/v1/completions", by_ids);
  REQUIRE(r.status == 200);
  CHECK(r.j()["choices"][0]["text"] == text);
  CHECK(r.j()["usage"]["prompt_tokens"] == c1["usage"]["prompt_tokens"]);

  // Stop strings: the output up to the first match, finish "stop", streamed or not.
  json longer = {{"model", "tiny-chat"}, {"prompt", "Once upon a time"}, {"temperature", 0}, {"max_tokens", 40}, {"ignore_eos", true}};
  r = s.post("/v1/completions", longer);
  REQUIRE(r.status == 200);
  const std::string full = r.j()["choices"][0]["text"];
  INFO("full: " << full);
  REQUIRE(full.size() >= 6);
  // A stop string from the middle: two whole characters.
  auto next_char = [&](size_t at) {
    ++at;
    while (at < full.size() && (static_cast<unsigned char>(full[at]) & 0xC0) == 0x80) ++at;
    return at;
  };
  size_t k = full.size() / 2;
  while (k > 0 && (static_cast<unsigned char>(full[k]) & 0xC0) == 0x80) --k;
  const size_t e = std::min(full.size(), next_char(std::min(full.size() - 1, next_char(k))));
  const std::string stop = full.substr(k, e - k);
  const std::string expected = full.substr(0, full.find(stop));
  longer["stop"] = {stop, "never\x01"};
  r = s.post("/v1/completions", longer);
  REQUIRE(r.status == 200);
  CHECK(r.j()["choices"][0]["text"] == expected);
  CHECK(r.j()["choices"][0]["finish_reason"] == "stop");
  CHECK(r.j()["usage"]["completion_tokens"].get<int>() < 40);
  longer["stream"] = true;
  r = s.post("/v1/completions", longer);
  sse = parse_sse(r.body, false);
  CHECK(sse.text == expected);
  CHECK(sse.finish == "stop");

  // Metrics saw it all. (A request cut by a stop string is answered before its slot is freed.)
  CHECK(wait_metrics(s, [](const auto& m) { return m.at("shoal_requests_running") == 0; }, 10s));
  const auto v = s.metrics();
  CHECK(v.at("shoal_http_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}") == 2);
  CHECK(v.at("shoal_http_requests_total{endpoint=\"/v1/completions\",status=\"200\"}") == 9);  // 6 + 2 echo + logit_bias
  CHECK(v.at("shoal_http_requests_total{endpoint=\"/v1/completions\",status=\"400\"}") == 1);  // logit_bias past the vocabulary
  CHECK(v.at("shoal_completion_tokens_total") >= 12 * 3);
  CHECK(v.at("shoal_time_to_first_token_seconds_count") == 11);
  CHECK(v.at("shoal_inter_token_latency_seconds_count") > 0);
  CHECK(v.at("shoal_generations_finished_total{reason=\"length\"}") >= 4);
  CHECK(v.at("shoal_generations_finished_total{reason=\"stop\"}") >= 2);
  CHECK(v.at("shoal_kv_slots_total") == 16);
  CHECK(v.count("shoal_rank_rss_bytes{rank=\"0\"}") == 1);
  // Ranks report their counters with their heartbeats (every second): the requests may all be
  // done before the first one arrives, so wait for it.
  if (!mode.empty())
    CHECK(wait_metrics(s, [](const auto& m) { return m.at("shoal_rank_sent_bytes_total{rank=\"1\",kind=\"hidden\"}") > 0; }, 10s));
  CHECK(s.stop() == 0);
}

TEST_CASE("serve: R1's template splits reasoning_content from content", "[server][serve]") {
  Server s(models().r1);
  json body = chat_body("tiny-r1", "What is 2 + 2?", 16);
  body["ignore_eos"] = true;
  Reply r = s.post("/v1/chat/completions", body);
  REQUIRE(r.status == 200);
  const json msg = r.j()["choices"][0]["message"];
  INFO(msg.dump());
  // The generation prompt opened <think>: what the model writes is reasoning until </think>.
  const std::string reasoning = msg.value("reasoning_content", "");
  const std::string content = msg["content"];
  CHECK(!reasoning.empty());  // (this random model never writes </think> in 16 tokens)
  body["stream"] = true;
  r = s.post("/v1/chat/completions", body);
  REQUIRE(r.status == 200);
  const Sse sse = parse_sse(r.body, true);
  CHECK(sse.reasoning == reasoning);
  CHECK(sse.text == content);
  if (content.empty()) CHECK(!reasoning.empty());
}

TEST_CASE("serve: malformed requests, unknown models and paths, size limits, API keys", "[server][serve]") {
  TempDir keys;
  write_file(keys / "keys", "# keys\nsk-first\n\n  sk-second  \n");
  Server s(models().v3, "--api-key-file " + keys / "keys");
  const std::string auth = "-H 'Authorization: Bearer sk-second'";
  auto error_of = [](const Reply& r) {
    const json j = r.j();
    REQUIRE(j.contains("error"));
    CHECK(j["error"]["message"].is_string());
    CHECK(j["error"].contains("type"));
    CHECK(j["error"].contains("param"));
    CHECK(j["error"].contains("code"));
    return j["error"];
  };
  // Keys: none, wrong, right; /health and /metrics stay open.
  Reply r = s.post("/v1/chat/completions", chat_body("tiny-chat", "hi", 4));
  CHECK(r.status == 401);
  CHECK(error_of(r)["code"] == "invalid_api_key");
  r = s.post("/v1/chat/completions", chat_body("tiny-chat", "hi", 4), "-H 'Authorization: Bearer sk-third'");
  CHECK(r.status == 401);
  r = s.get("/v1/models", "-H 'Authorization: Bearer sk-first'");
  CHECK(r.status == 200);
  r = s.post("/v1/chat/completions", chat_body("tiny-chat", "hi", 4), auth);
  CHECK(r.status == 200);
  CHECK(s.get("/health").status == 200);

  r = s.call("POST", "/v1/chat/completions", "{\"model\": \"tiny-chat\", ", auth);
  CHECK(r.status == 400);
  CHECK(error_of(r)["type"] == "invalid_request_error");
  r = s.post("/v1/chat/completions", chat_body("gpt-4o", "hi", 4), auth);
  CHECK(r.status == 404);
  CHECK(error_of(r)["code"] == "model_not_found");
  json b = chat_body("tiny-chat", "hi", 4);
  b["messages"] = "hi";
  r = s.post("/v1/chat/completions", b, auth);
  CHECK(r.status == 400);
  CHECK(error_of(r)["param"] == "messages");
  b = chat_body("tiny-chat", "hi", 100000);
  r = s.post("/v1/chat/completions", b, auth);
  CHECK(r.status == 400);
  CHECK(error_of(r)["code"] == "context_length_exceeded");
  b = chat_body("tiny-chat", "hi", 4);
  b["n"] = 17;
  r = s.post("/v1/chat/completions", b, auth);
  CHECK(r.status == 400);
  CHECK(error_of(r)["param"] == "n");
  // Tools for a model whose template cannot show them (DeepSeek-V3's): a 400 saying so.
  b = chat_body("tiny-chat", "hi", 4);
  b["tools"] = {{{"type", "function"}, {"function", {{"name", "get_weather"}}}}};
  r = s.post("/v1/chat/completions", b, auth);
  CHECK(r.status == 400);
  CHECK(error_of(r)["param"] == "tools");
  CHECK_THAT(error_of(r)["message"].get<std::string>(), Catch::Contains("does not render tool definitions"));
  b["tool_choice"] = "none";  // not shown, not parsed: a plain answer
  r = s.post("/v1/chat/completions", b, auth);
  CHECK(r.status == 200);
  r = s.post("/v1/completions", {{"model", "tiny-chat"}, {"prompt", {5, 200000}}}, auth);
  CHECK(r.status == 400);
  CHECK(error_of(r)["param"] == "prompt");
  r = s.get("/v1/chat/completions", auth);
  CHECK(r.status == 405);
  r = s.get("/v1/nothing", auth);
  CHECK(r.status == 404);
  r = s.get("/v1/models/other", auth);
  CHECK(r.status == 404);
  r = s.get("/v1/models/tiny-chat", auth);
  CHECK(r.status == 200);

  // A body over 8 MB: 413, and the server goes on.
  const std::string big = "{\"model\": \"tiny-chat\", \"prompt\": \"" + std::string(9u << 20, 'a') + "\"}";
  r = s.call("POST", "/v1/completions", big, auth);
  CHECK((r.status == 413 || r.status == 0));  // curl may see the close before the answer
  r = s.post("/v1/completions", {{"model", "tiny-chat"}, {"prompt", "hi"}, {"temperature", 0}, {"max_tokens", 2}}, auth);
  CHECK(r.status == 200);

  // Keep-alive: curl reuses one connection for two requests.
  int status = -1;
  const std::string out = run_command("curl -sv --max-time 30 " + auth + " " + s.url("/v1/models") + " " + s.url("/v1/models") +
                                          " 2>&1 >/dev/null",
                                      &status);
  CHECK(status == 0);
  CHECK_THAT(out, Catch::Contains("Re-using existing connection") || Catch::Contains("Reusing existing"));

  const auto v = s.metrics();
  CHECK(v.at("shoal_http_requests_total{endpoint=\"/v1/chat/completions\",status=\"401\"}") == 2);
  CHECK(v.at("shoal_http_requests_total{endpoint=\"/v1/chat/completions\",status=\"404\"}") == 1);
  CHECK(s.stop() == 0);
}

TEST_CASE("serve: n choices are the answers of seeds seed, seed + 1, ..., streamed or not", "[server][serve][choices]") {
  Server s(models().v3, "--local-nodes 2");
  for (const std::string ep : {"/v1/chat/completions", "/v1/completions"}) {
    INFO(ep);
    const bool chat = ep == "/v1/chat/completions";
    json body = chat ? chat_body("tiny-chat", "Tell me a story", 12)
                     : json{{"model", "tiny-chat"}, {"prompt", "Once upon a time"}, {"max_tokens", 12}};
    body["temperature"] = 1.0;
    body["seed"] = 77;
    body["logprobs"] = chat ? json(true) : json(2);
    if (chat) body["top_logprobs"] = 2;
    // Each seed alone.
    std::vector<json> alone;
    for (int i = 0; i < 3; ++i) {
      json one = body;
      one["seed"] = 77 + i;
      const Reply r = s.post(ep, one);
      REQUIRE(r.status == 200);
      alone.push_back(r.j()["choices"][0]);
    }
    CHECK(alone[0] != alone[1]);
    body["n"] = 3;
    const Reply r = s.post(ep, body);
    REQUIRE(r.status == 200);
    const json j = r.j();
    REQUIRE(j["choices"].size() == 3);
    int64_t completion = 0;
    for (int i = 0; i < 3; ++i) {
      INFO("choice " << i);
      json got = j["choices"][i];
      CHECK(got["index"] == i);
      got["index"] = 0;
      CHECK(got == alone[size_t(i)]);
      completion += int64_t(chat ? got["logprobs"]["content"].size() : got["logprobs"]["tokens"].size());
    }
    const json single = s.post(ep, [&] { json one = body; one.erase("n"); return one; }()).j();
    CHECK(j["usage"]["prompt_tokens"] == single["usage"]["prompt_tokens"]);
    CHECK(j["usage"]["completion_tokens"] == completion);
    // Streamed: each index's pieces add up to its choice.
    json streamed = body;
    streamed["stream"] = true;
    streamed["stream_options"] = {{"include_usage", true}};
    const Reply sr = s.post(ep, streamed);
    REQUIRE(sr.status == 200);
    const Sse sse = parse_sse(sr.body, chat);
    std::map<int, std::string> text, finish;
    for (const json& c : sse.chunks)
      for (const json& ch : c["choices"]) {
        const int i = ch["index"];
        text[i] += chat ? ch["delta"].value("content", "") : ch.value("text", "");
        if (!ch["finish_reason"].is_null()) finish[i] = ch["finish_reason"];
      }
    REQUIRE(text.size() == 3);
    for (int i = 0; i < 3; ++i) {
      CHECK(text[i] == (chat ? alone[size_t(i)]["message"]["content"] : alone[size_t(i)]["text"]).get<std::string>());
      CHECK(finish[i] == alone[size_t(i)]["finish_reason"].get<std::string>());
    }
    CHECK(sse.usage == j["usage"]);
  }
  json too_many = chat_body("tiny-chat", "x", 4);
  too_many["n"] = 17;
  const Reply bad = s.post("/v1/chat/completions", too_many);
  CHECK(bad.status == 400);
  CHECK_THAT(bad.body, Catch::Contains("'n' = 17 is more than the 16 choices"));
  CHECK(s.stop() == 0);
}

TEST_CASE("serve: 16 concurrent streams equal the same requests one at a time", "[server][serve]") {
  const std::string mode = GENERATE(as<std::string>{}, "", "--local-nodes 3", "tcp");
  INFO("mode: " << mode);
  std::optional<TcpNodes> tcp;
  if (mode == "tcp") tcp.emplace(2);
  Server s(models().v3, tcp ? tcp->flags : mode);
  TempDir dir;
  const int n = 16;
  std::vector<std::string> one(n);
  std::string script;
  for (int i = 0; i < n; ++i) {
    json b = chat_body("tiny-chat", "Request " + std::to_string(i) + ": tell me about the number " + std::to_string(i * 7 + 3), 20);
    b["ignore_eos"] = true;
    const Reply r = s.post("/v1/chat/completions", b);
    REQUIRE(r.status == 200);
    one[size_t(i)] = r.j()["choices"][0]["message"]["content"];
    b["stream"] = true;
    write_file(dir / ("b" + std::to_string(i)), b.dump());
    script += "curl -sS -N --max-time 120 -H 'Content-Type: application/json' --data-binary @" + dir / ("b" + std::to_string(i)) +
              " " + s.url("/v1/chat/completions") + " > " + dir / ("o" + std::to_string(i)) + " 2>&1 &\n";
  }
  script += "wait\n";
  write_file(dir / "run.sh", script);
  int status = -1;
  run_command("sh " + dir / "run.sh", &status);
  REQUIRE(status == 0);
  for (int i = 0; i < n; ++i) {
    INFO("request " << i);
    const Sse sse = parse_sse(read_file(dir / ("o" + std::to_string(i))), true);
    CHECK(sse.done);
    CHECK(sse.finish == "length");
    CHECK(sse.text == one[size_t(i)]);
  }
  const auto v = s.metrics();
  CHECK(v.at("shoal_requests_running") == 0);
  CHECK(v.at("shoal_http_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}") == 2 * n);
}

TEST_CASE("serve: the paged KV pool: its limit in /v1/models and 400s, prefix reuse in usage and /metrics", "[server][serve][kv]") {
  auto cfg = shoal::load_config(models().v3);
  REQUIRE(cfg.ok());
  const int64_t blocks = 12;  // 768 positions, far below the model's maximum
  Server s(models().v3, "--kv-memory " + std::to_string(blocks * shoal::kv_block_bytes(*cfg, cfg->n_layers, shoal::DType::kF32)));
  const Reply m = s.get("/v1/models");
  REQUIRE(m.status == 200);
  CHECK(m.j()["data"][0]["max_model_len"] == blocks * shoal::kKvBlockTokens);
  const json h = s.get("/health").j();
  CHECK(h["kv_pool"]["blocks"] == blocks);
  CHECK(h["kv_pool"]["dtype"] == "f32");
  CHECK(h["max_seq_len"] == blocks * shoal::kKvBlockTokens);
  // Longer than the pool could ever hold: a 400 naming the limit.
  std::string big;
  for (int i = 0; i < 400; ++i) big += "word" + std::to_string(i) + " ";
  Reply r = s.post("/v1/chat/completions", chat_body("tiny-chat", big, 8));
  CHECK(r.status == 400);
  CHECK_THAT(r.body, Catch::Contains("maximum context length is 768 tokens"));
  // One long system prompt, asked twice: the second finds its full blocks cached.
  std::string system;
  for (int i = 0; i < 60; ++i) system += "rule " + std::to_string(i) + ": be brief. ";
  auto ask = [&](const std::string& question) {
    json b = chat_body("tiny-chat", question, 12);
    b["messages"].insert(b["messages"].begin(), json{{"role", "system"}, {"content", system}});
    b["ignore_eos"] = true;
    const Reply a = s.post("/v1/chat/completions", b);
    REQUIRE(a.status == 200);
    return a.j();
  };
  const json first = ask("What is 2 + 2?"), again = ask("What is 2 + 2?"), other = ask("Name a colour.");
  const int64_t prompt = first["usage"]["prompt_tokens"];
  REQUIRE(prompt > 2 * shoal::kKvBlockTokens);
  CHECK(first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0);
  const int64_t cached = again["usage"]["prompt_tokens_details"]["cached_tokens"];
  CHECK(cached == (prompt - 1) / shoal::kKvBlockTokens * shoal::kKvBlockTokens);  // every full block but the last token's
  CHECK(other["usage"]["prompt_tokens_details"]["cached_tokens"].get<int64_t>() >= 2 * shoal::kKvBlockTokens);
  CHECK(again["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]);  // reuse changes nothing
  const auto v = s.metrics();
  CHECK(v.at("shoal_kv_blocks_total") == blocks);
  CHECK(v.at("shoal_kv_blocks_held") == 0);
  CHECK(v.at("shoal_kv_blocks_cached") >= 2);
  CHECK(v.at("shoal_kv_prompt_tokens_total{kind=\"cached\"}") ==
        cached + other["usage"]["prompt_tokens_details"]["cached_tokens"].get<int64_t>());
  CHECK(v.at("shoal_kv_prefix_hit_ratio") > 0.3);
}

TEST_CASE("serve: a client that goes away mid-stream is cancelled at once and the server keeps serving",
          "[server][serve]") {
  const std::string mode = GENERATE(as<std::string>{}, "", "--local-nodes 3");
  INFO("mode: " << mode);
  Server s(models().v3, mode + " --max-seq-len 4096");
  const json longest = {{"model", "tiny-chat"}, {"prompt", "A very long story:"}, {"temperature", 0}, {"max_tokens", 4000}, {"ignore_eos", true}};
  json streamed = longest;
  streamed["stream"] = true;
  for (int round = 0; round < 2; ++round) {
    {
      RawClient c(s.port());
      c.post("/v1/completions", streamed.dump());
      REQUIRE(c.read_until("200 OK", 30s));
      REQUIRE(c.read_count("data: ", 5, 30s));
      auto m = s.metrics();
      CHECK(m.at("shoal_requests_running") == 1);
      CHECK(m.at("shoal_kv_slots_in_use") == 1);
    }  // closed mid-stream
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(wait_metrics(s, [&](const auto& m) {
      return m.at("shoal_kv_slots_in_use") == 0 && m.at("shoal_client_disconnects_total") == round + 1;
    }, 10s));
    // Freed long before the 4000 tokens could have been generated.
    CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  }
  // Not streamed: the close is seen while it generates, too.
  {
    RawClient c(s.port());
    c.post("/v1/completions", longest.dump());
    CHECK(wait_metrics(s, [](const auto& m) { return m.at("shoal_requests_running") == 1; }, 10s));
  }
  CHECK(wait_metrics(s, [](const auto& m) {
    return m.at("shoal_kv_slots_in_use") == 0 && m.at("shoal_client_disconnects_total") == 3;
  }, 10s));
  const auto v = s.metrics();
  CHECK(v.at("shoal_http_requests_total{endpoint=\"/v1/completions\",status=\"499\"}") == 3);
  CHECK(v.at("shoal_generations_finished_total{reason=\"cancelled\"}") == 3);
  const Reply r = s.post("/v1/completions", {{"model", "tiny-chat"}, {"prompt", "still there?"}, {"temperature", 0}, {"max_tokens", 4}});
  CHECK(r.status == 200);
  CHECK(s.get("/health").j()["slots"]["in_use"] == 0);
  CHECK(s.stop() == 0);
}

TEST_CASE("serve: read timeouts close half-sent requests and bad HTTP is a 400", "[server][serve]") {
  Server s(models().v3, "--io-threads 1 --read-timeout 1");
  RawClient bad(s.port());
  bad.send_all("THIS IS NOT HTTP\r\n\r\n");
  CHECK(bad.closed_within(10s));
  CHECK_THAT(bad.seen, Catch::Contains("400"));
  // A client that sends half its headers and stops: the server still answers others.
  RawClient half(s.port());
  half.send_all("POST /v1/completions HTTP/1.1\r\nHost: x\r\n");
  const Reply r = s.get("/health");
  CHECK(r.status == 200);
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(half.closed_within(10s));
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  // An idle keep-alive connection is closed too.
  RawClient idle(s.port());
  idle.send_all("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
  REQUIRE(idle.read_until("\"status\":\"ok\"", 10s));
  CHECK(idle.closed_within(10s));
  CHECK(s.stop() == 0);
}

TEST_CASE("serve: the official OpenAI Node client", "[server][serve][js]") {
  require_js_clients({"openai"});
  const std::string mode = GENERATE(as<std::string>{}, "", "--local-nodes 3", "tcp");
  INFO("mode: " << mode);
  std::optional<TcpNodes> tcp;
  if (mode == "tcp") tcp.emplace(2);
  TempDir keys;
  write_file(keys / "keys", "sk-js-test\n");
  Server s(models().v3, (tcp ? tcp->flags : mode) + " --api-key-file " + keys / "keys");
  int status = -1;
  const std::string out = run_command("cd " + kJsDir + " && SHOAL_BASE_URL=http://127.0.0.1:" + std::to_string(s.port()) +
                                          " SHOAL_API_KEY=sk-js-test SHOAL_MODEL=tiny-chat timeout 600 node openai_client.test.mjs 2>&1",
                                      &status);
  INFO(out);
  CHECK(status == 0);
  CHECK_THAT(out, Catch::Contains(" 0 failed"));
  CHECK(s.stop() == 0);
}

// R1's distills: a tiny Qwen2 (tests/fixtures/tiny-qwen2's shapes) synthesized with
// R1-Distill-Qwen's tokenizer and chat template (tests/fixtures/tokenizer-r1-distill-qwen), served
// on one process and over three ranks, answering the official client with the reasoning split.
TEST_CASE("serve: a synthesized R1 distill (Qwen2) answers the OpenAI client, reasoning split", "[server][serve][js][dense]") {
  require_js_clients({"openai"});
  TempDir dir;
  const std::string model = dir / "tiny-distill-qwen";
  int status = -1;
  const std::string out = run_command(kShoal + " synth --config " + fixture("tiny-qwen2") + "/config.json --out " + model +
                                          " --tokenizer " + fixture("tokenizer-r1-distill-qwen") + " 2>&1",
                                      &status);
  INFO(out);
  REQUIRE(status == 0);
  TempDir keys;
  write_file(keys / "keys", "sk-js-test\n");
  for (const std::string mode : {"", "--local-nodes 3"}) {
    INFO("mode: " << mode);
    Server s(model, mode + " --api-key-file " + keys / "keys");
    const std::string js = run_command("cd " + kJsDir + " && SHOAL_BASE_URL=http://127.0.0.1:" + std::to_string(s.port()) +
                                           " SHOAL_API_KEY=sk-js-test SHOAL_MODEL=tiny-distill-qwen timeout 300 node "
                                           "openai_distill.test.mjs 2>&1",
                                       &status);
    INFO(js);
    CHECK(status == 0);
    CHECK_THAT(js, Catch::Contains("2 passed, 0 failed"));
    CHECK(s.stop() == 0);
  }
}

// LoRA adapters chosen per request (docs/lora.md): tiny-v3-bf16 with the fixtures' adapters a and
// b, the tokenizer of DeepSeek-V3 (whose first 1024 ids are the tiny model's vocabulary).
TEST_CASE("serve: base and two LoRA adapters in one server, each request its own model's tokens and logprobs", "[server][serve][js][lora]") {
  require_js_clients({"openai"});
  TempDir keys;
  write_file(keys / "keys", "sk-js-test\n");
  const std::string common = " --tokenizer " + fixture("tokenizer-deepseek-v3") + " --api-key-file " + keys / "keys";
  const std::string a = fixture("lora-tiny-v3-a"), b = fixture("lora-tiny-v3-b");
  // Each model alone, under its id.
  Server base_alone(fixture("tiny-v3-bf16"), common);
  Server a_alone(fixture("tiny-v3-bf16"), common + " --lora " + a + " --served-model-name a");
  Server b_alone(fixture("tiny-v3-bf16"), common + " --lora " + b + " --served-model-name b");
  const json refs = {{"tiny-v3-bf16", base_alone.url("")}, {"a", a_alone.url("")}, {"b", b_alone.url("")}};
  for (const std::string mode : {"", "--local-nodes 3 --expert-scatter"}) {
    INFO("mode: " << mode);
    Server s(fixture("tiny-v3-bf16"), common + " --lora a=" + a + " --lora b=" + b + " " + mode);
    int status = -1;
    const std::string js = run_command("cd " + kJsDir + " && SHOAL_BASE_URL=" + s.url("") + " SHOAL_REFS='" + refs.dump() +
                                           "' SHOAL_API_KEY=sk-js-test SHOAL_BASE_MODEL=tiny-v3-bf16 timeout 500 node "
                                           "openai_lora.test.mjs 2>&1",
                                       &status);
    INFO(js);
    INFO(s.log());
    CHECK(status == 0);
    CHECK_THAT(js, Catch::Contains("3 passed, 0 failed"));
    CHECK(s.stop() == 0);
  }
}

TEST_CASE("serve: bad --lora flags are refused before listening", "[server][serve][lora][errors]") {
  const std::string a = fixture("lora-tiny-v3-a");
  for (const auto& [flags, want] : std::vector<std::pair<std::string, std::string>>{
           {"--lora a=" + a + " --lora " + a, "need a name each"},
           {"--lora a=" + a + " --lora a=" + fixture("lora-tiny-v3-b"), "given twice"},
           {"--lora 'a b=" + a + "'", "may hold only"},
           {"--lora a=/nonexistent-adapter", "/nonexistent-adapter"},
           {"--merge-lora " + a + " --lora b=" + a, "excludes"},
           {"--merge-into stored", "requires"}}) {
    INFO(flags);
    int status = -1;
    const std::string out = run_command(kShoal + " serve --model " + fixture("tiny-v3-bf16") + " --tokenizer " +
                                            fixture("tokenizer-deepseek-v3") + " --port 0 " + flags + " 2>&1 < /dev/null",
                                        &status);
    INFO(out);
    CHECK(status != 0);
    CHECK_THAT(out, Catch::Contains(want));
  }
}

TEST_CASE("serve under mpirun -np 3: the same answers as one process", "[server][serve][mpi]") {
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0) {
    WARN("skipped: mpirun not found");
    return;
  }
  const json body = {{"model", "tiny-chat"}, {"prompt", "Hello"}, {"temperature", 0}, {"max_tokens", 16}, {"ignore_eos", true}};
  std::string want;
  {
    Server one(models().v3);
    const Reply r = one.post("/v1/completions", body);
    REQUIRE(r.status == 200);
    want = r.j()["choices"][0]["text"];
  }
  Server s(models().v3, "", "env OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo mpirun --allow-run-as-root "
                            "--oversubscribe -np 3 --mca pml ob1 --mca btl self,vader,tcp ");
  Reply r = s.post("/v1/completions", body);
  REQUIRE(r.status == 200);
  CHECK(r.j()["choices"][0]["text"] == want);
  r = s.get("/health");
  CHECK(r.j()["ranks"] == 3);
  // SIGTERM to mpirun alone: it passes it on, rank 0 stops the server and ends the session.
  ::kill(s.child().pid(), SIGTERM);
  CHECK(s.child().wait_exit(30s) != -1);
}

TEST_CASE("serve: a spare takes the place of a lost node that does not come back", "[server][serve][tcp][heal]") {
  TcpNodes tcp(3);  // nodes 0 and 1 serve, node 2 is the spare
  const std::string flags = "--nodes " + tcp.addresses[0] + "," + tcp.addresses[1] + " --spare " + tcp.addresses[2] +
                            " --token-file " + tcp.dir / "token" + " --heartbeat-timeout 2";
  Server s(models().v3, flags);
  const json probe = {{"model", "tiny-chat"}, {"prompt", "hi"}, {"temperature", 0.9}, {"seed", 6}, {"max_tokens", 6}};
  Reply r = s.post("/v1/completions", probe);
  REQUIRE(r.status == 200);
  const json before = r.j()["choices"][0];
  tcp.nodes[1]->kill(SIGKILL);
  REQUIRE(tcp.nodes[1]->wait_exit(10s) != -1);
  int status = 0;
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - t0 < 60s) {
    r = s.post("/v1/completions", probe);
    status = r.status;
    if (status == 200) break;
    std::this_thread::sleep_for(100ms);
  }
  INFO(s.log());
  REQUIRE(status == 200);
  CHECK(r.j()["choices"][0] == before);
  CHECK_THAT(s.log(), Catch::Contains("the spare " + tcp.addresses[2] + " takes its place"));
  CHECK(s.stop() == 0);
}

TEST_CASE("serve: a lost node fails its requests within 10 s, 503s with Retry-After meanwhile, and once it is restarted "
          "serving resumes with the same answers", "[server][serve][tcp][heal]") {
  TcpNodes tcp(2, "--heartbeat-timeout 2");
  Server s(models().v3, tcp.flags);
  const json probe = {{"model", "tiny-chat"}, {"prompt", "hi"}, {"temperature", 0.9}, {"seed", 5}, {"max_tokens", 6}};
  Reply r = s.post("/v1/completions", probe);
  REQUIRE(r.status == 200);
  const json before = r.j()["choices"][0];
  CHECK(s.get("/health").j()["ranks"] == 3);
  // A long stream, and node 2 killed in its middle: the client hears within 10 s.
  TempDir dir;
  json longer = {{"model", "tiny-chat"}, {"prompt", "tell"}, {"max_tokens", 3000}, {"ignore_eos", true}, {"stream", true}};
  write_file(dir / "long.json", longer.dump());
  Child stream("curl -sS -N --max-time 60 -H 'Content-Type: application/json' --data-binary @" + dir / "long.json" + " " +
                   s.url("/v1/completions"),
               dir / "stream.err");
  std::string line;
  REQUIRE(stream.read_line(line, 30s));  // streaming has begun
  const auto killed = std::chrono::steady_clock::now();
  tcp.nodes[1]->kill(SIGKILL);
  REQUIRE(stream.wait_exit(15s) != -1);
  CHECK(std::chrono::steady_clock::now() - killed < 10s);
  std::string rest;
  while (stream.read_line(rest, 1s)) line += rest;
  CHECK_THAT(line, Catch::Contains("service_unavailable") || Catch::Contains("error"));
  // Meanwhile: 503 with Retry-After, /health says healing and names the rank.
  r = s.call("POST", "/v1/completions", probe.dump(), "-i");
  CHECK_THAT(r.body, Catch::Contains("503") && Catch::Contains("Retry-After: 5"));
  r = s.get("/health");
  CHECK(r.status == 503);
  CHECK(r.j()["status"] == "healing");
  CHECK_THAT(r.j()["error"]["message"].get<std::string>(), Catch::Contains("rank 2"));
  CHECK(s.metrics().at("shoal_healthy") == 0);
  // The node comes back at its address: the next requests are served, with the same answers.
  tcp.restart(1);
  const auto restarted = std::chrono::steady_clock::now();
  int status = 0;
  while (std::chrono::steady_clock::now() - restarted < 60s) {
    r = s.post("/v1/completions", probe);
    status = r.status;
    if (status == 200) break;
    std::this_thread::sleep_for(100ms);
  }
  REQUIRE(status == 200);
  const double back_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - restarted).count();
  WARN("from the node's restart to a served request: " << back_s << " s");
  CHECK(r.j()["choices"][0] == before);
  const json health = s.get("/health").j();
  CHECK(health["status"] == "ok");
  CHECK(health["heals"] == 1);
  CHECK(s.metrics().at("shoal_healthy") == 1);
  // The surviving node kept its units: only the restarted one loaded.
  CHECK_THAT(read_file(tcp.dir / "node0.log"), Catch::Contains("kept, not loaded again"));
  CHECK(s.stop() == 0);
}
