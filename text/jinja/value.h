// Template values with Python's semantics, as Jinja2 sees them: Undefined, None, bool, int,
// float, str, list (or tuple), dict (insertion-ordered, string keys), objects with attributes
// (namespace(), loop) and callables (methods, macros, globals). Lists, dicts and strings are
// immutable and shared; only a namespace can change, and it is shared by reference as in Python.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "common/status.h"

namespace shoal::jinja {

class Value;
using List = std::vector<Value>;

// Insertion-ordered string-keyed map: dicts, and the attributes of objects.
class Dict {
 public:
  const Value* find(std::string_view key) const;
  void set(const std::string& key, Value v);        // replaces in place, else appends
  void append(std::string key, Value v);             // the key must be new
  const std::vector<std::pair<std::string, Value>>& items() const { return items_; }
  size_t size() const;  // defined below Value (a pair holding Value needs it complete)

 private:
  std::vector<std::pair<std::string, Value>> items_;
};

// An object with attributes: a namespace() (assignable) or a loop variable (read-only).
struct Object {
  std::string type;  // "Namespace", "LoopContext"
  bool assignable = false;
  Dict attrs;
};

// Call arguments: positional, then keyword.
struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

struct Function {
  std::string name;
  std::function<StatusOr<Value>(const Args&)> call;
};

class Value {
 public:
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kObject, kFunction };

  Value() : v_(Undef{}) {}  // undefined, no name
  static Value undefined(std::string hint);  // hint: "'x' is undefined", for the error if it is used
  static Value none() { return Value(nullptr); }
  Value(std::nullptr_t) : v_(nullptr) {}  // NOLINT
  Value(bool b) : v_(b) {}                // NOLINT
  Value(int i) : v_(int64_t{i}) {}        // NOLINT
  Value(int64_t i) : v_(i) {}             // NOLINT
  Value(double d) : v_(d) {}              // NOLINT
  Value(std::string s, bool markup = false);  // NOLINT
  Value(const char* s) : Value(std::string(s)) {}  // NOLINT
  // Python's sequences, each held as a list of items: list, tuple, a one-pass iterator (what
  // map, select, unique, reverse... return: always true, no len(), consumed by iteration), a
  // dict view (d.items()), a range.
  enum class Seq { kList, kTuple, kIterator, kView, kRange };
  static Value list(List items, bool tuple = false);
  // `type`: Python's type name ("generator", "dict_items"...); `repr`: how a range prints.
  static Value sequence(List items, Seq seq, std::string type, std::string repr = {});
  static Value dict(Dict d);
  static Value object(std::shared_ptr<Object> o);
  static Value function(std::string name, std::function<StatusOr<Value>(const Args&)> call);
  template <typename Json>
  static Value from_json(const Json& j);

  Kind kind() const { return static_cast<Kind>(v_.index()); }
  bool is_undefined() const { return kind() == Kind::kUndefined; }
  bool is_none() const { return kind() == Kind::kNone; }
  bool is_string() const { return kind() == Kind::kString; }
  bool is_number() const { return kind() == Kind::kBool || kind() == Kind::kInt || kind() == Kind::kFloat; }
  bool is_integral() const { return kind() == Kind::kBool || kind() == Kind::kInt; }  // Python int (bool too)

  bool as_bool() const { return std::get<bool>(v_); }
  int64_t as_int() const;     // bool or int
  double as_double() const;   // bool, int or float
  const std::string& str() const { return *std::get<Str>(v_); }
  const List& items() const { return *std::get<ListPtr>(v_); }
  const Dict& dict() const { return *std::get<DictPtr>(v_); }
  Object& object() const { return *std::get<ObjPtr>(v_); }
  const Function& function() const { return *std::get<FnPtr>(v_); }
  const std::string& undefined_hint() const;
  bool markup() const { return markup_; }  // a str from |safe (Jinja's Markup)
  Seq seq() const { return seq_; }
  bool tuple() const { return seq_ == Seq::kTuple; }
  bool list_or_tuple() const { return kind() == Kind::kList && (seq_ == Seq::kList || seq_ == Seq::kTuple); }
  // Iteration: an iterator's remaining items (consuming them), else all items.
  List drain() const;
  // next(iter(v)): the first item, consumed from an iterator; nullopt when there is none.
  std::optional<Value> next_item() const;

