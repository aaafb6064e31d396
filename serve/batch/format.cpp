#include "serve/batch/format.h"

namespace shoal::batch {
namespace {

using json = nlohmann::json;

constexpr std::string_view kChatUrl = "/v1/chat/completions";
constexpr std::string_view kCompletionsUrl = "/v1/completions";

// The server's 400s (and 404 model_not_found) as record errors: its code when a batch has one, else invalid_body.
RecordError record_error(const server::ApiError& e) {
  if (e.code == "context_length_exceeded" || e.code == "model_not_found") return {e.code, e.message};
  if (e.code.find("unsupported") != std::string::npos || e.type.find("unsupported") != std::string::npos)
    return {"unsupported_parameter", e.message};
  return {"invalid_body", e.message};
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

uint64_t default_seed(std::string_view custom_id) {
  uint64_t h = 14695981039346656037ull;  // FNV-1a, 64-bit
  for (const unsigned char c : custom_id) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::variant<PreparedRequest, RecordError> prepare_request(const json& request, const std::string& custom_id,
                                                           const PrepareOptions& o) {
  const auto method = request.find("method");
  if (method == request.end() || *method != "POST")
    return RecordError{"invalid_method", "method must be \"POST\", got " +
                                             (method == request.end() ? std::string("nothing") : method->dump())};
  const auto url = request.find("url");
  server::Endpoint endpoint;
  if (url != request.end() && *url == kChatUrl) endpoint = server::Endpoint::kChat;
  else if (url != request.end() && *url == kCompletionsUrl) endpoint = server::Endpoint::kCompletions;
  else
    return RecordError{"invalid_url", "url must be \"/v1/chat/completions\" or \"/v1/completions\", got " +
                                          (url == request.end() ? std::string("nothing") : url->dump())};
  const auto body_it = request.find("body");
  if (body_it == request.end() || !body_it->is_object()) return RecordError{"invalid_body", "body must be a JSON object"};
  if (endpoint == server::Endpoint::kChat && o.tokenizer->chat_template().empty())
    return RecordError{"invalid_url", "this model has no chat template (tokenizer_config.json): use /v1/completions"};

  // A batch without adapters runs the one model it was started with: whatever the body names (a
  // name written for another server, or none) stands for it. With adapters the name must be one
  // of the served models, as with `shoal serve`. A "model" that is not a string is refused.
  json body = *body_it;
  std::vector<std::string> served{o.model};
  served.insert(served.end(), o.adapters.begin(), o.adapters.end());
  if (const auto m = body.find("model"); m == body.end() || m->is_null() || (m->is_string() && o.adapters.empty()))
    body["model"] = o.model;
  PreparedRequest r;
  server::CompletionRequest& req = r.request;
  if (auto e = server::parse_request(body.dump(-1, ' ', false, json::error_handler_t::replace), endpoint, served, req))
    return record_error(*e);
  if (req.stream) return RecordError{"unsupported_parameter", "'stream': true is not supported: a batch writes whole responses"};
  if (req.n > 1)
    return RecordError{"unsupported_parameter",
                       "'n' > 1 is not supported by shoal batch: write one line per choice, each with its own seed"};
  if (auto e = server::prepare_request(req, *o.tokenizer, o.max_seq_len, o.vocab_size, o.eos_id, r.prepared, o.grammars))
    return record_error(*e);
  if (!req.sampling.seed) r.prepared.generation.seed = default_seed(custom_id);
  return r;
}

Record response_record(const std::string& custom_id, const json& body) {
  return {{"id", random_id("batch_req_")},
          {"custom_id", custom_id},
          {"response", {{"status_code", 200}, {"request_id", random_id("req_")}, {"body", Record(body)}}},
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
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s(prefix);
  for (int i = 0; i < 2; ++i) {
    uint64_t v = server::random_u64();
    for (int k = 0; k < 16; ++k, v >>= 4) s += kHex[v & 15];
  }
  return s;
}

}  // namespace shoal::batch
