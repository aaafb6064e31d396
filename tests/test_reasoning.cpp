// Splitting R1-style output into reasoning_content and content, whole and streamed.
#include <catch2/catch.hpp>

#include "text/reasoning.h"

using namespace shoal;

namespace {

struct Case {
  std::string text;
  bool starts_in_reasoning;
  std::string reasoning, content;
};

const std::vector<Case> kCases = {
    // R1's generation prompt opened the block: the model writes reasoning, closes it, answers.
    {"The user greets.\nI should greet back.\n</think>\n\nHello! How can I help?", true,
     "The user greets.\nI should greet back.\n", "Hello! How can I help?"},
    // The model opens the block itself (older R1 revisions' prompt has no <think>).
    {"<think>\n2+2 is 4.\n</think>\n\nThe answer is 4.", false, "\n2+2 is 4.\n", "The answer is 4."},
    {"  \n<think>x</think>y", false, "x", "y"},
    // No reasoning at all (DeepSeek-V3): everything is content, whitespace kept.
    {"  Plain answer, no tags.", false, "", "  Plain answer, no tags."},
    {"", false, "", ""},
    // Generation stopped inside the reasoning (max_tokens): all of it is reasoning.
    {"still thinking about </thi", true, "still thinking about </thi", ""},
    // A later </think> is content, as written (only the first one closes the block).
    {"r</think>c </think> d", true, "r", "c </think> d"},
    // A tag that only looks like the start of one is text.
    {"<thinking>not a tag", false, "", "<thinking>not a tag"},
    {"<thin", false, "", "<thin"},
    // Text mentioning <think> after the start is content.
    {"Use <think> tags.", false, "", "Use <think> tags."},
    // Empty reasoning block.
    {"</think>answer", true, "", "answer"},
};

ReasoningParser::Delta stream(const std::string& text, bool starts, const std::vector<size_t>& cuts) {
  ReasoningParser p(starts);
  ReasoningParser::Delta all;
  size_t prev = 0;
  for (size_t cut : cuts) {
    auto d = p.push(std::string_view(text).substr(prev, cut - prev));
    all.reasoning += d.reasoning;
    all.content += d.content;
    prev = cut;
  }
  auto d = p.push(std::string_view(text).substr(prev));
  all.reasoning += d.reasoning;
  all.content += d.content;
  d = p.finish();
  all.reasoning += d.reasoning;
  all.content += d.content;
  return all;
}

}  // namespace

TEST_CASE("split_reasoning splits at the first </think>", "[reasoning]") {
  for (const Case& c : kCases) {
    INFO("text: " << c.text);
    const auto d = split_reasoning(c.text, c.starts_in_reasoning);
    CHECK(d.reasoning == c.reasoning);
    CHECK(d.content == c.content);
  }
}

TEST_CASE("streamed in any chunks, the split is the same", "[reasoning]") {
  for (const Case& c : kCases) {
    INFO("text: " << c.text);
    for (size_t cut = 0; cut <= c.text.size(); ++cut) {  // every two-chunk split
      const auto d = stream(c.text, c.starts_in_reasoning, {cut});
      CHECK(d.reasoning == c.reasoning);
      CHECK(d.content == c.content);
    }
    std::vector<size_t> every;  // one byte at a time
    for (size_t i = 1; i < c.text.size(); ++i) every.push_back(i);
    const auto d = stream(c.text, c.starts_in_reasoning, every);
    CHECK(d.reasoning == c.reasoning);
    CHECK(d.content == c.content);
  }
}

TEST_CASE("a tag split across chunks is never shown as text", "[reasoning]") {
  ReasoningParser p(true);
  auto d = p.push("abc</th");
  CHECK(d.reasoning == "abc");
  CHECK(d.content.empty());
  d = p.push("ink>\n\nhi");
  CHECK(d.reasoning.empty());
  CHECK(d.content == "hi");
  ReasoningParser q(false);
  d = q.push("<thi");
  CHECK(d.reasoning.empty());
  CHECK(d.content.empty());
  d = q.push("nk>deep");
  CHECK(d.reasoning == "deep");
}

TEST_CASE("prompt_opens_reasoning sees an unclosed <think> at the end of the prompt", "[reasoning]") {
  CHECK(prompt_opens_reasoning("<｜User｜>hi<｜Assistant｜><think>\n"));
  CHECK_FALSE(prompt_opens_reasoning("<｜User｜>hi<｜Assistant｜>"));
  CHECK_FALSE(prompt_opens_reasoning("<think>a</think>b<｜Assistant｜>"));
  CHECK(prompt_opens_reasoning("<think>a</think>b<｜Assistant｜><think>\n"));
}
