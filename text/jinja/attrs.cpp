// Attribute and item access, and the methods of str, dict and list that templates call
// (content.split('</think>'), message.get('x'), d.items(), ...).
#include <algorithm>

#include "text/jinja/builtins.h"
#include "text/jinja/text.h"

namespace shoal::jinja {
namespace {

using Method = StatusOr<Value> (*)(const Value& self, const Args& args);

Value str_list(std::vector<std::string> parts) {
  List out;
  out.reserve(parts.size());
  for (auto& p : parts) out.emplace_back(std::move(p));
  return Value::list(std::move(out));
}

// An optional str argument: null when absent or None.
StatusOr<const std::string*> opt_str(const std::optional<Value>& v, std::string_view what) {
  if (!v || v->is_none()) return static_cast<const std::string*>(nullptr);
  if (!v->is_string()) return invalid_argument(std::string(what) + " must be str or None, not " + v->type_name());
  return &v->str();
}

StatusOr<int64_t> opt_int(const std::optional<Value>& v, int64_t dflt, std::string_view what) {
  if (!v) return dflt;
  if (!v->is_integral()) return invalid_argument(std::string(what) + " must be an integer, not " + v->type_name());
  return v->as_int();
}

StatusOr<Value> m_split(const Value& self, const Args& a, std::string_view fn, bool right) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, fn, {"sep", "maxsplit"}));
  SHOAL_ASSIGN_OR_RETURN(const std::string* sep, opt_str(p[0], "sep"));
  SHOAL_ASSIGN_OR_RETURN(int64_t maxsplit, opt_int(p[1], -1, "maxsplit"));
  if (sep && sep->empty()) return invalid_argument("empty separator");
  return str_list(text::split(self.str(), sep, static_cast<long>(maxsplit), right));
}

StatusOr<Value> m_strip(const Value& self, const Args& a, std::string_view fn, bool left, bool right) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, fn, {"chars"}));
  SHOAL_ASSIGN_OR_RETURN(const std::string* chars, opt_str(p[0], "chars"));
  return Value(text::strip(self.str(), chars, left, right));
}

// startswith/endswith(prefix, start, end): prefix a str or a tuple of str.
StatusOr<Value> m_affix(const Value& self, const Args& a, std::string_view fn, bool end) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, fn, {"prefix", "start", "end"}));
  if (!p[0]) return invalid_argument(std::string(fn) + "() takes at least 1 argument (0 given)");
  std::u32string s = text::decode(self.str());
  int64_t n = static_cast<int64_t>(s.size());
  auto clamp = [n](int64_t i) { return std::clamp(i < 0 ? i + n : i, int64_t{0}, n); };
  SHOAL_ASSIGN_OR_RETURN(int64_t b, opt_int(p[1], 0, "start"));
  SHOAL_ASSIGN_OR_RETURN(int64_t e, opt_int(p[2], n, "end"));
  b = clamp(b);
  e = clamp(e);
  std::string sub = b <= e ? text::encode(std::u32string_view(s).substr(b, e - b)) : "";
  List choices = p[0]->kind() == Value::Kind::kList && p[0]->tuple() ? p[0]->items() : List{*p[0]};
  if (b > e) return Value(false);
  for (const Value& c : choices) {
    if (!c.is_string()) {
      return invalid_argument(std::string(fn) + " first arg must be str or a tuple of str, not " + c.type_name());
    }
    const std::string& x = c.str();
    bool hit = x.size() <= sub.size() &&
               (end ? sub.compare(sub.size() - x.size(), x.size(), x) == 0 : sub.compare(0, x.size(), x) == 0);
    if (hit) return Value(true);
  }
  return Value(false);
}

// find/rfind/index/rindex/count(sub): positions in code points.
StatusOr<Value> m_find(const Value& self, const Args& a, std::string_view fn) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, fn, {"sub"}));
  if (!p[0] || !p[0]->is_string()) return invalid_argument(std::string(fn) + "() argument must be str");
  const std::string& s = self.str();
  const std::string& sub = p[0]->str();
  if (fn == "count") {
    if (sub.empty()) return Value(static_cast<int64_t>(text::length(s) + 1));
    int64_t n = 0;
    for (size_t pos = s.find(sub); pos != std::string::npos; pos = s.find(sub, pos + sub.size())) ++n;
    return Value(n);
  }
  bool right = fn == "rfind" || fn == "rindex";
  size_t pos = right ? s.rfind(sub) : s.find(sub);
  if (pos == std::string::npos) {
    if (fn == "index" || fn == "rindex") return invalid_argument("substring not found");
    return Value(-1);
  }
  return Value(static_cast<int64_t>(text::length(std::string_view(s).substr(0, pos))));
}

