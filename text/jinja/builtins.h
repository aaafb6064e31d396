// Jinja2's builtin filters, tests and globals (plus transformers' tojson, raise_exception and
// strftime_now), and attribute / item access with the immutable sandbox's rules.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "text/jinja/value.h"

namespace shoal::jinja {

enum class Builtin { kSupported, kUnsupported, kUnknown };  // unsupported: Jinja has it, we do not
Builtin filter_kind(std::string_view name);
Builtin test_kind(std::string_view name);

StatusOr<Value> apply_filter(std::string_view name, const Value& subject, const Args& args);
StatusOr<bool> apply_test(std::string_view name, const Value& subject, const Args& args);

// Jinja's environment.getattr (obj.name: attribute first, then item) and getitem (obj[key]:
// item first, then attribute), with str/dict/list methods as bound functions. Mutating
// methods (list.append, dict.update, ...) exist but fail when called, as in the sandbox.
StatusOr<Value> get_attr(const Value& obj, const std::string& name);
StatusOr<Value> get_item(const Value& obj, const Value& key);
// obj[start:stop:step] on a str or list (absent parts undefined).
StatusOr<Value> get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step);

// range, dict, namespace, raise_exception, strftime_now. Each namespace() made is recorded in
// `namespaces` (the renderer clears them at the end, in case one refers to itself).
Dict make_globals(std::vector<std::weak_ptr<Object>>* namespaces);

// Python's binary operators (+ - * / // % ** and Jinja's ~) and unary - / +.
StatusOr<Value> binary_op(std::string_view op, const Value& a, const Value& b);
StatusOr<Value> unary_op(std::string_view op, const Value& a);
// Python's `item in container`.
StatusOr<bool> contains(const Value& container, const Value& item);

// Python's `a % args` for strings (printf-style: %s %r %d %i %f %x %% with flags, width and
// precision), used by the % operator and the format filter.
// `args` is a tuple (several values), a dict (for %(name)s) or one value.
StatusOr<std::string> percent_format(const std::string& fmt, const Value& args);
// Python's str.format with plain fields: {} {0} {name}, {{ and }}, !s and !r; no format specs.
StatusOr<std::string> str_format(const std::string& fmt, const Args& args);
// fn(s) for a case mapping (text::lower, upper, title, capitalize), or an error when `s` holds
// a character whose mapping is not in our tables.
StatusOr<std::string> map_case(std::string (*fn)(std::string_view), std::string_view s);
// HTML escaping as markupsafe.escape does it (& < > " ').
std::string html_escape(const std::string& s);

}  // namespace shoal::jinja
