// `shoal serve` for the tests: a small DeepSeek-V3-shaped model with DeepSeek's vocabulary,
// synthesized once per test process (with the V3 and R1 templates, and a V3-style template that
// renders tools), the server on an ephemeral port driven with curl, server-sent events, and TCP
// nodes. Shared by test_server.cpp and test_structured_output.cpp.
#pragma once

#include <chrono>
#include <cstdlib>
#include <initializer_list>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "files.h"
#include "process.h"

namespace shoal::test {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace std::chrono_literals;


inline const std::string kShoal = SHOAL_BINARY;
inline std::string fixture(const std::string& name) { return std::string(SHOAL_FIXTURES) + "/" + name; }
inline const std::string kJsDir = std::string(SHOAL_FIXTURES) + "/../js";

// node and the npm packages a JS client test needs (scripts/setup installs them into tests/js).
inline void require_js_clients(std::initializer_list<const char*> packages) {
  INFO("node and tests/js/node_modules are installed by scripts/setup (npm install --prefix tests/js)");
  REQUIRE(std::system("node --version > /dev/null 2>&1") == 0);
  for (const char* package : packages) {
    INFO(package);
    REQUIRE(fs::exists(kJsDir + "/node_modules/" + package + "/package.json"));
  }
}

// A DeepSeek-V3-style config small enough for two cores: hidden 64, 2 layers (one dense, one
// MoE with 8 experts in 4 groups), DeepSeek-V3's vocabulary.
inline json small_config() {
  json c = json::parse(std::ifstream(fixture("tiny-v3-bf16") + "/config.json"));
  c["num_hidden_layers"] = 2;
  c["first_k_dense_replace"] = 1;
  c["n_routed_experts"] = 8;
  c["n_group"] = 4;
  c["topk_group"] = 2;
  c["hidden_size"] = 64;
  c["max_position_embeddings"] = 4096;
  c["vocab_size"] = 129280;
  return c;
}

// Synthesizes the model once per test process: DIR/tiny-chat (V3 template) and, with the same
// weights, DIR/tiny-r1 (DeepSeek-R1's template), DIR/tiny-tools-r1 (tests/fixtures/
// chat-template-tools: R1's template that renders tools) and DIR/tiny-tools (the same without
// opening <think> for the answer, as V3-0324's template does).
struct Models {
  TempDir dir;
  std::string v3, r1, tools, tools_r1;
  Models() {
    write_file(dir / "config.json", small_config().dump(2));
    v3 = dir / "tiny-chat";
    int status = -1;
    const std::string tok = fixture("tokenizer-deepseek-v3");
    std::string out = run_command(kShoal + " synth --config " + dir / "config.json" + " --out " + v3 + " --tokenizer " +
                                      tok + " 2>&1",
                                  &status);
    if (status != 0) {  // a synth without --tokenizer: copy the files in ourselves
      out = run_command(kShoal + " synth --config " + dir / "config.json" + " --out " + v3 + " 2>&1", &status);
      for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) fs::copy_file(tok + "/" + f, v3 + "/" + f);
    }
    INFO(out);
    REQUIRE(status == 0);
    r1 = same_weights("tiny-r1");
    fs::copy_file(fixture("chat-template-deepseek-r1") + "/tokenizer_config.json", r1 + "/tokenizer_config.json");
    json config = json::parse(std::ifstream(tok + "/tokenizer_config.json"));
    std::ifstream in(fixture("chat-template-tools") + "/chat_template.jinja");
    const std::string tmpl((std::istreambuf_iterator<char>(in)), {});
    tools_r1 = same_weights("tiny-tools-r1");
    config["chat_template"] = tmpl;
    write_file(tools_r1 + "/tokenizer_config.json", config.dump());
    tools = same_weights("tiny-tools");
    const std::string opens = "'<｜Assistant｜><think>\\n'";
    const size_t at = tmpl.rfind(opens);
    REQUIRE(at != std::string::npos);
    config["chat_template"] = tmpl.substr(0, at) + "'<｜Assistant｜>'" + tmpl.substr(at + opens.size());
    write_file(tools + "/tokenizer_config.json", config.dump());
  }
  // A folder beside tiny-chat with links to its files but its own tokenizer_config.json.
  std::string same_weights(const std::string& name) {
    const std::string out = dir / name;
    fs::create_directories(out);
    for (const auto& e : fs::directory_iterator(v3)) {
      const std::string file = e.path().filename().string();
      if (file != "tokenizer_config.json") fs::create_symlink(e.path(), out + "/" + file);
    }
    return out;
  }
};

inline Models& models() {
  static Models m;
  return m;
}

struct Reply {
  int status = 0;
  std::string body;
  json j() const {
    json v = json::parse(body, nullptr, false);
    INFO(body.substr(0, 2000));
    REQUIRE(!v.is_discarded());
    return v;
  }
};

// `shoal serve` on an ephemeral port, stderr into a log; SIGTERM and a bounded wait at the end.
class Server {
 public:
  // `launcher`: what runs the binary (e.g. "mpirun -np 3 ").
  explicit Server(const std::string& model, const std::string& extra = "", const std::string& launcher = "")
      : log_(dir_ / "serve.log") {
    child_ = std::make_unique<Child>(launcher + kShoal + " serve --model " + model + " --port 0 --slots 16 " + extra, log_);
    std::string line;
    const bool got = child_->read_line(line, 120s);
    INFO(read_file(log_));
    REQUIRE(got);
    std::smatch m;
    REQUIRE(std::regex_search(line, m, std::regex("^shoal serve: listening on http://127\\.0\\.0\\.1:([0-9]+)$")));
    port_ = std::stoi(m[1]);
  }
  ~Server() {
    if (!stopped_) stop();
  }
  // SIGTERM: a clean stop within 15 s; returns the wait status.
  int stop() {
    stopped_ = true;
    if (child_->wait_exit(0ms) != -1) return child_->wait_exit(0ms);
    child_->kill(SIGTERM);
    return child_->wait_exit(15s);
  }
  int port() const { return port_; }
  std::string url(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(port_) + path; }
  std::string log() const { return read_file(log_); }
  Child& child() { return *child_; }

