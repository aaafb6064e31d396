// Splitting follows tokenizers' NormalizedString::split: the regex matches and the stretches
// between them are marked, the behaviour folds them into pieces, and empty pieces are dropped.
#include "text/tokenizer/pretokenizer.h"

#include <algorithm>

namespace shoal {

const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

namespace {

using Marked = PreTokenizeScratch::Marked;

// The behaviours, as tokenizers folds them (including its treatment of empty matches).
void fold(SplitBehavior behavior, const std::vector<Marked>& marked, std::vector<Span>& out) {
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Marked& m : marked) out.push_back(m.span);
      return;
    case SplitBehavior::kRemoved:
      for (const Marked& m : marked) {
        if (!m.is_match) out.push_back(m.span);
      }
      return;
    case SplitBehavior::kContiguous:
      for (const Marked& m : marked) {
        if (m.is_match == previous_match && !out.empty()) {
          out.back().end = m.span.end;
        } else {
          out.push_back(m.span);
        }
        previous_match = m.is_match;
      }
      return;
    case SplitBehavior::kMergedWithPrevious:
      for (const Marked& m : marked) {
        if (m.is_match && !previous_match && !out.empty()) {
          out.back().end = m.span.end;
        } else {
          out.push_back(m.span);
        }
        previous_match = m.is_match;
      }
      return;
    case SplitBehavior::kMergedWithNext: {
      const size_t first = out.size();
      for (auto it = marked.rbegin(); it != marked.rend(); ++it) {
        if (it->is_match && !previous_match && out.size() > first) {
          out.back().begin = it->span.begin;
        } else {
          out.push_back(it->span);
        }
        previous_match = it->is_match;
      }
      std::reverse(out.begin() + static_cast<std::ptrdiff_t>(first), out.end());
      return;
    }
  }
}

}  // namespace

void PreTokenizer::split(const PreTokenizerStep& step, const std::string& buf, Span piece,
                         PreTokenizeScratch& s) const {
  const std::string_view text(buf.data() + piece.begin, piece.end - piece.begin);
  s.matches.clear();
  step.regex->find_all(text, s.matches);
  const SplitBehavior behavior = step.kind == PreTokenizerStep::Kind::kByteLevel ? SplitBehavior::kIsolated : step.behavior;
  if (behavior == SplitBehavior::kIsolated && !step.invert) {  // what fold gives, without the marks
    uint32_t prev = 0;
    for (const Span& m : s.matches) {
      if (prev != m.begin) s.next.push_back({piece.begin + prev, piece.begin + m.begin});
      if (m.begin != m.end) s.next.push_back({piece.begin + m.begin, piece.begin + m.end});
      prev = m.end;
    }
    if (prev != text.size()) s.next.push_back({piece.begin + prev, piece.end});
    return;
  }
  s.marked.clear();
  uint32_t prev = 0;
  for (const Span& m : s.matches) {
    if (prev != m.begin) s.marked.push_back({{prev, m.begin}, false});
    s.marked.push_back({m, true});
    prev = m.end;
  }
  if (prev != text.size()) s.marked.push_back({{prev, static_cast<uint32_t>(text.size())}, false});
  if (step.invert) {
    for (Marked& m : s.marked) m.is_match = !m.is_match;
  }
  s.folded.clear();
  fold(behavior, s.marked, s.folded);
  for (const Span& f : s.folded) {
    if (f.begin != f.end) s.next.push_back({piece.begin + f.begin, piece.begin + f.end});
  }
}

void PreTokenizer::run(std::string& buf, Span segment, std::vector<Span>& pieces, PreTokenizeScratch& s) const {
  pieces.clear();
  if (segment.begin != segment.end) pieces.push_back(segment);
  for (const PreTokenizerStep& step : steps_) {
    s.next.clear();
    for (Span piece : pieces) {
      if (step.kind == PreTokenizerStep::Kind::kByteLevel) {
        if (step.add_prefix_space && buf[piece.begin] != ' ') {
          const uint32_t len = piece.end - piece.begin;
          const auto begin = static_cast<uint32_t>(buf.size());
          buf.reserve(buf.size() + 1 + len);  // so the append below reads stable memory
          buf += ' ';
          buf.append(buf.data() + piece.begin, len);
          piece = {begin, static_cast<uint32_t>(buf.size())};
        }
        if (!step.regex) {
          s.next.push_back(piece);
          continue;
        }
      }
      split(step, buf, piece, s);
    }
    pieces.swap(s.next);
  }
}

}  // namespace shoal
