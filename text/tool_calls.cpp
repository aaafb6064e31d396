#include "text/tool_calls.h"

#include <algorithm>
#include <nlohmann/json.hpp>

namespace shoal {
namespace {

constexpr std::string_view kSpace = " \t\r\n";
constexpr std::string_view kFunctionType = "function";

std::string_view trim(std::string_view s) {
  const size_t a = s.find_first_not_of(kSpace);
  if (a == std::string_view::npos) return {};
  return s.substr(a, s.find_last_not_of(kSpace) - a + 1);
}

std::string_view trim_left(std::string_view s) {
  const size_t a = s.find_first_not_of(kSpace);
  return a == std::string_view::npos ? std::string_view{} : s.substr(a);
}

// The length of the longest suffix of s that is a proper prefix of one of the markers: text that
// may still become a marker once more arrives.
size_t marker_prefix_suffix(std::string_view s, std::initializer_list<std::string_view> markers) {
  size_t best = 0;
  for (std::string_view m : markers)
    for (size_t k = std::min(s.size(), m.size() - 1); k > best; --k)
      if (s.substr(s.size() - k) == m.substr(0, k)) {
        best = k;
        break;
      }
  return best;
}

bool is_prefix_of(std::string_view s, std::string_view of) { return s.size() <= of.size() && of.substr(0, s.size()) == s; }

// ```json\n ... \n``` around arguments (V3/R1), removed; anything else is left as it is.
std::string_view strip_fence(std::string_view args) {
  args = trim(args);
  if (!args.starts_with("```")) return args;
  const size_t line = args.find('\n');
  if (line == std::string_view::npos) return args;
  args = args.substr(line + 1);
  args = trim(args);
  if (args.ends_with("```")) args = trim(args.substr(0, args.size() - 3));
  return args;
}

std::string call_id(std::string_view prefix, int index) {
  return "call_" + std::string(prefix) + "_" + std::to_string(index);
}

}  // namespace

ParsedToolCalls parse_tool_calls(std::string_view text, std::string_view id_prefix) {
  ParsedToolCalls out;
  const size_t begin = text.find(kToolCallsBegin);
  if (begin == std::string_view::npos) {
    out.content = std::string(text);
    return out;
  }
  auto fail = [&](std::string why) {
    out.calls.clear();
    out.content = std::string(text);
    out.error = std::move(why);
    return out;
  };
  out.content = std::string(trim(text.substr(0, begin)).empty() ? std::string_view{} : text.substr(0, begin));
  std::string_view rest = text.substr(begin + kToolCallsBegin.size());
  for (;;) {
    rest = trim_left(rest);
    if (rest.empty()) break;  // generation ended after the last call without the closing marker
    if (rest.starts_with(kToolCallsEnd)) {
      if (!trim(rest.substr(kToolCallsEnd.size())).empty())
        return fail("text after " + std::string(kToolCallsEnd));
      break;
    }
    if (!rest.starts_with(kToolCallBegin))
      return fail("expected " + std::string(kToolCallBegin) + " or " + std::string(kToolCallsEnd) + " in the tool-call block");
    rest = rest.substr(kToolCallBegin.size());
    const size_t end = rest.find(kToolCallEnd);
    if (end == std::string_view::npos) return fail("tool call " + std::to_string(out.calls.size()) + " has no " + std::string(kToolCallEnd));
    const std::string_view body = rest.substr(0, end);
    rest = rest.substr(end + kToolCallEnd.size());
    const size_t sep = body.find(kToolSep);
    if (sep == std::string_view::npos) return fail("tool call " + std::to_string(out.calls.size()) + " has no " + std::string(kToolSep));
    const std::string_view head = trim(body.substr(0, sep)), after = body.substr(sep + kToolSep.size());
    std::string_view name, args;
    const size_t newline = after.find('\n');
    if (head == kFunctionType && newline != std::string_view::npos) {  // type<sep>name\n```json\nargs\n```
      name = trim(after.substr(0, newline));
      args = strip_fence(after.substr(newline + 1));
    } else {  // name<sep>args
      name = head;
      args = strip_fence(after);
    }
    if (name.empty()) return fail("tool call " + std::to_string(out.calls.size()) + " has an empty name");
    // (nlohmann's parser ends its input at a NUL byte: text with one is not one JSON object)
    const nlohmann::json parsed = nlohmann::json::parse(args, nullptr, false);
    if (args.find('\0') != std::string_view::npos || parsed.is_discarded() || !parsed.is_object())
      return fail("the arguments of tool call " + std::to_string(out.calls.size()) + " (" + std::string(name) +
                  ") are not a JSON object");
    const int index = int(out.calls.size());
    out.calls.push_back({call_id(id_prefix, index), std::string(name), std::string(args)});
  }
  if (out.calls.empty()) return fail("the tool-call block holds no call");
  return out;
}

ToolCallStream::Delta ToolCallStream::push(std::string_view text) {
  held_ += text;
  Delta d;
  run(d, false);
  return d;
}

ToolCallStream::Delta ToolCallStream::finish() {
  Delta d;
  run(d, true);
  // What is left could not become a marker any more: the arguments of an unterminated call, or text.
  if (!held_.empty()) {
    if (state_ == State::kArguments) {
      std::string_view args = trim(held_);
      if (fenced_ && args.ends_with("```")) args = trim(args.substr(0, args.size() - 3));
      emit_arguments(d, args);
    }
    else if (state_ == State::kContent || !trim(held_).empty()) d.content += held_;
    held_.clear();
  }
  return d;
}

void ToolCallStream::emit_arguments(Delta& d, std::string_view piece) {
  if (!args_started_) {
    piece = trim_left(piece);
    if (piece.empty()) return;
    args_started_ = true;
  }
  if (piece.empty()) return;
  if (!d.calls.empty() && d.calls.back().index == next_index_ - 1) d.calls.back().arguments += piece;
  else d.calls.push_back({next_index_ - 1, "", "", std::string(piece)});
}

void ToolCallStream::run(Delta& d, bool final) {
  for (;;) {
    std::string_view h = held_;
    switch (state_) {
      case State::kContent: {
        const size_t at = h.find(kToolCallsBegin);
        if (at == std::string_view::npos) {
          const size_t keep = final ? 0 : marker_prefix_suffix(h, {kToolCallsBegin});
          d.content += h.substr(0, h.size() - keep);
          held_.erase(0, h.size() - keep);
          return;
        }
        d.content += h.substr(0, at);
        held_.erase(0, at + kToolCallsBegin.size());
        state_ = State::kBetweenCalls;
        break;
      }
      case State::kBetweenCalls:
      case State::kDone: {
        if (trim_left(h).empty()) {
          held_.clear();
          return;
        }
        held_.erase(0, h.size() - trim_left(h).size());
        const std::string_view t = held_;
        if (state_ == State::kBetweenCalls && t.starts_with(kToolCallBegin)) {
          held_.erase(0, kToolCallBegin.size());
          state_ = State::kHeader;
          break;
        }
        if (state_ == State::kBetweenCalls && t.starts_with(kToolCallsEnd)) {
          held_.erase(0, kToolCallsEnd.size());
          state_ = State::kDone;
          break;
        }
        if (!final && state_ == State::kBetweenCalls && (is_prefix_of(t, kToolCallBegin) || is_prefix_of(t, kToolCallsEnd)))
          return;
        // Not a call: the model's text, kept as content rather than lost.
        d.content += held_;
        held_.clear();
        return;
      }
      case State::kHeader: {
        // Decided as parse_tool_calls decides on the whole call: type<sep>name\n... when a newline
        // comes before the call's end, else name<sep>args; then an opening code fence (a line
        // starting with ```) is dropped when a newline ends it before the call's end.
        const size_t sep = h.find(kToolSep);
        if (sep == std::string_view::npos) return;  // finish() releases a header that never completes
        const std::string_view head = trim(h.substr(0, sep)), after = h.substr(sep + kToolSep.size());
        const size_t end = after.find(kToolCallEnd), newline = after.find('\n');
        std::string name;
        std::string_view args = after;  // where the arguments start
        if (head == kFunctionType && newline != std::string_view::npos && newline < end) {
          name = std::string(trim(after.substr(0, newline)));
          args = after.substr(newline + 1);
        } else if (head == kFunctionType && end == std::string_view::npos && !final) {
          return;  // a newline or the call's end decides the form
        } else {
          name = std::string(head);
        }
        const std::string_view lead = trim_left(args.substr(0, args.find(kToolCallEnd)));
        const bool closed = args.find(kToolCallEnd) != std::string_view::npos;
        if (!final && !closed && is_prefix_of(lead, "```")) return;  // may still open a fence
        size_t skip = size_t(lead.data() - args.data());  // leading white space
        if (lead.starts_with("```")) {
          const size_t line = lead.find('\n');
          if (line == std::string_view::npos && !final && !closed) return;  // wait for the fence line
          if (line != std::string_view::npos) {
            skip += line + 1;
            fenced_ = true;
          } else {
            skip = 0;  // a ``` line never ended: part of the arguments, as the whole parse keeps it
          }
        }
        held_.erase(0, size_t(args.data() - h.data()) + skip);
        const int index = next_index_++;
        d.calls.push_back({index, call_id(prefix_, index), name, ""});
        args_started_ = false;
        state_ = State::kArguments;
        break;
      }
      case State::kArguments: {
        const size_t end = h.find(kToolCallEnd);
        if (end != std::string_view::npos) {
          std::string_view args = h.substr(0, end);
          args = args.substr(0, args.find_last_not_of(kSpace) + 1);
          if (fenced_ && args.ends_with("```")) args = args.substr(0, args.size() - 3);
          emit_arguments(d, args.substr(0, args.find_last_not_of(kSpace) + 1));
          held_.erase(0, end + kToolCallEnd.size());
          fenced_ = false;
          state_ = State::kBetweenCalls;
          break;
        }
        // Hold back what may be the end marker, trailing white space, and (fenced) a closing fence.
        size_t keep = marker_prefix_suffix(h, {kToolCallEnd});
        std::string_view body = h.substr(0, h.size() - keep);
        size_t cut = body.find_last_not_of(kSpace) + 1;  // npos + 1 == 0: all white space
        if (fenced_) {  // up to 3 trailing backticks may be the closing fence (and the space before it)
          const std::string_view tail = body.substr(0, cut);
          const size_t run = tail.size() - (tail.find_last_not_of('`') + 1);
          cut = tail.size() - std::min<size_t>(run, 3);
          if (run > 0 && run <= 3) cut = tail.substr(0, cut).find_last_not_of(kSpace) + 1;
        }
        if (final) return;
        emit_arguments(d, body.substr(0, cut));
        held_.erase(0, cut);
        return;
      }
    }
  }
}

}  // namespace shoal
