#include "text/jinja/text.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace shoal::jinja::text {

std::u32string decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    auto b = static_cast<unsigned char>(s[i]);
    int n = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
    char32_t c = n == 1 ? b : n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
    bool ok = n > 0 && i + n <= s.size();
    for (int k = 1; ok && k < n; ++k) {
      auto cb = static_cast<unsigned char>(s[i + k]);
      ok = (cb & 0xC0) == 0x80;
      c = (c << 6) | (cb & 0x3F);
    }
    // Reject overlong forms, surrogates and values past U+10FFFF, as a strict decoder does.
    if (ok) {
      static constexpr char32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
      ok = c >= kMin[n] && c <= 0x10FFFF && !(c >= 0xD800 && c <= 0xDFFF);
    }
    if (!ok) {
      out.push_back(0xDC00 + b);  // surrogateescape
      ++i;
      continue;
    }
    out.push_back(c);
    i += n;
  }
  return out;
}

void append_utf8(std::string& out, char32_t c) {
  if (c >= 0xDC80 && c <= 0xDCFF) {  // an escaped invalid byte goes back as that byte
    out.push_back(static_cast<char>(c - 0xDC00));
  } else if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

size_t length(std::string_view s) { return decode(s).size(); }

bool is_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

bool is_line_break(char32_t c) {
  return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || (c >= 0x1C && c <= 0x1E) || c == 0x85 ||
         c == 0x2028 || c == 0x2029;
}

namespace {

// Simple (one to one) case pairs. Returns c itself when c has no mapping.
char32_t to_lower1(char32_t c) {
  if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  if ((c >= 0xC0 && c <= 0xDE && c != 0xD7)) return c + 32;
  if (c >= 0x100 && c <= 0x17F) {
    if (c == 0x130) return c;  // full mapping, handled by the caller
    if (c == 0x178) return 0xFF;
    bool odd_upper = (c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E);
    bool paired = c <= 0x137 || (c >= 0x139 && c <= 0x148) || (c >= 0x14A && c <= 0x177) ||
                  (c >= 0x179 && c <= 0x17E);
    if (paired && (c % 2 == 1) == odd_upper) return c + 1;
    return c;
  }
  if (c >= 0x391 && c <= 0x3AB && c != 0x3A2) return c + 32;
  if (c == 0x386) return 0x3AC;
  if (c >= 0x388 && c <= 0x38A) return c + 37;
  if (c == 0x38C) return 0x3CC;
  if (c == 0x38E || c == 0x38F) return c + 63;
  if (c >= 0x410 && c <= 0x42F) return c + 32;
  if (c >= 0x400 && c <= 0x40F) return c + 80;
  if (((c >= 0x460 && c <= 0x481) || (c >= 0x48A && c <= 0x4BF) || (c >= 0x4D0 && c <= 0x52F)) && c % 2 == 0)
    return c + 1;
  if (c >= 0x4C1 && c <= 0x4CE && c % 2 == 1) return c + 1;
  if (c == 0x4C0) return 0x4CF;
  if (c >= 0x531 && c <= 0x556) return c + 48;
  if (c == 0x1E9E) return 0xDF;
  if (((c >= 0x1E00 && c <= 0x1E95) || (c >= 0x1EA0 && c <= 0x1EFF)) && c % 2 == 0) return c + 1;
  if (c >= 0xFF21 && c <= 0xFF3A) return c + 32;
  return c;
}

char32_t to_upper1(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') ? c - 32 : c;
  if (c == 0xB5) return 0x39C;
  if (c == 0xFF) return 0x178;
  if (c >= 0xE0 && c <= 0xFE && c != 0xF7) return c - 32;
  if (c >= 0x100 && c <= 0x17F) {
    if (c == 0x131) return 'I';
    if (c == 0x17F) return 'S';
    if (c == 0x149) return c;  // full mapping, left alone
    if (c > 0x100 && to_lower1(c - 1) == c) return c - 1;
    return c;
  }
  if (c == 0x3C2) return 0x3A3;
  if (c >= 0x3B1 && c <= 0x3CB) return c - 32;
  if (c == 0x3AC) return 0x386;
  if (c >= 0x3AD && c <= 0x3AF) return c - 37;
  if (c == 0x3CC) return 0x38C;
  if (c == 0x3CD || c == 0x3CE) return c - 63;
  if (c >= 0x430 && c <= 0x44F) return c - 32;
  if (c >= 0x450 && c <= 0x45F) return c - 80;
  if (c == 0x4CF) return 0x4C0;
  if (c >= 0x460 && c <= 0x52F && c > 0 && to_lower1(c - 1) == c) return c - 1;
  if (c >= 0x561 && c <= 0x586) return c - 48;
  if (c >= 0x1E01 && c <= 0x1EFF && to_lower1(c - 1) == c) return c - 1;
  if (c >= 0xFF41 && c <= 0xFF5A) return c - 32;
  return c;
}

}  // namespace

char32_t unknown_case(std::string_view s) {
  static constexpr char32_t kRanges[][2] = {
      {0x149, 0x149},     {0x180, 0x2AF},     {0x345, 0x345},     {0x370, 0x385},     {0x390, 0x390},
      {0x3B0, 0x3B0},     {0x3CF, 0x3FF},     {0x587, 0x587},     {0x10A0, 0x10FF},   {0x13A0, 0x13FF},
      {0x1C80, 0x1CBF},   {0x1D79, 0x1D8E},   {0x1E96, 0x1E9D},   {0x1F00, 0x1FFF},   {0x2126, 0x2184},
      {0x24B6, 0x24E9},   {0x2C00, 0x2D2F},   {0xA640, 0xA69F},   {0xA722, 0xA7FF},   {0xAB53, 0xABBF},
      {0xFB00, 0xFB17},   {0x10400, 0x104FF}, {0x10570, 0x105BF}, {0x10C80, 0x10CFF}, {0x118A0, 0x118DF},
      {0x16E40, 0x16E7F}, {0x1E900, 0x1E943}};
  for (char32_t c : decode(s)) {
    for (const auto& r : kRanges) {
      if (c >= r[0] && c <= r[1]) return c;
    }
  }
  return 0;
}

bool is_cased(char32_t c) {
  return to_lower1(c) != c || to_upper1(c) != c || c == 0xDF || c == 0x130 || c == 0x149 || c == 0x390 ||
         c == 0x3B0;
}
bool is_lower_char(char32_t c) { return to_upper1(c) != c || c == 0xDF || c == 0x149; }
bool is_upper_char(char32_t c) { return to_lower1(c) != c || c == 0x130; }

namespace {
// Lower-cases u[i] with Python's context rules: İ -> i + combining dot, and Σ -> ς at the end
// of a word (after a cased letter and not before one).
void append_lower(std::string& out, const std::u32string& u, size_t i) {
  char32_t c = u[i];
  if (c == 0x130) {
    out += "i\xCC\x87";
  } else if (c == 0x3A3) {
    bool after = i > 0 && is_cased(u[i - 1]);
    bool before = i + 1 < u.size() && is_cased(u[i + 1]);
    append_utf8(out, after && !before ? 0x3C2 : 0x3C3);
  } else {
    append_utf8(out, to_lower1(c));
  }
}
}  // namespace

std::string lower(std::string_view s) {
  std::u32string u = decode(s);
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < u.size(); ++i) append_lower(out, u, i);
  return out;
}

