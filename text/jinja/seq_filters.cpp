// Jinja2 3.1's filters over sequences. Those that are generators in Jinja (map, select,
// reject, selectattr, rejectattr, unique, items) and reverse's reversed() return one-pass
// iterators, so truthiness, len() and a second iteration behave as in Python.
#include <algorithm>

#include "text/jinja/filters.h"
#include "text/jinja/text.h"

namespace shoal::jinja {

Value generator(List items) { return Value::sequence(std::move(items), Value::Seq::kIterator, "generator"); }

namespace {

// Sort/unique/min/max key: the attribute if given, lower-cased strings unless case sensitive.
StatusOr<Value> sort_key(const Value& item, const std::optional<Value>& attribute, bool case_sensitive) {
  Value key = item;
  if (attribute && !attribute->is_none()) {
    SHOAL_ASSIGN_OR_RETURN(key, lookup_path(item, *attribute));
  }
  if (!case_sensitive && key.is_string()) {
    SHOAL_ASSIGN_OR_RETURN(std::string lowered, map_case(text::lower, key.str()));
    return Value(std::move(lowered));
  }
  return key;
}

List item_pairs(const Dict& d) {
  List out;
  for (const auto& [k, x] : d.items()) out.push_back(Value::list({Value(k), x}, true));
  return out;
}

}  // namespace

// make_attrgetter: "a.b.0" looks up a, then b, then item 0, items before attributes.
StatusOr<Value> lookup_path(const Value& item, const Value& attribute) {
  if (!attribute.is_string()) return get_item(item, attribute);
  static const std::string kDot = ".";
  Value cur = item;
  for (const std::string& part : text::split(attribute.str(), &kDot, -1, false)) {
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    SHOAL_ASSIGN_OR_RETURN(cur, get_item(cur, digits ? Value(static_cast<int64_t>(std::stoll(part))) : Value(part)));
  }
  return cur;
}

StatusOr<Value> f_first_last(const Value& v, bool last) {
  Value empty = Value::undefined(std::string("No ") + (last ? "last" : "first") + " item, sequence was empty.");
  if (v.kind() == Value::Kind::kList && v.seq() == Value::Seq::kIterator) {
    if (last) return invalid_argument("'" + v.type_name() + "' object is not reversible");
    return v.next_item().value_or(empty);
  }
  SHOAL_ASSIGN_OR_RETURN(List items, iterate(v));
  if (items.empty()) return empty;
  return last ? items.back() : items.front();
}

StatusOr<Value> f_join(const Value& v, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, "join", {"d", "attribute"}));
  SHOAL_ASSIGN_OR_RETURN(List items, iterate(v));
  std::string sep = p[0] ? soft_str(*p[0]) : "";
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    Value item = items[i];
    if (p[1] && !p[1]->is_none()) {
      SHOAL_ASSIGN_OR_RETURN(item, lookup_path(item, *p[1]));
    }
    if (i) out += sep;
    out += soft_str(item);
  }
  return Value(std::move(out));
}

StatusOr<Value> f_list(const Value& v, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(List items, iterate(v));
  return Value::list(std::move(items));
}

// reversed(value): an iterator, except that an iterator (not reversible) becomes a list.
StatusOr<Value> f_reverse(const Value& v, const Args& a) {
  if (v.is_string()) {
    std::u32string s = text::decode(v.str());
    std::reverse(s.begin(), s.end());
    return Value(text::encode(s));
  }
  bool iterator = v.kind() == Value::Kind::kList && v.seq() == Value::Seq::kIterator;
  SHOAL_ASSIGN_OR_RETURN(List items, iterate(v));
  std::reverse(items.begin(), items.end());
  if (iterator) return Value::list(std::move(items));
  return Value::sequence(std::move(items), Value::Seq::kIterator, "reversed");
}

StatusOr<Value> f_items(const Value& v, const Args& a) {
  if (v.is_undefined()) return generator({});
  if (v.kind() != Value::Kind::kDict) return invalid_argument("Can only get item pairs from a mapping.");
  return generator(item_pairs(v.dict()));
}

StatusOr<Value> f_dictsort(const Value& v, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, "dictsort", {"case_sensitive", "by", "reverse"}));
  if (v.kind() != Value::Kind::kDict) return invalid_argument("dictsort needs a mapping, not " + v.type_name());
  bool by_value = p[1] && p[1]->is_string() && p[1]->str() == "value";
  if (p[1] && !(p[1]->is_string() && (p[1]->str() == "key" || p[1]->str() == "value"))) {
    return invalid_argument("You can only sort by either \"key\" or \"value\"");
  }
  List items = item_pairs(v.dict());
  Status err;
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
    auto kx = sort_key(x.items()[by_value ? 1 : 0], std::nullopt, opt_true(p[0]));
    auto ky = sort_key(y.items()[by_value ? 1 : 0], std::nullopt, opt_true(p[0]));
    auto lt = compare(*kx, *ky, "<");
    if (!lt.ok()) err = lt.status();
    return lt.ok() && *lt;
  });
  SHOAL_RETURN_IF_ERROR(err);
  if (opt_true(p[2])) std::reverse(items.begin(), items.end());
  return Value::list(std::move(items));
}

