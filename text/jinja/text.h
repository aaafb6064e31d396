// Text helpers with Python's str semantics: strings are UTF-8 bytes here but code points in
// Python, so indexing, slicing, len, strip(chars) and case mapping work on code points.
// Invalid UTF-8 bytes decode to U+DC80..U+DCFF (Python's surrogateescape) and encode back to
// the same byte, so nothing is lost or altered on a round trip.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace shoal::jinja::text {

std::u32string decode(std::string_view s);
std::string encode(std::u32string_view s);
void append_utf8(std::string& out, char32_t c);
size_t length(std::string_view s);  // in code points

// Python's str.isspace(): Unicode White_Space plus U+001C..U+001F.
bool is_space(char32_t c);
// Python's str.splitlines() line boundaries.
bool is_line_break(char32_t c);

// Case mapping: ASCII, Latin-1, Latin Extended-A and Additional, Greek, Cyrillic, Armenian and
// full-width Latin (with Python's special cases ß -> SS, İ -> i̇ and final sigma). Other
// scripts are left unchanged (see docs/chat-template.md).
std::string lower(std::string_view s);
std::string upper(std::string_view s);
// The first code point of `s` that has a case mapping these tables do not know (so lower()
// or upper() would silently differ from Python), or 0 when there is none.
char32_t unknown_case(std::string_view s);
bool is_cased(char32_t c);
bool is_lower_char(char32_t c);
bool is_upper_char(char32_t c);
std::string title(std::string_view s);       // Python str.title()
std::string capitalize(std::string_view s);  // Python str.capitalize()

// Python str.strip/lstrip/rstrip: `chars` null means whitespace.
std::string strip(std::string_view s, const std::string* chars, bool left, bool right);
// Python str.split(sep, maxsplit) / rsplit; sep null means runs of whitespace.
std::vector<std::string> split(std::string_view s, const std::string* sep, long maxsplit, bool from_right);
std::vector<std::string> splitlines(std::string_view s, bool keepends);
// Python str.replace(old, new, count), count < 0 meaning all.
std::string replace(std::string_view s, std::string_view from, std::string_view to, long count);

// Python repr() of a str: quotes chosen as Python does, escapes for \\, \n, \r, \t, the quote,
// and non-printable ASCII/Latin-1 controls.
std::string py_repr(std::string_view s);
// Python repr() of a float (shortest round trip, exponent outside 1e-4..1e16).
std::string py_float(double d);

}  // namespace shoal::jinja::text
