#include "serve/openai.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <random>
#include <utility>

#include "common/json_nesting.h"
#include "serve/grammar_constraint.h"
#include "text/chat_template.h"

namespace shoal::server {
namespace {

// Deeper request bodies are refused before anything recursive copies them (tool schemas nest a
// few levels; 64 is far beyond any real request).
constexpr int kMaxRequestNesting = 64;

using json = nlohmann::json;

// A field that is present and not null (OpenAI's clients send null for "not given").
const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string type_name(const json& v) {
  if (v.is_string()) return "a string";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_integer()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_array()) return "an array";
  if (v.is_object()) return "an object";
  return "null";
}

ApiError wrong_type(const std::string& name, const json& v, const std::string& want) {
  return bad_request("'" + name + "' must be " + want + ", not " + type_name(v), name);
}

std::optional<ApiError> get_bool(const json& body, const char* name, bool& out) {
  const json* v = field(body, name);
  if (!v) return {};
  if (!v->is_boolean()) return wrong_type(name, *v, "a boolean");
  out = v->get<bool>();
  return {};
}

std::optional<ApiError> get_int(const json& body, const char* name, int64_t lo, int64_t hi,
                                std::optional<int64_t>& out) {
  const json* v = field(body, name);
  if (!v) return {};
  if (!v->is_number_integer()) return wrong_type(name, *v, "an integer");
  if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
    return bad_request("'" + std::string(name) + "' = " + v->dump() + " is out of range", name);
  const int64_t x = v->get<int64_t>();
  if (x < lo || x > hi)
    return bad_request("'" + std::string(name) + "' = " + std::to_string(x) + " must be in [" + std::to_string(lo) +
                           ", " + std::to_string(hi) + "]",
                       name);
  out = x;
  return {};
}

std::string number_text(double x) {
  json j = x;
  return j.dump();
}

std::optional<ApiError> get_number(const json& body, const char* name, double lo, double hi,
                                   std::optional<double>& out) {
  const json* v = field(body, name);
  if (!v) return {};
  if (!v->is_number()) return wrong_type(name, *v, "a number");
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    return bad_request("'" + std::string(name) + "' = " + number_text(x) + " must be in [" + number_text(lo) + ", " +
                           number_text(hi) + "]",
                       name);
  out = x;
  return {};
}

// logit_bias: {"token id": bias in [-100, 100]}, as OpenAI takes it (ids as strings); ids are
// checked against the vocabulary when the request is prepared.
std::optional<ApiError> parse_logit_bias(const json& body, std::vector<TokenBias>& out) {
  const json* lb = field(body, "logit_bias");
  if (!lb || lb->is_null()) return {};
  if (!lb->is_object()) return wrong_type("logit_bias", *lb, "an object");
  for (const auto& [key, value] : lb->items()) {
    const std::string at = "logit_bias." + key;
    int64_t id = -1;
    const auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
    if (ec != std::errc() || end != key.data() + key.size() || id < 0 || id > std::numeric_limits<int32_t>::max())
      return bad_request("'logit_bias' key '" + key + "' is not a token id (a non-negative integer)", "logit_bias");
    if (!value.is_number()) return wrong_type(at, value, "a number");
    const double bias = value.get<double>();
    if (!std::isfinite(bias) || bias < -kMaxLogitBias || bias > kMaxLogitBias)
      return bad_request("'" + at + "' = " + number_text(bias) + " must be in [-100, 100]", "logit_bias");
    out.push_back({int32_t(id), float(bias)});
  }
  std::sort(out.begin(), out.end(), [](const TokenBias& a, const TokenBias& b) { return a.id < b.id; });
  for (size_t i = 1; i < out.size(); ++i)
    if (out[i].id == out[i - 1].id)
      return bad_request("'logit_bias' names token " + std::to_string(out[i].id) + " twice", "logit_bias");
  return {};
}

ApiError unsupported(const std::string& name, const std::string& what) {
  return bad_request("'" + name + "': " + what + " is not supported by this server", name, "unsupported_parameter");
}

// tools: [{"type": "function", "function": {"name", "description"?, "parameters"?}}], and
// tool_choice "auto" (the default with tools), "required", a named function (all three: `keep`
// the tools; the last two constrain the answer to calls) or "none" (nothing rendered or parsed);
// parallel_tool_calls false: at most one call (exactly one when forced).
std::optional<ApiError> parse_tools(const json& body, bool& keep, OutputSpec& spec) {
  keep = false;
  const json* tools = field(body, "tools");
  if (tools && tools->is_null()) tools = nullptr;
  if (tools) {
    if (!tools->is_array()) return wrong_type("tools", *tools, "an array");
    for (size_t i = 0; i < tools->size(); ++i) {
      const std::string at = "tools[" + std::to_string(i) + "]";
      const json& t = (*tools)[i];
      if (!t.is_object()) return wrong_type(at, t, "an object");
      const json* type = field(t, "type");
      if (!type || !type->is_string() || type->get<std::string>() != "function")
        return bad_request("'" + at + ".type' must be 'function'", at + ".type");
      const json* f = field(t, "function");
      if (!f || !f->is_object()) return bad_request("'" + at + ".function' must be an object", at + ".function");
      const json* name = field(*f, "name");
      if (!name || !name->is_string() || name->get<std::string>().empty())
        return bad_request("'" + at + ".function.name' must be a non-empty string", at + ".function.name");
      if (const json* d = field(*f, "description"); d && !d->is_string() && !d->is_null())
        return wrong_type(at + ".function.description", *d, "a string");
      if (const json* p = field(*f, "parameters"); p && !p->is_object() && !p->is_null())
        return wrong_type(at + ".function.parameters", *p, "an object (a JSON schema)");
    }
  }
  std::string choice = tools && !tools->empty() ? "auto" : "none";
  if (const json* c = field(body, "tool_choice"); c && !c->is_null()) {
    if (c->is_object()) {  // {"type": "function", "function": {"name": NAME}}
      const json* type = field(*c, "type");
      const json* f = field(*c, "function");
      const json* name = f && f->is_object() ? field(*f, "name") : nullptr;
      if (!type || !type->is_string() || type->get<std::string>() != "function" || !name || !name->is_string())
        return bad_request("'tool_choice' as an object must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                           "tool_choice");
      spec.named_tool = name->get<std::string>();
      bool known = false;
      for (const json& t : tools ? *tools : json::array()) known = known || t["function"]["name"] == spec.named_tool;
      if (!known)
        return bad_request("'tool_choice' names the function '" + spec.named_tool + "', which is not in 'tools'",
                           "tool_choice");
      choice = "required";
    } else {
      if (!c->is_string()) return wrong_type("tool_choice", *c, "a string or an object");
      choice = c->get<std::string>();
      if (choice != "none" && choice != "auto" && choice != "required")
        return bad_request("'tool_choice' = '" + choice + "' is not one of 'none', 'auto', 'required'", "tool_choice");
      if (choice != "none" && (!tools || tools->empty()))
        return bad_request("'tool_choice' = '" + choice + "' needs 'tools'", "tool_choice");
    }
  }
  if (auto e = get_bool(body, "parallel_tool_calls", spec.parallel_tool_calls)) return e;
  spec.tools_required = choice == "required";
  keep = choice != "none";
  return {};
}

// response_format: {"type": "text"}, {"type": "json_object"}, or {"type": "json_schema",
// "json_schema": {"name", "description"?, "schema"?, "strict"?}} (no schema: any JSON object).
// The schema is kept in the client's key order (properties are written in it); it is compiled
// when the request is prepared.
std::optional<ApiError> parse_response_format(const json& body, std::string_view text, OutputSpec& spec) {
  const json* rf = field(body, "response_format");
  if (!rf || rf->is_null()) return {};
  const json* type = rf->is_object() ? field(*rf, "type") : nullptr;
  if (!type || !type->is_string()) return bad_request("'response_format.type' must be a string", "response_format");
  const std::string t = type->get<std::string>();
  if (t == "text") return {};
  if (t == "json_object") {
    spec.format = OutputSpec::Format::kJsonObject;
    return {};
  }
  if (t != "json_schema")
    return bad_request("'response_format.type' = '" + t + "' is not one of 'text', 'json_object', 'json_schema'",
                       "response_format");
  const json* js = field(*rf, "json_schema");
  if (!js || !js->is_object())
    return bad_request("'response_format.json_schema' must be an object with the schema", "response_format");
  if (const json* name = field(*js, "name"); name && !name->is_string())
    return wrong_type("response_format.json_schema.name", *name, "a string");
  if (const json* strict = field(*js, "strict"); strict && !strict->is_boolean() && !strict->is_null())
    return wrong_type("response_format.json_schema.strict", *strict, "a boolean");
  const json* schema = field(*js, "schema");
  if (!schema || schema->is_null()) {
    spec.format = OutputSpec::Format::kJsonObject;
    return {};
  }
  if (!schema->is_object()) return wrong_type("response_format.json_schema.schema", *schema, "an object");
  spec.format = OutputSpec::Format::kJsonSchema;
  spec.schema = nlohmann::ordered_json::parse(text)["response_format"]["json_schema"]["schema"];
  return {};
}

// Chat messages as the template sees them: roles checked, content parts joined.
std::optional<ApiError> parse_messages(const json& body, json& out) {
  const json* m = field(body, "messages");
  if (!m) return bad_request("'messages' is required", "messages");
  if (!m->is_array()) return wrong_type("messages", *m, "an array");
  if (m->empty()) return bad_request("'messages' must hold at least one message", "messages");
  out = json::array();
  for (size_t i = 0; i < m->size(); ++i) {
    const std::string at = "messages[" + std::to_string(i) + "]";
    const json& msg = (*m)[i];
    if (!msg.is_object()) return wrong_type(at, msg, "an object");
    const json* role = field(msg, "role");
    if (!role) return bad_request("'" + at + ".role' is required", at + ".role");
    if (!role->is_string()) return wrong_type(at + ".role", *role, "a string");
    std::string r = role->get<std::string>();
    if (r == "developer") r = "system";  // OpenAI's newer name for the system prompt
    if (r != "system" && r != "user" && r != "assistant" && r != "tool")
      return bad_request("'" + at + ".role' = '" + role->get<std::string>() +
                             "' is not one of 'system', 'developer', 'user', 'assistant', 'tool'",
                         at + ".role");
    json copy = msg;
    copy["role"] = r;
    const json* content = field(msg, "content");
    if (!content) {
      if (r != "assistant" || !field(msg, "tool_calls"))
        return bad_request("'" + at + ".content' is required", at + ".content");
      copy["content"] = nullptr;
    } else if (content->is_array()) {
      std::string text;
      for (size_t k = 0; k < content->size(); ++k) {
        const std::string pat = at + ".content[" + std::to_string(k) + "]";
        const json& part = (*content)[k];
        if (!part.is_object()) return wrong_type(pat, part, "an object");
        const json* type = field(part, "type");
        if (!type || !type->is_string() || type->get<std::string>() != "text")
          return bad_request("'" + pat + ".type' must be 'text': only text content is supported", pat + ".type");
        const json* t = field(part, "text");
        if (!t || !t->is_string()) return bad_request("'" + pat + ".text' must be a string", pat + ".text");
        if (k) text += "\n";
        text += t->get<std::string>();
      }
      copy["content"] = text;
    } else if (!content->is_string()) {
      return wrong_type(at + ".content", *content, "a string or an array of text parts");
    }
    out.push_back(std::move(copy));
  }
  return {};
}

std::optional<ApiError> parse_prompt(const json& body, CompletionRequest& out) {
  const json* p = field(body, "prompt");
  if (!p) return bad_request("'prompt' is required", "prompt");
  auto ids_of = [&](const json& arr, std::vector<int32_t>& ids) -> std::optional<ApiError> {
    for (const json& x : arr) {
      if (!x.is_number_integer() || (x.is_number_unsigned() ? x.get<uint64_t>() > uint64_t(INT32_MAX)
                                                            : (x.get<int64_t>() < 0 || x.get<int64_t>() > INT32_MAX)))
        return bad_request("'prompt' token ids must be integers in [0, 2147483647]", "prompt");
      ids.push_back(int32_t(x.get<int64_t>()));
    }
    return {};
  };
  if (p->is_string()) {
    out.prompt_text = p->get<std::string>();
    return {};
  }
  if (!p->is_array()) return wrong_type("prompt", *p, "a string, an array of token ids or an array of one string");
  if (p->empty()) return bad_request("'prompt' must not be empty", "prompt");
  if ((*p)[0].is_number()) {
    std::vector<int32_t> ids;
    if (auto e = ids_of(*p, ids)) return e;
    out.prompt_ids = std::move(ids);
    return {};
  }
  if (p->size() > 1) return unsupported("prompt", "more than one prompt per request");
  const json& one = (*p)[0];
  if (one.is_string()) {
    out.prompt_text = one.get<std::string>();
    return {};
  }
  if (one.is_array() && !one.empty()) {
    std::vector<int32_t> ids;
    if (auto e = ids_of(one, ids)) return e;
    out.prompt_ids = std::move(ids);
    return {};
  }
  return wrong_type("prompt", *p, "a string, an array of token ids or an array of one string");
}

std::optional<ApiError> parse_stop(const json& body, std::vector<std::string>& out) {
  const json* s = field(body, "stop");
  if (!s) return {};
  if (s->is_string()) {
    out.push_back(s->get<std::string>());
  } else if (s->is_array()) {
    if (s->size() > kMaxStopStrings)
      return bad_request("'stop' holds " + std::to_string(s->size()) + " strings; at most " +
                             std::to_string(kMaxStopStrings) + " are allowed",
                         "stop");
    for (const json& x : *s) {
      if (!x.is_string()) return wrong_type("stop", x, "a string or an array of strings");
      out.push_back(x.get<std::string>());
    }
  } else {
    return wrong_type("stop", *s, "a string or an array of strings");
  }
  for (const std::string& x : out)
    if (x.empty()) return bad_request("'stop' strings must not be empty", "stop");
  return {};
}

}  // namespace

json error_body(const ApiError& e) {
  return {{"error",
           {{"message", e.message},
            {"type", e.type},
            {"param", e.param.empty() ? json(nullptr) : json(e.param)},
            {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
}

ApiError bad_request(std::string message, std::string param, std::string code) {
  ApiError e;
  e.status = 400;
  e.message = std::move(message);
  e.param = std::move(param);
  e.code = std::move(code);
  return e;
}

std::optional<ApiError> parse_request(std::string_view text, Endpoint endpoint, const std::vector<std::string>& model_ids,
                                      CompletionRequest& out) {
  out = CompletionRequest{};
  out.endpoint = endpoint;
  const json body = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded())
    return bad_request("We could not parse the JSON body of your request: it is not valid JSON.", {}, "invalid_json");
  if (!body.is_object()) return bad_request("The request body must be a JSON object.", {}, "invalid_json");
  if (json_nesting(body, kMaxRequestNesting) > kMaxRequestNesting)
    return bad_request("The request body nests arrays and objects more than " + std::to_string(kMaxRequestNesting) +
                           " levels deep.",
                       {}, "invalid_json");
  const bool chat = endpoint == Endpoint::kChat;

  const json* model = field(body, "model");
  if (!model) return bad_request("'model' is required", "model");
  if (!model->is_string()) return wrong_type("model", *model, "a string");
  out.model = model->get<std::string>();
  const auto known = std::find(model_ids.begin(), model_ids.end(), out.model);
  out.adapter = int32_t(known - model_ids.begin());
  if (known == model_ids.end()) {
    ApiError e;
    e.status = 404;
    std::string served;
    for (const std::string& m : model_ids) served += (served.empty() ? "`" : ", `") + m + "`";
    e.message = "The model `" + out.model + "` does not exist. This server serves " + served + ".";
    e.param = "model";
    e.code = "model_not_found";
    return e;
  }

  if (chat) {
    if (auto e = parse_messages(body, out.messages)) return e;
  } else {
    if (auto e = parse_prompt(body, out)) return e;
  }

  std::optional<int64_t> n, max_tokens, max_completion_tokens, seed, top_logprobs, logprobs_n, top_k, best_of;
  constexpr int64_t kBig = std::numeric_limits<int64_t>::max();
  if (auto e = get_int(body, "n", 1, kBig, n)) return e;
  if (n && *n > kMaxChoices)
    return bad_request("'n' = " + std::to_string(*n) + " is more than the " + std::to_string(kMaxChoices) +
                           " choices this server gives per request",
                       "n");
  out.n = n.value_or(1);
  if (auto e = get_int(body, "max_tokens", 1, kBig, max_tokens)) return e;
  if (chat)
    if (auto e = get_int(body, "max_completion_tokens", 1, kBig, max_completion_tokens)) return e;
  out.max_tokens = max_completion_tokens ? max_completion_tokens : max_tokens;

  if (auto e = get_bool(body, "stream", out.stream)) return e;
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) return wrong_type("stream_options", *so, "an object");
    if (!out.stream)
      return bad_request("'stream_options' is only allowed when 'stream' is true", "stream_options");
    if (auto e = get_bool(*so, "include_usage", out.include_usage)) {
      e->param = "stream_options.include_usage";
      e->message = "'stream_options.include_usage' must be a boolean";
      return e;
    }
  }
  if (auto e = parse_stop(body, out.stop)) return e;
  if (auto e = get_bool(body, "ignore_eos", out.ignore_eos)) return e;

  // Sampling: OpenAI's ranges, then the sampler's own check.
  std::optional<double> temperature, top_p, presence, frequency, min_p, repetition;
  if (auto e = get_number(body, "temperature", 0, 2, temperature)) return e;
  if (auto e = get_number(body, "top_p", 0, 1, top_p)) return e;
  if (auto e = get_number(body, "presence_penalty", -2, 2, presence)) return e;
  if (auto e = get_number(body, "frequency_penalty", -2, 2, frequency)) return e;
  if (auto e = get_number(body, "min_p", 0, 1, min_p)) return e;                       // extension
  if (auto e = get_number(body, "repetition_penalty", 0, 1e9, repetition)) return e;   // extension
  if (auto e = get_int(body, "top_k", -1, std::numeric_limits<int32_t>::max(), top_k)) return e;  // extension
  if (const json* s = field(body, "seed")) {
    if (!s->is_number_integer()) return wrong_type("seed", *s, "an integer");
    seed = s->is_number_unsigned() ? int64_t(s->get<uint64_t>()) : s->get<int64_t>();
  }
  SamplingParams& sp = out.sampling;
  if (temperature) sp.temperature = float(*temperature);
  if (top_p) sp.top_p = float(*top_p);
  if (presence) sp.presence_penalty = float(*presence);
  if (frequency) sp.frequency_penalty = float(*frequency);
  if (min_p) sp.min_p = float(*min_p);
  if (repetition) sp.repetition_penalty = float(*repetition);
  if (top_k) sp.top_k = int32_t(*top_k);
  if (seed) sp.seed = uint64_t(*seed);
  if (chat) {
    if (auto e = get_bool(body, "logprobs", out.logprobs)) return e;
    if (auto e = get_int(body, "top_logprobs", 0, kMaxTopLogprobs, top_logprobs)) return e;
    if (top_logprobs && !out.logprobs)
      return bad_request("'top_logprobs' needs 'logprobs' to be true", "top_logprobs");
    if (out.logprobs) sp.top_logprobs = int32_t(top_logprobs.value_or(0));
  } else {
    if (auto e = get_int(body, "logprobs", 0, 5, logprobs_n)) return e;
    if (logprobs_n) {
      out.logprobs = true;
      sp.top_logprobs = int32_t(*logprobs_n);
    }
  }
  if (auto e = parse_logit_bias(body, sp.logit_bias)) return e;
  if (Status s = sp.validate(); !s.ok()) return bad_request(s.message());

  // What this server does not do: refused rather than silently ignored.
  if (chat) {
    bool tools = false;
    if (auto e = parse_tools(body, tools, out.output)) return e;
    // Kept in the client's key order for the template (the body above sorts keys).
    if (tools) out.tools = nlohmann::ordered_json::parse(text)["tools"];
    if (const json* t = field(body, "functions")) {
      if (!t->is_array()) return wrong_type("functions", *t, "an array");
      if (!t->empty()) return unsupported("functions", "the legacy 'functions' field (send 'tools')");
    }
    if (const json* t = field(body, "function_call"))
      if (!(t->is_string() && (t->get<std::string>() == "none" || t->get<std::string>() == "auto")))
        return unsupported("function_call", "the legacy 'function_call' field (send 'tool_choice')");
    if (auto e = parse_response_format(body, text, out.output)) return e;
    if (const json* m = field(body, "modalities")) {
      if (!m->is_array()) return wrong_type("modalities", *m, "an array");
      for (const json& x : *m)
        if (!x.is_string() || x.get<std::string>() != "text") return unsupported("modalities", "output other than text");
    }
    if (field(body, "audio")) return unsupported("audio", "audio output");
  } else {
    if (auto e = get_bool(body, "echo", out.echo)) return e;
    if (out.echo && out.logprobs)
      return unsupported("echo", "echo together with logprobs (it would need the prompt's own logprobs)");
    if (const json* s = field(body, "suffix")) {
      if (!s->is_string()) return wrong_type("suffix", *s, "a string");
      if (!s->get<std::string>().empty()) return unsupported("suffix", "suffix (insertion)");
    }
    if (auto e = get_int(body, "best_of", 1, kBig, best_of)) return e;
    if (best_of && *best_of != 1) return unsupported("best_of", "best_of > 1");
  }
  return {};
}

namespace {

ApiError server_error(std::string message) {
  ApiError e;
  e.status = 500;
  e.type = "server_error";
  e.message = std::move(message);
  return e;
}

}  // namespace

std::optional<ApiError> prepare_request(const CompletionRequest& req, const Tokenizer& tok, int64_t max_seq_len,
                                        int64_t vocab_size, int32_t eos_id, Prepared& out, OutputGrammars* grammars) {
  out = Prepared{};
  out.generation.adapter = req.adapter;
  std::vector<int32_t>& ids = out.generation.prompt;
  const char* where = "messages";
  if (req.endpoint == Endpoint::kChat) {
    ChatRequest chat;
    chat.messages = req.messages;
    chat.add_generation_prompt = true;
    if (!req.tools.is_null()) {
      if (!template_renders_tools(tok.chat_template()))
        return bad_request("'tools': this model's chat template does not render tool definitions, so the model "
                           "cannot see them; serve it with a tokenizer_config.json whose chat_template does, or send no tools",
                           "tools", "unsupported_parameter");
      chat.tools = req.tools;
      out.tool_calls = true;
    }
    auto rendered = render_chat(tok, chat);
    if (!rendered.ok()) return bad_request("the chat template failed: " + rendered.status().message(), "messages");
    out.rendered = std::move(rendered).value();
    out.starts_in_reasoning = prompt_opens_reasoning(out.rendered);
    // R1-style templates strip earlier reasoning at "</think>": their output carries it too.
    out.reasoning = out.starts_in_reasoning || tok.chat_template().find(kThinkClose) != std::string::npos;
    ids = tok.encode(out.rendered, /*add_bos=*/false);  // the template wrote BOS
  } else {
    where = "prompt";
    if (req.prompt_ids) {
      ids = *req.prompt_ids;
      for (int32_t id : ids)
        if (id >= vocab_size)
          return bad_request("'prompt' token id " + std::to_string(id) + " is not below the vocabulary size " +
                                 std::to_string(vocab_size),
                             "prompt");
    } else {
      ids = tok.encode(req.prompt_text, tok.add_bos_default());
    }
  }
  if (ids.empty()) return bad_request("the prompt is empty (no tokens)", where);
  for (const TokenBias& b : req.sampling.logit_bias)
    if (b.id >= vocab_size)
      return bad_request("'logit_bias' token id " + std::to_string(b.id) + " is not below the vocabulary size " +
                             std::to_string(vocab_size),
                         "logit_bias");
  const int64_t n = int64_t(ids.size());
  const std::string in = req.endpoint == Endpoint::kChat ? " in the messages" : " in the prompt";
  if (n >= max_seq_len)
    return bad_request("This model's maximum context length is " + std::to_string(max_seq_len) + " tokens. However, " +
                           "your prompt has " + std::to_string(n) + " tokens" +
                           ", which leaves no room for a completion. Please reduce the length of the prompt.",
                       where, "context_length_exceeded");
  if (req.max_tokens && n + *req.max_tokens > max_seq_len) {
    ApiError e = bad_request("This model's maximum context length is " + std::to_string(max_seq_len) +
                                 " tokens. However, you requested " + std::to_string(n + *req.max_tokens) + " tokens (" +
                                 std::to_string(n) + in + ", " + std::to_string(*req.max_tokens) +
                                 " in the completion). Please reduce the length of the prompt or completion.",
                             "max_tokens", "context_length_exceeded");
    return e;
  }
  // No max_tokens: chat runs to the end of the context, completions stop after 16 tokens (the
  // OpenAI API's default for /v1/completions), or earlier at the end of the context.
  out.generation.max_tokens =
      req.max_tokens.value_or(req.endpoint == Endpoint::kChat ? max_seq_len - n : std::min<int64_t>(16, max_seq_len - n));
  if (!req.ignore_eos && eos_id >= 0) out.generation.stop_ids.push_back(eos_id);
  out.generation.sampling = req.sampling;
  if (req.endpoint == Endpoint::kChat && req.output.constrained()) {
    if (!grammars) return server_error("constrained decoding is not set up in this server");
    OutputSpec spec = req.output;
    spec.tools = req.tools;
    spec.syntax = tool_call_syntax(tok.chat_template());
    spec.starts_in_reasoning = out.starts_in_reasoning;
    auto compiled = grammars->get(spec);
    if (!compiled.ok())
      return bad_request(compiled.status().message(), compiled.status().message().rfind("tools", 0) == 0 ? "tools"
                                                      : spec.tools_required && spec.format == OutputSpec::Format::kText
                                                          ? "tool_choice"
                                                          : "response_format");
    out.generation.constraint = std::make_shared<GrammarConstraint>(std::move(compiled).value());
  }
  return {};
}

// ---- stop strings ----

std::string StopMatcher::push(std::string_view text) {
  if (stopped_) return {};
  held_ += text;
  // The earliest complete match wins (ties: the first stop string given).
  size_t cut = std::string::npos;
  for (const std::string& s : stops_)
    if (const size_t at = held_.find(s); at != std::string::npos && (cut == std::string::npos || at < cut)) cut = at;
  if (cut != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, cut);
    held_.clear();
    return out;
  }
  // Keep the longest suffix that is a proper prefix of a stop string: it may still become one.
  size_t keep = 0;
  for (const std::string& s : stops_)
    for (size_t k = std::min(held_.size(), s.size() - 1); k > keep; --k)
      if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
        keep = k;
        break;
      }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopMatcher::finish() {
  if (stopped_) return {};
  std::string out;
  out.swap(held_);
  return out;
}

// ---- tokens to text ----

namespace {
// A call id's random part (call_<8 hex>_<index>): unique across responses, as OpenAI's are.
std::string call_id_prefix() {
  static const char* kHex = "0123456789abcdef";
  std::string s;
  for (uint64_t v = random_u64(), i = 0; i < 8; ++i, v >>= 4) s += kHex[v & 15];
  return s;
}
}  // namespace

TextStream::TextStream(const Tokenizer& tok, const Prepared& p, std::vector<std::string> stops)
    : decoder_(tok, /*skip_special_tokens=*/true), stops_(std::move(stops)) {
  if (p.reasoning) reasoning_.emplace(p.starts_in_reasoning);
  if (p.tool_calls) tools_.emplace(call_id_prefix());
}


// Adds one call's piece: a new call (it has an id), or more arguments of the last one.
void append_call(std::vector<ToolCallStream::CallDelta>& calls, const ToolCallStream::CallDelta& c) {
  if (!calls.empty() && calls.back().index == c.index && c.id.empty()) calls.back().arguments += c.arguments;
  else calls.push_back(c);
}

TextStream::Delta TextStream::split(const std::string& text, bool last) {
  Delta d;
  if (!reasoning_) {
    d.content = text;
    return with_tool_calls(std::move(d), last);
  }
  ReasoningParser::Delta r = reasoning_->push(text);
  if (last) {
    ReasoningParser::Delta f = reasoning_->finish();
    r.reasoning += f.reasoning;
    r.content += f.content;
  }
  d.reasoning = std::move(r.reasoning);
  d.content = std::move(r.content);
  return with_tool_calls(std::move(d), last);
}

TextStream::Delta TextStream::with_tool_calls(Delta d, bool last) {
  if (!tools_) return d;
  ToolCallStream::Delta t = tools_->push(d.content);
  if (last) {
    ToolCallStream::Delta f = tools_->finish();
    t.content += f.content;
    t.calls.insert(t.calls.end(), f.calls.begin(), f.calls.end());
  }
  d.content = std::move(t.content);
  for (const auto& c : t.calls) append_call(d.tool_calls, c);
  return d;
}

void TextStream::Delta::append(const Delta& d) {
  reasoning += d.reasoning;
  content += d.content;
  for (const auto& c : d.tool_calls) append_call(tool_calls, c);
}

json tool_calls_json(const std::vector<ToolCallStream::CallDelta>& calls, bool streamed) {
  json out = json::array();
  for (const auto& c : calls) {
    json f = {{"arguments", c.arguments}};
    if (!c.name.empty()) f["name"] = c.name;
    json call = {{"function", std::move(f)}};
    if (streamed) call["index"] = c.index;
    if (!c.id.empty()) {
      call["id"] = c.id;
      call["type"] = "function";
    }
    out.push_back(std::move(call));
  }
  return out;
}

TextStream::Delta TextStream::push(int32_t token) {
  if (stops_.stopped()) return {};
  auto piece = decoder_.push(token);
  const std::string text = stops_.push(piece.ok() ? *piece : std::string());
  return split(text, stops_.stopped());  // a stop string ends the text here
}

TextStream::Delta TextStream::finish() {
  if (stops_.stopped()) return {};
  std::string text = stops_.push(decoder_.finish());
  text += stops_.finish();
  return split(text, true);
}

// ---- responses ----

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
}