namespace {
void append_upper(std::string& out, char32_t c) {
  if (c == 0xDF) {
    out += "SS";
  } else {
    append_utf8(out, to_upper1(c));
  }
}
}  // namespace

std::string upper(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : decode(s)) append_upper(out, c);
  return out;
}

std::string title(std::string_view s) {
  std::u32string u = decode(s);
  std::string out;
  bool prev_cased = false;
  for (size_t i = 0; i < u.size(); ++i) {
    char32_t c = u[i];
    if (prev_cased) {
      append_lower(out, u, i);
    } else if (c == 0xDF) {
      out += "Ss";
    } else {
      append_utf8(out, to_upper1(c));
    }
    prev_cased = is_cased(c);
  }
  return out;
}

std::string capitalize(std::string_view s) {
  std::u32string u = decode(s);
  if (u.empty()) return "";
  std::string out;
  if (u[0] == 0xDF) {
    out += "Ss";
  } else {
    append_utf8(out, to_upper1(u[0]));
  }
  for (size_t i = 1; i < u.size(); ++i) append_lower(out, u, i);
  return out;
}

std::string strip(std::string_view s, const std::string* chars, bool left, bool right) {
  std::u32string u = decode(s);
  std::u32string set = chars ? decode(*chars) : std::u32string();
  auto strippable = [&](char32_t c) { return chars ? set.find(c) != std::u32string::npos : is_space(c); };
  size_t b = 0, e = u.size();
  if (left) {
    while (b < e && strippable(u[b])) ++b;
  }
  if (right) {
    while (e > b && strippable(u[e - 1])) --e;
  }
  return encode(std::u32string_view(u).substr(b, e - b));
}

namespace {

std::vector<std::string> split_whitespace(std::string_view s, long maxsplit, bool from_right) {
  std::u32string u = decode(s);
  std::vector<std::u32string> parts;
  long n = static_cast<long>(u.size());
  if (!from_right) {
    long i = 0;
    while (true) {
      while (i < n && is_space(u[i])) ++i;
      if (i >= n) break;
      if (maxsplit >= 0 && static_cast<long>(parts.size()) == maxsplit) {
        parts.push_back(u.substr(i));  // the rest, trailing whitespace and all
        break;
      }
      long j = i;
      while (j < n && !is_space(u[j])) ++j;
      parts.push_back(u.substr(i, j - i));
      i = j;
    }
  } else {
    long i = n;
    while (true) {
      while (i > 0 && is_space(u[i - 1])) --i;
      if (i <= 0) break;
      if (maxsplit >= 0 && static_cast<long>(parts.size()) == maxsplit) {
        parts.push_back(u.substr(0, i));
        break;
      }
      long j = i;
      while (j > 0 && !is_space(u[j - 1])) --j;
      parts.push_back(u.substr(j, i - j));
      i = j;
    }
    std::reverse(parts.begin(), parts.end());
  }
  std::vector<std::string> out;
  for (auto& p : parts) out.push_back(encode(p));
  return out;
}

}  // namespace