StatusOr<Value> f_sort(const Value& v, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, "sort", {"reverse", "case_sensitive", "attribute"}));
  SHOAL_ASSIGN_OR_RETURN(List items, iterate(v));
  std::vector<std::pair<Value, Value>> keyed;
  for (const Value& item : items) {
    SHOAL_ASSIGN_OR_RETURN(Value k, sort_key(item, p[2], opt_true(p[1])));
    keyed.emplace_back(std::move(k), item);
  }
  bool rev = opt_true(p[0]);
  Status err;
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
    auto lt = rev ? compare(y.first, x.first, "<") : compare(x.first, y.first, "<");
    if (!lt.ok()) err = lt.status();
    return lt.ok() && *lt;
  });
  SHOAL_RETURN_IF_ERROR(err);
  List out;
  for (auto& kv : keyed) out.push_back(std::move(kv.second));
  return Value::list(std::move(out));
}

StatusOr<Value> f_unique(const Value& v, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, "unique", {"case_sensitive", "attribute"}));
  SHOAL_ASSIGN_OR_RETURN(List items, iterate(v));
  List seen, out;
  for (const Value& item : items) {
    SHOAL_ASSIGN_OR_RETURN(Value k, sort_key(item, p[1], opt_true(p[0])));
    if (std::any_of(seen.begin(), seen.end(), [&](const Value& s) { return equals(s, k); })) continue;
    seen.push_back(k);
    out.push_back(item);
  }
  return generator(std::move(out));
}

StatusOr<Value> f_min_max(const Value& v, const Args& a, bool max) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, max ? "max" : "min", {"case_sensitive", "attribute"}));
  SHOAL_ASSIGN_OR_RETURN(List items, iterate(v));
  if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
  size_t best = 0;
  SHOAL_ASSIGN_OR_RETURN(Value best_key, sort_key(items[0], p[1], opt_true(p[0])));
  for (size_t i = 1; i < items.size(); ++i) {
    SHOAL_ASSIGN_OR_RETURN(Value k, sort_key(items[i], p[1], opt_true(p[0])));
    SHOAL_ASSIGN_OR_RETURN(bool better, compare(k, best_key, max ? ">" : "<"));
    if (better) {
      best = i;
      best_key = k;
    }
  }
  return items[best];
}

StatusOr<Value> f_sum(const Value& v, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(auto p, bind_args(a, "sum", {"attribute", "start"}));
  SHOAL_ASSIGN_OR_RETURN(List items, iterate(v));
  Value total = p[1] ? *p[1] : Value(0);
  for (const Value& item : items) {
    Value x = item;
    if (p[0] && !p[0]->is_none()) {
      SHOAL_ASSIGN_OR_RETURN(x, lookup_path(item, *p[0]));
    }
    SHOAL_ASSIGN_OR_RETURN(total, binary_op("+", total, x));
  }
  return total;
}

// select/reject/selectattr/rejectattr: keep items whose (attribute's) test result is `keep`.
StatusOr<Value> f_select(const Value& v, const Args& a, bool with_attr, bool keep) {
  SHOAL_ASSIGN_OR_RETURN(List items, iterate(v));
  size_t next = 0;
  std::optional<Value> attr;
  if (with_attr) {
    if (a.pos.empty()) return invalid_argument("Missing parameter for attribute name");
    attr = a.pos[next++];
  }
  std::optional<std::string> test;
  if (next < a.pos.size()) {
    if (!a.pos[next].is_string()) return invalid_argument("the test name must be a string");
    test = a.pos[next++].str();
    if (test_kind(*test) != Builtin::kSupported) return invalid_argument("no test named '" + *test + "'");
  }
  Args test_args{List(a.pos.begin() + static_cast<long>(next), a.pos.end()), a.kw};
  List out;
  for (const Value& item : items) {
    Value x = item;
    if (attr) {
      SHOAL_ASSIGN_OR_RETURN(x, lookup_path(item, *attr));
    }
    bool pass = x.truthy();
    if (test) {
      SHOAL_ASSIGN_OR_RETURN(pass, apply_test(*test, x, test_args));
    }
    if (pass == keep) out.push_back(item);
  }
  return generator(std::move(out));
}

StatusOr<Value> f_map(const Value& v, const Args& a) {
  SHOAL_ASSIGN_OR_RETURN(List items, iterate(v));
  List out;
  if (a.pos.empty()) {
    std::optional<Value> attribute, dflt;
    for (const auto& [k, x] : a.kw) {
      if (k == "attribute") attribute = x;
      else if (k == "default") dflt = x;
      else return invalid_argument("Unexpected keyword argument '" + k + "'");
    }
    if (!attribute) return invalid_argument("map requires a filter name or attribute=");
    for (const Value& item : items) {
      SHOAL_ASSIGN_OR_RETURN(Value x, lookup_path(item, *attribute));
      out.push_back(x.is_undefined() && dflt ? *dflt : x);
    }
    return generator(std::move(out));
  }
  if (!a.pos[0].is_string()) return invalid_argument("map requires a filter name");
  std::string name = a.pos[0].str();
  if (filter_kind(name) != Builtin::kSupported) return invalid_argument("no filter named '" + name + "'");
  Args rest{List(a.pos.begin() + 1, a.pos.end()), a.kw};
  for (const Value& item : items) {
    SHOAL_ASSIGN_OR_RETURN(Value x, apply_filter(name, item, rest));
    out.push_back(std::move(x));
  }
  return generator(std::move(out));
}

}  // namespace shoal::jinja
