// DeepSeek's tool-call text parsed back into OpenAI tool_calls, whole and streamed: the calls as
// the R1 chat template renders them (so as the model was trained to write them), V3.1's form,
// malformed outputs, and every way of cutting the text into stream chunks.
#include <catch2/catch.hpp>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "text/tool_calls.h"

using namespace shoal;
using nlohmann::json;

namespace {

const std::string kBegin(kToolCallsBegin), kEnd(kToolCallsEnd), kCall(kToolCallBegin), kCallEnd(kToolCallEnd),
    kSep(kToolSep);

// One call as DeepSeek's V3/R1 templates render it (and so as the model writes it).
std::string r1_call(const std::string& name, const std::string& args) {
  return kCall + "function" + kSep + name + "\n```json\n" + args + "\n```" + kCallEnd;
}

struct Call {
  std::string name, arguments;
};

// The stream's deltas put back together: content, and per call (by index) its id, name and
// arguments; also checks that each call's id and name come in its first delta and only there.
struct Streamed {
  std::string content;
  std::vector<Call> calls;
  std::vector<std::string> ids;
};

Streamed stream(const std::string& text, const std::vector<size_t>& cuts) {
  ToolCallStream s("x");
  Streamed out;
  auto take = [&](const ToolCallStream::Delta& d) {
    out.content += d.content;
    for (const auto& c : d.calls) {
      if (size_t(c.index) == out.calls.size()) {
        REQUIRE(!c.id.empty());
        REQUIRE(!c.name.empty());
        out.calls.push_back({c.name, ""});
        out.ids.push_back(c.id);
      } else {
        REQUIRE(size_t(c.index) + 1 == out.calls.size());
        REQUIRE(c.id.empty());
        REQUIRE(c.name.empty());
      }
      out.calls.back().arguments += c.arguments;
    }
  };
  size_t at = 0;
  for (size_t cut : cuts) {
    take(s.push(std::string_view(text).substr(at, cut - at)));
    at = cut;
  }
  take(s.push(std::string_view(text).substr(at)));
  take(s.finish());
  return out;
}

void check_streams_like_whole(const std::string& text) {
  const ParsedToolCalls whole = parse_tool_calls(text, "x");
  REQUIRE(whole.error.empty());
  auto same = [&](const Streamed& s) {
    CHECK(s.content == whole.content);
    REQUIRE(s.calls.size() == whole.calls.size());
    for (size_t i = 0; i < s.calls.size(); ++i) {
      CHECK(s.calls[i].name == whole.calls[i].name);
      CHECK(s.calls[i].arguments == whole.calls[i].arguments);
      CHECK(s.ids[i] == whole.calls[i].id);
    }
  };
  same(stream(text, {}));
  // Every single cut, then random chunkings (1-8 bytes, as tokens decode).
  for (size_t cut = 1; cut < text.size(); ++cut) same(stream(text, {cut}));
  std::mt19937 rng(7);
  for (int round = 0; round < 200; ++round) {
    std::vector<size_t> cuts;
    for (size_t at = 1 + rng() % 8; at < text.size(); at += 1 + rng() % 8) cuts.push_back(at);
    same(stream(text, cuts));
  }
}

}  // namespace

TEST_CASE("tool calls: text with none is all content", "[tool_calls]") {
  for (std::string text : {"", "Hello.", "  spaced  \n", "mentions <｜tool▁call▁begin｜> alone"}) {
    const ParsedToolCalls p = parse_tool_calls(text, "x");
    CHECK(p.calls.empty());
    CHECK(p.error.empty());
    CHECK(p.content == text);
    CHECK(stream(text, {}).content == text);
  }
}

TEST_CASE("tool calls: the R1 template's own renders parse back to the messages' calls", "[tool_calls]") {
  // Every assistant message with tool_calls in the fixture's conversations, rendered as the
  // template renders it (Jinja2's output in `rendered`): the calls in it must come back.
  std::ifstream in(std::string(SHOAL_FIXTURES) + "/chat-template-deepseek-r1/chat.jsonl");
  REQUIRE(in.good());
  std::string line;
  int checked = 0;
  while (std::getline(in, line)) {
    const json c = json::parse(line);
    const std::string rendered = c["rendered"];
    size_t from = 0;
    for (const json& m : c["messages"]) {
      if (m["role"] != "assistant" || !m.contains("tool_calls") || m["tool_calls"].empty()) continue;
      // The block as rendered: from the calls' begin marker to the last call's end marker.
      const size_t begin = rendered.find(kBegin, from);
      REQUIRE(begin != std::string::npos);
      size_t end = begin;
      for (size_t k = 0; k < m["tool_calls"].size(); ++k) end = rendered.find(kCallEnd, end) + kCallEnd.size();
      from = end;
      const std::string block = rendered.substr(begin, end - begin) + kEnd;
      const ParsedToolCalls p = parse_tool_calls(block, "x");
      INFO(block);
      REQUIRE(p.error.empty());
      CHECK(p.content.empty());
      REQUIRE(p.calls.size() == m["tool_calls"].size());
      for (size_t k = 0; k < p.calls.size(); ++k) {
        CHECK(p.calls[k].name == m["tool_calls"][k]["function"]["name"].get<std::string>());
        CHECK(p.calls[k].arguments == m["tool_calls"][k]["function"]["arguments"].get<std::string>());
        CHECK(p.calls[k].id == "call_x_" + std::to_string(k));
      }
      ++checked;
    }
  }
  CHECK(checked >= 5);
}