uint64_t random_u64() {
  thread_local std::mt19937_64 rng(std::random_device{}() ^ (uint64_t(std::random_device{}()) << 32));
  return rng();
}

std::string new_response_id(Endpoint endpoint) {
  static const char* kHex = "0123456789abcdef";
  std::string id = endpoint == Endpoint::kChat ? "chatcmpl-" : "cmpl-";
  for (int i = 0; i < 24; ++i) id += kHex[random_u64() & 15];
  return id;
}

json full_response(Endpoint endpoint, const std::string& id, int64_t created, const std::string& model,
                   const TextStream::Delta& text, bool has_reasoning, const std::string& finish, const Usage& usage,
                   json logprobs) {
  json choice;
  choice["index"] = 0;
  if (endpoint == Endpoint::kChat) {
    json message = {{"role", "assistant"}, {"content", text.content}};
    if (has_reasoning && !text.reasoning.empty()) message["reasoning_content"] = text.reasoning;
    if (!text.tool_calls.empty()) {
      message["tool_calls"] = tool_calls_json(text.tool_calls, false);
      if (text.content.empty()) message["content"] = nullptr;  // as OpenAI sends a message of calls only
    }
    choice["message"] = std::move(message);
  } else {
    choice["text"] = text.content;
  }
  choice["logprobs"] = std::move(logprobs);
  choice["finish_reason"] = finish;
  return {{"id", id},
          {"object", endpoint == Endpoint::kChat ? "chat.completion" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array({std::move(choice)})},
          {"usage", usage_json(usage)}};
}

