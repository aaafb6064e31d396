// libFuzzer target: generated text through DeepSeek's tool-call parser, whole and streamed. The
// first byte picks the stream's chunk sizes; the rest is the text. Invariants: an error keeps the
// whole text as content and no call; a parse without error has named calls whose arguments are
// JSON objects; the stream, cut anywhere, gives the same content and calls as the whole parse.
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "text/tool_calls.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const unsigned step = 1 + data[0] % 13;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  const shoal::ParsedToolCalls whole = shoal::parse_tool_calls(text, "f");
  if (!whole.error.empty()) {
    if (!whole.calls.empty() || whole.content != text) std::abort();
  } else {
    for (const shoal::ToolCall& c : whole.calls) {
      if (c.name.empty()) std::abort();
      const auto j = nlohmann::json::parse(c.arguments, nullptr, false);
      if (j.is_discarded() || !j.is_object()) std::abort();
    }
  }

  shoal::ToolCallStream stream("f");
  std::string content;
  std::vector<shoal::ToolCall> calls;
  auto take = [&](const shoal::ToolCallStream::Delta& d) {
    content += d.content;
    for (const auto& c : d.calls) {
      if (c.index < 0 || size_t(c.index) > calls.size()) std::abort();
      if (size_t(c.index) == calls.size()) {
        if (c.id.empty()) std::abort();  // a call's first piece carries its id
        calls.push_back({c.id, c.name, ""});
      } else if (!c.id.empty() || !c.name.empty() || size_t(c.index) + 1 != calls.size()) {
        std::abort();  // later pieces add arguments to the newest call only
      }
      calls.back().arguments += c.arguments;
    }
  };
  for (size_t at = 0; at < text.size(); at += step) take(stream.push(text.substr(at, step)));
  take(stream.finish());
  if (whole.error.empty()) {
    if (content != whole.content || calls.size() != whole.calls.size()) std::abort();
    for (size_t i = 0; i < calls.size(); ++i)
      if (calls[i].name != whole.calls[i].name || calls[i].arguments != whole.calls[i].arguments ||
          calls[i].id != whole.calls[i].id)
        std::abort();
  }
  return 0;
}