  bool truthy() const;
  std::string to_str() const;     // Python str()
  std::string repr() const;       // Python repr()
  std::string type_name() const;  // Python's name for the type, for error messages
  // Undefined used where Python would need its value: the error Jinja2 raises.
  Status undefined_error() const;

 private:
  struct Undef {
    std::shared_ptr<const std::string> hint;
  };
  using Str = std::shared_ptr<const std::string>;
  using ListPtr = std::shared_ptr<const List>;
  using DictPtr = std::shared_ptr<const Dict>;
  using ObjPtr = std::shared_ptr<Object>;
  using FnPtr = std::shared_ptr<const Function>;
  std::variant<Undef, std::nullptr_t, bool, int64_t, double, Str, ListPtr, DictPtr, ObjPtr, FnPtr> v_;
  struct SeqState {
    std::string type;
    std::string repr;
    size_t cursor = 0;  // an iterator's next item
  };
  bool markup_ = false;
  Seq seq_ = Seq::kList;
  std::shared_ptr<SeqState> seq_state_;  // iterators, views, ranges
};

// Python ==, and the ordering operators ("<", "<=", ">", ">=") for the types that order
// (numbers, strings, lists of the same kind); anything else is Python's TypeError.
bool equals(const Value& a, const Value& b);
StatusOr<bool> compare(const Value& a, const Value& b, std::string_view op);
// Python iteration: list items, dict keys, the characters of a string, nothing for Undefined.
StatusOr<List> iterate(const Value& v);
// Python len().
StatusOr<int64_t> length(const Value& v);

// json.dumps(v, ensure_ascii, indent, separators, sort_keys), Python's output exactly.
struct JsonOptions {
  bool ensure_ascii = false;
  std::optional<std::string> indent;  // None, or the indent string (an int n means n spaces)
  std::optional<std::pair<std::string, std::string>> separators;
  bool sort_keys = false;
};
StatusOr<std::string> to_json(const Value& v, const JsonOptions& opts);

// Binds call arguments to named parameters, Python-style: positional ones in order, then
// keywords. Absent ones are nullopt; too many or unknown ones are an error naming `fn`.
StatusOr<std::vector<std::optional<Value>>> bind_args(const Args& args, std::string_view fn,
                                                      std::initializer_list<std::string_view> params);

inline size_t Dict::size() const { return items_.size(); }

template <typename Json>
Value Value::from_json(const Json& j) {
  switch (j.type()) {
    case Json::value_t::null:
      return none();
    case Json::value_t::boolean:
      return Value(j.template get<bool>());
    case Json::value_t::number_integer:
      return Value(j.template get<int64_t>());
    case Json::value_t::number_unsigned: {
      auto u = j.template get<uint64_t>();
      if (u <= static_cast<uint64_t>(INT64_MAX)) return Value(static_cast<int64_t>(u));
      return Value(static_cast<double>(u));
    }
    case Json::value_t::number_float:
      return Value(j.template get<double>());
    case Json::value_t::string:
      return Value(j.template get<std::string>());
    case Json::value_t::array: {
      List items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(from_json(e));
      return list(std::move(items));
    }
    case Json::value_t::object: {
      Dict d;
      for (auto it = j.begin(); it != j.end(); ++it) d.append(it.key(), from_json(it.value()));
      return dict(std::move(d));
    }
    default:
      return Value();  // binary and discarded values do not occur in parsed JSON
  }
}

}  // namespace shoal::jinja