StatusOr<Value> m_replace(const Value& self, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, "replace", {"old", "new", "count"}));
  if (!p[0] || !p[1] || !p[0]->is_string() || !p[1]->is_string()) {
    return invalid_argument("replace() arguments must be str");
  }
  SHOAL_ASSIGN_OR_RETURN(int64_t count, opt_int(p[2], -1, "count"));
  return Value(text::replace(self.str(), p[0]->str(), p[1]->str(), static_cast<long>(count)));
}

StatusOr<Value> m_join(const Value& self, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, "join", {"iterable"}));
  if (!p[0]) return invalid_argument("join() takes exactly one argument (0 given)");
  SHOAL_ASSIGN_OR_RETURN(List items, iterate(*p[0]));
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (!items[i].is_string()) {
      return invalid_argument("sequence item " + std::to_string(i) + ": expected str instance, " +
                              items[i].type_name() + " found");
    }
    if (i) out += self.str();
    out += items[i].str();
  }
  return Value(std::move(out));
}

// isalpha and friends: exact for ASCII; other text is refused rather than guessed.
StatusOr<Value> m_is(const Value& self, std::string_view fn) {
  std::u32string s = text::decode(self.str());
  if (fn == "isspace") return Value(!s.empty() && std::all_of(s.begin(), s.end(), text::is_space));
  if (fn == "isascii") return Value(std::all_of(s.begin(), s.end(), [](char32_t c) { return c < 0x80; }));
  if (fn == "islower" || fn == "isupper") {
    SHOAL_RETURN_IF_ERROR(map_case(text::lower, self.str()).status());
    bool lower = fn == "islower", any = false;
    for (char32_t c : s) {
      if (!text::is_cased(c)) continue;
      any = true;
      if (lower ? text::is_upper_char(c) : text::is_lower_char(c)) return Value(false);
    }
    return Value(any);
  }
  if (std::any_of(s.begin(), s.end(), [](char32_t c) { return c >= 0x80; })) {
    return unimplemented("str." + std::string(fn) + "() is only supported for ASCII text");
  }
  auto all = [&](auto pred) { return Value(!s.empty() && std::all_of(s.begin(), s.end(), pred)); };
  auto digit = [](char32_t c) { return c >= '0' && c <= '9'; };
  auto alpha = [](char32_t c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
  if (fn == "isalpha") return all(alpha);
  if (fn == "isalnum") return all([&](char32_t c) { return alpha(c) || digit(c); });
  return all(digit);  // isdigit, isdecimal, isnumeric
}

StatusOr<Value> m_pad(const Value& self, const Args& a, std::string_view fn) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, fn, {"width", "fillchar"}));
  if (!p[0] || !p[0]->is_integral()) return invalid_argument(std::string(fn) + "() width must be an integer");
  std::string fill = " ";
  if (p[1]) {
    if (!p[1]->is_string() || text::length(p[1]->str()) != 1) {
      return invalid_argument("The fill character must be exactly one character long");
    }
    fill = p[1]->str();
  }
  const std::string& s = self.str();
  int64_t len = static_cast<int64_t>(text::length(s));
  int64_t pad = std::max<int64_t>(0, p[0]->as_int() - len);
  auto fills = [&](int64_t n) {
    std::string out;
    for (int64_t i = 0; i < n; ++i) out += fn == "zfill" ? "0" : fill;
    return out;
  };
  if (fn == "ljust") return Value(s + fills(pad));
  if (fn == "rjust") return Value(fills(pad) + s);
  if (fn == "zfill") {
    size_t sign = !s.empty() && (s[0] == '-' || s[0] == '+') ? 1 : 0;
    return Value(s.substr(0, sign) + fills(pad) + s.substr(sign));
  }
  int64_t left = pad / 2 + (pad & p[0]->as_int() & 1);  // Python's center rounding
  return Value(fills(left) + s + fills(pad - left));
}

StatusOr<Value> m_partition(const Value& self, const Args& a, std::string_view fn) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, fn, {"sep"}));
  if (!p[0] || !p[0]->is_string() || p[0]->str().empty()) return invalid_argument("empty or missing separator");
  const std::string& s = self.str();
  const std::string& sep = p[0]->str();
  size_t pos = fn == "partition" ? s.find(sep) : s.rfind(sep);
  if (pos == std::string::npos) {
    return fn == "partition" ? Value::list({Value(s), Value(""), Value("")}, true)
                             : Value::list({Value(""), Value(""), Value(s)}, true);
  }
  return Value::list({Value(s.substr(0, pos)), Value(sep), Value(s.substr(pos + sep.size()))}, true);
}

