#include "text/grammar/output_grammar.h"

#include "text/grammar/json_schema.h"
#include "text/reasoning.h"
#include "text/tool_calls.h"

namespace shoal {

using B = GrammarBuilder;

ToolCallSyntax tool_call_syntax(const std::string& chat_template) {
  return chat_template.find("```json") != std::string::npos || chat_template.find("function<｜tool▁sep｜>") != std::string::npos
             ? ToolCallSyntax::kFenced
             : ToolCallSyntax::kPlain;
}

OutputGrammars::OutputGrammars(const Tokenizer& tok, size_t keep)
    : vocab_(TokenVocabulary::from_tokenizer(tok)), keep_(keep) {}

namespace {

// The schema compiler names the place as "response_format schema at PTR"; for a tool, name its
// parameters instead.
Status renamed(const Status& s, const std::string& where) {
  std::string m = s.message();
  const std::string from = "response_format schema";
  if (m.rfind(from, 0) == 0) m = where + m.substr(from.size());
  return invalid_argument(m);
}

// The arguments of one tool: its parameters schema; {} when it has none (OpenAI's reading of a
// function without parameters).
StatusOr<B::Rule> add_arguments(B& b, const nlohmann::ordered_json& function, size_t index) {
  auto it = function.find("parameters");
  if (it == function.end() || it->is_null())
    return add_json_schema(b, nlohmann::ordered_json{{"type", "object"}, {"properties", nlohmann::ordered_json::object()},
                                                     {"additionalProperties", false}});
  auto r = add_json_schema(b, *it);
  if (!r.ok()) return renamed(r.status(), "tools[" + std::to_string(index) + "].function.parameters");
  return *r;
}

}  // namespace

StatusOr<Grammar> OutputGrammars::build(const OutputSpec& spec) const {
  B b;
  std::vector<B::Seq> answers;  // what may follow the reasoning
  if (!spec.tools_required) {
    if (spec.format == OutputSpec::Format::kJsonObject) answers.push_back(B::ref(add_json_object(b)));
    if (spec.format == OutputSpec::Format::kJsonSchema) {
      SHOAL_ASSIGN_OR_RETURN(B::Rule doc, add_json_schema(b, spec.schema));
      answers.push_back(B::ref(doc));
    }
  }
  if (spec.tools.is_array() && !spec.tools.empty()) {
    // One alternative per tool that may be called.
    std::vector<B::Seq> calls;
    bool named_found = false;
    for (size_t i = 0; i < spec.tools.size(); ++i) {
      const auto& f = spec.tools[i]["function"];
      const std::string name = f["name"].get<std::string>();
      if (!spec.named_tool.empty() && name != spec.named_tool) continue;
      named_found = true;
      SHOAL_ASSIGN_OR_RETURN(B::Rule args, add_arguments(b, f, i));
      if (spec.syntax == ToolCallSyntax::kFenced)
        calls.push_back(B::lit(kToolCallBegin) + B::lit("function") + B::lit(kToolSep) + B::lit(name) +
                        B::lit("\n```json\n") + B::ref(args) + B::lit("\n```") + B::lit(kToolCallEnd));
      else
        calls.push_back(B::lit(kToolCallBegin) + B::lit(name) + B::lit(kToolSep) + B::ref(args) + B::lit(kToolCallEnd));
    }
    if (!spec.named_tool.empty() && !named_found)
      return invalid_argument("'tool_choice' names the function '" + spec.named_tool + "', which is not in 'tools'");
    const B::Rule call = b.rule("call", std::move(calls));
    B::Seq block = B::lit(kToolCallsBegin) + B::ref(call);
    if (spec.parallel_tool_calls) {
      const B::Rule sep = b.rule("call-sep", {B::lit("\n"), B::empty()});
      block += B::ref(b.star("more-calls", B::ref(sep) + B::ref(call)));
    }
    answers.push_back(block + B::lit(kToolCallsEnd));
  }
  if (answers.empty()) return invalid_argument("nothing to constrain the answer to");
  const B::Rule answer = b.rule("answer", std::move(answers));
  if (spec.starts_in_reasoning) {
    // The reasoning, then up to four spaces or newlines (R1 writes "</think>\n\n").
    const B::Rule think = b.text_until("reasoning", kThinkClose);
    const B::Seq blank = B::bytes(byte_of(" \n"));
    B::Rule gap = b.rule("gap-0", {B::empty()});
    for (int k = 1; k <= 4; ++k) gap = b.rule("gap-" + std::to_string(k), {blank + B::ref(gap), B::empty()});
    b.define(B::root(), {B::ref(think) + B::ref(gap) + B::ref(answer)});
  } else {
    b.define(B::root(), {B::ref(answer)});
  }
  return std::move(b).build();
}

StatusOr<std::shared_ptr<CompiledGrammar>> OutputGrammars::get(const OutputSpec& spec) {
  nlohmann::ordered_json key = {{"format", int(spec.format)},
                                {"schema", spec.schema},
                                {"tools", spec.tools},
                                {"required", spec.tools_required},
                                {"named", spec.named_tool},
                                {"parallel", spec.parallel_tool_calls},
                                {"syntax", int(spec.syntax)},
                                {"think", spec.starts_in_reasoning}};
  const std::string k = key.dump();
  {
    std::lock_guard lock(mutex_);
    for (auto it = recent_.begin(); it != recent_.end(); ++it)
      if (it->first == k) {
        recent_.splice(recent_.begin(), recent_, it);
        return recent_.front().second;
      }
  }
  SHOAL_ASSIGN_OR_RETURN(Grammar g, build(spec));
  auto compiled = std::make_shared<CompiledGrammar>(std::make_shared<const Grammar>(std::move(g)), vocab_);
  std::lock_guard lock(mutex_);
  recent_.emplace_front(k, compiled);
  if (recent_.size() > keep_) recent_.pop_back();
  return compiled;
}

}  // namespace shoal
