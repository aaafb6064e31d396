// A small Jinja interpreter: the subset that chat templates of DeepSeek (and similar models)
// use, with Jinja2's semantics as Hugging Face transformers configures it (trim_blocks,
// lstrip_blocks, loop controls, tojson, raise_exception). A construct it does not know is an
// error naming the template line, never a silently different prompt. docs/chat-template.md
// lists what is supported.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "common/status.h"
#include "text/jinja/limits.h"

namespace shoal::jinja {

class Template {
 public:
  // Syntax errors, unknown tags, filters and tests fail here: "chat template line 7: unknown
  // filter 'foo'".
  static StatusOr<Template> parse(const std::string& source);
  // Renders with `context` (a JSON object) as the global variables (messages,
  // add_generation_prompt, bos_token, ...). Runtime errors (raise_exception, a bad call) name
  // the line. Objects keep their key order for tojson and iteration: nlohmann::json sorts
  // keys, nlohmann::ordered_json keeps them as written (as Python dicts do).
  // `limits`: the step budget and deadline of this render (text/jinja/limits.h).
  StatusOr<std::string> render(const nlohmann::json& context, RenderLimits limits = {}) const;
  StatusOr<std::string> render(const nlohmann::ordered_json& context, RenderLimits limits = {}) const;

  struct Node;  // the parsed tree (jinja/ast.h)

 private:
  std::shared_ptr<const Node> root_;
};

}  // namespace shoal::jinja
