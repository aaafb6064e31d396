// DeepSeek's tool calls in generated text, parsed back into OpenAI's `tool_calls`. The model
// writes (special tokens, so each marker arrives whole):
//   <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGS\n```<｜tool▁call▁end｜>
//   \n<｜tool▁call▁begin｜>...<｜tool▁call▁end｜><｜tool▁calls▁end｜>
// (V3, R1 and R1-0528; the calls may be separated by a newline or nothing), or, as V3-0324 and
// V3.1 templates teach it, NAME<｜tool▁sep｜>ARGS with no type and no code fence. Text before
// the first marker is the message's content. ARGS must be a JSON object.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace shoal {

inline constexpr std::string_view kToolCallsBegin = "<｜tool▁calls▁begin｜>";
inline constexpr std::string_view kToolCallsEnd = "<｜tool▁calls▁end｜>";
inline constexpr std::string_view kToolCallBegin = "<｜tool▁call▁begin｜>";
inline constexpr std::string_view kToolCallEnd = "<｜tool▁call▁end｜>";
inline constexpr std::string_view kToolSep = "<｜tool▁sep｜>";

struct ToolCall {
  std::string id;         // call_<prefix>_<index>, unique within the response
  std::string name;
  std::string arguments;  // a JSON object as text, as the model wrote it (trimmed)
};

// The whole output at once. When the output holds no tool-call block, `calls` is empty and
// `content` is the text. A block that is malformed (a call with no separator or no end, an empty
// name, arguments that are not one JSON object) makes `error` say what was wrong; `content` is
// then the whole text, so nothing the model wrote is lost.
struct ParsedToolCalls {
  std::string content;
  std::vector<ToolCall> calls;
  std::string error;
};
ParsedToolCalls parse_tool_calls(std::string_view text, std::string_view id_prefix);

// The streaming form: text as it is generated in, OpenAI's deltas out. Content is released up to
// anything that may still turn out to be a marker; a call's id and name go out in its first
// delta, then its arguments in pieces as they come (the closing code fence held back).
class ToolCallStream {
 public:
  struct CallDelta {
    int index = 0;
    std::string id, name;   // set in a call's first delta only
    std::string arguments;  // the next piece of the arguments
  };
  struct Delta {
    std::string content;
    std::vector<CallDelta> calls;
  };

  explicit ToolCallStream(std::string id_prefix) : prefix_(std::move(id_prefix)) {}

  Delta push(std::string_view text);
  // End of generation: releases what was held back.
  Delta finish();
  // How many calls have begun (a call begins once its name is complete).
  int calls() const { return next_index_; }

 private:
  enum class State { kContent, kBetweenCalls, kHeader, kArguments, kDone };
  void run(Delta& d, bool final);
  void emit_arguments(Delta& d, std::string_view piece);

  std::string prefix_;
  State state_ = State::kContent;
  std::string held_;
  int next_index_ = 0;
  bool fenced_ = false;          // arguments inside ```json ... ```
  bool args_started_ = false;    // leading whitespace of the arguments skipped
};

}  // namespace shoal
