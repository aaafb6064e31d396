// shoal tokenize: JSON lines in, JSON lines out, one output line per input line, in order.
//   encode  {"text", "add_bos"?}                       -> {"ids"}
//   decode  {"ids", "skip_special_tokens"?}            -> {"text"}
//   chat    {"messages", "add_generation_prompt"?}     -> {"rendered", "ids"}
//   count   any of the above                           -> {"n_tokens"}
// A bad line gives {"error": {"line", "message"}} in its place; the exit status is then 1.
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "text/chat_template.h"
#include "text/tokenizer/tokenizer.h"

namespace shoal::cli {
namespace {

using nlohmann::json;

struct Options {
  std::string tokenizer, model, mode;
};

StatusOr<bool> optional_bool(const json& j, const char* key, bool fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_boolean()) return invalid_argument(std::string("'") + key + "' must be true or false");
  return j[key].get<bool>();
}

StatusOr<std::vector<int32_t>> encode_line(const Tokenizer& tok, const json& j) {
  if (!j.contains("text") || !j["text"].is_string()) return invalid_argument("'text' must be a string");
  SHOAL_ASSIGN_OR_RETURN(bool add_bos, optional_bool(j, "add_bos", tok.add_bos_default()));
  return tok.encode(j["text"].get_ref<const std::string&>(), add_bos);
}

StatusOr<std::vector<int32_t>> ids_of(const json& j) {
  if (!j.contains("ids") || !j["ids"].is_array()) return invalid_argument("'ids' must be an array of token ids");
  std::vector<int32_t> ids;
  for (const json& v : j["ids"]) {
    if (!v.is_number_integer()) return invalid_argument("'ids' holds " + v.dump() + ", not an integer");
    const int64_t id = v.get<int64_t>();
    if (id < INT32_MIN || id > INT32_MAX) return invalid_argument("token id " + std::to_string(id) + " is out of range");
    ids.push_back(int32_t(id));
  }
  return ids;
}

StatusOr<std::pair<std::string, std::vector<int32_t>>> chat_line(const Tokenizer& tok, const json& j) {
  if (!j.contains("messages")) return invalid_argument("'messages' is missing");
  ChatRequest req;
  req.messages = j["messages"];
  SHOAL_ASSIGN_OR_RETURN(req.add_generation_prompt, optional_bool(j, "add_generation_prompt", true));
  SHOAL_ASSIGN_OR_RETURN(std::string rendered, render_chat(tok, req));
  std::vector<int32_t> ids = tok.encode(rendered, /*add_bos=*/false);  // the template wrote BOS
  return std::make_pair(std::move(rendered), std::move(ids));
}

StatusOr<json> handle(const std::string& mode, const Tokenizer& tok, const std::string& line) {
  json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return invalid_argument("not a JSON object");
  if (mode == "encode") {
    SHOAL_ASSIGN_OR_RETURN(auto ids, encode_line(tok, j));
    return json{{"ids", ids}};
  }
  if (mode == "decode") {
    SHOAL_ASSIGN_OR_RETURN(auto ids, ids_of(j));
    SHOAL_ASSIGN_OR_RETURN(bool skip, optional_bool(j, "skip_special_tokens", false));
    SHOAL_ASSIGN_OR_RETURN(std::string text, tok.decode(ids, skip));
    return json{{"text", text}};
  }
  if (mode == "chat") {
    SHOAL_ASSIGN_OR_RETURN(auto r, chat_line(tok, j));
    return json{{"rendered", r.first}, {"ids", r.second}};
  }
  // count: whatever the line holds
  if (j.contains("messages")) {
    SHOAL_ASSIGN_OR_RETURN(auto r, chat_line(tok, j));
    return json{{"n_tokens", r.second.size()}};
  }
  if (j.contains("ids")) {
    SHOAL_ASSIGN_OR_RETURN(auto ids, ids_of(j));
    return json{{"n_tokens", ids.size()}};
  }
  SHOAL_ASSIGN_OR_RETURN(auto ids, encode_line(tok, j));
  return json{{"n_tokens", ids.size()}};
}

int run(const Options& o) {
  const std::string dir = o.tokenizer.empty() ? o.model : o.tokenizer;
  if (dir.empty()) return fail(invalid_argument("give --tokenizer DIR (or --model DIR holding tokenizer.json)"));
  auto tok = Tokenizer::load(dir);
  if (!tok.ok()) return fail(tok.status());
  std::string line;
  int64_t lineno = 0;
  bool any_error = false;
  while (std::getline(std::cin, line)) {
    ++lineno;
    auto out = handle(o.mode, **tok, line);
    if (!out.ok()) {
      any_error = true;
      out = json{{"error", {{"line", lineno}, {"message", out.status().message()}}}};
    }
    const std::string text = out->dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);  // one answer per line as it comes: pipelines may interleave
  }
  return any_error ? 1 : 0;
}

}  // namespace

void add_tokenize(CLI::App& app, int& rc) {
  auto o = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("tokenize", "Encode, decode, render chats and count tokens (JSON lines on stdin)");
  sub->add_option("--tokenizer", o->tokenizer, "Folder with tokenizer.json, or a GGUF (default: --model)");
  sub->add_option("--model", o->model, "Checkpoint folder holding the tokenizer files");
  sub->add_option("mode", o->mode, "encode, decode, chat or count")
      ->required()
      ->check(CLI::IsMember({"encode", "decode", "chat", "count"}));
  sub->callback([o, &rc] { rc = run(*o); });
}

}  // namespace shoal::cli
