// NFC as Unicode Standard Annex #15 defines it: the full canonical decomposition, canonical
// ordering of each run of non-starters (stable, by combining class), then canonical composition
// (each character joins the last starter unless blocked: a character in between with class 0
// or a class not below its own). Hangul syllables decompose and compose arithmetically.
#include "text/tokenizer/normalizer.h"

#include <algorithm>
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "text/tokenizer/utf8.h"

namespace shoal {
namespace {

struct CombiningRange {
  char32_t first, last;
  uint8_t cc;
};
struct Decomposition {
  char32_t cp, first, second;  // second 0: a singleton
};

#include "text/tokenizer/nfc_tables.inc"

constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

bool is_syllable(char32_t c) { return c >= kSBase && c < kSBase + kSCount; }

uint8_t combining_class(char32_t c) {
  const auto* end = std::end(kCombiningClasses);
  const auto* it = std::upper_bound(std::begin(kCombiningClasses), end, c,
                                    [](char32_t v, const CombiningRange& r) { return v < r.first; });
  if (it == std::begin(kCombiningClasses)) return 0;
  --it;
  return c <= it->last ? it->cc : 0;
}

class Tables {
 public:
  Tables() : unsafe_(0x110000 / 64, 0) {
    for (const auto& r : kCombiningClasses) {
      for (char32_t c = r.first; c <= r.last; ++c) mark(c);
    }
    std::vector<char32_t> no_recompose(std::begin(kNoRecomposition), std::end(kNoRecomposition));
    std::sort(no_recompose.begin(), no_recompose.end());
    for (const Decomposition& d : kDecompositions) {
      decompose_.emplace(d.cp, d);
      if (d.second == 0 || std::binary_search(no_recompose.begin(), no_recompose.end(), d.cp)) {
        mark(d.cp);  // NFC changes it even alone
      } else {
        compose_.emplace(key(d.first, d.second), d.cp);
        mark(d.second);  // may join the character before it
      }
    }
    for (char32_t c = kVBase; c < kVBase + kVCount; ++c) mark(c);
    for (char32_t c = kTBase + 1; c < kTBase + kTCount; ++c) mark(c);
    // A safe character must also begin with a safe one once decomposed, so that nothing
    // before it can reach into it: then NFC never looks across it (nfc_append relies on that).
    std::u32string chars;
    for (const Decomposition& d : kDecompositions) {
      chars.clear();
      decompose(d.cp, chars);
      if (unsafe(chars[0])) mark(d.cp);
    }
  }

  bool unsafe(char32_t c) const { return (unsafe_[c >> 6] >> (c & 63)) & 1; }

  void decompose(char32_t c, std::u32string& out) const {
    if (is_syllable(c)) {
      const char32_t s = c - kSBase;
      out += kLBase + s / kNCount;
      out += kVBase + (s % kNCount) / kTCount;
      if (s % kTCount != 0) out += kTBase + s % kTCount;
      return;
    }
    const auto it = decompose_.find(c);
    if (it == decompose_.end()) {
      out += c;
      return;
    }
    decompose(it->second.first, out);
    if (it->second.second != 0) decompose(it->second.second, out);
  }

  // The primary composite of a and b, or 0.
  char32_t compose(char32_t a, char32_t b) const {
    if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
      return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
    }
    if (is_syllable(a) && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount) return a + (b - kTBase);
    const auto it = compose_.find(key(a, b));
    return it == compose_.end() ? 0 : it->second;
  }

 private:
  static uint64_t key(char32_t a, char32_t b) { return (uint64_t(a) << 32) | b; }
  void mark(char32_t c) { unsafe_[c >> 6] |= uint64_t{1} << (c & 63); }

  std::vector<uint64_t> unsafe_;  // one bit per code point: not quick-check safe
  std::unordered_map<char32_t, Decomposition> decompose_;
  std::unordered_map<uint64_t, char32_t> compose_;
};

const Tables& tables() {
  static const Tables t;
  return t;
}

}  // namespace

bool nfc_quick_check(std::string_view text) {
  const Tables& t = tables();
  // Every character below U+0300 is safe, and each byte below 0xCC is ASCII, a continuation
  // byte or the lead of such a character: only the other lead bytes need decoding.
  for (size_t i = 0; i < text.size();) {
    if (static_cast<unsigned char>(text[i]) < 0xCC) {
      ++i;
      continue;
    }
    if (t.unsafe(utf8::next(text, i))) return false;
  }
  return true;
}

namespace {

// NFC of the whole of `text`, the algorithm as the standard gives it.
void normalize(std::string_view text, std::string& out) {
  const Tables& t = tables();
  std::u32string s;
  s.reserve(text.size());
  for (size_t i = 0; i < text.size();) t.decompose(utf8::next(text, i), s);
  std::vector<uint8_t> cc(s.size());
  for (size_t i = 0; i < s.size(); ++i) cc[i] = combining_class(s[i]);
  // Canonical ordering: an insertion sort inside each run of non-starters (runs are short).
  for (size_t i = 1; i < s.size(); ++i) {
    for (size_t j = i; j > 0 && cc[j] != 0 && cc[j - 1] > cc[j]; --j) {
      std::swap(s[j], s[j - 1]);
      std::swap(cc[j], cc[j - 1]);
    }
  }
  // Canonical composition, in place: [0, kept) is the output so far.
  size_t kept = 0, starter = SIZE_MAX;
  for (size_t i = 0; i < s.size(); ++i) {
    const bool adjacent = starter != SIZE_MAX && kept == starter + 1;
    const bool blocked = starter == SIZE_MAX || (!adjacent && (cc[kept - 1] == 0 || cc[kept - 1] >= cc[i]));
    if (!blocked) {
      if (const char32_t composite = t.compose(s[starter], s[i])) {
        s[starter] = composite;
        continue;
      }
    }
    if (cc[i] == 0) starter = kept;
    s[kept] = s[i];
    cc[kept] = cc[i];
    ++kept;
  }
  for (size_t i = 0; i < kept; ++i) utf8::append(out, s[i]);
}

}  // namespace

// NFC never looks across a safe character (a starter that nothing before it can join, see
// Tables), so each stretch of unsafe characters is normalized together with the safe character
// before it (which they may join), and everything else is copied.
void nfc_append(std::string_view text, std::string& out) {
  const Tables& t = tables();
  size_t copied = 0;     // text[0, copied) is in out
  size_t safe_from = 0;  // where the last safe character seen starts
  for (size_t i = 0; i < text.size();) {
    const size_t start = i;
    if (!t.unsafe(utf8::next(text, i))) {
      safe_from = start;
      continue;
    }
    size_t end = i;  // [start, end): the stretch of unsafe characters
    while (end < text.size()) {
      size_t next = end;
      if (!t.unsafe(utf8::next(text, next))) break;
      end = next;
    }
    out.append(text.substr(copied, safe_from - copied));
    normalize(text.substr(safe_from, end - safe_from), out);
    copied = i = end;
  }
  out.append(text.substr(copied));
}

void nfc_append_whole(std::string_view text, std::string& out) { normalize(text, out); }

}  // namespace shoal