std::vector<std::string> split(std::string_view s, const std::string* sep, long maxsplit, bool from_right) {
  if (!sep) return split_whitespace(s, maxsplit, from_right);
  // Byte-wise search is exact for a valid UTF-8 separator: UTF-8 is self-synchronising.
  std::vector<std::string> out;
  const std::string& d = *sep;
  if (!from_right) {
    size_t pos = 0;
    while (maxsplit < 0 || static_cast<long>(out.size()) < maxsplit) {
      size_t f = s.find(d, pos);
      if (f == std::string_view::npos) break;
      out.emplace_back(s.substr(pos, f - pos));
      pos = f + d.size();
    }
    out.emplace_back(s.substr(pos));
    return out;
  }
  size_t end = s.size();
  while (maxsplit < 0 || static_cast<long>(out.size()) < maxsplit) {
    if (end < d.size()) break;
    size_t f = s.rfind(d, end - d.size());
    if (f == std::string_view::npos) break;
    out.emplace_back(s.substr(f + d.size(), end - f - d.size()));
    end = f;
  }
  out.emplace_back(s.substr(0, end));
  std::reverse(out.begin(), out.end());
  return out;
}

std::vector<std::string> splitlines(std::string_view s, bool keepends) {
  std::u32string u = decode(s);
  std::vector<std::string> out;
  size_t start = 0, i = 0;
  while (i < u.size()) {
    if (!is_line_break(u[i])) {
      ++i;
      continue;
    }
    size_t eol = i + ((u[i] == '\r' && i + 1 < u.size() && u[i + 1] == '\n') ? 2 : 1);
    out.push_back(encode(std::u32string_view(u).substr(start, (keepends ? eol : i) - start)));
    start = i = eol;
  }
  if (start < u.size()) out.push_back(encode(std::u32string_view(u).substr(start)));
  return out;
}

std::string replace(std::string_view s, std::string_view from, std::string_view to, long count) {
  std::string out;
  if (from.empty()) {  // Python inserts `to` around every code point
    std::u32string u = decode(s);
    long done = 0;
    for (size_t i = 0; i <= u.size(); ++i) {
      if (count < 0 || done < count) {
        out += to;
        ++done;
      }
      if (i < u.size()) append_utf8(out, u[i]);
    }
    return out;
  }
  size_t pos = 0;
  long done = 0;
  while (count < 0 || done < count) {
    size_t f = s.find(from, pos);
    if (f == std::string_view::npos) break;
    out.append(s.substr(pos, f - pos));
    out.append(to);
    pos = f + from.size();
    ++done;
  }
  out.append(s.substr(pos));
  return out;
}

namespace {
bool is_printable(char32_t c) {
  if (c < 0x20 || (c >= 0x7F && c <= 0xA0) || c == 0xAD) return false;
  if (c == 0x1680 || (c >= 0x2000 && c <= 0x200F) || (c >= 0x2028 && c <= 0x202F)) return false;
  if ((c >= 0x205F && c <= 0x206F) || c == 0x3000 || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFB)) return false;
  if ((c >= 0xD800 && c <= 0xDFFF) || (c >= 0xE000 && c <= 0xF8FF) || c >= 0xF0000) return false;
  if (c == 0xE0001 || (c >= 0xE0020 && c <= 0xE007F)) return false;
  return true;
}
}  // namespace

std::string py_repr(std::string_view s) {
  bool has_single = s.find('\'') != std::string_view::npos;
  bool has_double = s.find('"') != std::string_view::npos;
  char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (char32_t c : decode(s)) {
    char buf[16];
    if (c == static_cast<char32_t>(quote) || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (is_printable(c)) {
      append_utf8(out, c);
    } else {
      if (c < 0x100) {
        std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(c));
      } else if (c < 0x10000) {
        std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
      } else {
        std::snprintf(buf, sizeof buf, "\\U%08x", static_cast<unsigned>(c));
      }
      out += buf;
    }
  }
  out.push_back(quote);
  return out;
}

std::string py_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);  // shortest round trip: "-1.2345e+02"
  bool neg = sci[0] == '-';
  if (neg) sci.erase(0, 1);
  size_t e = sci.find('e');
  int exp10 = std::atoi(sci.c_str() + e + 1);
  std::string digits;
  for (size_t i = 0; i < e; ++i) {
    if (sci[i] != '.') digits.push_back(sci[i]);
  }
  std::string out = neg ? "-" : "";
  if (exp10 < -4 || exp10 >= 16) {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out.append(".").append(digits, 1);
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
    return out + eb;
  }
  if (exp10 < 0) return out + "0." + std::string(-exp10 - 1, '0') + digits;
  size_t int_digits = static_cast<size_t>(exp10) + 1;
  if (digits.size() <= int_digits) return out + digits + std::string(int_digits - digits.size(), '0') + ".0";
  return out + digits.substr(0, int_digits) + "." + digits.substr(int_digits);
}

}  // namespace shoal::jinja::text