json stream_chunk(Endpoint endpoint, const std::string& id, int64_t created, const std::string& model,
                  const json& delta, const std::string& finish, bool include_usage, json logprobs) {
  json choice;
  choice["index"] = 0;
  if (endpoint == Endpoint::kChat) {
    choice["delta"] = delta;
  } else {
    choice["text"] = delta.contains("content") ? delta["content"] : json("");
  }
  choice["logprobs"] = std::move(logprobs);
  choice["finish_reason"] = finish.empty() ? json(nullptr) : json(finish);
  json chunk = {{"id", id},
                {"object", endpoint == Endpoint::kChat ? "chat.completion.chunk" : "text_completion"},
                {"created", created},
                {"model", model},
                {"choices", json::array({std::move(choice)})}};
  if (include_usage) chunk["usage"] = nullptr;
  return chunk;
}

std::string Logprobs::text_of(int32_t id) const {
  auto bytes = tok_.token_bytes(id, /*skip_special_tokens=*/false);
  return bytes.ok() ? *bytes : std::string();
}

void Logprobs::add(int32_t token, float logprob, const std::vector<TokenLogprob>& top) {
  const std::string text = text_of(token);
  auto byte_list = [](const std::string& s) {
    json b = json::array();
    for (unsigned char c : s) b.push_back(int(c));
    return b;
  };
  if (endpoint_ == Endpoint::kChat) {
    json alternatives = json::array();
    for (const TokenLogprob& t : top) {
      const std::string s = text_of(t.id);
      alternatives.push_back({{"token", s}, {"logprob", t.logprob}, {"bytes", byte_list(s)}});
    }
    entries_.push_back(
        {{"token", text}, {"logprob", logprob}, {"bytes", byte_list(text)}, {"top_logprobs", std::move(alternatives)}});
  } else {
    json alternatives = json::object();
    for (const TokenLogprob& t : top) alternatives[text_of(t.id)] = t.logprob;
    entries_.push_back({{"token", text}, {"logprob", logprob}, {"top", std::move(alternatives)}, {"offset", offset_}});
  }
  offset_ += int64_t(text.size());
}

