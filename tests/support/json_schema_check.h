// An independent JSON-schema validator for the subset constrained decoding supports (JSON
// Schema semantics, plus OpenAPI's nullable), written for the tests from the specification and
// sharing nothing with text/grammar/json_schema.cpp: what a constrained answer must satisfy.
#pragma once

#include <algorithm>
#include <cctype>
#include <cmath>
#include <nlohmann/json.hpp>
#include <string>

namespace shoal::test {

using nlohmann::json;

inline size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

inline bool all_digits(const std::string& s, size_t at, size_t n) {
  if (at + n > s.size()) return false;
  for (size_t i = at; i < at + n; ++i)
    if (s[i] < '0' || s[i] > '9') return false;
  return true;
}
inline int number_at(const std::string& s, size_t at, size_t n) { return std::stoi(s.substr(at, n)); }

inline bool valid_date(const std::string& s) {
  if (s.size() != 10 || !all_digits(s, 0, 4) || s[4] != '-' || !all_digits(s, 5, 2) || s[7] != '-' || !all_digits(s, 8, 2))
    return false;
  const int y = number_at(s, 0, 4), m = number_at(s, 5, 2), d = number_at(s, 8, 2);
  static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (m < 1 || m > 12 || d < 1) return false;
  const bool leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
  return d <= days[m - 1] + (m == 2 && leap ? 1 : 0);
}

// HH:MM:SS(.d{1,9})?(Z|[+-]HH:MM), second 60 allowed.
inline bool valid_time(const std::string& s) {
  auto hh_mm = [&](size_t at) {
    return all_digits(s, at, 2) && s[at + 2] == ':' && all_digits(s, at + 3, 2) && number_at(s, at, 2) < 24 &&
           number_at(s, at + 3, 2) < 60;
  };
  if (s.size() < 9 || !hh_mm(0) || s[5] != ':' || !all_digits(s, 6, 2) || number_at(s, 6, 2) > 60) return false;
  size_t at = 8;
  if (s[at] == '.') {
    size_t n = 0;
    while (at + 1 + n < s.size() && std::isdigit(uint8_t(s[at + 1 + n]))) ++n;
    if (n < 1 || n > 9) return false;
    at += 1 + n;
  }
  if (at < s.size() && s[at] == 'Z') return at + 1 == s.size();
  return at + 6 == s.size() && (s[at] == '+' || s[at] == '-') && hh_mm(at + 1);
}

inline bool valid_uuid(const std::string& s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (s[i] != '-') return false;
    } else if (!std::isxdigit(uint8_t(s[i]))) {
      return false;
    }
  }
  return true;
}

inline bool valid_format(const std::string& s, const std::string& f) {
  if (f == "date") return valid_date(s);
  if (f == "time") return valid_time(s);
  if (f == "date-time") return s.size() > 11 && valid_date(s.substr(0, 10)) && s[10] == 'T' && valid_time(s.substr(11));
  if (f == "uuid") return valid_uuid(s);
  return false;
}

inline bool of_type(const json& v, const std::string& t) {
  if (t == "string") return v.is_string();
  if (t == "number") return v.is_number();
  if (t == "integer") return v.is_number_integer() || (v.is_number_float() && v.get<double>() == std::floor(v.get<double>()));
  if (t == "boolean") return v.is_boolean();
  if (t == "null") return v.is_null();
  if (t == "object") return v.is_object();
  return t == "array" && v.is_array();
}

inline bool validate(const json& v, const json& s, const json& root) {
  if (s.is_boolean()) return s.get<bool>();
  if (s.value("nullable", false) && v.is_null()) return true;
  if (s.contains("$ref")) {
    const json::json_pointer p(s["$ref"].get<std::string>().substr(1));
    if (!root.contains(p) || !validate(v, root.at(p), root)) return false;
  }
  if (s.contains("allOf"))
    for (const json& sub : s["allOf"])
      if (!validate(v, sub, root)) return false;
  if (s.contains("anyOf")) {
    bool any = false;
    for (const json& sub : s["anyOf"]) any = any || validate(v, sub, root);
    if (!any) return false;
  }
  if (s.contains("enum") && std::find(s["enum"].begin(), s["enum"].end(), v) == s["enum"].end()) return false;
  if (s.contains("const") && v != s["const"]) return false;
  if (s.contains("type")) {
    const json types = s["type"].is_array() ? s["type"] : json::array({s["type"]});
    if (std::none_of(types.begin(), types.end(), [&](const json& t) { return of_type(v, t.get<std::string>()); }))
      return false;
  }
  if (v.is_string()) {
    const std::string& str = v.get_ref<const std::string&>();
    if (s.contains("minLength") && code_points(str) < s["minLength"].get<size_t>()) return false;
    if (s.contains("maxLength") && code_points(str) > s["maxLength"].get<size_t>()) return false;
    if (s.contains("format") && !valid_format(str, s["format"].get<std::string>())) return false;
  }
  if (v.is_array()) {
    if (s.contains("minItems") && v.size() < s["minItems"].get<size_t>()) return false;
    if (s.contains("maxItems") && v.size() > s["maxItems"].get<size_t>()) return false;
    if (s.contains("items"))
      for (const json& e : v)
        if (!validate(e, s["items"], root)) return false;
  }
  if (v.is_object()) {
    const json props = s.value("properties", json::object());
    for (const json& r : s.value("required", json::array()))
      if (!v.contains(r.get<std::string>())) return false;
    for (const auto& [k, e] : v.items()) {
      if (props.contains(k)) {
        if (!validate(e, props[k], root)) return false;
      } else if (s.contains("additionalProperties") && !validate(e, s["additionalProperties"], root)) {
        return false;
      }
    }
  }
  return true;
}

// v is valid against `schema`, whose $refs point into itself.
inline bool schema_valid(const json& v, const json& schema) { return validate(v, schema, schema); }

}  // namespace shoal::test
