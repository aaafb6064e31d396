// Jinja2 3.1's builtin tests (jinja2/tests.py) and the globals a chat template can call:
// Jinja's range, dict and namespace, transformers' raise_exception and strftime_now.
#include <cmath>
#include <ctime>

#include "text/jinja/builtins.h"
#include "text/jinja/text.h"

namespace shoal::jinja {
namespace {

using Test = StatusOr<bool> (*)(const Value& v, const Args& a);

StatusOr<Value> one_arg(const Args& a, std::string_view test) {
  if (a.pos.size() != 1 || !a.kw.empty()) return invalid_argument("test '" + std::string(test) + "' takes one argument");
  return a.pos[0];
}

template <bool (*Pred)(const Value&)>
StatusOr<bool> plain(const Value& v, const Args& a) {
  if (!a.pos.empty() || !a.kw.empty()) return invalid_argument("this test takes no arguments");
  return Pred(v);
}

StatusOr<bool> ordered(const Value& v, const Args& a, std::string_view op) {
  SHOAL_ASSIGN_OR_RETURN(Value other, one_arg(a, op));
  return compare(v, other, op);
}

StatusOr<bool> t_eq(const Value& v, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(Value other, one_arg(a, "eq"));
  return equals(v, other);
}

StatusOr<bool> t_ne(const Value& v, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(Value other, one_arg(a, "ne"));
  return !equals(v, other);
}

StatusOr<bool> t_parity(const Value& v, bool odd) {
  if (v.is_undefined()) return v.undefined_error();
  if (!v.is_number()) return invalid_argument("not all arguments converted during string formatting");
  double m = std::fmod(std::fabs(v.as_double()), 2.0);
  return odd ? m == 1.0 : m == 0.0;
}

StatusOr<bool> t_divisibleby(const Value& v, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(Value n, one_arg(a, "divisibleby"));
  SHOAL_ASSIGN_OR_RETURN(Value r, binary_op("%", v, n));
  return !r.truthy();
}

StatusOr<bool> t_in(const Value& v, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(Value seq, one_arg(a, "in"));
  return contains(seq, v);
}

StatusOr<bool> t_sameas(const Value& v, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(Value other, one_arg(a, "sameas"));
  using K = Value::Kind;
  if (v.kind() != other.kind()) return false;
  switch (v.kind()) {
    case K::kNone:
    case K::kBool:
    case K::kInt:
    case K::kUndefined:
      return equals(v, other);
    case K::kList:
      return &v.items() == &other.items();
    case K::kDict:
      return &v.dict() == &other.dict();
    case K::kString:
      return &v.str() == &other.str();
    default:
      return equals(v, other);
  }
}

StatusOr<bool> t_case(const Value& v, bool lower) {
  SHOAL_RETURN_IF_ERROR(map_case(text::lower, v.to_str()).status());
  std::u32string s = text::decode(v.to_str());
  bool any = false;
  for (char32_t c : s) {
    if (!text::is_cased(c)) continue;
    any = true;
    if (lower ? text::is_upper_char(c) : text::is_lower_char(c)) return false;
  }
  return any;
}

bool is_defined(const Value& v) { return !v.is_undefined(); }
bool is_undefined(const Value& v) { return v.is_undefined(); }
bool is_none(const Value& v) { return v.is_none(); }
bool is_boolean(const Value& v) { return v.kind() == Value::Kind::kBool; }
bool is_false(const Value& v) { return v.kind() == Value::Kind::kBool && !v.as_bool(); }
bool is_true(const Value& v) { return v.kind() == Value::Kind::kBool && v.as_bool(); }
bool is_integer(const Value& v) { return v.kind() == Value::Kind::kInt; }
bool is_float(const Value& v) { return v.kind() == Value::Kind::kFloat; }
bool is_number(const Value& v) { return v.is_number(); }
bool is_string(const Value& v) { return v.is_string(); }
bool is_mapping(const Value& v) { return v.kind() == Value::Kind::kDict; }
bool is_iterable(const Value& v) {
  auto k = v.kind();
  return k == Value::Kind::kUndefined || k == Value::Kind::kString || k == Value::Kind::kList || k == Value::Kind::kDict;
}
// len() and __getitem__: str, list, tuple, range, dict and Undefined; not iterators or views.
bool is_sequence(const Value& v) {
  if (v.kind() == Value::Kind::kList) return v.seq() != Value::Seq::kIterator && v.seq() != Value::Seq::kView;
  return is_iterable(v);
}
// Undefined has __call__ (which raises), so Python's callable() is true for it.
bool is_callable(const Value& v) { return v.kind() == Value::Kind::kFunction || v.is_undefined(); }
bool is_escaped(const Value& v) { return v.markup(); }

const std::vector<std::pair<std::string_view, Test>>& tests() {
  static const std::vector<std::pair<std::string_view, Test>> kTable = {
      {"defined", plain<is_defined>},
      {"undefined", plain<is_undefined>},
      {"none", plain<is_none>},
      {"boolean", plain<is_boolean>},
      {"false", plain<is_false>},
      {"true", plain<is_true>},
      {"integer", plain<is_integer>},
      {"float", plain<is_float>},
      {"number", plain<is_number>},
      {"string", plain<is_string>},
      {"mapping", plain<is_mapping>},
      {"iterable", plain<is_iterable>},
      {"sequence", plain<is_sequence>},
      {"callable", plain<is_callable>},
      {"escaped", plain<is_escaped>},
      {"odd", [](const Value& v, const Args&) { return t_parity(v, true); }},
      {"even", [](const Value& v, const Args&) { return t_parity(v, false); }},
      {"lower", [](const Value& v, const Args&) { return t_case(v, true); }},
      {"upper", [](const Value& v, const Args&) { return t_case(v, false); }},
      {"divisibleby", t_divisibleby},
      {"in", t_in},
      {"sameas", t_sameas},
      {"eq", t_eq},
      {"equalto", t_eq},
      {"==", t_eq},
      {"ne", t_ne},
      {"!=", t_ne},
      {"lt", [](const Value& v, const Args& a) { return ordered(v, a, "<"); }},
      {"lessthan", [](const Value& v, const Args& a) { return ordered(v, a, "<"); }},
      {"<", [](const Value& v, const Args& a) { return ordered(v, a, "<"); }},
      {"le", [](const Value& v, const Args& a) { return ordered(v, a, "<="); }},
      {"<=", [](const Value& v, const Args& a) { return ordered(v, a, "<="); }},
      {"gt", [](const Value& v, const Args& a) { return ordered(v, a, ">"); }},
      {"greaterthan", [](const Value& v, const Args& a) { return ordered(v, a, ">"); }},
      {">", [](const Value& v, const Args& a) { return ordered(v, a, ">"); }},
      {"ge", [](const Value& v, const Args& a) { return ordered(v, a, ">="); }},
      {">=", [](const Value& v, const Args& a) { return ordered(v, a, ">="); }},
      {"filter",
       [](const Value& v, const Args&) -> StatusOr<bool> {
         return v.is_string() && filter_kind(v.str()) == Builtin::kSupported;
       }},
      {"test",
       [](const Value& v, const Args&) -> StatusOr<bool> {
         return v.is_string() && test_kind(v.str()) == Builtin::kSupported;
       }},
  };
  return kTable;
}

StatusOr<Value> g_range(const Args& a) {
  if (!a.kw.empty() || a.pos.empty() || a.pos.size() > 3) return invalid_argument("range expected 1 to 3 arguments");
  for (const Value& v : a.pos) {
    if (!v.is_integral()) return invalid_argument("'" + v.type_name() + "' object cannot be interpreted as an integer");
  }
  int64_t start = a.pos.size() > 1 ? a.pos[0].as_int() : 0;
  int64_t stop = a.pos.size() > 1 ? a.pos[1].as_int() : a.pos[0].as_int();
  int64_t step = a.pos.size() > 2 ? a.pos[2].as_int() : 1;
  if (step == 0) return invalid_argument("range() arg 3 must not be zero");
  List out;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    if (out.size() >= 100000) return invalid_argument("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
    out.emplace_back(i);
  }
  std::string repr = "range(" + std::to_string(start) + ", " + std::to_string(stop) +
                     (step != 1 ? ", " + std::to_string(step) : "") + ")";
  return Value::sequence(std::move(out), Value::Seq::kRange, "range", repr);
}

StatusOr<Value> g_namespace(const Args& a, std::vector<std::weak_ptr<Object>>* made) {
  auto ns = std::make_shared<Object>();
  made->push_back(ns);
  ns->type = "Namespace";
  ns->assignable = true;
  if (a.pos.size() > 1) return invalid_argument("namespace() takes at most one positional argument");
  if (!a.pos.empty()) {
    if (a.pos[0].kind() != Value::Kind::kDict) return invalid_argument("namespace() argument must be a mapping");
    for (const auto& [k, v] : a.pos[0].dict().items()) ns->attrs.set(k, v);
  }
  for (const auto& [k, v] : a.kw) ns->attrs.set(k, v);
  return Value::object(std::move(ns));
}

StatusOr<Value> g_dict(const Args& a) {
  Dict d;
  if (a.pos.size() > 1) return invalid_argument("dict expected at most 1 argument");
  if (!a.pos.empty()) {
    if (a.pos[0].kind() != Value::Kind::kDict) return unimplemented("dict() from a non-mapping is not supported");
    d = a.pos[0].dict();
  }
  for (const auto& [k, v] : a.kw) d.set(k, v);
  return Value::dict(std::move(d));
}

StatusOr<Value> g_raise_exception(const Args& a) {
  if (a.pos.size() != 1 || !a.kw.empty()) return invalid_argument("raise_exception() takes one argument");
  return invalid_argument(a.pos[0].to_str());
}

StatusOr<Value> g_strftime_now(const Args& a) {
  if (a.pos.size() != 1 || !a.pos[0].is_string()) return invalid_argument("strftime_now() takes a format string");
  std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char buf[512];
  size_t n = std::strftime(buf, sizeof buf, a.pos[0].str().c_str(), &local);
  return Value(std::string(buf, n));
}

}  // namespace

Builtin test_kind(std::string_view name) {
  for (const auto& [n, t] : tests()) {
    if (n == name) return Builtin::kSupported;
  }
  return Builtin::kUnknown;
}

StatusOr<bool> apply_test(std::string_view name, const Value& subject, const Args& args) {
  for (const auto& [n, t] : tests()) {
    if (n == name) return t(subject, args);
  }
  return invalid_argument("unknown test '" + std::string(name) + "'");
}

Dict make_globals(std::vector<std::weak_ptr<Object>>* namespaces) {
  Dict g;
  g.append("range", Value::function("range", g_range));
  g.append("namespace", Value::function("namespace", [namespaces](const Args& a) { return g_namespace(a, namespaces); }));
  g.append("dict", Value::function("dict", g_dict));
  g.append("raise_exception", Value::function("raise_exception", g_raise_exception));
  g.append("strftime_now", Value::function("strftime_now", g_strftime_now));
  return g;
}

}  // namespace shoal::jinja
