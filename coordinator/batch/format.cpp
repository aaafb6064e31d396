#include "coordinator/batch/format.h"

#include <chrono>
#include <cstdio>
#include <random>

#include "coordinator/chat_template.h"
#include "coordinator/reasoning.h"

namespace shoal::batch {
namespace {

using json = nlohmann::json;

constexpr std::string_view kChatUrl = "/v1/chat/completions";
constexpr std::string_view kCompletionsUrl = "/v1/completions";
constexpr size_t kMaxStops = 4;  // as the OpenAI API

RecordError body_error(std::string message) { return {"invalid_body", std::move(message)}; }
RecordError unsupported(std::string message) { return {"unsupported_parameter", std::move(message)}; }

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

bool absent(const json& body, const char* name) {
  const auto it = body.find(name);
  return it == body.end() || it->is_null();
}

// A number field within [lo, hi] (absent or null is fine).
std::optional<RecordError> check_number(const json& body, const char* name, double lo, double hi) {
  if (absent(body, name)) return std::nullopt;
  const json& v = body[name];
  if (!v.is_number() || !(v.get<double>() >= lo && v.get<double>() <= hi))
    return body_error(std::string(name) + " must be a number in [" + num(lo) + ", " + num(hi) + "], got " + v.dump());
  return std::nullopt;
}

// A positive integer field (absent or null: `out` stays empty).
std::optional<RecordError> get_count(const json& body, const char* name, std::optional<int64_t>& out) {
  if (absent(body, name)) return std::nullopt;
  const json& v = body[name];
  const bool in_range = v.is_number_unsigned() ? v.get<uint64_t>() >= 1 && v.get<uint64_t>() <= uint64_t(INT64_MAX)
                                              : v.is_number_integer() && v.get<int64_t>() >= 1;
  if (!in_range)
    return body_error(std::string(name) + " must be an integer >= 1, got " + v.dump());
  out = v.get<int64_t>();
  return std::nullopt;
}

// A field that must keep its "off" value (false, 0, 1, "" or empty: what `is_off` accepts).
template <typename IsOff>
std::optional<RecordError> must_be_off(const json& body, const char* name, IsOff is_off, const std::string& why) {
  if (absent(body, name) || is_off(body[name])) return std::nullopt;
  return unsupported(std::string(name) + " = " + body[name].dump() + " is not supported: " + why);
}

bool is_false(const json& v) { return v.is_boolean() && !v.get<bool>(); }
bool is_zero(const json& v) { return is_false(v) || (v.is_number_integer() && v.get<int64_t>() == 0); }
bool is_one(const json& v) { return v.is_number_integer() && v.get<int64_t>() == 1; }
bool is_empty(const json& v) { return (v.is_array() || v.is_object() || v.is_string()) && v.empty(); }

// Fields both endpoints share: sampling (checked, generation is greedy), n, stream, stop.
std::optional<RecordError> check_common(const json& body, std::vector<std::string>& stop) {
  if (!absent(body, "model") && !body["model"].is_string())
    return body_error("model must be a string, got " + body["model"].dump());
  if (auto e = check_number(body, "temperature", 0, 2)) return e;
  if (auto e = check_number(body, "top_p", 0, 1)) return e;
  if (auto e = check_number(body, "presence_penalty", -2, 2)) return e;
  if (auto e = check_number(body, "frequency_penalty", -2, 2)) return e;
  if (!absent(body, "seed") && !body["seed"].is_number_integer())
    return body_error("seed must be an integer, got " + body["seed"].dump());
  if (auto e = must_be_off(body, "n", is_one, "one choice per request (generation is greedy)")) return e;
  if (auto e = must_be_off(body, "stream", is_false, "a batch writes whole responses")) return e;
  if (auto e = must_be_off(body, "logit_bias", is_empty, "not implemented")) return e;
  if (!absent(body, "stop")) {
    const json& s = body["stop"];
    if (s.is_string()) {
      stop.push_back(s.get<std::string>());
    } else if (s.is_array() && s.size() <= kMaxStops) {
      for (const json& x : s) {
        if (!x.is_string()) return body_error("stop must be a string or an array of strings, got " + s.dump());
        stop.push_back(x.get<std::string>());
      }
    } else {
      return body_error("stop must be a string or an array of at most " + std::to_string(kMaxStops) +
                        " strings, got " + s.dump());
    }
    for (const std::string& x : stop)
      if (x.empty()) return body_error("stop strings must not be empty");
  }
  return std::nullopt;
}

// OpenAI content: a string, or an array of {"type": "text", "text"} parts (joined with "\n",
// as vLLM does); null only where the template allows it (an assistant turn with tool calls).
std::optional<RecordError> normalize_content(json& message, size_t i) {
  const std::string where = "messages[" + std::to_string(i) + "].content";
  const std::string role = message["role"].get<std::string>();
  auto it = message.find("content");
  if (it == message.end() || it->is_null()) {
    if (role == "assistant") {
      message["content"] = nullptr;
      return std::nullopt;
    }
    return body_error(where + " is required for role " + json(role).dump());
  }
  if (it->is_string()) return std::nullopt;
  if (!it->is_array()) return body_error(where + " must be a string or an array of text parts, got " + it->dump());
  std::string joined;
  for (size_t k = 0; k < it->size(); ++k) {
    const json& part = (*it)[k];
    const std::string pw = where + "[" + std::to_string(k) + "]";
    if (!part.is_object() || !part.contains("type") || part["type"] != "text")
      return unsupported(pw + ": only text parts are supported, got " + part.dump().substr(0, 200));
    if (!part.contains("text") || !part["text"].is_string()) return body_error(pw + ".text must be a string");
    if (k) joined += "\n";
    joined += part["text"].get<std::string>();
  }
  *it = joined;
  return std::nullopt;
}

std::variant<PreparedRequest, RecordError> prepare_chat(const json& body, const PrepareOptions& o, PreparedRequest& r) {
  const Tokenizer& tok = *o.tokenizer;
  if (tok.chat_template().empty())
    return RecordError{"invalid_url", "this model has no chat template (tokenizer_config.json): use /v1/completions"};
  if (auto e = must_be_off(body, "logprobs", is_false, "not implemented")) return *e;
  if (auto e = must_be_off(body, "top_logprobs", is_zero, "not implemented")) return *e;
  if (auto e = must_be_off(body, "tools", is_empty, "tool calls are not implemented")) return *e;
  if (auto e = must_be_off(body, "functions", is_empty, "function calls are not implemented")) return *e;
  if (!absent(body, "response_format") &&
      !(body["response_format"].is_object() && body["response_format"].value("type", json()) == "text"))
    return unsupported("response_format " + body["response_format"].dump() + " is not supported (only {\"type\": \"text\"})");
  if (absent(body, "messages") || !body["messages"].is_array() || body["messages"].empty())
    return body_error("messages must be a non-empty array of messages");
  ChatRequest chat;
  chat.messages = body["messages"];
  for (size_t i = 0; i < chat.messages.size(); ++i) {
    json& m = chat.messages[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      return body_error("messages[" + std::to_string(i) + "] must be an object with a string role");
    if (m["role"] == "developer") m["role"] = "system";  // OpenAI's newer name for the system turn
    if (auto e = normalize_content(m, i)) return *e;
  }
  auto rendered = render_chat(tok, chat);
  if (!rendered.ok()) return body_error("the chat template failed: " + rendered.status().message());
  r.starts_in_reasoning = prompt_opens_reasoning(*rendered);
  r.prompt = tok.encode(*rendered, /*add_bos=*/false);  // the template wrote BOS
  return r;
}

std::variant<PreparedRequest, RecordError> prepare_completion(const json& body, const PrepareOptions& o,
                                                              PreparedRequest& r) {
  const Tokenizer& tok = *o.tokenizer;
  if (auto e = must_be_off(body, "logprobs", is_zero, "not implemented")) return *e;
  if (auto e = must_be_off(body, "echo", is_false, "not implemented")) return *e;
  if (auto e = must_be_off(body, "best_of", is_one, "generation is greedy")) return *e;
  if (auto e = must_be_off(body, "suffix", is_empty, "not implemented")) return *e;
  if (absent(body, "prompt")) return body_error("prompt is required");
  json prompt = body["prompt"];
  auto all_ids = [](const json& a) {
    if (!a.is_array() || a.empty()) return false;
    for (const json& x : a)
      if (!x.is_number_integer()) return false;
    return true;
  };
  if (prompt.is_array() && prompt.size() == 1 && (prompt[0].is_string() || prompt[0].is_array())) prompt = prompt[0];
  if (prompt.is_string()) {
    r.prompt = tok.encode(prompt.get<std::string>(), tok.add_bos_default());
  } else if (all_ids(prompt)) {
    for (const json& x : prompt) {
      const bool neg = x.is_number_integer() && !x.is_number_unsigned() && x.get<int64_t>() < 0;
      if (neg || x.get<uint64_t>() >= uint64_t(o.vocab_size))
        return body_error("prompt token id " + x.dump() + " is outside the vocabulary [0, " +
                          std::to_string(o.vocab_size) + ")");
      r.prompt.push_back(int32_t(x.get<int64_t>()));
    }
  } else if (prompt.is_array() && prompt.size() > 1 && (prompt[0].is_string() || prompt[0].is_array())) {
    return unsupported("one prompt per request: give each prompt its own line and custom_id");
  } else {
    return body_error("prompt must be a string, an array of token ids, or an array of one of them");
  }
  return r;
}

}  // namespace

LineHead read_line_head(std::string_view text, int64_t line) {
  LineHead h;
  h.line = line;
  try {
    h.request = json::parse(text);
  } catch (const json::parse_error& e) {
    std::string what = e.what();
    if (const size_t at = what.find("] "); at != std::string::npos) what = what.substr(at + 2);
    h.request = nullptr;
    h.error = RecordError{"invalid_json", "line " + std::to_string(line) + " is not valid JSON: " + what};
    return h;
  }
  if (!h.request.is_object()) {
    h.error = RecordError{"invalid_json", "line " + std::to_string(line) + " is not a JSON object"};
    h.request = nullptr;
    return h;
  }
  const auto it = h.request.find("custom_id");
  if (it == h.request.end() || it->is_null()) {
    h.error = RecordError{"missing_custom_id", "line " + std::to_string(line) + " has no custom_id"};
  } else if (!it->is_string() || it->get<std::string>().empty()) {
    h.error = RecordError{"missing_custom_id", "line " + std::to_string(line) +
                                                   ": custom_id must be a non-empty string, got " + it->dump()};
  } else {
    h.custom_id = it->get<std::string>();
  }
  return h;
}

std::string custom_id_key(const std::string& custom_id) { return "c:" + custom_id; }
std::string line_key(int64_t line) { return "l:" + std::to_string(line); }

std::optional<std::string> record_key(const json& rec) {
  if (!rec.is_object() || !rec.contains("id") || !rec["id"].is_string() || !rec.contains("custom_id") ||
      !rec.contains("response") || !rec.contains("error"))
    return std::nullopt;
  const json &cid = rec["custom_id"], &resp = rec["response"], &err = rec["error"];
  if (!cid.is_string() && !cid.is_null()) return std::nullopt;
  if (resp.is_object() && err.is_null()) {
    if (!cid.is_string() || !resp.contains("status_code") || !resp.contains("body")) return std::nullopt;
    return custom_id_key(cid.get<std::string>());
  }
  if (!resp.is_null() || !err.is_object() || !err.contains("code") || !err["code"].is_string()) return std::nullopt;
  const std::string code = err["code"].get<std::string>();
  if (code == "invalid_json" || code == "missing_custom_id" || code == "duplicate_custom_id") {
    if (!err.contains("line") || !err["line"].is_number_integer()) return std::nullopt;
    return line_key(err["line"].get<int64_t>());
  }
  if (!cid.is_string()) return std::nullopt;
  return custom_id_key(cid.get<std::string>());
}

std::variant<PreparedRequest, RecordError> prepare_request(const json& request, const PrepareOptions& o) {
  const auto method = request.find("method");
  if (method == request.end() || *method != "POST")
    return RecordError{"invalid_method", "method must be \"POST\", got " +
                                             (method == request.end() ? std::string("nothing") : method->dump())};
  const auto url = request.find("url");
  Endpoint endpoint;
  if (url != request.end() && *url == kChatUrl) endpoint = Endpoint::kChatCompletions;
  else if (url != request.end() && *url == kCompletionsUrl) endpoint = Endpoint::kCompletions;
  else
    return RecordError{"invalid_url", "url must be \"/v1/chat/completions\" or \"/v1/completions\", got " +
                                          (url == request.end() ? std::string("nothing") : url->dump())};
  const auto body_it = request.find("body");
  if (body_it == request.end() || !body_it->is_object()) return body_error("body must be a JSON object");
  const json& body = *body_it;

  PreparedRequest r;
  r.endpoint = endpoint;
  if (auto e = check_common(body, r.stop)) return *e;
  std::optional<int64_t> max_tokens, max_completion_tokens;
  if (auto e = get_count(body, "max_tokens", max_tokens)) return *e;
  if (endpoint == Endpoint::kChatCompletions) {
    if (auto e = get_count(body, "max_completion_tokens", max_completion_tokens)) return *e;
    if (max_completion_tokens) max_tokens = max_completion_tokens;
  }
  auto prepared = endpoint == Endpoint::kChatCompletions ? prepare_chat(body, o, r) : prepare_completion(body, o, r);
  if (std::holds_alternative<RecordError>(prepared)) return prepared;
  if (r.prompt.empty()) return body_error("the prompt is empty (no tokens)");
  const int64_t n = int64_t(r.prompt.size());
  if (!max_tokens) {  // chat: the rest of the context; completions: 16, as the OpenAI API
    if (endpoint == Endpoint::kChatCompletions && n >= o.max_seq_len)
      return RecordError{"context_length_exceeded", "the prompt has " + std::to_string(n) +
                                                        " tokens but the context (--max-seq-len) holds " +
                                                        std::to_string(o.max_seq_len)};
    max_tokens = endpoint == Endpoint::kChatCompletions ? o.max_seq_len - n : 16;
  }
  if (n + *max_tokens > o.max_seq_len)
    return RecordError{"context_length_exceeded",
                       "the request needs " + std::to_string(n + *max_tokens) + " positions (prompt " +
                           std::to_string(n) + " + max_tokens " + std::to_string(*max_tokens) +
                           ") but the context (--max-seq-len) holds " + std::to_string(o.max_seq_len)};
  r.max_tokens = *max_tokens;
  if (o.tokenizer->eos_id() >= 0) r.stop_ids.push_back(o.tokenizer->eos_id());
  return r;
}

Record response_body(const PreparedRequest& r, const Generated& g, const std::string& model, const std::string& id,
                   int64_t created) {
  const int64_t prompt = int64_t(r.prompt.size()), completion = int64_t(g.tokens.size());
  const char* finish = g.finish == FinishReason::kLength ? "length" : "stop";
  Record choice;
  Record body;
  if (r.endpoint == Endpoint::kChatCompletions) {
    const ReasoningParser::Delta d = split_reasoning(g.text, r.starts_in_reasoning);
    Record message = {{"role", "assistant"}, {"content", d.content}};
    if (!d.reasoning.empty()) message["reasoning_content"] = d.reasoning;
    choice = {{"index", 0}, {"message", std::move(message)}, {"logprobs", nullptr}, {"finish_reason", finish}};
    body = {{"id", "chatcmpl-" + id}, {"object", "chat.completion"}};
  } else {
    choice = {{"text", g.text}, {"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish}};
    body = {{"id", "cmpl-" + id}, {"object", "text_completion"}};
  }
  body["created"] = created;
  body["model"] = model;
  body["choices"] = Record::array({std::move(choice)});
  body["usage"] = {{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion}};
  return body;
}

Record response_record(const std::string& custom_id, Record body) {
  return {{"id", random_id("batch_req_")},
          {"custom_id", custom_id},
          {"response", {{"status_code", 200}, {"request_id", random_id("req_")}, {"body", std::move(body)}}},
          {"error", nullptr}};
}

Record error_record(const std::optional<std::string>& custom_id, const RecordError& e, int64_t line) {
  return {{"id", random_id("batch_req_")},
          {"custom_id", custom_id ? Record(*custom_id) : Record(nullptr)},
          {"response", nullptr},
          {"error", {{"code", e.code}, {"message", e.message}, {"line", line}}}};
}

std::string dump_line(const Record& record) { return record.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string random_id(std::string_view prefix) {
  thread_local std::mt19937_64 rng([] {
    std::random_device rd;
    return (uint64_t(rd()) << 32) ^ rd() ^ uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
  }());
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s(prefix);
  for (int i = 0; i < 2; ++i) {
    uint64_t v = rng();
    for (int k = 0; k < 16; ++k, v >>= 4) s += kHex[v & 15];
  }
  return s;
}

}  // namespace shoal::batch