json Logprobs::take() {
  json entries = std::exchange(entries_, json::array());
  if (endpoint_ == Endpoint::kChat) return {{"content", std::move(entries)}, {"refusal", nullptr}};
  json tokens = json::array(), logprobs = json::array(), top = json::array(), offsets = json::array();
  for (json& e : entries) {
    tokens.push_back(std::move(e["token"]));
    logprobs.push_back(e["logprob"]);
    top.push_back(std::move(e["top"]));
    offsets.push_back(e["offset"]);
  }
  return {{"tokens", tokens}, {"token_logprobs", logprobs}, {"top_logprobs", top}, {"text_offset", offsets}};
}

Completion::Completion(const Tokenizer& tok, const Prepared& p, const CompletionRequest& req)
    : text_(tok, p, req.stop), stop_ids_(p.generation.stop_ids) {
  if (req.logprobs) logprobs_.emplace(tok, req.endpoint);
  usage_.prompt_tokens = int64_t(p.generation.prompt.size());
  if (req.endpoint == Endpoint::kCompletions && req.echo) {
    if (!req.prompt_ids) {
      echo_ = req.prompt_text;
    } else if (auto text = tok.decode(*req.prompt_ids, /*skip_special_tokens=*/false); text.ok()) {
      echo_ = *text;  // as vLLM echoes a prompt given as ids: decoded, special tokens written out
    }
  }
}

