// Constrained decoding through shoal serve and shoal batch, on a small synthesized model with
// DeepSeek-V3's vocabulary whose free output is noise: response_format json_schema / json_object
// and tool_choice required / named must still give documents and calls that parse and validate
// (against a validator written in the tests, support/json_schema_check.h), streamed and not, in
// batches, and request errors name the field and the keyword.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "serve/openai.h"
#include "support/json_schema_check.h"
#include "support/serve.h"
#include "text/tokenizer/tokenizer.h"

using namespace shoal::test;
namespace srv = shoal::server;
using shoal::OutputGrammars;
using shoal::Tokenizer;

namespace {

// Schemas a user would send: an extraction record, enums and nesting, arrays with bounds,
// anyOf and $ref (Pydantic's shapes), formats, a recursive tree.
const std::vector<json>& schemas() {
  static const std::vector<json> s = {
      json::parse(R"({"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
          "age": {"type": "integer"}, "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}},
          "required": ["name", "age", "tags"], "additionalProperties": false})"),
      json::parse(R"({"type": "object", "properties": {"when": {"type": "string", "format": "date"},
          "id": {"type": "string", "format": "uuid"}, "ok": {"type": "boolean"}, "score": {"type": "number"},
          "note": {"anyOf": [{"type": "string", "maxLength": 8}, {"type": "null"}]}}, "required": ["when", "id", "ok"]})"),
      json::parse(R"({"$defs": {"Point": {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
          "required": ["x", "y"], "additionalProperties": false}},
          "type": "object", "properties": {"points": {"type": "array", "items": {"$ref": "#/$defs/Point"}, "minItems": 1, "maxItems": 2},
          "label": {"const": "path"}}, "required": ["points", "label"], "additionalProperties": false})"),
      json::parse(R"({"$defs": {"Node": {"type": "object", "properties": {"v": {"type": "integer"},
          "kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}, "maxItems": 2}}, "required": ["v", "kids"]}},
          "$ref": "#/$defs/Node"})"),
      json::parse(R"({"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 4}, "minItems": 2, "maxItems": 3})"),
  };
  return s;
}

json schema_body(const std::string& model, const json& schema, int seed, int max_tokens = 300) {
  json b = chat_body(model, "Reply in JSON.", max_tokens);
  b["temperature"] = 1.0;
  b["seed"] = seed;
  b["response_format"] = {{"type", "json_schema"}, {"json_schema", {{"name", "record"}, {"strict", true}, {"schema", schema}}}};
  return b;
}

json weather_tools() {
  return json::parse(R"([
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
      "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
        "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"], "additionalProperties": false}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object",
      "properties": {"tz": {"type": "string", "maxLength": 6}}, "required": ["tz"], "additionalProperties": false}}},
    {"type": "function", "function": {"name": "ping"}}])");
}

const json& tool_schema(const json& tools, const std::string& name) {
  for (const json& t : tools)
    if (t["function"]["name"] == name) return t["function"].contains("parameters") ? t["function"]["parameters"] : tools[0];
  FAIL("no tool " << name);
  return tools;
}

// The tool calls of a chat response: each named after a tool, its arguments a JSON object valid
// against the tool's parameters (any object for a tool without them).
void check_calls(const json& message, const json& tools, std::set<std::string> allowed, size_t max_calls) {
  INFO(message.dump());
  REQUIRE(message["tool_calls"].is_array());
  REQUIRE(!message["tool_calls"].empty());
  CHECK(message["tool_calls"].size() <= max_calls);
  CHECK(message["content"].is_null());
  std::set<std::string> ids;
  for (const json& c : message["tool_calls"]) {
    CHECK(c["type"] == "function");
    ids.insert(c["id"].get<std::string>());
    const std::string name = c["function"]["name"];
    CHECK(allowed.count(name) == 1);
    const json args = json::parse(c["function"]["arguments"].get<std::string>());
    REQUIRE(args.is_object());
    if (name == "ping") CHECK(args == json::object());  // no parameters: {}
    else CHECK(schema_valid(args, tool_schema(tools, name)));
  }
  CHECK(ids.size() == message["tool_calls"].size());
}

}  // namespace

