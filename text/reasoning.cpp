// The parser is a small state machine over held-back text:
//   kStart      at the beginning: leading whitespace, then maybe the model's own <think>;
//   kReasoning  until the first </think> (later ones are plain content, as vLLM's parser does);
//   kContent    everything after it.
#include "text/reasoning.h"

namespace shoal {
namespace {

// Length of the longest suffix of `text` that is a proper prefix of `tag`.
size_t partial_tag_suffix(std::string_view text, std::string_view tag) {
  for (size_t n = std::min(text.size(), tag.size() - 1); n > 0; --n)
    if (text.substr(text.size() - n) == tag.substr(0, n)) return n;
  return 0;
}

bool is_space(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

}  // namespace

bool prompt_opens_reasoning(std::string_view prompt) {
  const size_t open = prompt.rfind(kThinkOpen);
  return open != std::string_view::npos && prompt.find(kThinkClose, open) == std::string_view::npos;
}

void ReasoningParser::release(Delta& d, std::string_view text) {
  if (state_ == State::kReasoning) {
    d.reasoning += text;
    return;
  }
  if (strip_newlines_) {
    while (!text.empty() && (text.front() == '\n' || text.front() == '\r')) text.remove_prefix(1);
    if (!text.empty()) strip_newlines_ = false;
  }
  d.content += text;
}

ReasoningParser::Delta ReasoningParser::push(std::string_view text) {
  Delta d;
  held_ += text;
  for (;;) {
    if (state_ == State::kStart) {
      size_t i = 0;
      while (i < held_.size() && is_space(held_[i])) ++i;
      const std::string_view rest = std::string_view(held_).substr(i);
      if (rest.substr(0, kThinkOpen.size()) == kThinkOpen) {  // the model opens its reasoning
        held_.erase(0, i + kThinkOpen.size());
        state_ = State::kReasoning;
        continue;
      }
      if (rest.size() < kThinkOpen.size() && kThinkOpen.substr(0, rest.size()) == rest) return d;  // undecided
      state_ = State::kContent;  // no reasoning block: all of it is content, as written
      continue;
    }
    if (state_ == State::kReasoning) {
      const size_t close = held_.find(kThinkClose);
      if (close != std::string::npos) {
        release(d, std::string_view(held_).substr(0, close));
        held_.erase(0, close + kThinkClose.size());
        state_ = State::kContent;
        strip_newlines_ = true;
        continue;
      }
      const size_t keep = partial_tag_suffix(held_, kThinkClose);
      release(d, std::string_view(held_).substr(0, held_.size() - keep));
      held_.erase(0, held_.size() - keep);
      return d;
    }
    release(d, held_);
    held_.clear();
    return d;
  }
}

ReasoningParser::Delta ReasoningParser::finish() {
  Delta d;
  if (state_ == State::kStart) state_ = State::kContent;
  release(d, held_);
  held_.clear();
  return d;
}

ReasoningParser::Delta split_reasoning(std::string_view text, bool starts_in_reasoning) {
  ReasoningParser p(starts_in_reasoning);
  ReasoningParser::Delta a = p.push(text), b = p.finish();
  return {a.reasoning + b.reasoning, a.content + b.content};
}

}  // namespace shoal
