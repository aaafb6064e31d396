// DeepSeek-R1-style output: reasoning inside <think>...</think>, then the answer. The parser
// splits generated text into reasoning_content and content as it streams, so a tag split
// across chunks is never shown as text. The opening tag may come from the prompt (R1's
// template ends its generation prompt with "<think>\n") or from the model itself.
#pragma once

#include <string>
#include <string_view>

namespace shoal {

inline constexpr std::string_view kThinkOpen = "<think>";
inline constexpr std::string_view kThinkClose = "</think>";

// True when the prompt's last <think> is not closed: generation starts inside reasoning.
bool prompt_opens_reasoning(std::string_view prompt);

class ReasoningParser {
 public:
  struct Delta {
    std::string reasoning;
    std::string content;
  };

  explicit ReasoningParser(bool starts_in_reasoning)
      : state_(starts_in_reasoning ? State::kReasoning : State::kStart) {}

  // Text as it is generated; returns what can be shown now. Text that may still turn out to be
  // (part of) a tag is held back until the next push or finish().
  Delta push(std::string_view text);
  // End of generation: releases what was held back (a partial tag is then plain text).
  Delta finish();

 private:
  enum class State { kStart, kReasoning, kContent };
  void release(Delta& d, std::string_view text);

  State state_;
  std::string held_;         // text not yet classified
  bool strip_newlines_ = false;  // drop newlines right after </think> (the template's separator)
};

// Non-streaming form: the whole output at once.
ReasoningParser::Delta split_reasoning(std::string_view text, bool starts_in_reasoning);

}  // namespace shoal
