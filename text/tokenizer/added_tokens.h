// Added tokens (tokenizer.json "added_tokens"): found in the raw text before pre-tokenization,
// leftmost-longest, as tokenizers' AddedVocabulary does with its Aho-Corasick automaton, then
// adjusted by their single_word / lstrip / rstrip flags.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "text/tokenizer/onig_regex.h"

namespace shoal {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

// A piece of text: an added token's id, or -1 for text still to be pre-tokenized.
struct Segment {
  Span span;
  int32_t id;
};

class AddedTokenMatcher {
 public:
  // `tokens` must outlive the matcher; it indexes into them.
  void build(const std::vector<AddedToken>& tokens, bool normalized);
  bool empty() const { return nodes_.size() <= 1; }

  // Appends the segments of text[span] (offsets into `text`) to `out`; empty text gives none.
  void split(std::string_view text, Span span, std::vector<Segment>& out) const;

 private:
  struct Node {
    int32_t token = -1;  // index into tokens_ of the token ending here
    std::vector<std::pair<unsigned char, int32_t>> children;
  };
  int32_t child(int32_t node, unsigned char c) const;
  // Longest token starting at text[at] (before `end`): its length, or 0.
  size_t longest_at(std::string_view text, size_t at, size_t end, int32_t& token) const;

  const std::vector<AddedToken>* tokens_ = nullptr;
  std::vector<Node> nodes_{1};
  bool first_byte_[256] = {};
  int only_first_byte_ = -1;  // the one byte that begins every token, if there is one
};

}  // namespace shoal
