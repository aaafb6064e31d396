// Oniguruma's semantics, for these patterns: the search tries each start position from the
// left; at a position, the alternatives are tried in order, and within one, greedy quantifiers
// take as much as they can and give back one character at a time. The first success is the
// match, and the next search starts where it ended. None of the patterns can match the empty
// string or looks behind its start, so each match depends only on the text from its start on.
#include "text/tokenizer/native_regex.h"

#include <oniguruma.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <string>

namespace shoal {
namespace {

// Code point -> flags, filled from the same code-range tables Oniguruma compiles \p{..} and \s
// into: a direct table for the BMP, sorted intervals above it.
class CharTable {
 public:
  CharTable() {
    const char* names[] = {"L", "M", "N", "P", "S"};
    std::vector<const OnigCodePoint*> classes;
    for (const char* name : names) {
      auto* p = reinterpret_cast<OnigUChar*>(const_cast<char*>(name));
      classes.push_back(ranges(ONIGENC_PROPERTY_NAME_TO_CTYPE(ONIG_ENCODING_UTF8, p, p + std::char_traits<char>::length(name))));
    }
    classes.push_back(ranges(ONIGENC_CTYPE_SPACE));
    std::vector<char32_t> bounds = {0x10000};
    for (size_t k = 0; k < classes.size(); ++k) {
      const OnigCodePoint* r = classes[k];
      for (OnigCodePoint i = 0; i < r[0]; ++i) {
        const char32_t first = r[1 + 2 * i], last = r[2 + 2 * i];
        for (char32_t c = first; c <= last && c < 0x10000; ++c) bmp_[c] |= uint8_t(1u << k);
        if (last >= 0x10000) bounds.insert(bounds.end(), {std::max<char32_t>(first, 0x10000), last + 1});
      }
    }
    std::sort(bounds.begin(), bounds.end());
    bounds.erase(std::unique(bounds.begin(), bounds.end()), bounds.end());
    for (char32_t start : bounds) {
      uint8_t flags = 0;
      for (size_t k = 0; k < classes.size(); ++k) flags |= contains(classes[k], start) ? uint8_t(1u << k) : 0;
      upper_start_.push_back(start);
      upper_flags_.push_back(flags);
    }
  }

  uint8_t operator()(char32_t c) const {
    if (c < 0x10000) return bmp_[c];
    const size_t i = std::upper_bound(upper_start_.begin(), upper_start_.end(), c) - upper_start_.begin();
    return upper_flags_[i - 1];  // upper_start_[0] is 0x10000
  }

 private:
  static const OnigCodePoint* ranges(int ctype) {
    OnigCodePoint sb_out = 0;
    const OnigCodePoint* r = nullptr;
    if (ctype < 0 || ONIGENC_GET_CTYPE_CODE_RANGE(ONIG_ENCODING_UTF8, ctype, &sb_out, &r) != 0) std::abort();
    return r;  // r[0] ranges, then first/last pairs, sorted
  }
  static bool contains(const OnigCodePoint* r, char32_t c) {
    OnigCodePoint lo = 0, hi = r[0];  // the first range whose last is >= c is in [lo, hi]
    while (lo < hi) {
      const OnigCodePoint mid = (lo + hi) / 2;
      if (r[2 + 2 * mid] < c) lo = mid + 1; else hi = mid;
    }
    return lo < r[0] && c >= r[1 + 2 * lo];
  }
  std::array<uint8_t, 0x10000> bmp_{};
  std::vector<char32_t> upper_start_;
  std::vector<uint8_t> upper_flags_;
};

const CharTable& table() {
  static const CharTable t;
  return t;
}

// A read-only view of the text with the character at a byte offset.
struct Text {
  const unsigned char* s;
  size_t n;
  const CharTable& flags_of;