TEST_CASE("structured output: request fields are checked and errors name them", "[structured]") {
  const std::vector<std::string> models{"m"};
  auto parse_text = [&](const std::string& text) {
    srv::CompletionRequest r;
    auto e = srv::parse_request(text, srv::Endpoint::kChat, models, r);
    return std::make_pair(e, r);
  };
  auto parse = [&](json body) {
    body["model"] = "m";
    if (!body.contains("messages")) body["messages"] = {{{"role", "user"}, {"content", "x"}}};
    return parse_text(body.dump());
  };
  auto error = [&](const json& body, const std::string& param, const std::string& says) {
    auto [e, r] = parse(body);
    INFO(body.dump());
    REQUIRE(e.has_value());
    CHECK(e->status == 400);
    CHECK(e->param == param);
    CHECK_THAT(e->message, Catch::Contains(says));
  };
  error({{"response_format", {{"type", "xml"}}}}, "response_format", "'xml' is not one of 'text', 'json_object', 'json_schema'");
  error({{"response_format", {{"type", "json_schema"}}}}, "response_format", "'response_format.json_schema' must be an object");
  error({{"response_format", {{"type", "json_schema"}, {"json_schema", {{"name", "x"}, {"schema", 3}}}}}},
        "response_format.json_schema.schema", "an object");
  error({{"tool_choice", "required"}}, "tool_choice", "'tool_choice' = 'required' needs 'tools'");
  error({{"tools", weather_tools()}, {"tool_choice", {{"type", "function"}, {"function", {{"name", "nope"}}}}}}, "tool_choice",
        "names the function 'nope', which is not in 'tools'");
  error({{"tools", weather_tools()}, {"tool_choice", {{"type", "function"}}}}, "tool_choice", "as an object must be");
  error({{"tools", weather_tools()}, {"parallel_tool_calls", "no"}}, "parallel_tool_calls", "");

  auto [e, r] = parse({{"tools", weather_tools()}, {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_time"}}}}},
                       {"parallel_tool_calls", false}});
  REQUIRE_FALSE(e.has_value());
  CHECK(r.output.tools_required);
  CHECK(r.output.named_tool == "get_time");
  CHECK_FALSE(r.output.parallel_tool_calls);
  auto [e2, r2] = parse({{"response_format", {{"type", "json_object"}}}});
  REQUIRE_FALSE(e2.has_value());
  CHECK(r2.output.format == shoal::OutputSpec::Format::kJsonObject);
  // The schema keeps the client's key order (properties are written in it).
  auto [e3, r3] = parse_text(R"({"model": "m", "messages": [{"role": "user", "content": "x"}],
      "response_format": {"type": "json_schema", "json_schema": {"name": "x",
      "schema": {"type": "object", "properties": {"zeta": {"type": "integer"}, "alpha": {"type": "integer"}}}}}})");
  REQUIRE_FALSE(e3.has_value());
  CHECK(r3.output.schema["properties"].begin().key() == "zeta");
}

TEST_CASE("structured output: schemas outside the subset are 400s naming the keyword", "[structured]") {
  auto tok = Tokenizer::load(fixture("tokenizer-deepseek-v3"));
  REQUIRE(tok.ok());
  OutputGrammars grammars(**tok);
  auto prepare = [&](json body, OutputGrammars* g) {
    body["model"] = "m";
    body["messages"] = {{{"role", "user"}, {"content", "x"}}};
    srv::CompletionRequest r;
    REQUIRE_FALSE(srv::parse_request(body.dump(), srv::Endpoint::kChat, {"m"}, r).has_value());
    srv::Prepared p;
    return srv::prepare_request(r, **tok, 4096, 129280, (*tok)->eos_id(), p, g);
  };
  const json bad = {{"type", "object"}, {"properties", {{"n", {{"type", "integer"}, {"minimum", 3}}}}}};
  auto e = prepare({{"response_format", {{"type", "json_schema"}, {"json_schema", {{"name", "x"}, {"schema", bad}}}}}}, &grammars);
  REQUIRE(e.has_value());
  CHECK(e->status == 400);
  CHECK(e->param == "response_format");
  CHECK_THAT(e->message, Catch::Contains("/properties/n") && Catch::Contains("'minimum'"));
  // Without the grammar compiler (a server that was not set up for it): a 500, not a silent ignore.
  e = prepare({{"response_format", {{"type", "json_object"}}}}, nullptr);
  REQUIRE(e.has_value());
  CHECK(e->status == 500);
  // And a fine schema prepares a constraint.
  e = prepare({{"response_format", {{"type", "json_object"}}}}, &grammars);
  CHECK_FALSE(e.has_value());
}

