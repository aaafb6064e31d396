#include "text/tokenizer/json_fields.h"

#include <fstream>
#include <iterator>

namespace shoal {
namespace {

using nlohmann::json;

std::string join(const std::string& where, const char* key) { return where.empty() ? key : where + "." + key; }

}  // namespace

StatusOr<JsonFile> JsonFile::read(const std::filesystem::path& file) {
  JsonFile f;
  f.path = file.string();
  std::ifstream in(file, std::ios::binary);
  if (!in) return not_found(f.path + ": cannot open");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  try {
    f.root = json::parse(text);
  } catch (const json::exception& e) {
    return invalid_argument(f.path + ": not valid JSON: " + e.what());
  }
  return f;
}

Status JsonFile::error(const std::string& field, const std::string& what) const {
  return invalid_argument(path + ": " + field + ": " + what);
}

Status JsonFile::unsupported(const std::string& field, const std::string& what) const {
  return unimplemented(path + ": " + field + ": not supported: " + what);
}

const json* JsonFile::find(const json& obj, const char* key) const {
  const auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

StatusOr<const json*> JsonFile::object(const json& obj, const std::string& where, const char* key, bool required) const {
  const json* v = find(obj, key);
  if (v == nullptr) {
    if (required) return error(join(where, key), "missing");
    return v;
  }
  if (!v->is_object()) return error(join(where, key), std::string("expected an object, got ") + v->type_name());
  return v;
}

StatusOr<const json*> JsonFile::array(const json& obj, const std::string& where, const char* key, bool required) const {
  const json* v = find(obj, key);
  if (v == nullptr) {
    if (required) return error(join(where, key), "missing");
    return v;
  }
  if (!v->is_array()) return error(join(where, key), std::string("expected an array, got ") + v->type_name());
  return v;
}

StatusOr<std::string> JsonFile::string(const json& obj, const std::string& where, const char* key, const std::string& fallback) const {
  const json* v = find(obj, key);
  if (v == nullptr) return fallback;
  if (!v->is_string()) return error(join(where, key), "expected a string, got " + v->dump());
  return v->get<std::string>();
}

StatusOr<bool> JsonFile::boolean(const json& obj, const std::string& where, const char* key, bool fallback) const {
  const json* v = find(obj, key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) return error(join(where, key), "expected true or false, got " + v->dump());
  return v->get<bool>();
}

Status JsonFile::check_id(const std::string& field, const json& value) const {
  if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() >= kMaxTokenId) {
    return error(field, "expected a token id (an integer in [0, " + std::to_string(kMaxTokenId) + ")), got " + value.dump());
  }
  return Status::ok_status();
}

StatusOr<int32_t> JsonFile::id(const json& obj, const std::string& where, const char* key) const {
  const json* v = find(obj, key);
  if (v == nullptr) return error(join(where, key), "missing");
  SHOAL_RETURN_IF_ERROR(check_id(join(where, key), *v));
  return v->get<int32_t>();
}

}  // namespace shoal
