// The lexer follows jinja2/lexer.py (3.1) rule by rule, since the whitespace control decides
// the prompt byte for byte: newlines normalised to \n and one trailing newline dropped; "{%-"
// strips all whitespace before a tag, "-%}" all after; lstrip_blocks strips whitespace (\s, so
// Unicode spaces too) between a line start and a block or comment tag (not "{{", not "{%+");
// trim_blocks drops the newline right after a block or comment tag (not after "+%}").
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstdio>

#include "text/jinja/ast.h"
#include "text/jinja/text.h"

namespace shoal::jinja {

Status error_at(int line, const std::string& message, Code code) {
  return Status(code, "chat template line " + std::to_string(line) + ": " + message);
}

Status located(int line, const Status& s) {
  if (s.ok() || s.message().rfind("chat template line ", 0) == 0) return s;
  return error_at(line, s.message(), s.code());
}

namespace {

// Decodes one code point at `pos` (invalid bytes count as one).
char32_t peek_cp(const std::string& s, size_t pos, size_t* len) {
  std::u32string one = text::decode(std::string_view(s).substr(pos, std::min<size_t>(4, s.size() - pos)));
  char32_t c = one.empty() ? 0 : one[0];
  std::string enc;
  text::append_utf8(enc, c);
  *len = enc.size();
  return c;
}

size_t skip_space(const std::string& s, size_t pos) {
  while (pos < s.size()) {
    auto b = static_cast<unsigned char>(s[pos]);
    if (b < 0x80) {  // the common case, without decoding
      if (!text::is_space(b)) break;
      ++pos;
      continue;
    }
    size_t len;
    if (!text::is_space(peek_cp(s, pos, &len))) break;
    pos += len;
  }
  return pos;
}

// The body of a string literal: Python's unicode-escape, as Jinja decodes it.
StatusOr<std::string> unescape(std::string_view body, int line) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] != '\\' || i + 1 == body.size()) {
      out.push_back(body[i]);
      continue;
    }
    char c = body[++i];
    auto hex = [&](size_t n) -> StatusOr<char32_t> {
      char32_t v = 0;
      for (size_t k = 1; k <= n; ++k) {
        if (i + k >= body.size() || !std::isxdigit(static_cast<unsigned char>(body[i + k]))) {
          return error_at(line, "truncated escape in string literal");
        }
        char h = static_cast<char>(std::tolower(static_cast<unsigned char>(body[i + k])));
        v = v * 16 + static_cast<char32_t>(h <= '9' ? h - '0' : h - 'a' + 10);
      }
      i += n;
      return v;
    };
    switch (c) {
      case '\n': break;  // line continuation
      case '\\': out.push_back('\\'); break;
      case '\'': out.push_back('\''); break;
      case '"': out.push_back('"'); break;
      case 'a': out.push_back('\a'); break;
      case 'b': out.push_back('\b'); break;
      case 'f': out.push_back('\f'); break;
      case 'n': out.push_back('\n'); break;
      case 'r': out.push_back('\r'); break;
      case 't': out.push_back('\t'); break;
      case 'v': out.push_back('\v'); break;
      case 'x':
      case 'u':
      case 'U': {
        SHOAL_ASSIGN_OR_RETURN(char32_t v, hex(c == 'x' ? 2 : c == 'u' ? 4 : 8));
        if (v > 0x10FFFF) return error_at(line, "illegal Unicode character in string literal");
        text::append_utf8(out, v);
        break;
      }
      case 'N':
        return error_at(line, "\\N{...} escapes are not supported", Code::kUnimplemented);
      default:
        if (c >= '0' && c <= '7') {
          char32_t v = 0;
          size_t k = 0;
          for (; k < 3 && i + k < body.size() && body[i + k] >= '0' && body[i + k] <= '7'; ++k) {
            v = v * 8 + (body[i + k] - '0');
          }
          i += k - 1;
          text::append_utf8(out, v);
        } else if (static_cast<unsigned char>(c) >= 0x80) {
          // Jinja escapes non-ASCII as \xNN / \uNNNN first, so "\é" keeps the backslash
          // and becomes that escape's text.
          size_t len;
          char32_t cp = peek_cp(std::string(body.substr(i)), 0, &len);
          char buf[16];
          std::snprintf(buf, sizeof buf, cp < 0x100 ? "\\x%02x" : cp < 0x10000 ? "\\u%04x" : "\\U%08x",
                        static_cast<unsigned>(cp));
          out += buf;
          i += len - 1;
        } else {  // unknown escapes stay as written
          out.push_back('\\');
          out.push_back(c);
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string src) : src_(std::move(src)) {}

  StatusOr<std::vector<Token>> run() {
    size_t pos = 0;
    while (pos < src_.size()) {
      size_t start = find_tag(pos);
      if (start == std::string::npos) {
        emit_text(pos, src_.substr(pos));
        break;
      }
      char kind = src_[start + 1];  // '{', '%' or '#'
      size_t after = start + 2;
      char sign = after < src_.size() && (src_[after] == '-' || src_[after] == '+') ? src_[after] : 0;
      if (sign) ++after;
      size_t raw_end = kind == '%' ? match_raw_begin(after) : std::string::npos;
      emit_text(pos, strip_before(src_.substr(pos, start - pos), sign, kind != '{'));
      if (raw_end != std::string::npos) {
        SHOAL_ASSIGN_OR_RETURN(pos, lex_raw(raw_end, start));
      } else if (kind == '#') {
        SHOAL_ASSIGN_OR_RETURN(pos, lex_comment(after, start));
      } else {
        SHOAL_ASSIGN_OR_RETURN(pos, lex_tag(after, start, kind == '%'));
      }
    }
    tokens_.push_back(Token{Token::Type::kEnd, "", line_at(src_.size())});
    return std::move(tokens_);
  }

 private:
  // The 1-based line of `pos`; positions mostly grow, so count on from the last one.
  int line_at(size_t pos) {
    if (pos < line_pos_) {
      line_pos_ = 0;
      line_ = 1;
    }
    line_ += static_cast<int>(std::count(src_.begin() + static_cast<long>(line_pos_),
                                         src_.begin() + static_cast<long>(pos), '\n'));
    line_pos_ = pos;
    return line_;
  }

  size_t find_tag(size_t pos) const {
    for (size_t p = src_.find('{', pos); p != std::string::npos; p = src_.find('{', p + 1)) {
      if (p + 1 < src_.size() && (src_[p + 1] == '{' || src_[p + 1] == '%' || src_[p + 1] == '#')) return p;
    }
    return std::string::npos;
  }

  void emit_text(size_t pos, std::string text) {
    if (!text.empty()) tokens_.push_back(Token{Token::Type::kText, std::move(text), line_at(pos)});
  }

  // The text before a tag: "-" strips all whitespace; lstrip_blocks strips whitespace back to
  // the line start for block and comment tags.
  std::string strip_before(std::string text, char sign, bool block_or_comment) const {
    if (sign == '-') return text::strip(text, nullptr, false, true);
    if (sign == '+' || !block_or_comment) return text;
    size_t l_pos = text.rfind('\n');
    l_pos = l_pos == std::string::npos ? 0 : l_pos + 1;
    if (l_pos == 0 && !line_starting_) return text;
    if (skip_space(text, l_pos) != text.size()) return text;  // Jinja 3.1.6: \s+, Unicode spaces too
    return text.substr(0, l_pos);
  }

  // After a block or comment tag's closing characters at `pos` ("+%}", "-%}", "%}").
  size_t finish_block(size_t pos, char sign, size_t close_len) {
    size_t end = pos + close_len;
    if (sign == '-') {
      end = skip_space(src_, end);
    } else if (sign != '+' && end < src_.size() && src_[end] == '\n') {
      ++end;  // trim_blocks
    }
    line_starting_ = end > 0 && src_[end - 1] == '\n';
    return end;
  }

  // "{% raw %}" (tag already opened, `pos` after the sign): the end of the tag, or npos.
  size_t match_raw_begin(size_t pos) const {
    pos = skip_space(src_, pos);
    if (src_.compare(pos, 3, "raw") != 0) return std::string::npos;
    size_t p = skip_space(src_, pos + 3);
    if (src_.compare(p, 3, "-%}") == 0) return skip_space(src_, p + 3);
    if (src_.compare(p, 2, "%}") == 0) return p + 2;
    return std::string::npos;
  }

  StatusOr<size_t> lex_raw(size_t pos, size_t tag_start) {
    line_starting_ = src_[pos - 1] == '\n';
    for (size_t p = src_.find("{%", pos); p != std::string::npos; p = src_.find("{%", p + 1)) {
      size_t q = p + 2;
      char sign = q < src_.size() && (src_[q] == '-' || src_[q] == '+') ? src_[q] : 0;
      if (sign) ++q;
      q = skip_space(src_, q);
      if (src_.compare(q, 6, "endraw") != 0) continue;
      q = skip_space(src_, q + 6);
      char end_sign = src_.compare(q, 3, "+%}") == 0 ? '+' : src_.compare(q, 3, "-%}") == 0 ? '-' : 0;
      if (!end_sign && src_.compare(q, 2, "%}") != 0) continue;
      emit_text(pos, strip_before(src_.substr(pos, p - pos), sign, true));
      return finish_block(q + (end_sign ? 1 : 0), end_sign, 2);
    }
    return error_at(line_at(tag_start), "missing end of raw directive");
  }

  StatusOr<size_t> lex_comment(size_t pos, size_t tag_start) {
    for (size_t p = src_.find("#}", pos); p != std::string::npos; p = src_.find("#}", p + 1)) {
      char sign = p > pos && (src_[p - 1] == '-' || src_[p - 1] == '+') ? src_[p - 1] : 0;
      return finish_block(p, sign, 2);
    }
    return error_at(line_at(tag_start), "missing end of comment tag");
  }

  // The end of a {{ }} or {% %} tag at `pos`, or npos.
  size_t match_end(size_t pos, bool block, char* sign) const {
    *sign = 0;
    const char* close = block ? "%}" : "}}";
    if (src_.compare(pos, 2, close) == 0) return pos;
    if (pos + 1 < src_.size() && (src_[pos] == '-' || (block && src_[pos] == '+')) &&
        src_.compare(pos + 1, 2, close) == 0) {
      *sign = src_[pos];
      return pos + 1;
    }
    return std::string::npos;
  }

  StatusOr<size_t> lex_tag(size_t pos, size_t tag_start, bool block) {
    tokens_.push_back(Token{block ? Token::Type::kBlockBegin : Token::Type::kVarBegin, "", line_at(tag_start)});
    std::string balance;  // open brackets, so "}}" inside {'a': {}} does not end the tag
    while (true) {
      char sign;
      size_t close = balance.empty() ? match_end(pos, block, &sign) : std::string::npos;
      if (close != std::string::npos) {
        tokens_.push_back(Token{block ? Token::Type::kBlockEnd : Token::Type::kVarEnd, "", line_at(pos)});
        if (block) return finish_block(close, sign, 2);
        size_t end = close + 2;
        if (sign == '-') end = skip_space(src_, end);
        line_starting_ = src_[end - 1] == '\n';
        return end;
      }
      if (pos >= src_.size()) {
        return error_at(line_at(tag_start), std::string("unexpected end of template, expected '") +
                                                (block ? "%}" : "}}") + "'");
      }
      size_t next = skip_space(src_, pos);
      if (next != pos) {
        pos = next;
        continue;
      }
      SHOAL_ASSIGN_OR_RETURN(pos, lex_token(pos, &balance));
    }
  }

  StatusOr<size_t> lex_token(size_t pos, std::string* balance) {
    int line = line_at(pos);
    char c = src_[pos];
    if (std::isdigit(static_cast<unsigned char>(c))) return lex_number(pos, line);
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t e = pos;
      while (e < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) ++e;
      tokens_.push_back(Token{Token::Type::kName, src_.substr(pos, e - pos), line});
      return e;
    }
    if (c == '\'' || c == '"') {
      size_t e = pos + 1;
      while (e < src_.size() && src_[e] != c) e += src_[e] == '\\' ? 2 : 1;
      if (e >= src_.size()) return error_at(line, "unterminated string literal");
      SHOAL_ASSIGN_OR_RETURN(std::string s, unescape(std::string_view(src_).substr(pos + 1, e - pos - 1), line));
      tokens_.push_back(Token{Token::Type::kString, std::move(s), line});
      return e + 1;
    }
    static const char* kOps[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[", "]",
                                 "(", ")", "{", "}", ">", "<", "=", ".", ":", "|", ",", ";"};
    for (const char* op : kOps) {
      size_t n = std::char_traits<char>::length(op);
      if (src_.compare(pos, n, op) != 0) continue;
      if (n == 1 && (c == '(' || c == '[' || c == '{')) balance->push_back(c);
      if (n == 1 && (c == ')' || c == ']' || c == '}')) {
        char open = c == ')' ? '(' : c == ']' ? '[' : '{';
        if (balance->empty() || balance->back() != open) return error_at(line, std::string("unexpected '") + c + "'");
        balance->pop_back();
      }
      tokens_.push_back(Token{Token::Type::kOp, op, line});
      return pos + n;
    }
    size_t len;
    char32_t cp = peek_cp(src_, pos, &len);
    std::string ch;
    text::append_utf8(ch, cp);
    return error_at(line, "unexpected char '" + ch + "'");
  }

  StatusOr<size_t> lex_number(size_t pos, int line) {
    auto digits = [&](size_t p, auto ok) {
      while (p < src_.size() && (ok(src_[p]) || (src_[p] == '_' && p + 1 < src_.size() && ok(src_[p + 1])))) ++p;
      return p;
    };
    auto dec = [](char ch) { return std::isdigit(static_cast<unsigned char>(ch)) != 0; };
    char prefix = pos + 1 < src_.size() && src_[pos] == '0' ? static_cast<char>(std::tolower(src_[pos + 1])) : 0;
    if (prefix == 'x' || prefix == 'o' || prefix == 'b') {
      int base = prefix == 'x' ? 16 : prefix == 'o' ? 8 : 2;
      auto ok = [base](char ch) {
        int v = std::isdigit(static_cast<unsigned char>(ch)) ? ch - '0'
                : std::isxdigit(static_cast<unsigned char>(ch)) ? std::tolower(ch) - 'a' + 10
                                                                 : 99;
        return v < base;
      };
      size_t e = digits(pos + 2, ok);
      if (e > pos + 2) return push_number(pos, e, line, base, false);
    }
    size_t e = digits(pos, dec);
    bool is_float = false;
    bool after_dot = pos > 0 && src_[pos - 1] == '.';  // foo.0.1 is two subscripts
    if (!after_dot && e + 1 < src_.size() && src_[e] == '.' && dec(src_[e + 1])) {
      e = digits(e + 1, dec);
      is_float = true;
    }
    if (!after_dot && e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t p = e + 1;
      if (p < src_.size() && (src_[p] == '+' || src_[p] == '-')) ++p;
      if (p < src_.size() && dec(src_[p])) {
        e = digits(p, dec);
        is_float = true;
      }
    }
    return push_number(pos, e, line, 10, is_float);
  }

  StatusOr<size_t> push_number(size_t pos, size_t end, int line, int base, bool is_float) {
    std::string s;
    for (size_t p = pos + (base == 10 ? 0 : 2); p < end; ++p) {
      if (src_[p] != '_') s.push_back(src_[p]);
    }
    Token t{is_float ? Token::Type::kFloat : Token::Type::kInt, src_.substr(pos, end - pos), line};
    errno = 0;
    if (is_float) {
      t.float_value = std::strtod(s.c_str(), nullptr);
    } else {
      t.int_value = std::strtoll(s.c_str(), nullptr, base);
      if (errno == ERANGE) return error_at(line, "integer literal too large: " + t.text, Code::kUnimplemented);
    }
    tokens_.push_back(std::move(t));
    return end;
  }

  std::string src_;
  std::vector<Token> tokens_;
  bool line_starting_ = true;  // the last match ended a line (lstrip_blocks at the template start)
  size_t line_pos_ = 0;        // line_at's cache: line_ is the line of line_pos_
  int line_ = 1;
};

// Jinja reads "\r\n" and "\r" as "\n" and drops one trailing newline (keep_trailing_newline off).
std::string normalize_newlines(const std::string& source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out.push_back(source[i]);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace

StatusOr<std::vector<Token>> tokenize(const std::string& source) {
  return Lexer(normalize_newlines(source)).run();
}

}  // namespace shoal::jinja