TEST_CASE("serve: response_format json_schema and json_object give valid documents, streamed or not", "[structured][serve]") {
  Server s(models().v3);
  for (size_t k = 0; k < schemas().size(); ++k)
    for (int seed : {1, 2, 3}) {
      INFO("schema " << k << " seed " << seed);
      const json body = schema_body("tiny-chat", schemas()[k], seed);
      const Reply r = s.post("/v1/chat/completions", body);
      REQUIRE(r.status == 200);
      const json j = r.j();
      const std::string content = j["choices"][0]["message"]["content"];
      INFO(content);
      CHECK(j["choices"][0]["finish_reason"] == "stop");
      const json doc = json::parse(content);
      CHECK(schema_valid(doc, schemas()[k]));
      if (seed == 1) {  // the same tokens streamed
        json streamed = body;
        streamed["stream"] = true;
        const Reply sr = s.post("/v1/chat/completions", streamed);
        REQUIRE(sr.status == 200);
        const Sse sse = parse_sse(sr.body, true);
        CHECK(sse.text == content);
        CHECK(sse.finish == "stop");
      }
    }
  // json_object: any object, whose strings the noise model would never close; a bias on the
  // structural characters lets it finish within max_tokens.
  auto tok = Tokenizer::load(models().v3);
  REQUIRE(tok.ok());
  json bias = json::object();
  for (const char* c : {"\"", "}", ":", "1"}) bias[std::to_string((*tok)->token_id(c))] = 6;
  for (int seed : {4, 5}) {
    json body = chat_body("tiny-chat", "JSON please", 300);
    body["temperature"] = 1.0;
    body["seed"] = seed;
    body["logit_bias"] = bias;
    body["response_format"] = {{"type", "json_object"}};
    const Reply r = s.post("/v1/chat/completions", body);
    REQUIRE(r.status == 200);
    const std::string content = r.j()["choices"][0]["message"]["content"];
    INFO(content);
    CHECK(json::parse(content).is_object());
  }
  // n = 3: each choice its own matcher over the same grammar, each the answer of its seed alone.
  {
    json body = schema_body("tiny-chat", schemas()[0], 40);
    body["n"] = 3;
    const Reply r = s.post("/v1/chat/completions", body);
    REQUIRE(r.status == 200);
    const json j = r.j();
    REQUIRE(j["choices"].size() == 3);
    for (int i = 0; i < 3; ++i) {
      INFO("choice " << i);
      const std::string content = j["choices"][i]["message"]["content"];
      CHECK(schema_valid(json::parse(content), schemas()[0]));
      const Reply alone = s.post("/v1/chat/completions", schema_body("tiny-chat", schemas()[0], 40 + i));
      CHECK(alone.j()["choices"][0]["message"]["content"] == content);
    }
  }
  // A bad schema is a 400 naming the keyword; the server goes on.
  const Reply bad = s.post("/v1/chat/completions", schema_body("tiny-chat", {{"type", "string"}, {"pattern", "^a+$"}}, 1));
  CHECK(bad.status == 400);
  CHECK_THAT(bad.body, Catch::Contains("'pattern'"));
  CHECK(s.stop() == 0);
}

TEST_CASE("serve: a constrained request gives the same tokens alone and among 8 concurrent ones", "[structured][serve]") {
  Server s(models().v3, "--local-nodes 2");
  std::vector<json> bodies;
  for (int i = 0; i < 8; ++i) {
    json b = i % 2 ? schema_body("tiny-chat", schemas()[size_t(i) % schemas().size()], 10 + i, 120)
                   : chat_body("tiny-chat", "plain " + std::to_string(i), 24);
    bodies.push_back(b);
  }
  std::vector<std::string> alone;
  for (const json& b : bodies) {
    const Reply r = s.post("/v1/chat/completions", b);
    REQUIRE(r.status == 200);
    alone.push_back(r.j()["choices"][0]["message"].value("content", ""));
  }
  TempDir dir;
  std::string cmd;
  for (size_t i = 0; i < bodies.size(); ++i) {
    write_file(dir / ("b" + std::to_string(i)), bodies[i].dump());
    cmd += "curl -sS --max-time 120 -H 'Content-Type: application/json' --data-binary @" + dir / ("b" + std::to_string(i)) +
           " " + s.url("/v1/chat/completions") + " > " + dir / ("o" + std::to_string(i)) + " & ";
  }
  int status = -1;
  run_command(cmd + "wait", &status);
  for (size_t i = 0; i < bodies.size(); ++i) {
    INFO("request " << i);
    const json j = json::parse(read_file(dir / ("o" + std::to_string(i))));
    CHECK(j["choices"][0]["message"].value("content", "") == alone[i]);
  }
  CHECK(s.stop() == 0);
}