TEST_CASE("tool calls: several calls, content before them, V3.1's form, a missing end marker", "[tool_calls]") {
  const std::string two = kBegin + r1_call("get_weather", R"({"city": "Paris"})") + "\n" +
                          r1_call("get_time", R"({"tz": "Europe/Paris", "n": [1, 2]})") + kEnd;
  ParsedToolCalls p = parse_tool_calls("Let me check.\n\n" + two, "r");
  REQUIRE(p.error.empty());
  CHECK(p.content == "Let me check.\n\n");
  REQUIRE(p.calls.size() == 2);
  CHECK(p.calls[0].name == "get_weather");
  CHECK(p.calls[0].arguments == R"({"city": "Paris"})");
  CHECK(p.calls[0].id == "call_r_0");
  CHECK(p.calls[1].name == "get_time");
  CHECK(p.calls[1].arguments == R"({"tz": "Europe/Paris", "n": [1, 2]})");
  CHECK(p.calls[1].id == "call_r_1");

  // V3-0324/V3.1: name<sep>args, no type, no fence, calls back to back.
  p = parse_tool_calls(kBegin + kCall + "search" + kSep + R"({"q":"a b"})" + kCallEnd + kCall + "open" + kSep +
                           R"({"id":3})" + kCallEnd + kEnd,
                       "r");
  REQUIRE(p.error.empty());
  REQUIRE(p.calls.size() == 2);
  CHECK(p.calls[0].name == "search");
  CHECK(p.calls[0].arguments == R"({"q":"a b"})");
  CHECK(p.calls[1].name == "open");
  CHECK(p.calls[1].arguments == R"({"id":3})");

  // Generation ended after the last call (the R1 template itself omits the end marker after a
  // single call): accepted.
  p = parse_tool_calls(kBegin + r1_call("f", "{}"), "r");
  REQUIRE(p.error.empty());
  REQUIRE(p.calls.size() == 1);
  CHECK(p.calls[0].arguments == "{}");

  for (const std::string& text :
       {two, "Let me check.\n\n" + two, kBegin + r1_call("f", "{}"),
        kBegin + kCall + "search" + kSep + R"({"q":"a b"})" + kCallEnd + kCall + "open" + kSep + R"({"id":3})" + kCallEnd + kEnd,
        // Arguments with backticks, newlines and markers' look-alikes inside strings.
        kBegin + r1_call("code", "{\"src\": \"```py\\nx = 1\\n```\", \"t\": \"<｜tool\"}") + kEnd,
        kBegin + r1_call("nested", "{\n  \"a\": {\"b\": [1, {\"c\": null}]},\n  \"d\": \"e\"\n}") + kEnd,
        // Found by fuzz_tool_calls: V3.1's name<sep> form with fenced arguments (the stream kept
        // the fence), and "function" with no newline before the call's end (a name).
        kBegin + kCall + "search" + kSep + "```json\n{\"q\": 1}\n```" + kCallEnd + kEnd,
        kBegin + kCall + "function" + kSep + "{\"q\": 1}" + kCallEnd + kEnd,
        // A closing fence right after the object, and backticks inside a string at a chunk's end.
        kBegin + kCall + "function" + kSep + "g\n```json\n{\"s\": \"a``\"}```" + kCallEnd + kEnd}) {
    INFO(text);
    check_streams_like_whole(text);
  }
}

TEST_CASE("tool calls: malformed blocks are errors and keep the whole text as content", "[tool_calls]") {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {kBegin + kCall + "function" + "get\n```json\n{}\n```" + kCallEnd + kEnd, "has no"},  // no separator
      {kBegin + r1_call("f", "{}").substr(0, r1_call("f", "{}").size() - kCallEnd.size()) + kEnd, "has no"},
      {kBegin + r1_call("f", "{\"a\": 1") + kEnd, "not a JSON object"},
      {kBegin + r1_call("f", "[1, 2]") + kEnd, "not a JSON object"},
      {kBegin + r1_call("f", "") + kEnd, "not a JSON object"},
      {kBegin + kCall + "function" + kSep + "\n```json\n{}\n```" + kCallEnd + kEnd, "empty name"},
      {kBegin + r1_call("f", "{}") + kEnd + " trailing words", "text after"},
      {kBegin + "chatter" + r1_call("f", "{}") + kEnd, "expected"},
      {kBegin + kEnd, "holds no call"},
      // Found by fuzz_tool_calls: a NUL byte ends nlohmann's input, so text after it passed as
      // part of a JSON object.
      {kBegin + r1_call("f", std::string("{\"a\": 1}\0garbage", 16)) + kEnd, "not a JSON object"},
  };
  for (const auto& [text, why] : cases) {
    INFO(text);
    const ParsedToolCalls p = parse_tool_calls(text, "x");
    CHECK(p.calls.empty());
    CHECK_THAT(p.error, Catch::Contains(why));
    CHECK(p.content == text);
  }
}

TEST_CASE("tool calls: a stream that ends inside a call releases what it held", "[tool_calls]") {
  // max_tokens cut the call: the name and the arguments so far still reach the client.
  const std::string cut = kBegin + kCall + "function" + kSep + "f\n```json\n{\"a\": 1";
  const Streamed s = stream(cut, {cut.size() - 3});
  REQUIRE(s.calls.size() == 1);
  CHECK(s.calls[0].name == "f");
  CHECK(s.calls[0].arguments == "{\"a\": 1");
  // Text that only starts like the block's marker is content.
  const std::string almost = "see <｜tool▁calls";
  CHECK(stream(almost, {5}).content == almost);
}
