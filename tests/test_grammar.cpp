// Grammars and their matcher: the builder's checks, matching bytes and special tokens, and the
// allowed-token mask against trying every token one by one.
#include <catch2/catch.hpp>

#include <random>

#include "text/grammar/grammar.h"
#include "text/grammar/matcher.h"
#include "text/tokenizer/tokenizer.h"

using namespace shoal;
using B = GrammarBuilder;

namespace {

std::shared_ptr<const Grammar> build(GrammarBuilder&& b) {
  auto g = std::move(b).build();
  REQUIRE(g.ok());
  return std::make_shared<const Grammar>(std::move(*g));
}

// Every single byte, then a few longer tokens, then two specials.
std::shared_ptr<const TokenVocabulary> small_vocab(std::vector<std::string> extra = {}) {
  std::vector<std::string> bytes;
  for (int b = 0; b < 256; ++b) bytes.push_back(std::string(1, char(b)));
  for (auto& e : extra) bytes.push_back(e);
  std::vector<bool> specials(bytes.size(), false);
  bytes.push_back("<|a|>");
  specials.push_back(true);
  bytes.push_back("<|b|>");
  specials.push_back(true);
  bytes.push_back("");  // an id without a token
  specials.push_back(false);
  return TokenVocabulary::from_bytes(bytes, specials);
}

bool matches(const std::shared_ptr<const Grammar>& g, std::string_view text) {
  GrammarMatcher m(g, small_vocab());
  return m.accept_bytes(text) && m.accepting();
}

}  // namespace

TEST_CASE("grammar: literals, alternatives, repetitions", "[grammar]") {
  GrammarBuilder b;
  const auto digit = B::bytes(byte_range('0', '9'));
  const auto digits = b.plus("digits", digit);
  const auto sign = b.optional("sign", B::lit("-"));
  b.define(B::root(), {B::ref(sign) + B::ref(digits), B::lit("null")});
  const auto g = build(std::move(b));
  CHECK(matches(g, "0"));
  CHECK(matches(g, "-12345"));
  CHECK(matches(g, "null"));
  CHECK_FALSE(matches(g, ""));
  CHECK_FALSE(matches(g, "-"));
  CHECK_FALSE(matches(g, "nul"));
  CHECK_FALSE(matches(g, "12a"));
  GrammarMatcher m(g, small_vocab());
  CHECK(m.accept_bytes("12"));
  CHECK(m.accepting());
  CHECK_FALSE(m.finished());
  CHECK_FALSE(m.accept_bytes("x"));  // refused, state kept
  CHECK(m.accept_bytes("3"));
  CHECK(m.next_bytes() == byte_range('0', '9'));
}

TEST_CASE("grammar: long repetitions stay flat (right recursion is a loop)", "[grammar]") {
  GrammarBuilder b;
  const auto xs = b.star("xs", B::lit("x"));
  b.define(B::root(), {B::lit("[") + B::ref(xs) + B::lit("]")});
  const auto g = build(std::move(b));
  CHECK(matches(g, "[" + std::string(100000, 'x') + "]"));
}

TEST_CASE("grammar: nesting deeper than the cap is refused, not a crash", "[grammar]") {
  GrammarBuilder b;
  const auto v = b.declare("value");
  b.define(v, {B::lit("[") + B::ref(v) + B::lit("]"), B::lit("0")});
  b.define(B::root(), {B::ref(v)});
  const auto g = build(std::move(b));
  CHECK(matches(g, std::string(100, '[') + "0" + std::string(100, ']')));
  CHECK_FALSE(matches(g, std::string(kMaxGrammarDepth + 10, '[') + "0" + std::string(kMaxGrammarDepth + 10, ']')));
}

