// The files beside tokenizer.json: tokenizer_config.json (BOS/EOS, add_bos_token, the chat
// template) and the model's config.json (vocab_size, the ids decode accepts). Both optional.
#include <filesystem>
#include <fstream>
#include <iterator>

#include "text/tokenizer/json_fields.h"
#include "text/tokenizer/tokenizer_impl.h"

namespace shoal {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// bos_token / eos_token: a string, or an AddedToken object {"content": ...}.
StatusOr<std::string> special_token(const JsonFile& f, const char* key) {
  const json* v = f.find(f.root, key);
  if (v == nullptr) return std::string();
  if (v->is_string()) return v->get<std::string>();
  if (v->is_object()) {
    const json* content = f.find(*v, "content");
    if (content != nullptr && content->is_string()) return content->get<std::string>();
  }
  return f.error(key, "expected a string or an object with a string \"content\", got " + v->dump());
}

// A string, or a list of {"name", "template"} from which "default" is taken.
StatusOr<std::string> chat_template(const JsonFile& f) {
  const json* v = f.find(f.root, "chat_template");
  if (v == nullptr) return std::string();
  if (v->is_string()) return v->get<std::string>();
  if (!v->is_array()) return f.error("chat_template", "expected a string or a list of named templates, got " + std::string(v->type_name()));
  for (size_t i = 0; i < v->size(); ++i) {
    const json& item = (*v)[i];
    const std::string where = "chat_template[" + std::to_string(i) + "]";
    if (!item.is_object()) return f.error(where, "expected {\"name\", \"template\"}, got " + item.dump());
    SHOAL_ASSIGN_OR_RETURN(std::string name, f.string(item, where, "name", ""));
    SHOAL_ASSIGN_OR_RETURN(std::string text, f.string(item, where, "template", ""));
    if (name == "default") return text;
  }
  return std::string();  // no "default": as if there were no template
}

StatusOr<int32_t> resolve(const JsonFile& f, const TokenizerImpl& t, const char* key, const std::string& token) {
  if (token.empty()) return -1;
  const int32_t id = t.token_id(token);
  if (id < 0) return f.error(key, json(token).dump() + " is not a token of tokenizer.json");
  return id;
}

}  // namespace

Status load_tokenizer_config(const fs::path& dir, TokenizerImpl& t) {
  const fs::path file = dir / "tokenizer_config.json";
  std::error_code ec;
  bool config_decides_bos = false;
  if (fs::exists(file, ec)) {
    SHOAL_ASSIGN_OR_RETURN(JsonFile f, JsonFile::read(file));
    if (!f.root.is_object()) return f.error("(top level)", "expected an object, got " + std::string(f.root.type_name()));
    config_decides_bos = f.find(f.root, "add_bos_token") != nullptr;
    SHOAL_ASSIGN_OR_RETURN(t.add_bos_, f.boolean(f.root, "", "add_bos_token", false));
    SHOAL_ASSIGN_OR_RETURN(t.bos_token_, special_token(f, "bos_token"));
    SHOAL_ASSIGN_OR_RETURN(t.eos_token_, special_token(f, "eos_token"));
    SHOAL_ASSIGN_OR_RETURN(t.chat_template_, chat_template(f));
    SHOAL_ASSIGN_OR_RETURN(t.bos_id_, resolve(f, t, "bos_token", t.bos_token_));
    SHOAL_ASSIGN_OR_RETURN(t.eos_id_, resolve(f, t, "eos_token", t.eos_token_));
  }
  // Without add_bos_token, what tokenizer.json's post-processor puts first is the BOS, as
  // PreTrainedTokenizerFast adds it (Llama 3); with it, the config decides, as transformers'
  // Llama-style tokenizers rebuild the post-processor from it (DeepSeek, the R1 distills).
  if (!config_decides_bos && t.post_bos_id_ >= 0) {
    t.add_bos_ = true;
    t.bos_id_ = t.post_bos_id_;
    if (t.bos_token_.empty()) t.bos_token_ = t.post_bos_token_;
  }
  // Newer Hugging Face repos keep the template in its own file.
  const fs::path jinja = dir / "chat_template.jinja";
  if (t.chat_template_.empty() && fs::exists(jinja, ec)) {
    std::ifstream in(jinja, std::ios::binary);
    if (!in) return not_found(jinja.string() + ": cannot open");
    t.chat_template_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  return Status::ok_status();
}

Status load_model_config(const fs::path& file, TokenizerImpl& t) {
  std::error_code ec;
  if (!fs::exists(file, ec)) return Status::ok_status();
  SHOAL_ASSIGN_OR_RETURN(JsonFile f, JsonFile::read(file));
  if (!f.root.is_object()) return f.error("(top level)", "expected an object, got " + std::string(f.root.type_name()));
  const json* v = f.find(f.root, "vocab_size");
  if (v == nullptr) return Status::ok_status();
  if (!v->is_number_integer() || v->get<int64_t>() <= 0 || v->get<int64_t>() > INT32_MAX) {
    return f.error("vocab_size", "expected a positive integer, got " + v->dump());
  }
  t.vocab_limit_ = v->get<int64_t>();
  return Status::ok_status();
}

}  // namespace shoal
