#include "text/tokenizer/onig_regex.h"

#include <oniguruma.h>

#include <cstdlib>
#include <mutex>
#include <string>

#include "text/tokenizer/native_regex.h"

namespace shoal {
namespace {

void init_oniguruma() {
  static std::once_flag once;
  std::call_once(once, [] {
    OnigEncoding encodings[] = {ONIG_ENCODING_UTF8};
    onig_initialize(encodings, 1);
  });
}

// onig_new is not safe to call from several threads at once (the onig crate locks it too).
std::mutex& compile_mutex() {
  static std::mutex m;
  return m;
}

}  // namespace

StatusOr<std::unique_ptr<Regex>> Regex::compile(std::string_view pattern) {
  init_oniguruma();
  regex_t* re = nullptr;
  OnigErrorInfo info{};
  const auto* p = reinterpret_cast<const OnigUChar*>(pattern.data());
  int rc;
  {
    std::lock_guard<std::mutex> lock(compile_mutex());
    rc = onig_new(&re, p, p + pattern.size(), ONIG_OPTION_NONE, ONIG_ENCODING_UTF8,
                  ONIG_SYNTAX_ONIGURUMA, &info);
  }
  if (rc != ONIG_NORMAL) {
    OnigUChar message[ONIG_MAX_ERROR_MESSAGE_LEN];
    onig_error_code_to_str(message, rc, &info);
    return invalid_argument("invalid regex /" + std::string(pattern) + "/: " +
                            reinterpret_cast<const char*>(message));
  }
  return std::unique_ptr<Regex>(new Regex(re, native_find_all(pattern)));
}

StatusOr<std::unique_ptr<Regex>> Regex::compile_literal(std::string_view literal) {
  // The reference escapes with Rust's regex::escape; a backslash before any ASCII
  // punctuation is a literal in Oniguruma too.
  std::string pattern;
  for (char c : literal) {
    if (std::string_view("\\.+*?()|[]{}^$#&-~").find(c) != std::string_view::npos) pattern += '\\';
    pattern += c;
  }
  return compile(pattern);
}

Regex::~Regex() { onig_free(static_cast<regex_t*>(re_)); }

void Regex::find_all_oniguruma(std::string_view text, std::vector<Span>& out) const {
  auto* re = static_cast<regex_t*>(re_);
  const auto* str = reinterpret_cast<const OnigUChar*>(text.data());
  const auto* end = str + text.size();
  OnigRegion region;
  onig_region_init(&region);
  size_t from = 0;
  bool have_last = false;
  size_t last_end = 0;
  while (from <= text.size()) {
    const int at = onig_search(re, str, end, str + from, end, &region, ONIG_OPTION_NONE);
    if (at < 0) break;  // ONIG_MISMATCH; an error (a retry limit) ends the search like a miss
    const auto b = static_cast<size_t>(region.beg[0]);
    const auto e = static_cast<size_t>(region.end[0]);
    if (b == e && have_last && last_end == e) {
      // An empty match right after the previous match: step one character, as the onig crate.
      if (from >= text.size()) break;
      size_t step = 1;
      while (from + step < text.size() && (static_cast<unsigned char>(text[from + step]) & 0xC0) == 0x80) ++step;
      from += step;
      continue;
    }
    out.push_back({static_cast<uint32_t>(b), static_cast<uint32_t>(e)});
    from = e;
    have_last = true;
    last_end = e;
  }
  onig_region_free(&region, 0);
}

namespace {

// Oniguruma's tables of Unicode properties, looked up by name once.
struct Properties {
  int white_space;
  int word[5];
  Properties() {
    white_space = ctype("White_Space");
    const char* word_names[] = {"Alphabetic", "M", "Nd", "Pc", "Join_Control"};  // Rust regex's \w
    for (int i = 0; i < 5; ++i) word[i] = ctype(word_names[i]);
  }
  static int ctype(const char* name) {
    auto* p = reinterpret_cast<OnigUChar*>(const_cast<char*>(name));
    const int t = ONIGENC_PROPERTY_NAME_TO_CTYPE(ONIG_ENCODING_UTF8, p, p + std::char_traits<char>::length(name));
    if (t < 0) std::abort();  // these names are in every Oniguruma 6
    return t;
  }
};

const Properties& properties() {
  static const Properties p;
  return p;
}

bool has(char32_t c, int ctype) { return ONIGENC_IS_CODE_CTYPE(ONIG_ENCODING_UTF8, c, ctype); }

}  // namespace

bool is_space_char(char32_t c) { return has(c, properties().white_space); }

bool is_word_char(char32_t c) {
  for (int ctype : properties().word) {
    if (has(c, ctype)) return true;
  }
  return false;
}

}  // namespace shoal
