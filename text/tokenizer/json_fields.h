// Reading typed fields of a JSON file with errors that name the file and the field
// ("<file>: model.merges[12]: ..."). Absent and null fields read as "not given".
#pragma once

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace shoal {

// Token ids are below this (16M; the largest vocabularies have about 260k tokens), which keeps
// a stray huge id from sizing the id tables to gigabytes.
constexpr int64_t kMaxTokenId = int64_t{1} << 24;

struct JsonFile {
  std::string path;  // as written in messages
  nlohmann::json root;

  static StatusOr<JsonFile> read(const std::filesystem::path& file);

  Status error(const std::string& field, const std::string& what) const;        // kInvalidArgument
  Status unsupported(const std::string& field, const std::string& what) const;  // kUnimplemented

  // obj[key], or null when obj lacks it or it is JSON null.
  const nlohmann::json* find(const nlohmann::json& obj, const char* key) const;
  // `where` names obj in messages ("" for the top level). A required field that is missing is
  // an error; an optional one comes back as nullptr (object, array) or the default.
  StatusOr<const nlohmann::json*> object(const nlohmann::json& obj, const std::string& where, const char* key, bool required) const;
  StatusOr<const nlohmann::json*> array(const nlohmann::json& obj, const std::string& where, const char* key, bool required) const;
  StatusOr<std::string> string(const nlohmann::json& obj, const std::string& where, const char* key, const std::string& fallback) const;
  StatusOr<bool> boolean(const nlohmann::json& obj, const std::string& where, const char* key, bool fallback) const;
  // A token id: required, in [0, kMaxTokenId).
  StatusOr<int32_t> id(const nlohmann::json& obj, const std::string& where, const char* key) const;
  Status check_id(const std::string& field, const nlohmann::json& value) const;
};

}  // namespace shoal
