#include "text/jinja/value.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "text/jinja/text.h"

namespace shoal::jinja {

const Value* Dict::find(std::string_view key) const {
  for (const auto& [k, v] : items_) {
    if (k == key) return &v;
  }
  return nullptr;
}

void Dict::set(const std::string& key, Value v) {
  for (auto& [k, old] : items_) {
    if (k == key) {
      old = std::move(v);
      return;
    }
  }
  items_.emplace_back(key, std::move(v));
}

void Dict::append(std::string key, Value v) { items_.emplace_back(std::move(key), std::move(v)); }

Value Value::undefined(std::string hint) {
  Value v;
  v.v_ = Undef{std::make_shared<const std::string>(std::move(hint))};
  return v;
}

Value::Value(std::string s, bool markup) : v_(std::make_shared<const std::string>(std::move(s))), markup_(markup) {}

Value Value::list(List items, bool tuple) {
  Value v;
  v.v_ = std::make_shared<const List>(std::move(items));
  v.seq_ = tuple ? Seq::kTuple : Seq::kList;
  return v;
}

Value Value::sequence(List items, Seq seq, std::string type, std::string repr) {
  Value v = list(std::move(items));
  v.seq_ = seq;
  if (seq != Seq::kList && seq != Seq::kTuple) {
    v.seq_state_ = std::make_shared<SeqState>(SeqState{std::move(type), std::move(repr), 0});
  }
  return v;
}

List Value::drain() const {
  const List& all = items();
  if (seq_ != Seq::kIterator) return all;
  size_t from = std::min(seq_state_->cursor, all.size());
  seq_state_->cursor = all.size();
  return List(all.begin() + static_cast<long>(from), all.end());
}

std::optional<Value> Value::next_item() const {
  const List& all = items();
  size_t at = seq_ == Seq::kIterator ? seq_state_->cursor : 0;
  if (at >= all.size()) return std::nullopt;
  if (seq_ == Seq::kIterator) ++seq_state_->cursor;
  return all[at];
}

Value Value::dict(Dict d) {
  Value v;
  v.v_ = std::make_shared<const Dict>(std::move(d));
  return v;
}

Value Value::object(std::shared_ptr<Object> o) {
  Value v;
  v.v_ = std::move(o);
  return v;
}

Value Value::function(std::string name, std::function<StatusOr<Value>(const Args&)> call) {
  Value v;
  v.v_ = std::make_shared<const Function>(Function{std::move(name), std::move(call)});
  return v;
}

int64_t Value::as_int() const {
  return kind() == Kind::kBool ? int64_t{as_bool()} : std::get<int64_t>(v_);
}

double Value::as_double() const {
  return kind() == Kind::kFloat ? std::get<double>(v_) : static_cast<double>(as_int());
}

const std::string& Value::undefined_hint() const {
  static const std::string kNone = "value is undefined";
  const auto& h = std::get<Undef>(v_).hint;
  return h ? *h : kNone;
}

Status Value::undefined_error() const { return invalid_argument(undefined_hint()); }

bool Value::truthy() const {
  switch (kind()) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
      return as_bool();
    case Kind::kInt:
      return as_int() != 0;
    case Kind::kFloat:
      return as_double() != 0.0;
    case Kind::kString:
      return !str().empty();
    case Kind::kList:
      return seq_ == Seq::kIterator || !items().empty();
    case Kind::kDict:
      return dict().size() > 0;
    default:
      return true;
  }
}

namespace {

std::string join_repr(const List& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += ", ";
    out += items[i].repr();
  }
  return out;
}

std::string dict_repr(const Dict& d) {
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : d.items()) {
    if (!first) out += ", ";
    first = false;
    out += text::py_repr(k) + ": " + v.repr();
  }
  return out + "}";
}

}  // namespace

std::string Value::to_str() const {
  switch (kind()) {
    case Kind::kUndefined:
      return "";
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return as_bool() ? "True" : "False";
    case Kind::kInt:
      return std::to_string(as_int());
    case Kind::kFloat:
      return text::py_float(as_double());
    case Kind::kString:
      return str();
    case Kind::kList:
      switch (seq_) {
        case Seq::kTuple:
          return std::string("(").append(join_repr(items())).append(items().size() == 1 ? ",)" : ")");
        case Seq::kIterator:  // Python shows an address here; no template can rely on it
          return std::string("<").append(seq_state_->type).append(" object>");
        case Seq::kView:
          return std::string(seq_state_->type).append("([").append(join_repr(items())).append("])");
        case Seq::kRange:
          return seq_state_->repr;
        case Seq::kList:
          break;
      }
      return std::string("[").append(join_repr(items())).append("]");
    case Kind::kDict:
      return dict_repr(dict());
    case Kind::kObject: {
      const Object& o = object();
      if (o.type == "Namespace") return "<Namespace " + dict_repr(o.attrs) + ">";
      const Value* index = o.attrs.find("index");
      const Value* len = o.attrs.find("length");
      return "<" + o.type + " " + (index ? index->to_str() : "") + "/" + (len ? len->to_str() : "") + ">";
    }
    case Kind::kFunction:
      return "<function " + function().name + ">";
  }
  return "";
}

