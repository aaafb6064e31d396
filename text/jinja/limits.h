// What one render may use, so that a hostile template or hostile messages can neither hang nor
// exhaust the server: nesting while parsing (each level is a recursion of the parser and the
// renderer), steps while rendering (each statement and expression evaluated), and the size of
// any string or list a render builds and of its output. Real chat templates use a tiny fraction.
#pragma once

#include <cstdint>

namespace shoal::jinja {

inline constexpr int kMaxNesting = 32;                   // expression and block nesting in a template
inline constexpr int64_t kMaxRenderSteps = 5'000'000;    // statements + expressions per render
inline constexpr double kMaxRenderSeconds = 10.0;        // and a deadline (a filter over a big list is one step)
inline constexpr int64_t kMaxValueBytes = 64ll << 20;    // a built string (repetition) and the output
inline constexpr int64_t kMaxListItems = 1 << 22;        // a list built by repetition
inline constexpr int kMaxJsonNesting = 256;              // nesting of a JSON value given to a template

// The budget of one render (the fuzz target renders with a smaller one).
struct RenderLimits {
  int64_t max_steps = kMaxRenderSteps;
  double max_seconds = kMaxRenderSeconds;
};

}  // namespace shoal::jinja
