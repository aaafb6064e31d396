// libFuzzer target: JSON text as a response_format schema through the schema compiler
// (text/grammar/json_schema.h), then a random walk through the grammar it gives. The first byte
// seeds the walk; the rest is the schema. Invariants: a schema is compiled or refused with
// invalid_argument "response_format schema ..."; held in json or in ordered_json (sorted keys or
// the text's order) it is compiled or refused alike; a walk never meets a state with no allowed
// token short of the end, every allowed token is taken, and a walk that ends accepting wrote
// JSON that parses.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "text/grammar/json_schema.h"
#include "text/grammar/matcher.h"

namespace {

// The single bytes and a few tokens that cross JSON's token boundaries.
std::shared_ptr<const shoal::TokenVocabulary> vocab() {
  static const auto v = [] {
    std::vector<std::string> bytes;
    for (int b = 0; b < 256; ++b) bytes.push_back(std::string(1, char(b)));
    for (const char* t : {"\": ", "\":\"", "\",\"", "{\"", "true", "false", "null", "},", "}]", "\n  ", "\\u00", "-0"})
      bytes.push_back(t);
    return shoal::TokenVocabulary::from_bytes(bytes, std::vector<bool>(bytes.size(), false));
  }();
  return v;
}

// The deepest bracket nesting of JSON text, found without recursion (nlohmann's dump() and ==
// recurse, and the input may nest thousands deep).
int nesting(std::string_view text) {
  int depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

bool refused_well(const shoal::Status& s) {
  return s.code() == shoal::Code::kInvalidArgument && s.message().starts_with("response_format schema");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  const auto schema = nlohmann::json::parse(text, nullptr, false);
  if (schema.is_discarded()) return 0;
  auto grammar = shoal::json_schema_grammar(schema);
  if (!grammar.ok() && !refused_well(grammar.status())) std::abort();

  // The same schema in the text's key order (unless duplicate keys made the two differ). Only
  // for shallow text: parsing into ordered_json copies a value (recursively) each time an
  // object's key vector grows, and dump() and == recurse.
  if (nesting(text) <= 100) {
    const auto ordered = nlohmann::ordered_json::parse(text, nullptr, false);
    if (nlohmann::json::parse(ordered.dump()) == schema) {
      auto in_order = shoal::json_schema_grammar(ordered);
      if (in_order.ok() != grammar.ok()) std::abort();
      if (!in_order.ok() && !refused_well(in_order.status())) std::abort();
    }
  }
  if (!grammar.ok()) return 0;

  const auto v = vocab();
  shoal::GrammarMatcher m(std::make_shared<const shoal::Grammar>(std::move(*grammar)), v);
  std::minstd_rand rng(data[0] + 1);
  std::string out;
  for (int step = 0; step < 300; ++step) {
    if (m.finished() || (m.accepting() && rng() % 4 == 0)) break;
    const shoal::TokenMask& mask = m.allowed();
    std::vector<int32_t> all, closing;
    for (int32_t id = 0; id < v->size(); ++id)
      if (shoal::mask_has(mask, id)) {
        all.push_back(id);
        const std::string& b = v->bytes(id);
        if (b == "\"" || b == "}" || b == "]") closing.push_back(id);
      }
    if (all.empty()) std::abort();  // a dead end: nothing may follow, yet the text is not whole
    const auto& pick = !closing.empty() && rng() % 2 ? closing : all;
    const int32_t id = pick[rng() % pick.size()];
    if (!m.accept_token(id)) std::abort();
    out += v->bytes(id);
  }
  if (m.accepting() && nlohmann::json::parse(out, nullptr, false).is_discarded()) std::abort();
  return 0;
}