StatusOr<Value> m_affix_remove(const Value& self, const Args& a, std::string_view fn) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, fn, {"affix"}));
  if (!p[0] || !p[0]->is_string()) return invalid_argument(std::string(fn) + "() argument must be str");
  const std::string& s = self.str();
  const std::string& x = p[0]->str();
  if (fn == "removeprefix") return Value(s.rfind(x, 0) == 0 ? s.substr(x.size()) : s);
  bool ends = x.size() <= s.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
  return Value(ends && !x.empty() ? s.substr(0, s.size() - x.size()) : s);
}

StatusOr<Value> no_args(const Args& a, std::string_view fn) {
  if (!a.pos.empty() || !a.kw.empty()) return invalid_argument(std::string(fn) + "() takes no arguments");
  return Value();
}

StatusOr<Value> m_case(const Value& self, const Args& a, std::string_view fn, std::string (*map)(std::string_view)) {
  SHOAL_RETURN_IF_ERROR(no_args(a, fn).status());
  SHOAL_ASSIGN_OR_RETURN(std::string s, map_case(map, self.str()));
  return Value(std::move(s));
}

StatusOr<Value> m_copy(const Value& self, const Args& a) {
  SHOAL_RETURN_IF_ERROR(no_args(a, "copy").status());
  return self;
}

const std::vector<std::pair<std::string_view, Method>>& str_methods() {
  static const std::vector<std::pair<std::string_view, Method>> kTable = {
      {"split", [](const Value& s, const Args& a) { return m_split(s, a, "split", false); }},
      {"rsplit", [](const Value& s, const Args& a) { return m_split(s, a, "rsplit", true); }},
      {"splitlines",
       [](const Value& s, const Args& a) -> StatusOr<Value> {
         SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, "splitlines", {"keepends"}));
         return str_list(text::splitlines(s.str(), p[0] && p[0]->truthy()));
       }},
      {"strip", [](const Value& s, const Args& a) { return m_strip(s, a, "strip", true, true); }},
      {"lstrip", [](const Value& s, const Args& a) { return m_strip(s, a, "lstrip", true, false); }},
      {"rstrip", [](const Value& s, const Args& a) { return m_strip(s, a, "rstrip", false, true); }},
      {"startswith", [](const Value& s, const Args& a) { return m_affix(s, a, "startswith", false); }},
      {"endswith", [](const Value& s, const Args& a) { return m_affix(s, a, "endswith", true); }},
      {"find", [](const Value& s, const Args& a) { return m_find(s, a, "find"); }},
      {"rfind", [](const Value& s, const Args& a) { return m_find(s, a, "rfind"); }},
      {"index", [](const Value& s, const Args& a) { return m_find(s, a, "index"); }},
      {"rindex", [](const Value& s, const Args& a) { return m_find(s, a, "rindex"); }},
      {"count", [](const Value& s, const Args& a) { return m_find(s, a, "count"); }},
      {"replace", m_replace},
      {"join", m_join},
      {"lower", [](const Value& s, const Args& a) { return m_case(s, a, "lower", text::lower); }},
      {"upper", [](const Value& s, const Args& a) { return m_case(s, a, "upper", text::upper); }},
      {"title", [](const Value& s, const Args& a) { return m_case(s, a, "title", text::title); }},
      {"capitalize", [](const Value& s, const Args& a) { return m_case(s, a, "capitalize", text::capitalize); }},
      {"format",
       [](const Value& s, const Args& a) -> StatusOr<Value> {
         SHOAL_ASSIGN_OR_RETURN(std::string out, str_format(s.str(), a));
         return Value(std::move(out));
       }},
      {"isspace", [](const Value& s, const Args& a) { return m_is(s, "isspace"); }},
      {"isascii", [](const Value& s, const Args& a) { return m_is(s, "isascii"); }},
      {"islower", [](const Value& s, const Args& a) { return m_is(s, "islower"); }},
      {"isupper", [](const Value& s, const Args& a) { return m_is(s, "isupper"); }},
      {"isalpha", [](const Value& s, const Args& a) { return m_is(s, "isalpha"); }},
      {"isalnum", [](const Value& s, const Args& a) { return m_is(s, "isalnum"); }},
      {"isdigit", [](const Value& s, const Args& a) { return m_is(s, "isdigit"); }},
      {"isdecimal", [](const Value& s, const Args& a) { return m_is(s, "isdecimal"); }},
      {"isnumeric", [](const Value& s, const Args& a) { return m_is(s, "isnumeric"); }},
      {"ljust", [](const Value& s, const Args& a) { return m_pad(s, a, "ljust"); }},
      {"rjust", [](const Value& s, const Args& a) { return m_pad(s, a, "rjust"); }},
      {"center", [](const Value& s, const Args& a) { return m_pad(s, a, "center"); }},
      {"zfill", [](const Value& s, const Args& a) { return m_pad(s, a, "zfill"); }},
      {"partition", [](const Value& s, const Args& a) { return m_partition(s, a, "partition"); }},
      {"rpartition", [](const Value& s, const Args& a) { return m_partition(s, a, "rpartition"); }},
      {"removeprefix", [](const Value& s, const Args& a) { return m_affix_remove(s, a, "removeprefix"); }},
      {"removesuffix", [](const Value& s, const Args& a) { return m_affix_remove(s, a, "removesuffix"); }},
  };
  return kTable;
}

