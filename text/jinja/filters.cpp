// Jinja2 3.1's builtin filters (jinja2/filters.py) with transformers' tojson, one table entry
// each; the scalar and string ones are here, those over sequences in seq_filters.cpp. Names
// Jinja has but we do not implement are listed so they fail as "not supported", not "unknown".
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "text/jinja/filters.h"
#include "text/jinja/text.h"

namespace shoal::jinja {

std::string soft_str(const Value& v) { return v.to_str(); }

bool opt_true(const std::optional<Value>& v) { return v && v->truthy(); }

namespace {

using Filter = StatusOr<Value> (*)(const Value& v, const Args& a);

StatusOr<Value> f_length(const Value& v, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(int64_t n, length(v));
  return Value(n);
}

StatusOr<Value> f_default(const Value& v, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, "default", {"default_value", "boolean"}));
  if (v.is_undefined() || (opt_true(p[1]) && !v.truthy())) return p[0] ? *p[0] : Value("");
  return v;
}

// Python int(str): optional sign, digits with single underscores, surrounding whitespace.
std::optional<int64_t> parse_int(const std::string& raw, int base) {
  std::string s = text::strip(raw, nullptr, true, true);
  std::string digits;
  size_t i = 0;
  bool neg = false;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
  for (; i < s.size(); ++i) {
    if (s[i] == '_' && !digits.empty() && i + 1 < s.size() && s[i + 1] != '_') continue;
    digits.push_back(s[i]);
  }
  if (digits.empty()) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  long long n = std::strtoll(digits.c_str(), &end, base);
  if (*end != '\0' || errno == ERANGE || !std::isalnum(static_cast<unsigned char>(digits[0]))) return std::nullopt;
  return neg ? -n : n;
}

// Python float(str): strtod plus Python's spellings of infinity and nan.
std::optional<double> parse_float(const std::string& raw) {
  std::string s = text::strip(raw, nullptr, true, true);
  std::string clean;
  for (char c : s) {
    if (c != '_') clean.push_back(c);
  }
  if (clean.empty() || clean.find_first_of("xXpP") != std::string::npos) return std::nullopt;
  char* end = nullptr;
  double d = std::strtod(clean.c_str(), &end);
  if (*end != '\0') return std::nullopt;
  return d;
}

StatusOr<Value> f_int(const Value& v, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, "int", {"default", "base"}));
  Value dflt = p[0] ? *p[0] : Value(0);
  int base = p[1] && p[1]->is_integral() ? static_cast<int>(p[1]->as_int()) : 10;
  if (v.is_undefined()) return v.undefined_error();
  if (v.is_integral()) return Value(v.as_int());
  if (v.kind() == Value::Kind::kFloat) {
    double d = v.as_double();
    if (!std::isfinite(d)) return invalid_argument("cannot convert float " + v.to_str() + " to integer");
    return Value(static_cast<int64_t>(d));
  }
  if (!v.is_string()) return dflt;
  if (auto n = parse_int(v.str(), base)) return Value(*n);
  if (auto d = parse_float(v.str()); d && std::isfinite(*d)) return Value(static_cast<int64_t>(*d));
  return dflt;
}

StatusOr<Value> f_float(const Value& v, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, "float", {"default"}));
  if (v.is_undefined()) return v.undefined_error();
  if (v.is_number()) return Value(v.as_double());
  if (v.is_string()) {
    if (auto d = parse_float(v.str())) return Value(*d);
  }
  return p[0] ? *p[0] : Value(0.0);
}

StatusOr<Value> f_string_case(const Value& v, std::string (*fn)(std::string_view)) {
  SHOAL_ASSIGN_OR_RETURN(std::string s, map_case(fn, soft_str(v)));
  return Value(std::move(s));
}

// Jinja's title filter: capitalise after runs of spaces, -, (, {, [ and <.
StatusOr<Value> f_title(const Value& v, const Args& a) {
  SHOAL_RETURN_IF_ERROR(map_case(text::lower, soft_str(v)).status());
  std::u32string s = text::decode(soft_str(v));
  auto boundary = [](char32_t c) { return text::is_space(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<'; };
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    bool sep = boundary(s[i]);
    while (j < s.size() && boundary(s[j]) == sep) ++j;
    std::string piece = text::encode(std::u32string_view(s).substr(i, j - i));
    out += sep ? piece : text::upper(text::encode(std::u32string_view(s).substr(i, 1))) +
                             text::lower(text::encode(std::u32string_view(s).substr(i + 1, j - i - 1)));
    i = j;
  }
  return Value(std::move(out));
}

StatusOr<Value> f_trim(const Value& v, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, "trim", {"chars"}));
  const std::string* chars = p[0] && p[0]->is_string() ? &p[0]->str() : nullptr;
  return Value(text::strip(soft_str(v), chars, true, true));
}

