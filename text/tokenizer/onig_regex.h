// Oniguruma, compiled and searched exactly as the reference (Rust `onig` crate, used by Hugging
// Face tokenizers) does: UTF-8, the Oniguruma syntax, no options, and its find_iter rule for
// empty matches. A compiled Regex is immutable; searches use a per-call region, so one Regex
// serves any number of threads. The patterns of native_regex.h are matched by hand-written code
// with the same results; Oniguruma still compiles them.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace shoal {

struct Span {
  uint32_t begin;
  uint32_t end;
};

class Regex {
 public:
  // Errors carry Oniguruma's message; the caller adds which field held the pattern.
  static StatusOr<std::unique_ptr<Regex>> compile(std::string_view pattern);
  // A pattern matching `literal` exactly (the reference's Split {"String": ...}).
  static StatusOr<std::unique_ptr<Regex>> compile_literal(std::string_view literal);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends the non-overlapping matches in `text` (well-formed UTF-8), as byte spans, in order.
  void find_all(std::string_view text, std::vector<Span>& out) const {
    if (native_ != nullptr) {
      native_(text, out);
    } else {
      find_all_oniguruma(text, out);
    }
  }
  // The same through Oniguruma, even where a native matcher exists (for checking one).
  void find_all_oniguruma(std::string_view text, std::vector<Span>& out) const;
  bool is_native() const { return native_ != nullptr; }

 private:
  using Native = void (*)(std::string_view, std::vector<Span>&);
  Regex(void* re, Native native) : re_(re), native_(native) {}
  void* re_;  // regex_t*
  Native native_;
};

// What the reference's added-token flags test with Rust regex's \s and \w: Unicode White_Space;
// and Alphabetic, marks, decimal digits, connector punctuation and Join_Control (ZWJ, ZWNJ).
bool is_space_char(char32_t c);
bool is_word_char(char32_t c);

}  // namespace shoal
