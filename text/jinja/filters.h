// The builtin filter functions, shared by filters.cpp (the table; scalar and string filters)
// and seq_filters.cpp (filters over sequences). Each takes the subject and the call's arguments.
#pragma once

#include <optional>
#include <string>

#include "text/jinja/builtins.h"

namespace shoal::jinja {

std::string soft_str(const Value& v);  // Jinja's soft_str: str(), with Undefined as ""
bool opt_true(const std::optional<Value>& v);
Value generator(List items);  // what Jinja's generator filters return: a one-pass iterator

// make_attrgetter: "a.b.0" looks up a, then b, then item 0, items before attributes.
StatusOr<Value> lookup_path(const Value& item, const Value& attribute);

StatusOr<Value> f_first_last(const Value& v, bool last);
StatusOr<Value> f_join(const Value& v, const Args& a);
StatusOr<Value> f_list(const Value& v, const Args& a);
StatusOr<Value> f_reverse(const Value& v, const Args& a);
StatusOr<Value> f_items(const Value& v, const Args& a);
StatusOr<Value> f_dictsort(const Value& v, const Args& a);
StatusOr<Value> f_sort(const Value& v, const Args& a);
StatusOr<Value> f_unique(const Value& v, const Args& a);
StatusOr<Value> f_min_max(const Value& v, const Args& a, bool max);
StatusOr<Value> f_sum(const Value& v, const Args& a);
// select/reject/selectattr/rejectattr: keep items whose (attribute's) test result is `keep`.
StatusOr<Value> f_select(const Value& v, const Args& a, bool with_attr, bool keep);
StatusOr<Value> f_map(const Value& v, const Args& a);

}  // namespace shoal::jinja
