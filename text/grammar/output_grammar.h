// The grammar of what one chat request may answer, from its OpenAI fields: response_format
// (json_object, json_schema) and forced tool calls (tool_choice "required" or a named function,
// with parallel_tool_calls), written in the tool-call syntax the model's chat template teaches,
// after the reasoning block when the prompt opened one. OutputGrammars compiles them over one
// tokenizer's vocabulary and keeps the recent ones, so requests that repeat a schema (a batch
// job) share what matching it has learnt. docs/structured-output.md has the whole path.
#pragma once

#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "text/grammar/matcher.h"

namespace shoal {

class Tokenizer;

// How a template writes a call: DeepSeek V3/R1's fenced form
//   <｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGS\n```<｜tool▁call▁end｜>
// or V3-0324/V3.1's plain form <｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>.
enum class ToolCallSyntax { kFenced, kPlain };
ToolCallSyntax tool_call_syntax(const std::string& chat_template);

struct OutputSpec {
  enum class Format { kText, kJsonObject, kJsonSchema };
  Format format = Format::kText;
  nlohmann::ordered_json schema;     // kJsonSchema: response_format.json_schema.schema
  // Tools the answer may (auto) or must (required / named) call; null: none.
  nlohmann::ordered_json tools = nullptr;
  bool tools_required = false;       // tool_choice "required" or a named function
  std::string named_tool;            // tool_choice {"type": "function", "function": {"name"}}
  bool parallel_tool_calls = true;   // false: exactly one call
  ToolCallSyntax syntax = ToolCallSyntax::kFenced;
  bool starts_in_reasoning = false;  // free text up to </think> first (R1)

  // Whether this request needs constrained decoding at all.
  bool constrained() const { return format != Format::kText || tools_required; }
};

class OutputGrammars {
 public:
  explicit OutputGrammars(const Tokenizer& tok, size_t keep = 32);
  // The compiled grammar of `spec` (which must be constrained()). A schema outside the supported
  // subset, or a named tool that is not in tools, is an invalid_argument naming the field.
  StatusOr<std::shared_ptr<CompiledGrammar>> get(const OutputSpec& spec);
  const TokenVocabulary& vocab() const { return *vocab_; }

 private:
  StatusOr<Grammar> build(const OutputSpec& spec) const;

  std::shared_ptr<const TokenVocabulary> vocab_;
  size_t keep_;
  std::mutex mutex_;
  std::list<std::pair<std::string, std::shared_ptr<CompiledGrammar>>> recent_;  // most recent first
};

}  // namespace shoal