TextStream::Delta Completion::push(const TokenEvent& e) {
  TextStream::Delta d;
  if (!finish_.empty()) return d;
  if (e.cached_tokens >= 0) usage_.cached_tokens = e.cached_tokens;
  if (e.token >= 0) {
    ++usage_.completion_tokens;
    const bool stop_id = std::find(stop_ids_.begin(), stop_ids_.end(), e.token) != stop_ids_.end();
    if (logprobs_ && e.logprob && !stop_id) logprobs_->add(e.token, *e.logprob, e.top);
    d = text_.push(e.token);
    if (text_.stopped()) {
      finish_ = "stop";
      return d;
    }
  }
  if (e.finish == FinishReason::kStop || e.finish == FinishReason::kLength) {
    d.append(text_.finish());
    finish_ = e.finish == FinishReason::kLength ? "length" : "stop";
  }
  // The model called tools (OpenAI's reason, unless max_tokens cut it).
  if (finish_ == "stop" && text_.tool_calls() > 0) finish_ = "tool_calls";
  if (!echo_.empty()) {  // echo: the prompt comes first, once
    d.content = echo_ + d.content;
    echo_.clear();
  }
  return d;
}

json usage_chunk(Endpoint endpoint, const std::string& id, int64_t created, const std::string& model,
                 const Usage& usage) {
  return {{"id", id},
          {"object", endpoint == Endpoint::kChat ? "chat.completion.chunk" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array()},
          {"usage", usage_json(usage)}};
}

}  // namespace shoal::server