StatusOr<Value> f_replace(const Value& v, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, "replace", {"old", "new", "count"}));
  if (!p[0] || !p[1]) return invalid_argument("replace() missing required arguments 'old' and 'new'");
  long count = p[2] && p[2]->is_integral() ? static_cast<long>(p[2]->as_int()) : -1;
  return Value(text::replace(soft_str(v), soft_str(*p[0]), soft_str(*p[1]), count));
}

StatusOr<Value> f_tojson(const Value& v, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, "tojson", {"ensure_ascii", "indent", "separators", "sort_keys"}));
  JsonOptions opts;
  opts.ensure_ascii = opt_true(p[0]);
  opts.sort_keys = opt_true(p[3]);
  if (p[1] && !p[1]->is_none()) {
    if (p[1]->is_integral()) {
      opts.indent = std::string(static_cast<size_t>(std::max<int64_t>(0, p[1]->as_int())), ' ');
    } else if (p[1]->is_string()) {
      opts.indent = p[1]->str();
    } else {
      return invalid_argument("tojson indent must be an int or a str");
    }
  }
  if (p[2] && !p[2]->is_none()) {
    const Value& s = *p[2];
    if (s.kind() != Value::Kind::kList || s.items().size() != 2 || !s.items()[0].is_string() ||
        !s.items()[1].is_string()) {
      return invalid_argument("tojson separators must be a pair of strings");
    }
    opts.separators = std::make_pair(s.items()[0].str(), s.items()[1].str());
  }
  SHOAL_ASSIGN_OR_RETURN(std::string out, to_json(v, opts));
  return Value(std::move(out));
}

StatusOr<Value> f_indent(const Value& v, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, "indent", {"width", "first", "blank"}));
  std::string indention = "    ";
  if (p[0] && p[0]->is_string()) indention = p[0]->str();
  if (p[0] && p[0]->is_integral()) indention = std::string(static_cast<size_t>(std::max<int64_t>(0, p[0]->as_int())), ' ');
  if (v.is_undefined()) return v.undefined_error();
  if (!v.is_string()) return invalid_argument("unsupported operand type(s) for +=: '" + v.type_name() + "' and 'str'");
  std::vector<std::string> lines = text::splitlines(v.str() + "\n", false);
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i) out += "\n";
    bool indent = opt_true(p[2]) ? i > 0 : (i > 0 && !lines[i].empty());
    out += (indent ? indention : "") + lines[i];
  }
  if (opt_true(p[1])) out = indention + out;
  return Value(std::move(out));
}

StatusOr<Value> f_abs(const Value& v, const Args& a) {
  if (!v.is_number()) return invalid_argument("bad operand type for abs(): '" + v.type_name() + "'");
  if (v.kind() == Value::Kind::kFloat) return Value(std::fabs(v.as_double()));
  return Value(v.as_int() < 0 ? -v.as_int() : v.as_int());
}

StatusOr<Value> f_round(const Value& v, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, "round", {"precision", "method"}));
  if (!v.is_number()) return invalid_argument("type " + v.type_name() + " doesn't define __round__ method");
  int64_t precision = p[0] && p[0]->is_integral() ? p[0]->as_int() : 0;
  std::string method = p[1] && p[1]->is_string() ? p[1]->str() : "common";
  double x = v.as_double();
  if (method == "floor" || method == "ceil") {
    double scale = std::pow(10.0, static_cast<double>(precision));
    return Value((method == "floor" ? std::floor(x * scale) : std::ceil(x * scale)) / scale);
  }
  if (method != "common") return invalid_argument("method must be common, ceil or floor");
  if (v.is_integral() && precision >= 0) return Value(v.as_int());  // round(int, n) stays an int
  if (!std::isfinite(x) || precision > 300) return Value(x);
  // Python's round(x, n): correctly rounded, half to even, on the exact binary value.
  char buf[512];
  std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(std::max<int64_t>(precision, 0)), x);
  double r = std::strtod(buf, nullptr);
  if (precision < 0) {
    double scale = std::pow(10.0, static_cast<double>(-precision));
    r = std::nearbyint(x / scale) * scale;
  }
  return Value(r);
}

StatusOr<Value> f_escape(const Value& v, const Args& a) {
  if (v.markup()) return v;
  return Value(html_escape(soft_str(v)), true);
}