StatusOr<Value> d_get(const Value& self, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, "get", {"key", "default"}));
  if (!p[0]) return invalid_argument("get expected at least 1 argument, got 0");
  const Value* v = p[0]->is_string() ? self.dict().find(p[0]->str()) : nullptr;
  if (v) return *v;
  return p[1] ? *p[1] : Value::none();
}

StatusOr<Value> d_view(const Value& self, const Args& a, std::string_view fn) {
  SHOAL_RETURN_IF_ERROR(no_args(a, fn).status());
  List out;
  for (const auto& [k, v] : self.dict().items()) {
    if (fn == "keys") out.emplace_back(k);
    if (fn == "values") out.push_back(v);
    if (fn == "items") out.push_back(Value::list({Value(k), v}, true));
  }
  return Value::sequence(std::move(out), Value::Seq::kView, "dict_" + std::string(fn));
}

const std::vector<std::pair<std::string_view, Method>>& dict_methods() {
  static const std::vector<std::pair<std::string_view, Method>> kTable = {
      {"get", d_get},
      {"keys", [](const Value& s, const Args& a) { return d_view(s, a, "keys"); }},
      {"values", [](const Value& s, const Args& a) { return d_view(s, a, "values"); }},
      {"items", [](const Value& s, const Args& a) { return d_view(s, a, "items"); }},
      {"copy", m_copy},
  };
  return kTable;
}

StatusOr<Value> l_index_count(const Value& self, const Args& a, std::string_view fn) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, fn, {"value"}));
  if (!p[0]) return invalid_argument(std::string(fn) + "() takes exactly one argument (0 given)");
  int64_t count = 0;
  for (size_t i = 0; i < self.items().size(); ++i) {
    if (!equals(self.items()[i], *p[0])) continue;
    if (fn == "index") return Value(static_cast<int64_t>(i));
    ++count;
  }
  if (fn == "index") return invalid_argument(p[0]->repr() + " is not in list");
  return Value(count);
}

const std::vector<std::pair<std::string_view, Method>>& list_methods() {
  static const std::vector<std::pair<std::string_view, Method>> kTable = {
      {"index", [](const Value& s, const Args& a) { return l_index_count(s, a, "index"); }},
      {"count", [](const Value& s, const Args& a) { return l_index_count(s, a, "count"); }},
      {"copy", m_copy},
  };
  return kTable;
}

// Python attributes we do not implement: they exist (so `is defined` holds) but fail when
// called. The mutating ones are what the immutable sandbox forbids.
constexpr std::string_view kStrOther[] = {"casefold", "encode", "expandtabs", "format_map", "isidentifier",
                                          "isprintable", "istitle", "maketrans", "swapcase", "translate"};
constexpr std::string_view kDictUnsafe[] = {"clear", "pop", "popitem", "setdefault", "update", "fromkeys"};
constexpr std::string_view kListUnsafe[] = {"append", "clear", "extend", "insert", "pop", "remove", "reverse", "sort"};

template <size_t N>
bool listed(const std::string_view (&names)[N], std::string_view name) {
  return std::find(std::begin(names), std::end(names), name) != std::end(names);
}

