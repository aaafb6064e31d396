// Hand-written matchers for the pre-tokenizer patterns of DeepSeek-V3's tokenizer.json and of
// the Qwen2 and Llama 3 tokenizers that DeepSeek-R1's distills ship.
// Each gives exactly what Regex::find_all gets from Oniguruma for that pattern (the matches of
// the onig crate's find_iter), without Oniguruma's per-search setup, which mallocs and copies
// a 5 KB match stack on every call. Character classes come from Oniguruma's own Unicode tables,
// so both paths classify every code point the same way. native_regex.cpp argues the equivalence
// case by case; difftest/fast_paths_check.cpp checks it against Oniguruma.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "text/tokenizer/onig_regex.h"

namespace shoal {

// Appends the matches of one pattern in `text` (well-formed UTF-8), as Regex::find_all does.
using NativeFindAll = void (*)(std::string_view text, std::vector<Span>& out);

// The native matcher for `pattern` (compared as written), or null for any other pattern.
NativeFindAll native_find_all(std::string_view pattern);

// The patterns that have one, for the check tool: DeepSeek-V3's three Splits, then the single
// Splits of Qwen2 and of Llama 3 (both used by the R1 distills).
constexpr int kNumNativePatterns = 5;
extern const char* const kNativePatterns[kNumNativePatterns];

// Oniguruma's classes of a code point, as these matchers use them: \p{L}, \p{M}, \p{N},
// \p{P}, \p{S} and \s (White_Space).
enum CharFlag : uint8_t { kCharL = 1, kCharM = 2, kCharN = 4, kCharP = 8, kCharS = 16, kCharSpace = 32 };
uint8_t char_flags(char32_t c);

}  // namespace shoal