StatusOr<Value> f_format(const Value& v, const Args& a) {
  if (!a.pos.empty() && !a.kw.empty()) return invalid_argument("can't handle positional and keyword arguments at the same time");
  Value args;
  if (!a.kw.empty()) {
    Dict d;
    for (const auto& [k, x] : a.kw) d.set(k, x);
    args = Value::dict(std::move(d));
  } else {
    args = Value::list(a.pos, true);
  }
  SHOAL_ASSIGN_OR_RETURN(std::string out, percent_format(soft_str(v), args));
  return Value(std::move(out));
}

StatusOr<Value> f_attr(const Value& v, const Args& a) {
  if (a.pos.size() != 1 || !a.pos[0].is_string()) return invalid_argument("attr() takes an attribute name");
  if (v.kind() == Value::Kind::kDict && !v.dict().find(a.pos[0].str())) return get_attr(v, a.pos[0].str());
  if (v.kind() == Value::Kind::kDict) {  // getattr, not item lookup: a key is no attribute
    return Value::undefined("'dict object' has no attribute '" + a.pos[0].str() + "'");
  }
  return get_attr(v, a.pos[0].str());
}

const std::vector<std::pair<std::string_view, Filter>>& filters() {
  static const std::vector<std::pair<std::string_view, Filter>> kTable = {
      {"abs", f_abs},
      {"attr", f_attr},
      {"capitalize", [](const Value& v, const Args&) { return f_string_case(v, text::capitalize); }},
      {"count", f_length},
      {"d", f_default},
      {"default", f_default},
      {"dictsort", f_dictsort},
      {"e", f_escape},
      {"escape", f_escape},
      {"first", [](const Value& v, const Args&) { return f_first_last(v, false); }},
      {"float", f_float},
      {"forceescape", [](const Value& v, const Args&) -> StatusOr<Value> { return Value(html_escape(soft_str(v)), true); }},
      {"format", f_format},
      {"indent", f_indent},
      {"int", f_int},
      {"items", f_items},
      {"join", f_join},
      {"last", [](const Value& v, const Args&) { return f_first_last(v, true); }},
      {"length", f_length},
      {"list", f_list},
      {"lower", [](const Value& v, const Args&) { return f_string_case(v, text::lower); }},
      {"map", f_map},
      {"max", [](const Value& v, const Args& a) { return f_min_max(v, a, true); }},
      {"min", [](const Value& v, const Args& a) { return f_min_max(v, a, false); }},
      {"reject", [](const Value& v, const Args& a) { return f_select(v, a, false, false); }},
      {"rejectattr", [](const Value& v, const Args& a) { return f_select(v, a, true, false); }},
      {"replace", f_replace},
      {"reverse", f_reverse},
      {"round", f_round},
      {"safe", [](const Value& v, const Args&) -> StatusOr<Value> { return Value(soft_str(v), true); }},
      {"select", [](const Value& v, const Args& a) { return f_select(v, a, false, true); }},
      {"selectattr", [](const Value& v, const Args& a) { return f_select(v, a, true, true); }},
      {"sort", f_sort},
      {"string", [](const Value& v, const Args&) -> StatusOr<Value> { return Value(soft_str(v), v.markup()); }},
      {"sum", f_sum},
      {"title", f_title},
      {"tojson", f_tojson},
      {"trim", f_trim},
      {"unique", f_unique},
      {"upper", [](const Value& v, const Args&) { return f_string_case(v, text::upper); }},
  };
  return kTable;
}

constexpr std::string_view kUnsupportedFilters[] = {
    "batch", "center", "filesizeformat", "groupby", "pprint", "random", "slice", "striptags",
    "truncate", "urlencode", "urlize", "wordcount", "wordwrap", "xmlattr"};

}  // namespace

StatusOr<std::string> map_case(std::string (*fn)(std::string_view), std::string_view s) {
  if (char32_t c = text::unknown_case(s)) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "U+%04X", static_cast<unsigned>(c));
    return unimplemented(std::string("case mapping of ") + buf + " is not supported");
  }
  return fn(s);
}

Builtin filter_kind(std::string_view name) {
  for (const auto& [n, f] : filters()) {
    if (n == name) return Builtin::kSupported;
  }
  for (auto n : kUnsupportedFilters) {
    if (n == name) return Builtin::kUnsupported;
  }
  return Builtin::kUnknown;
}

StatusOr<Value> apply_filter(std::string_view name, const Value& subject, const Args& args) {
  for (const auto& [n, f] : filters()) {
    if (n == name) return f(subject, args);
  }
  return invalid_argument("unknown filter '" + std::string(name) + "'");
}

}  // namespace shoal::jinja