std::optional<Value> bound_method(const Value& obj, const std::string& name) {
  const std::vector<std::pair<std::string_view, Method>>* table = nullptr;
  std::string type = obj.type_name();
  bool unsupported = false, unsafe = false;
  switch (obj.kind()) {
    case Value::Kind::kString:
      table = &str_methods();
      unsupported = listed(kStrOther, name);
      break;
    case Value::Kind::kDict:
      table = &dict_methods();
      unsafe = listed(kDictUnsafe, name);
      break;
    case Value::Kind::kList:
      if (!obj.list_or_tuple()) return std::nullopt;
      table = &list_methods();
      unsafe = listed(kListUnsafe, name);
      break;
    default:
      return std::nullopt;
  }
  for (const auto& [n, fn] : *table) {
    if (n != name) continue;
    Method m = fn;
    return Value::function(type + "." + name, [obj, m](const Args& a) { return m(obj, a); });
  }
  if (!unsupported && !unsafe) return std::nullopt;
  std::string message = unsafe ? "access to attribute '" + name + "' of '" + type + "' object is unsafe"
                               : "method '" + name + "' of " + type + " is not supported";
  Code code = unsafe ? Code::kInvalidArgument : Code::kUnimplemented;
  return Value::function(type + "." + name, [message, code](const Args&) -> StatusOr<Value> {
    return Status(code, message);
  });
}

std::string object_repr(const Value& obj) {
  return obj.is_none() ? "'None'" : std::string("'").append(obj.type_name()) + " object'";
}

}  // namespace

StatusOr<Value> get_attr(const Value& obj, const std::string& name) {
  if (obj.is_undefined()) return obj.undefined_error();
  if (auto m = bound_method(obj, name)) return *m;
  if (obj.kind() == Value::Kind::kDict) {
    if (const Value* v = obj.dict().find(name)) return *v;
  }
  if (obj.kind() == Value::Kind::kObject) {
    if (const Value* v = obj.object().attrs.find(name)) return *v;
  }
  return Value::undefined(object_repr(obj) + " has no attribute '" + name + "'");
}

StatusOr<Value> get_item(const Value& obj, const Value& key) {
  if (obj.is_undefined()) return obj.undefined_error();
  using K = Value::Kind;
  if (obj.kind() == K::kDict && key.is_string()) {
    if (const Value* v = obj.dict().find(key.str())) return *v;
  }
  bool indexable = obj.list_or_tuple() || (obj.kind() == K::kList && obj.seq() == Value::Seq::kRange);
  if ((indexable || obj.is_string()) && key.is_integral()) {
    int64_t i = key.as_int();
    if (indexable) {
      int64_t n = static_cast<int64_t>(obj.items().size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return obj.items()[static_cast<size_t>(i)];
    } else {
      std::u32string s = text::decode(obj.str());
      int64_t n = static_cast<int64_t>(s.size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return Value(text::encode(std::u32string_view(s).substr(static_cast<size_t>(i), 1)));
    }
  }
  if (key.is_string()) return get_attr(obj, key.str());
  return Value::undefined(object_repr(obj) + " has no element " + key.repr());
}

StatusOr<Value> get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  if (obj.is_undefined()) return obj.undefined_error();
  bool is_list = obj.kind() == Value::Kind::kList && obj.seq() != Value::Seq::kIterator &&
                 obj.seq() != Value::Seq::kView;
  if (!is_list && !obj.is_string()) return Value::undefined(object_repr(obj) + " cannot be sliced");
  auto index = [](const Value& v, std::optional<int64_t>* out) -> Status {
    if (v.is_undefined() || v.is_none()) return Status();
    if (!v.is_integral()) return invalid_argument("slice indices must be integers or None");
    *out = v.as_int();
    return Status();
  };
  std::optional<int64_t> b, e, s;
  SHOAL_RETURN_IF_ERROR(index(start, &b));
  SHOAL_RETURN_IF_ERROR(index(stop, &e));
  SHOAL_RETURN_IF_ERROR(index(step, &s));
  int64_t st = s.value_or(1);
  if (st == 0) return invalid_argument("slice step cannot be zero");
  std::u32string chars = is_list ? std::u32string() : text::decode(obj.str());
  int64_t n = is_list ? static_cast<int64_t>(obj.items().size()) : static_cast<int64_t>(chars.size());
  // Python's PySlice_AdjustIndices.
  auto adjust = [&](std::optional<int64_t> v, int64_t dflt) {
    if (!v) return dflt;
    int64_t i = *v < 0 ? *v + n : *v;
    int64_t lo = st < 0 ? -1 : 0, hi = st < 0 ? n - 1 : n;
    return std::clamp(i, lo, hi);
  };
  int64_t from = adjust(b, st < 0 ? n - 1 : 0);
  int64_t to = adjust(e, st < 0 ? -1 : n);
  List items;
  std::u32string picked;
  for (int64_t i = from; st > 0 ? i < to : i > to; i += st) {
    if (is_list) {
      items.push_back(obj.items()[static_cast<size_t>(i)]);
    } else {
      picked.push_back(chars[static_cast<size_t>(i)]);
    }
  }
  if (is_list) return Value::list(std::move(items), obj.tuple());
  return Value(text::encode(picked));
}

}  // namespace shoal::jinja