TEST_CASE("serve: tool_choice required and named force valid calls; auto stays free", "[structured][tools][serve]") {
  Server s(models().tools);
  const json tools = weather_tools();
  for (int seed : {1, 2, 3, 4}) {
    INFO("seed " << seed);
    json body = chat_body("tiny-tools", "What is the weather in Paris?", 400);
    body["temperature"] = 1.0;
    body["seed"] = seed;
    body["tools"] = tools;
    body["tool_choice"] = "required";
    Reply r = s.post("/v1/chat/completions", body);
    REQUIRE(r.status == 200);
    json j = r.j();
    CHECK(j["choices"][0]["finish_reason"] == "tool_calls");
    check_calls(j["choices"][0]["message"], tools, {"get_weather", "get_time", "ping"}, 100);
    // Named, one call only.
    body["tool_choice"] = {{"type", "function"}, {"function", {{"name", "get_time"}}}};
    body["parallel_tool_calls"] = false;
    r = s.post("/v1/chat/completions", body);
    REQUIRE(r.status == 200);
    j = r.j();
    CHECK(j["choices"][0]["finish_reason"] == "tool_calls");
    check_calls(j["choices"][0]["message"], tools, {"get_time"}, 1);
    // Streamed: the same calls, arguments in pieces.
    body["stream"] = true;
    const Reply sr = s.post("/v1/chat/completions", body);
    REQUIRE(sr.status == 200);
    const Sse sse = parse_sse(sr.body, true);
    CHECK(sse.finish == "tool_calls");
    std::string args;
    for (const json& c : sse.chunks)
      for (const json& ch : c["choices"])
        if (ch["delta"].contains("tool_calls"))
          for (const json& t : ch["delta"]["tool_calls"]) args += t["function"].value("arguments", "");
    CHECK(args == j["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"].get<std::string>());
  }
  // auto: the noise model answers in text; no constraint, no calls.
  json body = chat_body("tiny-tools", "Hi", 8);
  body["tools"] = tools;
  const Reply r = s.post("/v1/chat/completions", body);
  REQUIRE(r.status == 200);
  CHECK(r.j()["choices"][0]["finish_reason"] == "length");
  // A tool whose parameters use an unsupported keyword, forced: 400 naming the tool.
  json bad_tools = tools;
  bad_tools[1]["function"]["parameters"]["properties"]["tz"]["pattern"] = "^[A-Z]+$";
  body["tools"] = bad_tools;
  body["tool_choice"] = "required";
  const Reply bad = s.post("/v1/chat/completions", body);
  CHECK(bad.status == 400);
  CHECK_THAT(bad.body, Catch::Contains("tools[1].function.parameters") && Catch::Contains("'pattern'"));
  CHECK(s.stop() == 0);
}

TEST_CASE("with R1's reasoning, the constraint starts after </think>", "[structured][tools]") {
  auto tok = Tokenizer::load(fixture("tokenizer-deepseek-v3"));
  REQUIRE(tok.ok());
  (*tok)->set_vocab_limit(129280);
  OutputGrammars grammars(**tok);
  shoal::OutputSpec spec;
  spec.tools = nlohmann::ordered_json::parse(weather_tools().dump());
  spec.tools_required = true;
  spec.starts_in_reasoning = true;
  auto compiled = grammars.get(spec);
  REQUIRE(compiled.ok());
  const int32_t eos = (*tok)->eos_id();
  auto run = [&](const std::string& text, bool& finished) {
    shoal::GrammarMatcher m(*compiled);
    for (int32_t id : (*tok)->encode(text, false)) {
      INFO("token " << id);
      if (!shoal::mask_has(m.allowed(), id) || !m.accept_token(id)) return false;
      CHECK_FALSE(shoal::mask_has(m.allowed(), eos));  // EOS is the scheduler's, never in the mask
    }
    finished = m.finished();
    return true;
  };
  bool finished = false;
  const std::string call = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n"
                           "{\"tz\": \"UTC\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
  CHECK(run("The user wants the time. <b>Call</b> a tool, maybe </thin...</think>\n\n" + call, finished));
  CHECK(finished);
  CHECK(run("</think>" + call, finished));
  CHECK(run("Thinking, still thinking", finished));  // free text while reasoning
  CHECK_FALSE(finished);
  CHECK(run("no reasoning end" + call, finished));  // a call inside the reasoning is reasoning text
  CHECK_FALSE(finished);
  CHECK_FALSE(run("done</think>\n\nSure, here it is: " + call, finished));  // text instead of a call
  CHECK_FALSE(run("done</think>" + call + "</think>", finished));  // nothing after the calls
}

