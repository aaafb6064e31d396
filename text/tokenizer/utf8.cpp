// Well-formed UTF-8 per Unicode table 3-7, and lossy decoding with the "maximal subpart"
// rule (Unicode 3.9, U+FFFD substitution), which Rust's String::from_utf8_lossy and the WHATWG
// TextDecoder both follow: decoding is byte-exact with the reference's decode().
#include "text/tokenizer/utf8.h"

#include <cstring>

#include "text/tokenizer/tokenizer.h"

namespace shoal {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// One step of a left-to-right parse at s[i]: either a whole character (valid) or a maximal
// invalid subpart. `truncated`: the subpart is a valid prefix cut short by the end of `s`.
struct Step {
  size_t len;
  bool valid;
  bool truncated;
};

Step step_at(std::string_view s, size_t i) {
  const unsigned lead = static_cast<unsigned char>(s[i]);
  if (lead < 0x80) return {1, true, false};
  size_t need = 0;
  unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    need = 1;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    need = 2;
    if (lead == 0xE0) lo = 0xA0;       // no overlongs
    if (lead == 0xED) hi = 0x9F;       // no surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    need = 3;
    if (lead == 0xF0) lo = 0x90;       // no overlongs
    if (lead == 0xF4) hi = 0x8F;       // nothing past U+10FFFF
  } else {
    return {1, false, false};          // 80..C1 and F5..FF never start a character
  }
  for (size_t k = 1; k <= need; ++k) {
    if (i + k >= s.size()) return {k, false, true};
    const unsigned c = static_cast<unsigned char>(s[i + k]);
    if (c < lo || c > hi) return {k, false, false};
    lo = 0x80;
    hi = 0xBF;
  }
  return {need + 1, true, false};
}

}  // namespace

namespace utf8 {

bool is_valid(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    uint64_t word;
    if (i + 8 <= s.size() && (std::memcpy(&word, s.data() + i, 8), (word & 0x8080808080808080ull) == 0)) {
      i += 8;  // eight ASCII bytes
      continue;
    }
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const Step st = step_at(s, i);
    if (!st.valid) return false;
    i += st.len;
  }
  return true;
}

}  // namespace utf8

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    size_t ascii_end = i;
    while (ascii_end < bytes.size() && static_cast<unsigned char>(bytes[ascii_end]) < 0x80) ++ascii_end;
    out.append(bytes.data() + i, ascii_end - i);
    i = ascii_end;
    if (i == bytes.size()) break;
    const Step st = step_at(bytes, i);
    if (st.valid) {
      out.append(bytes.data() + i, st.len);
    } else {
      out.append(kReplacement);
    }
    i += st.len;
  }
  return out;
}

size_t utf8_complete_prefix(std::string_view bytes) {
  // A lead byte (anything but 80..BF) always starts a step of the parse, since steps only
  // swallow continuation bytes after their lead. So only the last lead byte, if it is at most
  // three bytes from the end, can start an unfinished character.
  const size_t n = bytes.size();
  for (size_t k = 1; k <= 3 && k <= n; ++k) {
    const size_t i = n - k;
    if ((static_cast<unsigned char>(bytes[i]) & 0xC0) == 0x80) continue;
    return step_at(bytes, i).truncated ? i : n;
  }
  return n;
}

}  // namespace shoal
