// libFuzzer target: request bodies through the OpenAI request parser of `shoal serve`
// (serve/openai.h parse_request), served models {"m", "a"}; then, for a chat request that
// constrains its answer (response_format json_object / json_schema, tool_choice "required" or a
// named function), that answer's grammar compiled as prepare_request compiles it
// (text/grammar/output_grammar.h) over the DeepSeek-V3 tokenizer of the fixtures, loaded once.
// The first byte picks the endpoint (bit 0: chat, else completions), the template's tool-call
// syntax (bit 1: plain, else fenced) and whether the answer follows a reasoning block (bit 2);
// the rest is the body. Invariants: a body is refused with a 400 or 404 and a message (404: the
// model), or filled in whole: a served model, sampling that validates, n in [1, 16], at most 4
// stop strings, none empty, logit_bias ids ascending, each endpoint's own fields only. A
// constrained grammar compiles, or is refused with invalid_argument naming the schema's place;
// a compiled grammar allows some token at its start, and a few steps into it.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "serve/openai.h"
#include "text/grammar/matcher.h"
#include "text/grammar/output_grammar.h"
#include "text/tokenizer/tokenizer.h"

namespace {

namespace srv = shoal::server;

const std::vector<std::string> kModels = {"m", "a"};

const shoal::Tokenizer& tokenizer() {
  static const std::unique_ptr<shoal::Tokenizer> tok = [] {
    auto t = shoal::Tokenizer::load(std::string(SHOAL_FIXTURES) + "/tokenizer-deepseek-v3");
    if (!t.ok()) {
      std::fprintf(stderr, "fuzz_openai_request: %s\n", t.status().to_string().c_str());
      std::abort();
    }
    return std::move(t).value();
  }();
  return *tok;
}

// No cache (keep 0): each input compiles its own grammar, as a first request would.
shoal::OutputGrammars& grammars() {
  static shoal::OutputGrammars g(tokenizer(), /*keep=*/0);
  return g;
}

void check_error(const srv::ApiError& e) {
  if (e.status != 400 && e.status != 404) std::abort();
  if (e.message.empty() || e.type.empty()) std::abort();
  if ((e.status == 404) != (e.code == "model_not_found")) std::abort();
  if (e.status == 404 && e.param != "model") std::abort();
}

void check_request(const srv::CompletionRequest& r, srv::Endpoint endpoint) {
  const bool chat = endpoint == srv::Endpoint::kChat;
  if (r.endpoint != endpoint) std::abort();
  if (r.adapter < 0 || size_t(r.adapter) >= kModels.size() || kModels[size_t(r.adapter)] != r.model) std::abort();
  if (!r.sampling.validate().ok()) std::abort();
  if (r.n < 1 || r.n > srv::kMaxChoices) std::abort();
  if (r.stop.size() > srv::kMaxStopStrings) std::abort();
  for (const std::string& s : r.stop)
    if (s.empty()) std::abort();
  if (r.max_tokens && *r.max_tokens < 1) std::abort();
  if (r.include_usage && !r.stream) std::abort();
  if (r.echo && (chat || r.logprobs)) std::abort();
  if ((r.sampling.top_logprobs >= 0) != r.logprobs) std::abort();
  if (chat) {
    if (!r.messages.is_array() || r.messages.empty()) std::abort();
    for (const auto& m : r.messages) {
      if (!m.is_object() || !m.contains("role") || !m.contains("content")) std::abort();
      const std::string role = m["role"].is_string() ? m["role"].get<std::string>() : "";
      if (role != "system" && role != "user" && role != "assistant" && role != "tool") std::abort();
      if (!m["content"].is_string() && !m["content"].is_null()) std::abort();
    }
    if (!r.tools.is_null() && (!r.tools.is_array() || r.tools.empty())) std::abort();
    if (r.output.tools_required && r.tools.is_null()) std::abort();
    if (!r.output.named_tool.empty()) {
      bool found = false;
      for (const auto& t : r.tools) found = found || t["function"]["name"] == r.output.named_tool;
      if (!found) std::abort();
    }
    if ((r.output.format == shoal::OutputSpec::Format::kJsonSchema) != r.output.schema.is_object()) std::abort();
  } else {
    if (!r.messages.empty() || !r.tools.is_null() || r.output.constrained()) std::abort();
    if (r.prompt_ids) {
      if (r.prompt_ids->empty() || !r.prompt_text.empty()) std::abort();
      for (int32_t id : *r.prompt_ids)
        if (id < 0) std::abort();
    }
  }
}

// The answer's grammar, as prepare_request builds it; then a few tokens into it.
void compile(const srv::CompletionRequest& r, bool plain, bool reasoning, uint32_t seed) {
  shoal::OutputSpec spec = r.output;
  spec.tools = r.tools;
  spec.syntax = plain ? shoal::ToolCallSyntax::kPlain : shoal::ToolCallSyntax::kFenced;
  spec.starts_in_reasoning = reasoning;
  auto compiled = grammars().get(spec);
  if (!compiled.ok()) {
    const std::string& m = compiled.status().message();
    if (compiled.status().code() != shoal::Code::kInvalidArgument) std::abort();
    if (!m.starts_with("response_format schema") && !m.starts_with("tools[")) std::abort();
    return;
  }
  shoal::GrammarMatcher matcher(*compiled);
  const int64_t vocab = grammars().vocab().size();
  for (int step = 0; step < 4 && !matcher.finished(); ++step) {
    const shoal::TokenMask& mask = matcher.allowed();
    // The k-th allowed token, k from the seed.
    std::vector<int32_t> some;
    for (size_t w = 0; w < mask.size() && some.size() < 64; ++w)
      for (uint64_t bits = mask[w]; bits && some.size() < 64; bits &= bits - 1)
        some.push_back(int32_t(w * 64 + size_t(__builtin_ctzll(bits))));
    if (some.empty()) {
      if (step == 0 || !matcher.accepting()) std::abort();  // a dead end short of the end
      break;
    }
    const int32_t id = some[(seed >> (step * 8)) % some.size()];
    if (id >= vocab || !matcher.accept_token(id)) std::abort();
  }
}

}  // namespace

// The tokenizer loads (seconds under ASan) before the first input's timeout starts.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  grammars();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const srv::Endpoint endpoint = data[0] & 1 ? srv::Endpoint::kChat : srv::Endpoint::kCompletions;
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  srv::CompletionRequest r;
  if (auto e = srv::parse_request(body, endpoint, kModels, r)) {
    check_error(*e);
    return 0;
  }
  check_request(r, endpoint);
  if (endpoint == srv::Endpoint::kChat && r.output.constrained())
    compile(r, data[0] & 2, data[0] & 4, uint32_t(size * 2654435761u));
  return 0;
}