TEST_CASE("batch: each line its own schema; a bad schema or n > 1 is that line's error", "[structured][batch]") {
  TempDir dir;
  std::string in;
  for (size_t i = 0; i < 10; ++i) {
    const json body = schema_body("tiny-chat", schemas()[i % schemas().size()], int(i), 200);
    in += json{{"custom_id", "r" + std::to_string(i)}, {"method", "POST"}, {"url", "/v1/chat/completions"}, {"body", body}}.dump() + "\n";
  }
  const json bad = schema_body("tiny-chat", {{"type", "integer"}, {"multipleOf", 3}}, 1);
  in += json{{"custom_id", "bad"}, {"method", "POST"}, {"url", "/v1/chat/completions"}, {"body", bad}}.dump() + "\n";
  json two = chat_body("tiny-chat", "x", 4);
  two["n"] = 2;  // choices are serve's: a batch line is one answer
  in += json{{"custom_id", "n2"}, {"method", "POST"}, {"url", "/v1/chat/completions"}, {"body", two}}.dump() + "\n";
  write_file(dir / "in.jsonl", in);
  int status = -1;
  const std::string out = run_command("timeout 300 " + kShoal + " batch --model " + models().v3 + " --slots 4 -i " +
                                          dir / "in.jsonl" + " -o " + dir / "out.jsonl" + " 2>&1",
                                      &status);
  INFO(out);
  REQUIRE(status == 0);
  std::istringstream results(read_file(dir / "out.jsonl"));
  std::set<std::string> seen;
  for (std::string line; std::getline(results, line);) {
    const json rec = json::parse(line);
    const std::string id = rec["custom_id"];
    INFO(line);
    CHECK(seen.insert(id).second);
    if (id == "bad") {
      CHECK_THAT(rec["error"]["message"].get<std::string>(), Catch::Contains("'multipleOf'"));
      continue;
    }
    if (id == "n2") {
      CHECK(rec["error"]["code"] == "unsupported_parameter");
      CHECK_THAT(rec["error"]["message"].get<std::string>(), Catch::Contains("'n' > 1"));
      continue;
    }
    const size_t i = std::stoul(id.substr(1));
    const json doc = json::parse(rec["response"]["body"]["choices"][0]["message"]["content"].get<std::string>());
    CHECK(schema_valid(doc, schemas()[i % schemas().size()]));
  }
  CHECK(seen.size() == 12);
}

TEST_CASE("serve: OpenAI's client, LangChain's ChatDeepSeek and the Vercel AI SDK drive tool loops and structured output",
          "[structured][tools][serve][js]") {
  require_js_clients({"openai", "@langchain/deepseek", "ai", "@ai-sdk/openai-compatible", "zod"});
  const std::string mode = GENERATE(as<std::string>{}, "", "tcp");
  INFO("mode: " << mode);
  std::optional<TcpNodes> tcp;
  if (mode == "tcp") tcp.emplace(2);
  TempDir keys;
  write_file(keys / "keys", "sk-agents\n");
  Server s(models().tools, (tcp ? tcp->flags : mode) + " --api-key-file " + keys / "keys");
  int status = -1;
  const std::string out = run_command("cd " + kJsDir + " && SHOAL_BASE_URL=" + s.url("") +
                                          " SHOAL_API_KEY=sk-agents SHOAL_MODEL=tiny-tools timeout 600 node agents.test.mjs 2>&1",
                                      &status);
  INFO(out);
  CHECK(status == 0);
  CHECK_THAT(out, Catch::Contains(" 0 failed"));
  CHECK(s.stop() == 0);
}