std::string Value::repr() const {
  if (kind() == Kind::kString) return text::py_repr(str());
  if (kind() == Kind::kUndefined) return "Undefined";
  return to_str();
}

std::string Value::type_name() const {
  switch (kind()) {
    case Kind::kUndefined:
      return "Undefined";
    case Kind::kNone:
      return "NoneType";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return "str";
    case Kind::kList:
      return seq_ == Seq::kList ? "list" : seq_ == Seq::kTuple ? "tuple" : seq_state_->type;
    case Kind::kDict:
      return "dict";
    case Kind::kObject:
      return object().type;
    case Kind::kFunction:
      return "function";
  }
  return "object";
}

bool equals(const Value& a, const Value& b) {
  using K = Value::Kind;
  if (a.is_number() && b.is_number()) {
    if (a.is_integral() && b.is_integral()) return a.as_int() == b.as_int();
    return a.as_double() == b.as_double();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case K::kUndefined:
    case K::kNone:
      return true;
    case K::kString:
      return a.str() == b.str();
    case K::kList: {
      if (a.seq() != b.seq() || a.items().size() != b.items().size()) return false;
      if (a.seq() == Value::Seq::kIterator) return &a.items() == &b.items();
      for (size_t i = 0; i < a.items().size(); ++i) {
        if (!equals(a.items()[i], b.items()[i])) return false;
      }
      return true;
    }
    case K::kDict: {
      if (a.dict().size() != b.dict().size()) return false;
      for (const auto& [k, v] : a.dict().items()) {
        const Value* other = b.dict().find(k);
        if (!other || !equals(v, *other)) return false;
      }
      return true;
    }
    case K::kObject:
      return &a.object() == &b.object();
    case K::kFunction:
      return &a.function() == &b.function();
    default:
      return false;
  }
}

namespace {
template <typename T>
bool apply_order(const T& x, const T& y, std::string_view op) {
  if (op == "<") return x < y;
  if (op == "<=") return x <= y;
  if (op == ">") return x > y;
  return x >= y;
}
}  // namespace

StatusOr<bool> compare(const Value& a, const Value& b, std::string_view op) {
  if (a.is_number() && b.is_number()) {
    if (a.is_integral() && b.is_integral()) return apply_order(a.as_int(), b.as_int(), op);
    return apply_order(a.as_double(), b.as_double(), op);
  }
  if (a.is_string() && b.is_string()) return apply_order(a.str(), b.str(), op);
  if (a.list_or_tuple() && b.list_or_tuple() && a.tuple() == b.tuple()) {
    const List& x = a.items();
    const List& y = b.items();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (!equals(x[i], y[i])) return compare(x[i], y[i], op);
    }
    return apply_order(x.size(), y.size(), op);
  }
  if (a.is_undefined()) return a.undefined_error();
  if (b.is_undefined()) return b.undefined_error();
  return invalid_argument(std::string("'").append(op) + "' not supported between instances of '" + a.type_name() +
                          "' and '" + b.type_name() + "'");
}

StatusOr<List> iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return List{};
    case Value::Kind::kList:
      return v.drain();
    case Value::Kind::kDict: {
      List keys;
      for (const auto& kv : v.dict().items()) keys.emplace_back(kv.first);
      return keys;
    }
    case Value::Kind::kString: {
      List chars;
      for (char32_t c : text::decode(v.str())) {
        std::string s;
        text::append_utf8(s, c);
        chars.emplace_back(std::move(s));
      }
      return chars;
    }
    default:
      return invalid_argument(std::string("'").append(v.type_name()) + "' object is not iterable");
  }
}

StatusOr<int64_t> length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return int64_t{0};
    case Value::Kind::kString:
      return static_cast<int64_t>(text::length(v.str()));
    case Value::Kind::kList:
      if (v.seq() == Value::Seq::kIterator) break;
      return static_cast<int64_t>(v.items().size());
    case Value::Kind::kDict:
      return static_cast<int64_t>(v.dict().size());
    default:
      break;
  }
  return invalid_argument("object of type '" + v.type_name() + "' has no len()");
}

StatusOr<std::vector<std::optional<Value>>> bind_args(const Args& args, std::string_view fn,
                                                      std::initializer_list<std::string_view> params) {
  std::vector<std::string_view> names(params);
  std::vector<std::optional<Value>> out(names.size());
  if (args.pos.size() > names.size()) {
    return invalid_argument(std::string(fn) + "() takes at most " + std::to_string(names.size()) +
                            " argument(s) (" + std::to_string(args.pos.size()) + " given)");
  }
  for (size_t i = 0; i < args.pos.size(); ++i) out[i] = args.pos[i];
  for (const auto& [k, v] : args.kw) {
    auto it = std::find(names.begin(), names.end(), k);
    if (it == names.end()) {
      return invalid_argument(std::string(fn) + "() got an unexpected keyword argument '" + k + "'");
    }
    auto& slot = out[it - names.begin()];
    if (slot) return invalid_argument(std::string(fn) + "() got multiple values for argument '" + k + "'");
    slot = v;
  }
  return out;
}

}  // namespace shoal::jinja
