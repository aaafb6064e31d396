// json.dumps as transformers' tojson filter calls it: Python's separators, indentation,
// ensure_ascii escapes (lowercase hex, surrogate pairs), float repr and key order.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "text/jinja/text.h"
#include "text/jinja/value.h"

namespace shoal::jinja {

namespace {

void json_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out.push_back('"');
  char buf[16];
  for (char32_t c : text::decode(s)) {
    switch (c) {
      case '"': out += "\\\""; continue;
      case '\\': out += "\\\\"; continue;
      case '\n': out += "\\n"; continue;
      case '\r': out += "\\r"; continue;
      case '\t': out += "\\t"; continue;
      case '\b': out += "\\b"; continue;
      case '\f': out += "\\f"; continue;
      default: break;
    }
    if (c < 0x20 || (ensure_ascii && c >= 0x7F)) {
      if (c < 0x10000) {
        std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
      } else {  // a surrogate pair, as Python writes it
        char32_t v = c - 0x10000;
        std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", static_cast<unsigned>(0xD800 + (v >> 10)),
                      static_cast<unsigned>(0xDC00 + (v & 0x3FF)));
      }
      out += buf;
      continue;
    }
    text::append_utf8(out, c);
  }
  out.push_back('"');
}

struct JsonWriter {
  const JsonOptions& opts;
  std::string item_sep;
  std::string key_sep;
  std::string out;

  void newline(int level) {
    out.push_back('\n');
    for (int i = 0; i < level; ++i) out += *opts.indent;
  }

  Status write(const Value& v, int level) {
    using K = Value::Kind;
    switch (v.kind()) {
      case K::kNone: out += "null"; return Status();
      case K::kBool: out += v.as_bool() ? "true" : "false"; return Status();
      case K::kInt: out += std::to_string(v.as_int()); return Status();
      case K::kFloat: {
        double d = v.as_double();
        out += std::isnan(d) ? "NaN" : std::isinf(d) ? (d < 0 ? "-Infinity" : "Infinity") : text::py_float(d);
        return Status();
      }
      case K::kString: json_string(out, v.str(), opts.ensure_ascii); return Status();
      case K::kList:
        if (!v.list_or_tuple()) break;
        return write_list(v.items(), level);
      case K::kDict: return write_dict(v.dict(), level);
      default:
        break;
    }
    return invalid_argument("Object of type " + v.type_name() + " is not JSON serializable");
  }

  Status write_list(const List& items, int level) {
    if (items.empty()) {
      out += "[]";
      return Status();
    }
    out.push_back('[');
    for (size_t i = 0; i < items.size(); ++i) {
      if (i) out += item_sep;
      if (opts.indent) newline(level + 1);
      SHOAL_RETURN_IF_ERROR(write(items[i], level + 1));
    }
    if (opts.indent) newline(level);
    out.push_back(']');
    return Status();
  }

  Status write_dict(const Dict& d, int level) {
    if (d.size() == 0) {
      out += "{}";
      return Status();
    }
    std::vector<const std::pair<std::string, Value>*> entries;
    for (const auto& kv : d.items()) entries.push_back(&kv);
    if (opts.sort_keys) {
      std::stable_sort(entries.begin(), entries.end(), [](auto* a, auto* b) { return a->first < b->first; });
    }
    out.push_back('{');
    for (size_t i = 0; i < entries.size(); ++i) {
      if (i) out += item_sep;
      if (opts.indent) newline(level + 1);
      json_string(out, entries[i]->first, opts.ensure_ascii);
      out += key_sep;
      SHOAL_RETURN_IF_ERROR(write(entries[i]->second, level + 1));
    }
    if (opts.indent) newline(level);
    out.push_back('}');
    return Status();
  }
};

}  // namespace

StatusOr<std::string> to_json(const Value& v, const JsonOptions& opts) {
  JsonWriter w{opts, opts.indent ? "," : ", ", ": ", ""};
  if (opts.separators) {
    w.item_sep = opts.separators->first;
    w.key_sep = opts.separators->second;
  }
  SHOAL_RETURN_IF_ERROR(w.write(v, 0));
  return std::move(w.out);
}

}  // namespace shoal::jinja