TEST_CASE("grammar: the builder refuses left recursion and undefined rules", "[grammar]") {
  {
    GrammarBuilder b;
    const auto e = b.declare("expr");
    const auto opt = b.optional("ws", B::lit(" "));
    b.define(e, {B::ref(opt) + B::ref(e) + B::lit("+"), B::lit("1")});  // left-recursive through a nullable rule
    b.define(B::root(), {B::ref(e)});
    auto g = std::move(b).build();
    REQUIRE_FALSE(g.ok());
    CHECK_THAT(g.status().message(), Catch::Contains("left-recursive"));
  }
  {
    GrammarBuilder b;
    const auto later = b.declare("later");
    b.define(B::root(), {B::ref(later)});
    auto g = std::move(b).build();
    REQUIRE_FALSE(g.ok());
    CHECK_THAT(g.status().message(), Catch::Contains("'later' is used but never defined"));
  }
}

TEST_CASE("grammar: text_until stops at the first occurrence of its stop string", "[grammar]") {
  GrammarBuilder b;
  const auto think = b.text_until("think", "</think>");
  b.define(B::root(), {B::ref(think) + B::lit("OK")});
  const auto g = build(std::move(b));
  CHECK(matches(g, "</think>OK"));
  CHECK(matches(g, "a < b, </thin </th</think>OK"));
  CHECK(matches(g, "<</think>OK"));
  CHECK_FALSE(matches(g, "no end OK"));
  CHECK_FALSE(matches(g, "</think> more </think>OK"));  // text after the first stop must be OK
  GrammarMatcher m(g, small_vocab());
  CHECK(m.accept_bytes("x</think>"));
  CHECK(m.next_bytes() == byte_of("O"));
}

TEST_CASE("grammar: special tokens are matched by id, never by their text", "[grammar]") {
  GrammarBuilder b;
  b.define(B::root(), {B::special(256) + B::lit("x") + B::special(257)});
  const auto g = build(std::move(b));
  const auto vocab = small_vocab();
  GrammarMatcher m(g, vocab);
  CHECK_FALSE(m.accept_bytes("<|a|>"));
  CHECK_FALSE(m.accept_token('<'));
  CHECK(m.accept_token(256));
  CHECK_FALSE(m.accept_token(256));
  CHECK(m.accept_token('x'));
  CHECK_FALSE(m.accepting());
  const TokenMask& mask = m.allowed();
  for (int32_t id = 0; id < vocab->size(); ++id) CHECK(mask_has(mask, id) == (id == 257));
  CHECK(m.accept_token(257));
  CHECK(m.accepting());
  CHECK(m.finished());
}

TEST_CASE("grammar: the mask is exactly the tokens accept_token takes, at every step", "[grammar]") {
  // Words over a vocabulary with multi-byte tokens that cross rule boundaries.
  GrammarBuilder b;
  const auto word = b.plus("word", B::bytes(byte_range('a', 'c')));
  const auto sep = b.any_of("sep", {B::lit(", "), B::lit(",")});
  const auto more = b.star("more", B::ref(sep) + B::ref(word));
  b.define(B::root(), {B::lit("[") + B::ref(word) + B::ref(more) + B::lit("]"), B::special(256)});
  const auto g = build(std::move(b));
  const auto vocab = small_vocab({"ab", "abc", ", a", ",b", "c]", "]", "[a", "[", "a, b]", "cc, cc", "zz", "a]x"});
  std::mt19937 rng(7);
  for (int run = 0; run < 30; ++run) {
    GrammarMatcher m(g, vocab);
    for (int step = 0; step < 40 && !m.finished(); ++step) {
      const TokenMask mask = m.allowed();
      std::vector<int32_t> ok;
      for (int32_t id = 0; id < vocab->size(); ++id) {
        GrammarMatcher probe = m;
        const bool takes = probe.accept_token(id);
        INFO("token " << id << " '" << vocab->bytes(id) << "'");
        CHECK(mask_has(mask, id) == takes);
        if (takes) ok.push_back(id);
      }
      REQUIRE_FALSE(ok.empty());
      REQUIRE(m.accept_token(ok[rng() % ok.size()]));
    }
  }
}
