// libFuzzer target: arbitrary chat templates rendered over a fixed set of messages (roles,
// reasoning, tool calls and outputs) and tools, as transformers passes them; or, when the input
// holds a line "---", the template above it over the messages given as JSON below it. A render
// has a small step budget here (the server's is larger): nothing may crash or run past it, and
// every error names what was wrong.
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "text/jinja/jinja.h"

namespace {

const nlohmann::ordered_json& fixed_context() {
  static const nlohmann::ordered_json c = nlohmann::ordered_json::parse(R"({
    "messages": [
      {"role": "system", "content": "Be brief. {{ not jinja }}"},
      {"role": "user", "content": "Weather in Paris? 東京 🚀"},
      {"role": "assistant", "content": null, "tool_calls": [{"type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
      {"role": "tool", "content": "21 C"},
      {"role": "assistant", "content": "<think>\nhm\n</think>\n\nIt is 21 C."}],
    "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d",
      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
    "add_generation_prompt": true, "documents": null,
    "bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>",
    "pad_token": "<｜end▁of▁sentence｜>"})");
  return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  std::string source(input);
  nlohmann::ordered_json context = fixed_context();
  if (const size_t cut = input.find("\n---\n"); cut != std::string_view::npos) {
    source = std::string(input.substr(0, cut));
    auto messages = nlohmann::ordered_json::parse(input.substr(cut + 5), nullptr, false);
    if (!messages.is_discarded()) context["messages"] = std::move(messages);
  }
  auto t = shoal::jinja::Template::parse(source);
  if (!t.ok()) {
    if (t.status().message().empty()) std::abort();
    return 0;
  }
  shoal::jinja::RenderLimits limits;
  limits.max_steps = 200000;
  limits.max_seconds = 2.0;
  auto out = t->render(context, limits);
  if (!out.ok() && out.status().message().empty()) std::abort();
  return 0;
}
