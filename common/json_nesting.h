// The nesting of a parsed JSON value, measured without recursion: a value nested a million deep
// (a few MB of "[") must be refused before anything recursive (copying, dumping, converting)
// touches it.
#pragma once

#include <algorithm>
#include <utility>
#include <vector>

namespace shoal {

// The deepest nesting of arrays and objects in j (0 for a scalar), counting up to just past
// `limit` and no further.
template <typename Json>
int json_nesting(const Json& j, int limit) {
  std::vector<std::pair<const Json*, int>> todo = {{&j, 1}};
  int deepest = 0;
  while (!todo.empty()) {
    const auto [v, depth] = todo.back();
    todo.pop_back();
    if (!v->is_structured()) continue;
    deepest = std::max(deepest, depth);
    if (deepest > limit) break;
    for (const auto& e : *v) todo.push_back({&e, depth + 1});
  }
  return deepest;
}

}  // namespace shoal
