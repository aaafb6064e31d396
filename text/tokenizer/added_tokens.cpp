// A byte trie stands in for the reference's Aho-Corasick automaton: matches are whole
// tokens, and a well-formed text only matches on character boundaries. Scanning only stops at
// bytes that begin some token, so ordinary text costs one table lookup per byte, or a memchr
// when every token begins with the same byte.
#include "text/tokenizer/added_tokens.h"

#include <algorithm>
#include <cstring>

#include "text/tokenizer/utf8.h"

namespace shoal {

void AddedTokenMatcher::build(const std::vector<AddedToken>& tokens, bool normalized) {
  tokens_ = &tokens;
  nodes_.assign(1, Node{});
  std::fill(std::begin(first_byte_), std::end(first_byte_), false);
  for (size_t t = 0; t < tokens.size(); ++t) {
    if (tokens[t].normalized != normalized || tokens[t].content.empty()) continue;
    int32_t node = 0;
    for (unsigned char c : tokens[t].content) {
      int32_t next = child(node, c);
      if (next < 0) {
        next = static_cast<int32_t>(nodes_.size());
        nodes_[node].children.emplace_back(c, next);
        nodes_.emplace_back();
      }
      node = next;
    }
    nodes_[node].token = static_cast<int32_t>(t);
    first_byte_[static_cast<unsigned char>(tokens[t].content[0])] = true;
  }
  only_first_byte_ = -1;
  if (std::count(std::begin(first_byte_), std::end(first_byte_), true) == 1)
    only_first_byte_ = static_cast<int>(std::find(std::begin(first_byte_), std::end(first_byte_), true) - std::begin(first_byte_));
}

int32_t AddedTokenMatcher::child(int32_t node, unsigned char c) const {
  for (const auto& [byte, next] : nodes_[node].children) {
    if (byte == c) return next;
  }
  return -1;
}

size_t AddedTokenMatcher::longest_at(std::string_view text, size_t at, size_t end, int32_t& token) const {
  size_t best = 0;
  int32_t node = 0;
  for (size_t i = at; i < end; ++i) {
    node = child(node, static_cast<unsigned char>(text[i]));
    if (node < 0) break;
    if (nodes_[node].token >= 0) {
      best = i + 1 - at;
      token = nodes_[node].token;
    }
  }
  return best;
}

namespace {

bool ends_with_word(std::string_view s) { return !s.empty() && is_word_char(utf8::last(s)); }
bool starts_with_word(std::string_view s) {
  size_t i = 0;
  return !s.empty() && is_word_char(utf8::next(s, i));
}

}  // namespace

void AddedTokenMatcher::split(std::string_view text, Span span, std::vector<Segment>& out) const {
  if (span.begin == span.end) return;
  if (empty()) {
    out.push_back({span, -1});
    return;
  }
  size_t start_offset = span.begin;  // end of the last accepted token
  size_t pos = span.begin;           // where the search resumes
  while (pos < span.end) {
    if (!first_byte_[static_cast<unsigned char>(text[pos])]) {
      if (only_first_byte_ < 0) {
        ++pos;
      } else {  // all tokens begin with one byte (DeepSeek's with '<'): memchr scans faster
        const void* next = std::memchr(text.data() + pos, only_first_byte_, span.end - pos);
        pos = next != nullptr ? static_cast<const char*>(next) - text.data() : span.end;
      }
      continue;
    }
    int32_t t = -1;
    const size_t len = longest_at(text, pos, span.end, t);
    if (len == 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + len;
    pos = stop;
    const AddedToken& token = (*tokens_)[t];
    const std::string_view before = text.substr(span.begin, start - span.begin);
    const std::string_view after = text.substr(stop, span.end - stop);
    if (token.single_word && (ends_with_word(before) || starts_with_word(after))) continue;
    if (token.lstrip) {
      size_t s = start;
      while (s > span.begin) {
        size_t b = s - 1;
        while (b > span.begin && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
        size_t i = b;
        if (!is_space_char(utf8::next(text, i))) break;
        s = b;
      }
      start = std::max(s, start_offset);
    }
    if (token.rstrip) {
      size_t i = stop;
      while (i < span.end) {
        size_t j = i;
        if (!is_space_char(utf8::next(text, j))) break;
        i = j;
      }
      stop = i;
    }
    if (start_offset < start) out.push_back({{uint32_t(start_offset), uint32_t(start)}, -1});
    out.push_back({{uint32_t(start), uint32_t(stop)}, token.id});
    start_offset = stop;
  }
  if (start_offset < span.end) out.push_back({{uint32_t(start_offset), span.end}, -1});
}

}  // namespace shoal