  // The character at i (i < n) and its length in bytes.
  char32_t at(size_t i, size_t& len) const {
    const unsigned char b = s[i];
    if (b < 0x80) {
      len = 1;
      return b;
    }
    len = b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
    if (i + len > n) {  // cut short: never so in well-formed text, but stay inside it
      len = n - i;
      return 0;
    }
    if (len == 2) return ((b & 0x1F) << 6) | (s[i + 1] & 0x3F);
    if (len == 3) return ((b & 0x0F) << 12) | ((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
    return ((b & 0x07) << 18) | ((s[i + 1] & 0x3F) << 12) | ((s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
  }
  uint8_t flags(size_t i, size_t& len) const { return flags_of(at(i, len)); }

  // The end of the run, from i, of characters with a flag in `mask` (or, run_not, without one).
  size_t run(size_t i, uint8_t mask) const {
    size_t len;
    while (i < n && (flags(i, len) & mask)) i += len;
    return i;
  }
  size_t run_not(size_t i, uint8_t mask) const {
    size_t len;
    while (i < n && !(flags(i, len) & mask)) i += len;
    return i;
  }
  size_t newlines(size_t i) const {  // [\r\n]*
    while (i < n && (s[i] == '\r' || s[i] == '\n')) ++i;
    return i;
  }
};

bool is_ascii_letter(unsigned char b) { return (b | 0x20) >= 'a' && (b | 0x20) <= 'z'; }

// Calls match_at at each character boundary from the left, and after a match at its end.
// `skip(b)`: no match starts at byte b; true for every continuation byte too, so skipping
// byte by byte always stops on a character boundary.
template <class Skip, class MatchAt>  // MatchAt: size_t(const Text&, size_t p), the end or p
void find_each(std::string_view text, std::vector<Span>& out, Skip skip, MatchAt match_at) {
  const Text t{reinterpret_cast<const unsigned char*>(text.data()), text.size(), table()};
  for (size_t p = 0, len; p < t.n;) {
    if (skip(t.s[p])) {
      ++p;
      continue;
    }
    const size_t end = match_at(t, p);
    if (end != p) {
      out.push_back({static_cast<uint32_t>(p), static_cast<uint32_t>(end)});
      p = end;
    } else {
      t.at(p, len);
      p += len;
    }
  }
}

// \p{N}{1,3}: one to three N characters, as many as there are. The only ASCII ones are 0-9.
void digits_1_to_3(std::string_view text, std::vector<Span>& out) {
  const auto skip = [](unsigned char b) { return b < 0x80 ? unsigned(b - '0') > 9 : b < 0xC0; };
  find_each(text, out, skip, [](const Text& t, size_t p) {
    size_t end = p, len;
    for (int k = 0; k < 3 && end < t.n && (t.flags(end, len) & kCharN); ++k) end += len;
    return end;
  });
}

// [\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+: a run of these characters, each of which is
// E3..E9 xx xx in UTF-8.
void cjk_runs(std::string_view text, std::vector<Span>& out) {
  const auto skip = [](unsigned char b) { return b < 0xE3; };
  find_each(text, out, skip, [](const Text& t, size_t p) {
    size_t end = p, len;
    while (end < t.n && t.s[end] >= 0xE3) {
      const char32_t c = t.at(end, len);
      if (!((c >= 0x4E00 && c <= 0x9FA5) || (c >= 0x3040 && c <= 0x309F) || (c >= 0x30A0 && c <= 0x30FF))) break;
      end += len;
    }
    return end;
  });
}

size_t space_at(const Text& t, size_t p);

// DeepSeek-V3's word pattern, its six alternatives tried in order at p:
//   A  [ASCII punctuation][A-Za-z]+
//   B  [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
//   C   ?[\p{P}\p{S}]+[\r\n]*
//   D  \s*[\r\n]+
//   E  \s+(?!\S)
//   F  \s+
size_t deepseek_word_at(const Text& t, size_t p) {
  constexpr uint8_t kLM = kCharL | kCharM, kPS = kCharP | kCharS;
  size_t len0, len1 = 0;
  const char32_t c0 = t.at(p, len0);
  const uint8_t f0 = t.flags_of(c0);
  const size_t p1 = p + len0;
  const uint8_t f1 = p1 < t.n ? t.flags(p1, len1) : 0;
  // A: the class is exactly the 32 ASCII characters in P or S; [A-Za-z]+ is greedy and
  // nothing follows it.
  if (c0 < 0x80 && (f0 & kPS) && p1 < t.n && is_ascii_letter(t.s[p1])) {
    size_t end = p1;
    while (end < t.n && is_ascii_letter(t.s[end])) ++end;
    return end;
  }
  // B: the optional character is tried first. If c0 is L or M, both ways give the run of L/M
  // from p (a character both optional and L/M is an M, and the run from p then includes it).
  if (f0 & kLM) return t.run(p1, kLM);
  const bool optional_ok = c0 != '\r' && c0 != '\n' && !(f0 & (kCharL | kCharP | kCharS));
  if (optional_ok && (f1 & kLM)) return t.run(p1 + len1, kLM);
  // C: [\p{P}\p{S}]+ then [\r\n]*, both greedy; nothing after them can fail.
  const auto punct_then_newlines = [&](size_t from) {
    size_t end = t.run(from, kPS);
    while (end < t.n && (t.s[end] == '\r' || t.s[end] == '\n')) ++end;
    return end;
  };
  if (f0 & kPS) return punct_then_newlines(p1);
  if (c0 == ' ' && (f1 & kPS)) return punct_then_newlines(p1 + len1);
  return space_at(t, p);
}

// The three alternatives both pattern families end with, at p:
//   D  \s*[\r\n]+
//   E  \s+(?!\S)
//   F  \s+
size_t space_at(const Text& t, size_t p) {
  size_t len;
  if (!(t.flags(p, len) & kCharSpace)) return p;  // all three begin with a space character
  // Let [p, q) be the maximal run of \s. D: \s* gives back characters until [\r\n]+ can start:
  // at the last CR or LF in the run, which [\r\n]+ takes alone (the next character is not
  // CR/LF, else it would be the last). So D ends just after the run's last CR/LF, if any.
  size_t q = p, last_start = p, after_newline = p;
  while (q < t.n && (t.flags(q, len) & kCharSpace)) {
    if (t.s[q] == '\r' || t.s[q] == '\n') after_newline = q + 1;
    last_start = q;
    q += len;
  }
  if (after_newline != p) return after_newline;
  // E: at q comes a non-space or the end. At the end the lookahead holds; else \s+ gives back
  // its last character, after which a space follows, if that leaves at least one.
  if (q == t.n) return q;
  if (last_start != p) return last_start;
  return q;  // F
}

void deepseek_words(std::string_view text, std::vector<Span>& out) {
  const auto skip = [](unsigned char) { return false; };  // a match can start almost anywhere
  find_each(text, out, skip, [](const Text& t, size_t p) { return deepseek_word_at(t, p); });
}

// Under (?i), Oniguruma's Unicode case folding: which characters match each ASCII letter of
// the contractions. Only s has one outside ASCII: U+017F LATIN SMALL LETTER LONG S.
// (No character folds to "ll", "re" or "ve", so multi-character folds play no part.)
bool folds_to(char32_t c, char letter) {
  return c == char32_t(letter) || c == char32_t(letter - 'a' + 'A') || (letter == 's' && c == 0x17F);
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d) at p, just after the apostrophe at p - 1: the end, or 0.
size_t contraction_end(const Text& t, size_t p) {
  if (p >= t.n) return 0;
  size_t len1, len2 = 0;
  const char32_t c1 = t.at(p, len1);
  for (char letter : {'s', 't', 'm', 'd'}) {
    if (folds_to(c1, letter)) return p + len1;
  }
  const char32_t c2 = p + len1 < t.n ? t.at(p + len1, len2) : 0;
  if ((folds_to(c1, 'r') || folds_to(c1, 'v')) && folds_to(c2, 'e')) return p + len1 + len2;
  if (folds_to(c1, 'l') && folds_to(c2, 'l')) return p + len1 + len2;
  return 0;
}

// The word pattern of Llama 3 (kMaxDigits 3) and Qwen2 (1), its alternatives in order at p:
//   A  (?i:'s|'t|'re|'ve|'m|'ll|'d)
//   B  [^\r\n\p{L}\p{N}]?\p{L}+
//   C  \p{N}{1,3}, or \p{N}
//   D   ?[^\s\p{L}\p{N}]+[\r\n]*
//   E-G as D-F of DeepSeek's (space_at)
template <int kMaxDigits>
size_t llama3_word_at(const Text& t, size_t p) {
  constexpr uint8_t kSLN = kCharSpace | kCharL | kCharN;
  size_t len0, len1 = 0;
  const char32_t c0 = t.at(p, len0);
  const uint8_t f0 = t.flags_of(c0);
  const size_t p1 = p + len0;
  // A: the alternatives begin with distinct letters, so the first one decides.
  if (c0 == '\'') {
    if (const size_t end = contraction_end(t, p1)) return end;
  }
  // B: the optional character first; a letter at p is not one, and starts the run itself.
  if (f0 & kCharL) return t.run(p1, kCharL);
  const uint8_t f1 = p1 < t.n ? t.flags(p1, len1) : 0;
  if (c0 != '\r' && c0 != '\n' && !(f0 & kCharN) && (f1 & kCharL)) return t.run(p1 + len1, kCharL);
  // C: greedy up to the bound; nothing follows it.
  if (f0 & kCharN) {
    size_t end = p1, len;
    for (int k = 1; k < kMaxDigits && end < t.n && (t.flags(end, len) & kCharN); ++k) end += len;
    return end;
  }
  // D: a run of characters outside \s, L and N, after an optional space, then CR/LF; both
  // greedy, and nothing after them can fail.
  if (!(f0 & kSLN)) return t.newlines(t.run_not(p1, kSLN));
  if (c0 == ' ' && p1 < t.n && !(f1 & kSLN)) return t.newlines(t.run_not(p1 + len1, kSLN));
  return space_at(t, p);
}

template <int kMaxDigits>
void llama3_words(std::string_view text, std::vector<Span>& out) {
  const auto skip = [](unsigned char) { return false; };
  find_each(text, out, skip, [](const Text& t, size_t p) { return llama3_word_at<kMaxDigits>(t, p); });
}

}  // namespace

const char* const kNativePatterns[kNumNativePatterns] = {
    R"re(\p{N}{1,3})re",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    // The CR and LF are the characters themselves, as tokenizer.json's "\r\n" decodes.
    R"re([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^)re" "\r\n" R"re(\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[)re"
    "\r\n" R"re(]*|\s*[)re" "\r\n" R"re(]+|\s+(?!\S)|\s+)re",
    // Qwen2's and Llama 3's (also R1-Distill-Qwen's and -Llama's); \r and \n are escapes here.
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re",
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re",
};

NativeFindAll native_find_all(std::string_view pattern) {
  const NativeFindAll matchers[kNumNativePatterns] = {digits_1_to_3, cjk_runs, deepseek_words, llama3_words<1>,
                                                      llama3_words<3>};
  for (int i = 0; i < kNumNativePatterns; ++i) {
    if (pattern == kNativePatterns[i]) {
      table();  // built now, while loading, rather than on the first encode
      return matchers[i];
    }
  }
  return nullptr;
}

uint8_t char_flags(char32_t c) { return table()(c); }

}  // namespace shoal
