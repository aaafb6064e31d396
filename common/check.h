// SHOAL_CHECK: an always-on invariant check for bugs (never for user input, which gets a Status).
// Aborts with file:line, the condition, and for the _EQ/_LT forms both values. Independent of NDEBUG.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>

namespace shoal::detail {
[[noreturn]] inline void check_failed(const char* file, int line, const std::string& what) {
  std::fprintf(stderr, "shoal: internal error at %s:%d: %s\n", file, line, what.c_str());
  std::fflush(stderr);
  std::abort();
}
template <typename A, typename B>
std::string both(const char* expr, const A& a, const B& b) {
  std::ostringstream s;
  s << expr << " (" << a << " vs " << b << ")";
  return s.str();
}
}  // namespace shoal::detail

#define SHOAL_CHECK(cond) \
  do { if (!(cond)) ::shoal::detail::check_failed(__FILE__, __LINE__, #cond); } while (0)

#define SHOAL_CHECK_OP(a, op, b)                                                         \
  do {                                                                                   \
    const auto& shoal_a_ = (a);                                                          \
    const auto& shoal_b_ = (b);                                                          \
    if (!(shoal_a_ op shoal_b_))                                                         \
      ::shoal::detail::check_failed(__FILE__, __LINE__,                                  \
                                    ::shoal::detail::both(#a " " #op " " #b, shoal_a_, shoal_b_)); \
  } while (0)

#define SHOAL_CHECK_EQ(a, b) SHOAL_CHECK_OP(a, ==, b)
#define SHOAL_CHECK_LT(a, b) SHOAL_CHECK_OP(a, <, b)
#define SHOAL_CHECK_LE(a, b) SHOAL_CHECK_OP(a, <=, b)
