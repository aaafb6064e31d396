// The pre-tokenizer: a sequence of steps, each applied to every piece the step before it made
// (Hugging Face's pre_tokenizers.Sequence). Supported steps: Split (a regex or a literal, any
// of the five delimiter behaviours, optionally inverted) and ByteLevel (optional prefix space,
// optional GPT-2 regex; its byte-to-char mapping is left to the BPE, which reads the bytes
// directly). ByteLevel must be the last step.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "text/tokenizer/onig_regex.h"

namespace shoal {

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct PreTokenizerStep {
  enum class Kind { kSplit, kByteLevel };
  Kind kind = Kind::kSplit;
  std::unique_ptr<Regex> regex;  // Split: its pattern; ByteLevel: GPT-2's regex or null
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;            // Split
  bool add_prefix_space = false;  // ByteLevel
};

// Per-call working memory, reused across the pieces of one encode call.
struct PreTokenizeScratch {
  std::vector<Span> next;
  std::vector<Span> matches;
  struct Marked {
    Span span;
    bool is_match;
  };
  std::vector<Marked> marked;
  std::vector<Span> folded;
};

class PreTokenizer {
 public:
  void add_step(PreTokenizerStep step) { steps_.push_back(std::move(step)); }
  bool byte_level() const { return !steps_.empty() && steps_.back().kind == PreTokenizerStep::Kind::kByteLevel; }

  // Splits buf[segment] into non-empty pieces (spans into `buf`, replacing `pieces`). A
  // ByteLevel prefix space is written by appending a copy of the piece to `buf`.
  void run(std::string& buf, Span segment, std::vector<Span>& pieces, PreTokenizeScratch& scratch) const;

 private:
  void split(const PreTokenizerStep& step, const std::string& buf, Span piece, PreTokenizeScratch& scratch) const;
  std::vector<PreTokenizerStep> steps_;
};

// GPT-2's pre-tokenizer regex, used by ByteLevel when use_regex is true.
extern const char* const kGpt2Pattern;

}  // namespace shoal
