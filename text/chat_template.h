// Chat prompts: render a model's chat_template (tokenizer_config.json) for OpenAI-style
// messages, exactly as transformers' apply_chat_template renders it.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "common/status.h"
#include "text/tokenizer/tokenizer.h"

namespace shoal {

struct ChatRequest {
  nlohmann::json messages = nlohmann::json::array();  // [{"role", "content", ...}]
  bool add_generation_prompt = true;
  // OpenAI's `tools` array, passed as transformers passes it (keys in the client's order, as a
  // Python dict keeps them, so that tojson writes the schema as the client wrote it); null: none.
  nlohmann::ordered_json tools = nullptr;
};

// Whether a template renders tool definitions: it reads the `tools` variable (DeepSeek-R1's
// original template renders tool calls and outputs but not the definitions, so a model served
// with it cannot know which tools exist).
bool template_renders_tools(const std::string& tmpl);

// Renders `tmpl` with messages, add_generation_prompt, bos_token, eos_token and pad_token (=
// eos_token), as transformers passes them. Messages must be an array of objects with a string
// "role"; anything else is an error naming the message.
StatusOr<std::string> render_chat(const std::string& tmpl, const ChatRequest& req, const std::string& bos_token,
                                  const std::string& eos_token);
// The tokenizer's own template and special tokens.
StatusOr<std::string> render_chat(const Tokenizer& tok, const ChatRequest& req);

}  // namespace shoal
