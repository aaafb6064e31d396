// Chat prompts the way transformers' apply_chat_template renders them: the template gets
// messages, add_generation_prompt, tools and documents (None when not given, as transformers
// passes them) and the special tokens (pad_token is the EOS string, as in DeepSeek's config).
#include "text/chat_template.h"

#include <regex>

#include "text/jinja/jinja.h"

namespace shoal {
namespace {

Status check_messages(const nlohmann::json& messages) {
  if (!messages.is_array()) {
    return invalid_argument(std::string("chat messages must be an array, not ") + messages.type_name());
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const nlohmann::json& m = messages[i];
    std::string where = "chat message " + std::to_string(i);
    if (!m.is_object()) return invalid_argument(where + " must be an object, not " + m.type_name());
    auto role = m.find("role");
    if (role == m.end()) return invalid_argument(where + " has no \"role\"");
    if (!role->is_string()) return invalid_argument(where + ": \"role\" must be a string, not " + role->type_name());
  }
  return Status();
}

}  // namespace

StatusOr<std::string> render_chat(const std::string& tmpl, const ChatRequest& req, const std::string& bos_token,
                                  const std::string& eos_token) {
  SHOAL_RETURN_IF_ERROR(check_messages(req.messages));
  if (tmpl.empty()) return invalid_argument("no chat template (tokenizer_config.json has no chat_template)");
  SHOAL_ASSIGN_OR_RETURN(jinja::Template t, jinja::Template::parse(tmpl));
  if (!req.tools.is_null()) {  // the tools' key order matters (tojson): render in order
    nlohmann::ordered_json context = {
        {"messages", nlohmann::ordered_json::parse(req.messages.dump())},
        {"add_generation_prompt", req.add_generation_prompt},
        {"tools", req.tools},
        {"documents", nullptr},
        {"bos_token", bos_token},
        {"eos_token", eos_token},
        {"pad_token", eos_token},
    };
    return t.render(context);
  }
  nlohmann::json context = {
      {"messages", req.messages},   {"add_generation_prompt", req.add_generation_prompt},
      {"tools", nullptr},           {"documents", nullptr},
      {"bos_token", bos_token},     {"eos_token", eos_token},
      {"pad_token", eos_token},
  };
  return t.render(context);
}

bool template_renders_tools(const std::string& tmpl) {
  static const std::regex kTools(R"((^|[^A-Za-z0-9_.'"])tools([^A-Za-z0-9_'"]|$))");
  return std::regex_search(tmpl, kTools);
}

StatusOr<std::string> render_chat(const Tokenizer& tok, const ChatRequest& req) {
  return render_chat(tok.chat_template(), req, tok.bos_token(), tok.eos_token());
}

}  // namespace shoal