  // curl with a bounded time; the body from a file (no shell quoting).
  Reply call(const std::string& method, const std::string& path, const std::string& body = "",
             const std::string& headers = "", int max_time = 120) {
    const std::string req = dir_ / ("req-" + std::to_string(++n_));
    std::string cmd = "curl -sS --max-time " + std::to_string(max_time) + " -X " + method + " " + headers;
    if (!body.empty() || method == "POST") {
      write_file(req, body);
      cmd += " -H 'Content-Type: application/json' --data-binary @" + req;
    }
    cmd += " -w '\\n%{http_code}' '" + url(path) + "' 2>&1";
    int status = -1;
    const std::string out = run_command(cmd, &status);
    Reply r;
    const size_t nl = out.rfind('\n');
    REQUIRE(nl != std::string::npos);
    r.status = std::atoi(out.c_str() + nl + 1);
    r.body = out.substr(0, nl);
    return r;
  }
  Reply post(const std::string& path, const json& body, const std::string& headers = "") {
    return call("POST", path, body.dump(), headers);
  }
  Reply get(const std::string& path, const std::string& headers = "") { return call("GET", path, "", headers); }

  std::map<std::string, double> metrics();

 private:
  TempDir dir_;
  std::string log_;
  std::unique_ptr<Child> child_;
  int port_ = 0;
  int n_ = 0;
  bool stopped_ = false;
};

// Prometheus text: every sample line is `name{labels} value`; returns "name{labels}" -> value.
inline std::map<std::string, double> parse_prometheus(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  const std::regex sample(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})?) (\S+)$)");
  const std::regex comment(R"(^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$)");
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line[0] == '#') {
      INFO(line);
      CHECK(std::regex_match(line, comment));
      continue;
    }
    std::smatch m;
    INFO(line);
    REQUIRE(std::regex_match(line, m, sample));
    out[m[1]] = std::stod(m[4]);
  }
  return out;
}

inline std::map<std::string, double> Server::metrics() {
  const Reply r = get("/metrics");
  REQUIRE(r.status == 200);
  return parse_prometheus(r.body);
}

// Server-sent events: the JSON of each `data:` line up to [DONE] (which must come last).
struct Sse {
  std::vector<json> chunks;
  bool done = false;
  std::string text, reasoning, finish;
  json usage;
};
inline Sse parse_sse(const std::string& body, bool chat) {
  Sse s;
  size_t at = 0;
  while (at < body.size()) {
    size_t end = body.find("\n\n", at);
    REQUIRE(end != std::string::npos);
    const std::string event = body.substr(at, end - at);
    at = end + 2;
    REQUIRE(event.rfind("data: ", 0) == 0);
    const std::string data = event.substr(6);
    REQUIRE(!s.done);
    if (data == "[DONE]") {
      s.done = true;
      continue;
    }
    json c = json::parse(data);
    if (c.contains("usage") && !c["usage"].is_null()) s.usage = c["usage"];
    for (const json& ch : c["choices"]) {
      if (chat) {
        s.text += ch["delta"].value("content", "");
        s.reasoning += ch["delta"].value("reasoning_content", "");
      } else {
        s.text += ch.value("text", "");
      }
      if (!ch["finish_reason"].is_null()) s.finish = ch["finish_reason"];
    }
    s.chunks.push_back(std::move(c));
  }
  return s;
}

inline json chat_body(const std::string& model, const std::string& user, int max_tokens) {
  return {{"model", model},
          {"messages", {{{"role", "system"}, {"content", "You are a helpful assistant."}}, {{"role", "user"}, {"content", user}}}},
          {"temperature", 0}, {"max_tokens", max_tokens}};
}

// `n` shoal node processes on free loopback ports, and the flags that make a coordinator use them.
struct TcpNodes {
  TempDir dir;
  std::vector<std::unique_ptr<Child>> nodes;
  std::vector<std::string> addresses;  // host:port of each
  std::string flags;

  explicit TcpNodes(int n, const std::string& coordinator_flags = "") {
    write_file(dir / "token", "serve-token\n");
    std::string list;
    for (int i = 0; i < n; ++i) {
      nodes.push_back(std::make_unique<Child>(kShoal + " node --listen 127.0.0.1:0 --token-file " + dir / "token",
                                              dir / ("node" + std::to_string(i) + ".log")));
      std::string line;
      REQUIRE(nodes.back()->read_line(line, 10s));
      std::smatch m;
      REQUIRE(std::regex_search(line, m, std::regex("listening on (127\\.0\\.0\\.1:[0-9]+)")));
      list += (list.empty() ? "" : ",") + std::string(m[1]);
      addresses.push_back(m[1]);
    }
    flags = "--nodes " + list + " --token-file " + dir / "token" + " " + coordinator_flags;
  }
  // Node i again at its old address (after it was killed).
  void restart(size_t i) {
    nodes[i] = std::make_unique<Child>(kShoal + " node --listen " + addresses[i] + " --token-file " + dir / "token",
                                       dir / ("node" + std::to_string(i) + "-again.log"));
    std::string line;
    REQUIRE(nodes[i]->read_line(line, 10s));
    REQUIRE(line.find("listening on " + addresses[i]) != std::string::npos);
  }
};

}  // namespace shoal::test
