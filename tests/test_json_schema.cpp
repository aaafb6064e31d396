// The JSON-schema compiler (text/grammar/json_schema.h): hand cases per keyword, the refusals,
// and random schemas whose grammars are checked against an independent validator
// (support/json_schema_check.h) two ways: random walks through the grammar's allowed tokens must
// write valid documents, and random valid documents (nlohmann's compact dump) must be accepted.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>

#include "support/json_schema_check.h"  // the independent validator
#include "text/grammar/json_schema.h"
#include "text/grammar/matcher.h"

using namespace shoal;
using nlohmann::json;
using nlohmann::ordered_json;
using shoal::test::validate;

namespace {

// The 256 single bytes and some longer tokens that cross JSON's token boundaries.
std::shared_ptr<const TokenVocabulary> vocab() {
  static const auto v = [] {
    std::vector<std::string> bytes;
    for (int b = 0; b < 256; ++b) bytes.push_back(std::string(1, char(b)));
    for (const char* t : {"\": ", "\":", "\":\"", "\", \"", "\",\"", "{\"", "true", "false", "null", "},", "],", "}]",
                          "\n  ", "  ", "\\u00", "\\n", "-0", "1.5", "e+", "00", "\xc3\xa9", "\xe6\x97\xa5\xe6\x9c\xac",
                          "\xf0\x9f\x98\x80", "2024-", "T12:", "Z\""})
      bytes.push_back(t);
    return TokenVocabulary::from_bytes(bytes, std::vector<bool>(bytes.size(), false));
  }();
  return v;
}

template <class Json>
std::shared_ptr<const Grammar> grammar_of(const Json& schema) {
  auto g = json_schema_grammar(schema);
  INFO(schema.dump());
  INFO(g.status().message());
  REQUIRE(g.ok());
  return std::make_shared<const Grammar>(std::move(*g));
}

bool accepts(const std::shared_ptr<const Grammar>& g, std::string_view text) {
  GrammarMatcher m(g, vocab());
  return m.accept_bytes(text) && m.accepting();
}

// Checks each text against the grammar of `schema`, and the validator agrees on those that parse.
void check(const json& schema, std::vector<std::string> good, std::vector<std::string> bad) {
  const auto g = grammar_of(schema);
  for (const std::string& t : good) {
    INFO("accepted? " << t);
    CHECK(accepts(g, t));
    CHECK(validate(json::parse(t), schema, schema));
  }
  for (const std::string& t : bad) {
    INFO("refused? " << t);
    CHECK_FALSE(accepts(g, t));
  }
}

// The message of a refused schema.
template <class Json>
std::string refusal(const Json& schema, const JsonSchemaLimits& limits = {}) {
  auto g = json_schema_grammar(schema, limits);
  INFO(schema.dump());
  REQUIRE_FALSE(g.ok());
  CHECK(g.status().code() == Code::kInvalidArgument);
  return g.status().message();
}

}  // namespace

TEST_CASE("json schema: strings are valid UTF-8 with JSON's escapes", "[json_schema]") {
  check({{"type", "string"}},
        {"\"\"", "\"abc\"", "\"caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf \xee\x80\x80\"",
         "\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u00e9 \\u001F \\uFFFF\"", "\"\\ud83d\\ude00\"", "\"\x7f\""},
        {"abc", "\"abc", "\"a\"\"", " \"a\"", "\"a\" ", "\"\\x\"", "\"\\u12\"", "\"\\ud83d\"", "\"\\ude00\"",
         "\"\\ud83dx\"", "\"\x01\"", "\"\n\"", "\"\xc0\xaf\"", "\"\xc1\xbf\"", "\"\xe0\x80\xaf\"", "\"\xed\xa0\x80\"",
         "\"\xf0\x80\x80\x80\"", "\"\xf4\x90\x80\x80\"", "\"\xf5\x80\x80\x80\"", "\"\xc3\"", "\"\x80\"", "\"\xff\""});
}

TEST_CASE("json schema: numbers and integers, digits bounded", "[json_schema]") {
  check({{"type", "number"}},
        {"0", "-0", "1e5", "1.5E-3", "123", "-12.5e+10", "0.000", "9999999999999999", "1.2345678901234567e-99",
         "9999999999999999.9999999999999999E+99"},
        {"01", "-01", "1.", ".5", "+1", "1e", "1e+", "--1", "-", "99999999999999999", "1.23456789012345678",
         "1e999", "1e100", "NaN", "Infinity", "0x10", " 1", "1 "});
  check({{"type", "integer"}}, {"0", "-0", "42", "-9007199254740991"}, {"1.0", "1e3", "00", "-", "12345678901234567"});
}

TEST_CASE("json schema: booleans, null, type lists, nullable, any value", "[json_schema]") {
  check({{"type", "boolean"}}, {"true", "false"}, {"True", "1", "null", "tru"});
  check({{"type", "null"}}, {"null"}, {"nul", "0", "\"null\""});
  check({{"type", {"string", "null"}}}, {"null", "\"x\""}, {"1", "true"});
  check({{"type", "integer"}, {"nullable", true}}, {"null", "7"}, {"\"7\"", "1.5"});
  check(json::object(), {"1", "[1,{\"a\":null}]", "\"s\"", "true", "{}", "{\"a\":{\"b\":[[]]}}"}, {"", "[1,]", "{"});
  check(json(true), {"1", "[]"}, {"x"});
}

TEST_CASE("json schema: objects write the declared properties, required ones always", "[json_schema]") {
  const json person = {{"type", "object"},
                       {"properties", {{"name", {{"type", "string"}}}, {"age", {{"type", "integer"}}}}},
                       {"required", {"name"}}};
  // nlohmann::json keeps keys sorted: age comes before name.
  check(person,
        {"{\"name\":\"a\"}", "{\"age\":3,\"name\":\"a\"}", "{ \"age\" : 3 , \"name\" : \"a\" }",
         "{\n  \"age\": 3,\n\t\"name\": \"a\"\n}", "{\"name\":\n                    \"a\"}"},
        {"{}", "{\"age\":3}", "{\"name\":1}", "{\"name\":\"a\",\"age\":3}", "{\"name\":\"a\",\"x\":1}",
         "{\"name\":\"a\",}", "{\"name\":\"a\"  }", "{\"name\":\n                     \"a\"}", "{\"name\":\"a\"} ",
         " {\"name\":\"a\"}", "[]"});
  // ordered_json keeps the schema's order.
  const ordered_json ordered = ordered_json::parse(R"({"type":"object","properties":{"name":{"type":"string"},
      "age":{"type":"integer"}},"required":["name","age"]})");
  const auto g = grammar_of(ordered);
  CHECK(accepts(g, "{\"name\":\"a\",\"age\":3}"));
  CHECK_FALSE(accepts(g, "{\"age\":3,\"name\":\"a\"}"));

  // Optional properties may be left out; never reordered.
  const ordered_json skip = ordered_json::parse(R"({"type":"object","properties":{"a":{"type":"integer"},
      "b":{"type":"integer"},"c":{"type":"integer"},"d":{"type":"integer"},"e":{"type":"integer"}},"required":["b","e"]})");
  const auto gs = grammar_of(skip);
  for (const char* t : {"{\"b\":1,\"e\":1}", "{\"a\":1,\"b\":1,\"e\":1}", "{\"b\":1,\"c\":1,\"e\":1}",
                        "{\"b\":1,\"d\":1,\"e\":1}", "{\"b\":1,\"c\":1,\"d\":1,\"e\":1}",
                        "{\"a\":1,\"b\":1,\"c\":1,\"d\":1,\"e\":1}"})
    CHECK(accepts(gs, t));
  for (const char* t : {"{\"a\":1,\"e\":1}", "{\"b\":1}", "{\"a\":1,\"b\":1,\"c\":1,\"d\":1}", "{\"e\":1,\"b\":1}",
                        "{\"b\":1,\"b\":1,\"e\":1}", "{}"})
    CHECK_FALSE(accepts(gs, t));
  const auto all_optional = grammar_of(ordered_json::parse(R"({"properties":{"x":{},"y":{"type":"null"}}})"));
  for (const char* t : {"{}", "{ }", "{\"x\":[]}", "{\"y\":null}", "{\"x\":1,\"y\":null}"}) CHECK(accepts(all_optional, t));
  CHECK_FALSE(accepts(all_optional, "{\"y\":null,\"x\":1}"));
  CHECK_FALSE(accepts(all_optional, "{\"x\":1,}"));
  // Many optional properties: any subset in order that has the required one.
  ordered_json many = {{"type", "object"}, {"properties", ordered_json::object()}, {"required", {"p0500"}}};
  auto key = [](int i) {
    char k[8];
    std::snprintf(k, sizeof k, "p%04d", i);
    return std::string(k);
  };
  for (int i = 0; i < 1000; ++i) many["properties"][key(i)] = {{"type", "integer"}};
  const auto gm = grammar_of(many);
  std::mt19937 rng(5);
  for (int run = 0; run < 50; ++run) {
    std::string doc = "{";
    for (int i = 0; i < 1000; ++i)
      if (i == 500 || rng() % 20 == 0) doc += (doc.size() > 1 ? ",\"" : "\"") + key(i) + "\":" + std::to_string(i);
    INFO(doc);
    CHECK(accepts(gm, doc + "}"));
  }
  CHECK(accepts(gm, "{\"p0000\":0,\"p0500\":1,\"p0999\":2}"));
  CHECK_FALSE(accepts(gm, "{\"p0999\":1}"));
  CHECK_FALSE(accepts(gm, "{\"p0002\":1,\"p0001\":1,\"p0500\":1}"));
  CHECK_FALSE(accepts(gm, "{\"p0500\":1,\"p0500\":1}"));
  CHECK_FALSE(accepts(gm, "{\"p0500\":1,\"p0501\":1,}"));
  // A property whose schema is false is never written (and refused when required).
  const auto never = grammar_of(json::parse(R"({"properties":{"x":false,"y":{"type":"null"}}})"));
  CHECK(accepts(never, "{\"y\":null}"));
  CHECK_FALSE(accepts(never, "{\"x\":null}"));
}

TEST_CASE("json schema: objects without properties", "[json_schema]") {
  check({{"type", "object"}}, {"{}", "{\"a\":[1,{\"b\":null}],\"c\":\"d\"}", "{ \"a\" : 1 }"}, {"[]", "{\"a\"}", "{1:2}"});
  check({{"type", "object"}, {"additionalProperties", false}}, {"{}", "{ }", "{\n}"}, {"{\"a\":1}"});
  check({{"type", "object"}, {"additionalProperties", {{"type", "integer"}}}}, {"{}", "{\"x\":1,\"y\":-2}"},
        {"{\"x\":\"s\"}", "{\"x\":1,}"});
  GrammarBuilder b;
  const auto object = add_json_object(b);
  b.define(GrammarBuilder::root(), {GrammarBuilder::ref(object)});
  auto g = std::move(b).build();
  REQUIRE(g.ok());
  const auto any_object = std::make_shared<const Grammar>(std::move(*g));
  CHECK(accepts(any_object, "{\"a\":{\"b\":{\"c\":[{\"d\":[]}]}}}"));
  CHECK(accepts(any_object, std::string(200, '[').insert(0, "{\"a\":") + std::string(200, ']') + "}"));
  CHECK_FALSE(accepts(any_object, "[]"));
  CHECK_FALSE(accepts(any_object, "\"x\""));
}

TEST_CASE("json schema: arrays with item counts", "[json_schema]") {
  check({{"type", "array"}, {"items", {{"type", "integer"}}}, {"minItems", 2}, {"maxItems", 4}},
        {"[1,2]", "[1,2,3,4]", "[ 1 , 2 ]", "[\n  1,\n  2\n]"}, {"[]", "[1]", "[1,2,3,4,5]", "[1,\"a\"]", "[1,2,]"});
  check({{"type", "array"}, {"maxItems", 0}}, {"[]", "[ ]"}, {"[1]"});
  check({{"type", "array"}, {"items", false}}, {"[]"}, {"[null]"});
  check({{"type", "array"}, {"minItems", 3}}, {"[1,\"a\",null]", "[1,2,3,4,5,6,7,8]"}, {"[1,2]"});
  check({{"type", "array"}, {"items", {{"type", "string"}}}, {"maxItems", 2}}, {"[]", "[\"a\"]", "[\"a\",\"b\"]"},
        {"[\"a\",\"b\",\"c\"]"});
  std::string thousand = "[0";
  for (int i = 1; i < 1000; ++i) thousand.append(",").append(std::to_string(i));
  check({{"type", "array"}, {"items", {{"type", "integer"}}}}, {thousand + "]"}, {thousand + ",]"});
}

TEST_CASE("json schema: enum and const are their compact JSON text", "[json_schema]") {
  const json e = {{"enum", {"red", 1, nullptr, {{"a", {1, 2}}}, 1.5, true, "caf\xc3\xa9\n"}}};
  check(e, {"\"red\"", "1", "null", "{\"a\":[1,2]}", "1.5", "true", "\"caf\xc3\xa9\\n\""},
        {"\"blue\"", "2", "false", "{ \"a\": [1, 2] }", "1.50", "\"red\" "});
  check({{"type", "string"}, {"enum", {"a", 1}}}, {"\"a\""}, {"1"});  // values of other types dropped
  check({{"const", "x"}, {"title", "X"}}, {"\"x\""}, {"\"y\""});
  check({{"enum", {"a", "b"}}, {"const", "b"}}, {"\"b\""}, {"\"a\""});
}

TEST_CASE("json schema: anyOf, allOf of one, $ref and recursion", "[json_schema]") {
  check({{"anyOf", {{{"type", "string"}}, {{"type", "integer"}}}}}, {"\"x\"", "5"}, {"true", "1.5"});
  // Pydantic's shapes: Optional[Model] and a $ref wrapped in allOf with a description.
  const json pyd = json::parse(R"({"$defs":{"Pet":{"type":"object","properties":{"kind":{"enum":["cat","dog"],
      "title":"Kind","type":"string"}},"required":["kind"],"title":"Pet"}},"type":"object","properties":{
      "pet":{"anyOf":[{"$ref":"#/$defs/Pet"},{"type":"null"}],"default":null},
      "main":{"allOf":[{"$ref":"#/$defs/Pet"}],"description":"the main pet"}},"required":["main"]})");
  check(pyd, {"{\"main\":{\"kind\":\"cat\"}}", "{\"main\":{\"kind\":\"dog\"},\"pet\":null}",
              "{\"main\":{\"kind\":\"dog\"},\"pet\":{\"kind\":\"cat\"}}"},
        {"{\"pet\":null}", "{\"main\":{\"kind\":\"cow\"}}", "{\"main\":null}"});
  // A tree, through definitions.
  const json tree = json::parse(R"({"definitions":{"node":{"type":"object","properties":{"value":{"type":"integer"},
      "children":{"type":"array","items":{"$ref":"#/definitions/node"}}},"required":["children","value"]}},
      "$ref":"#/definitions/node"})");
  check(tree,
        {"{\"children\":[],\"value\":1}",
         "{\"children\":[{\"children\":[{\"children\":[],\"value\":3}],\"value\":2},{\"children\":[],\"value\":4}],"
         "\"value\":1}"},
        {"{\"children\":[{\"value\":2}],\"value\":1}", "{\"children\":[]}"});
  // Names with / and ~ in definitions (JSON pointer escapes).
  check(json::parse(R"({"$defs":{"a/b~c":{"type":"null"}},"$ref":"#/$defs/a~1b~0c"})"), {"null"}, {"1"});
}

TEST_CASE("json schema: formats", "[json_schema]") {
  check({{"type", "string"}, {"format", "date"}},
        {"\"2024-02-29\"", "\"2000-02-29\"", "\"2023-12-31\"", "\"2023-04-30\"", "\"0000-02-29\"", "\"1996-02-29\""},
        {"\"2023-02-29\"", "\"1900-02-29\"", "\"2023-04-31\"", "\"2023-13-01\"", "\"2023-00-10\"", "\"2023-01-00\"",
         "\"2023-1-01\"", "\"2023-01-32\"", "\"x\""});
  check({{"type", "string"}, {"format", "time"}},
        {"\"12:34:56Z\"", "\"23:59:60+05:30\"", "\"00:00:00.123456789Z\"", "\"08:00:00.5-07:00\""},
        {"\"24:00:00Z\"", "\"12:34:56\"", "\"12:60:00Z\"", "\"12:00:61Z\"", "\"00:00:00.1234567890Z\"",
         "\"12:34:56z\"", "\"12:34:56+24:00\"", "\"12:34Z\""});
  check({{"type", "string"}, {"format", "date-time"}}, {"\"2024-01-02T03:04:05.6-07:00\"", "\"1999-12-31T23:59:59Z\""},
        {"\"2024-01-02 03:04:05Z\"", "\"2024-01-02T03:04:05\"", "\"2024-01-02\""});
  check({{"type", "string"}, {"format", "uuid"}}, {"\"123e4567-e89b-12d3-a456-426614174000\"", "\"ABCDEF01-2345-6789-abcd-ef0123456789\""},
        {"\"123e4567e89b12d3a456426614174000\"", "\"123e4567-e89b-12d3-a456-42661417400\"", "\"g23e4567-e89b-12d3-a456-426614174000\""});
}

TEST_CASE("json schema: string lengths count characters", "[json_schema]") {
  const json bounded = {{"type", "string"}, {"minLength", 2}, {"maxLength", 3}};
  check(bounded, {"\"ab\"", "\"abc\"", "\"\xe6\x97\xa5\xe6\x9c\xac\"", "\"\\u00e9a\"", "\"\xef\xbf\xbf\\n\""},
        {"\"a\"", "\"abcd\"", "\"\""});
  check({{"minLength", 1}}, {"\"a\""}, {"\"\"", "1"});  // implies type string
  // A bounded string is written in the Basic Multilingual Plane only, where code points (JSON
  // Schema) and UTF-16 units (JavaScript) count alike: valid documents with a character beyond
  // it are not written (zod would count it twice).
  for (const std::string text : {"\"\\ud83d\\ude00x\"", "\"\xf0\x9f\x98\x80\\n\"", "\"\xf0\x9f\x98\x80\""}) {
    INFO(text);
    CHECK_FALSE(accepts(grammar_of(bounded), text));
  }
  CHECK(accepts(grammar_of(json{{"type", "string"}}), "\"\xf0\x9f\x98\x80\\ud83d\\ude00\""));  // unbounded: any
}

TEST_CASE("json schema: whitespace is bounded", "[json_schema]") {
  const json s = {{"type", "array"}};
  check(s, {"[\n" + std::string(20, ' ') + "1]", "[\n\t\t 1]", "[ 1]", "[1\n]"},
        {"[\n" + std::string(21, ' ') + "1]", "[  1]", "[\t1]", "[\r\n1]", "[\n\n1]", " [1]", "[1] "});
}

TEST_CASE("json schema: schemas compose with other rules in one builder", "[json_schema]") {
  // As a tool-call grammar would: two argument schemas after their names, in one grammar.
  GrammarBuilder b;
  auto a = add_json_schema(b, json{{"type", "object"}, {"properties", {{"x", {{"type", "integer"}}}}}, {"required", {"x"}}});
  auto s = add_json_schema(b, json{{"type", "string"}, {"maxLength", 2}});
  REQUIRE(a.ok());
  REQUIRE(s.ok());
  b.define(GrammarBuilder::root(), {GrammarBuilder::lit("a:") + GrammarBuilder::ref(*a),
                                    GrammarBuilder::lit("s:") + GrammarBuilder::ref(*s)});
  auto g = std::move(b).build();
  REQUIRE(g.ok());
  const auto grammar = std::make_shared<const Grammar>(std::move(*g));
  CHECK(accepts(grammar, "a:{\"x\":1}"));
  CHECK(accepts(grammar, "s:\"ab\""));
  CHECK_FALSE(accepts(grammar, "a:\"ab\""));
  CHECK_FALSE(accepts(grammar, "s:\"abc\""));
}

TEST_CASE("json schema: refusals name the keyword and the location", "[json_schema]") {
  struct Case {
    const char* schema;
    const char* where;
    const char* what;
  };
  const Case cases[] = {
      {R"({"properties":{"age":{"type":"integer","multipleOf":2}}})", "at /properties/age:", "'multipleOf'"},
      {R"({"oneOf":[{"type":"string"}]})", "at /:", "'oneOf'"},
      {R"({"type":"number","minimum":0})", "at /:", "'minimum'"},
      {R"({"type":"number","maximum":0})", "at /:", "'maximum'"},
      {R"({"type":"number","exclusiveMinimum":0})", "at /:", "'exclusiveMinimum'"},
      {R"({"type":"number","exclusiveMaximum":0})", "at /:", "'exclusiveMaximum'"},
      {R"({"type":"array","items":{"type":"string","pattern":"^a"}})", "at /items:", "'pattern'"},
      {R"({"type":"array","prefixItems":[{"type":"string"}]})", "at /:", "'prefixItems'"},
      {R"({"type":"object","patternProperties":{}})", "at /:", "'patternProperties'"},
      {R"({"type":"object","minProperties":1})", "at /:", "'minProperties'"},
      {R"({"not":{"type":"string"}})", "at /:", "'not'"},
      {R"({"anyOf":[{"type":"string"},{"if":{}}]})", "at /anyOf/1:", "'if'"},
      {R"({"properties":{"a/b":{"frobnicate":1}}})", "at /properties/a~1b:", "'frobnicate'"},
      {R"({"type":"string","format":"email"})", "at /:", "'format' \"email\""},
      {R"({"$ref":"http://example.com/s.json"})", "at /:", "'$ref'"},
      {R"({"$ref":"#/$defs/missing"})", "at /:", "'$ref' \"#/$defs/missing\" names no definition"},
      {R"({"$defs":{"a":{"type":"object","properties":{"x":{"minimum":1}}}},"$ref":"#/$defs/a"})",
       "at /$defs/a/properties/x:", "'minimum'"},
      {R"({"type":"object","properties":{"a":{}},"required":["b"]})", "at /:", "'required' names \"b\""},
      {R"({"allOf":[{"type":"string"},{"maxLength":3}]})", "at /:", "'allOf'"},
      {R"({"type":"array","maxItems":1000})", "at /:", "'maxItems'"},
      {R"({"type":"string","maxLength":100000})", "at /:", "'maxLength'"},
      {R"({"type":"array","minItems":-1})", "at /:", "'minItems'"},
      {R"({"type":"array","items":[{"type":"string"}]})", "at /:", "'items'"},
      {R"({"type":"array","uniqueItems":true})", "at /:", "'uniqueItems'"},
      {R"({"type":"strin"})", "at /:", "'type' \"strin\""},
      {R"({"type":[]})", "at /:", "'type'"},
      {R"({"type":"string","anyOf":[{"maxLength":2}]})", "at /:", "'anyOf' together with 'type'"},
      {R"({"$ref":"#/$defs/a","type":"string","$defs":{"a":{}}})", "at /:", "'$ref' together with 'type'"},
      {R"({"enum":["a"],"maxLength":3})", "at /:", "'enum' together with 'maxLength'"},
      {R"({"type":"integer","enum":["a"]})", "at /:", "'enum'"},
      {R"({"enum":[]})", "at /:", "'enum'"},
      {R"({"properties":{"x":false},"required":["x"]})", "at /properties/x:", "false"},
      {R"({"type":"string","format":"date","maxLength":3})", "at /:", "'format'"},
      {R"({"type":"string","minLength":3,"maxLength":2})", "at /:", "'minLength'"},
      {R"({"nullable":"yes"})", "at /:", "'nullable'"},
      {R"(3)", "at /:", "a schema must be an object or a boolean"},
  };
  for (const Case& c : cases) {
    const std::string m = refusal(json::parse(c.schema));
    INFO(c.schema << " -> " << m);
    CHECK(m.starts_with("response_format schema "));
    CHECK_THAT(m, Catch::Contains(c.where) && Catch::Contains(c.what));
  }
  // Limits: nesting, enum size, rules.
  json deep = {{"type", "string"}};
  for (int i = 0; i < 70; ++i) deep = {{"type", "array"}, {"items", deep}};
  CHECK_THAT(refusal(deep), Catch::Contains("deeper than 64"));
  json nested_value = 1;
  for (int i = 0; i < 100; ++i) nested_value = json::array({nested_value});
  CHECK_THAT(refusal(json{{"const", nested_value}}), Catch::Contains("deeper than 64"));
  // Values nested far deeper than the limit are refused without recursing through them.
  const std::string deep_text = std::string(5000, '[') + "1" + std::string(5000, ']');
  CHECK_THAT(refusal(json{{"type", json::parse(deep_text)}}), Catch::Contains("'type'"));
  CHECK_THAT(refusal(json{{"enum", json::array({json::parse(deep_text)})}, {"const", json::parse(deep_text)}}),
             Catch::Contains("deeper than 64"));
  json big_enum = json::array();
  for (int i = 0; i < 1025; ++i) big_enum.push_back(i);
  CHECK_THAT(refusal(json{{"enum", big_enum}}), Catch::Contains("'enum' of more than 1024"));
  json wide = {{"type", "object"}, {"properties", json::object()}};
  for (int i = 0; i < 100; ++i) wide["properties"][std::string("p").append(std::to_string(i))] = {
        {"type", "array"}, {"maxItems", 50}, {"items", {{"type", "string"}, {"maxLength", i + 1}}}};
  JsonSchemaLimits limits;
  limits.max_rules = 500;
  CHECK_THAT(refusal(wide, limits), Catch::Contains("more than 500 grammar rules"));
  CHECK(json_schema_grammar(wide).ok());
  // A definition that refers to itself before writing anything: the builder's left-recursion check.
  CHECK_THAT(refusal(json::parse(R"({"$defs":{"a":{"anyOf":[{"$ref":"#/$defs/a"},{"type":"null"}]}},"$ref":"#/$defs/a"})")),
             Catch::Contains("left-recursive"));
}

// --- random schemas over the subset, random walks and random instances ---

namespace {

struct Random {
  std::mt19937_64 rng;
  explicit Random(uint64_t seed) : rng(seed) {}
  int below(int n) { return int(rng() % uint64_t(n)); }
  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; }
};

// Strings made of ASCII, characters dump() must escape, and 2-, 3- and 4-byte UTF-8.
// `bmp`: only characters of the Basic Multilingual Plane (the last two pieces are beyond it).
std::string random_text(Random& r, int n, bool bmp = false) {
  static const char* pieces[] = {"a", "Z", " ", "\"", "\\", "/", "\n", "\t", "\x01", "\x1f", "\x7f", "\xc3\xa9",
                                 "\xe6\x97\xa5", "\xef\xbf\xbf", "\xee\x80\x80", "\xf0\x9f\x98\x80", "\xf4\x8f\xbf\xbf"};
  const int choices = int(std::size(pieces)) - (bmp ? 2 : 0);
  std::string s;
  for (int i = 0; i < n; ++i) s += pieces[r.below(choices)];
  return s;
}

// Whether number text keeps to the grammar's bounds: 16 integer digits, 16 fraction digits, a
// 2-digit exponent (dump() may write up to 17 significant digits, and leading zeros).
bool within_digit_bounds(const std::string& t) {
  const size_t e = t.find_first_of("eE"), dot = t.find('.'), start = t[0] == '-' ? 1 : 0;
  const size_t int_end = std::min(dot, e);
  const size_t frac = dot == std::string::npos ? 0 : std::min(e, t.size()) - dot - 1;
  size_t exp = e == std::string::npos ? 0 : t.size() - e - 1;
  if (exp > 0 && (t[e + 1] == '-' || t[e + 1] == '+')) --exp;
  return std::min(int_end, t.size()) - start <= 16 && frac <= 16 && exp <= 2;
}

// A number that dump() writes within the grammar's digit bounds.
ordered_json random_number(Random& r, bool integer) {
  if (integer || r.chance(0.3)) return int64_t(r.below(2000001)) - 1000000 + (r.chance(0.1) ? 999999999999999 : 0);
  for (;;) {
    const std::string t =
        std::to_string(r.below(100000)) + "." + std::to_string(r.below(1000)) + "e" + std::to_string(r.below(41) - 20);
    const ordered_json v = (r.chance(0.5) ? -1 : 1) * ordered_json::parse(t).get<double>();
    if (within_digit_bounds(v.dump())) return v;
  }
}

ordered_json random_value(Random& r, int depth) {
  switch (r.below(depth > 0 ? 7 : 5)) {
    case 0: return nullptr;
    case 1: return r.chance(0.5);
    case 2: return random_number(r, r.chance(0.5));
    case 3: case 4: return random_text(r, r.below(5));
    case 5: {
      ordered_json a = ordered_json::array();
      for (int i = r.below(3); i > 0; --i) a.push_back(random_value(r, depth - 1));
      return a;
    }
    default: {
      ordered_json o = ordered_json::object();
      for (int i = r.below(3); i > 0; --i) o[random_text(r, 1 + r.below(3))] = random_value(r, depth - 1);
      return o;
    }
  }
}

// A tree definition, for $ref (children optional, so finite documents exist).
const ordered_json kNode = ordered_json::parse(R"({"type":"object","properties":{"v":{"type":"integer"},
    "kids":{"type":"array","items":{"$ref":"#/$defs/node"},"maxItems":2}},"required":["v"]})");

ordered_json random_schema(Random& r, int depth) {
  const int kind = r.below(depth > 0 ? 16 : 10);
  ordered_json s;
  switch (kind) {
    case 0: s = {{"type", "string"}}; break;
    case 1: {
      s = {{"type", "string"}};
      const int min = r.below(4);
      if (r.chance(0.7)) s["minLength"] = min;
      if (r.chance(0.7)) s["maxLength"] = min + r.below(4);
      break;
    }
    case 2: s = {{"type", "string"}, {"format", std::array{"date", "time", "date-time", "uuid"}[r.below(4)]}}; break;
    case 3: s = {{"type", r.chance(0.5) ? "number" : "integer"}}; break;
    case 4: s = {{"type", r.chance(0.5) ? "boolean" : "null"}}; break;
    case 5: {
      s = {{"enum", ordered_json::array()}};
      for (int i = 1 + r.below(4); i > 0; --i) s["enum"].push_back(random_value(r, 2));
      break;
    }
    case 6: s = {{"const", random_value(r, 2)}}; break;
    case 7: s = ordered_json::object(); break;  // any value
    case 8: s = {{"type", {"string", "integer", "null"}}}; break;
    case 9: s = {{"$ref", "#/$defs/node"}}; break;
    case 10: case 11: case 12: {
      s = {{"type", "object"}, {"properties", ordered_json::object()}};
      ordered_json required = ordered_json::array();
      for (int i = r.below(5); i > 0; --i) {
        const std::string name = random_text(r, 1 + r.below(3));
        if (s["properties"].contains(name)) continue;
        s["properties"][name] = random_schema(r, depth - 1);
        if (r.chance(0.5)) required.push_back(name);
      }
      if (!required.empty()) s["required"] = required;
      if (r.chance(0.3)) s["additionalProperties"] = r.chance(0.5);
      if (s["properties"].empty() && r.chance(0.5)) s["additionalProperties"] = random_schema(r, depth - 1);
      break;
    }
    case 13: case 14: {
      s = {{"type", "array"}, {"items", random_schema(r, depth - 1)}};
      const int min = r.below(3);
      if (r.chance(0.5)) s["minItems"] = min;
      if (r.chance(0.5)) s["maxItems"] = min + r.below(3);
      break;
    }
    default: {
      s = {{"anyOf", ordered_json::array()}};
      for (int i = 1 + r.below(3); i > 0; --i) s["anyOf"].push_back(random_schema(r, depth - 1));
      break;
    }
  }
  if (kind != 9 && r.chance(0.1)) s["nullable"] = true;
  if (r.chance(0.1)) s["description"] = "d";
  return s;
}

// A document valid against s that the grammar should accept (declared properties in order).
ordered_json random_instance(Random& r, const ordered_json& s, const ordered_json& root, int depth) {
  if (s.value("nullable", false) && r.chance(0.2)) return nullptr;
  if (s.contains("$ref")) return random_instance(r, root.at(ordered_json::json_pointer(s["$ref"].get<std::string>().substr(1))), root, depth);
  if (s.contains("anyOf")) return random_instance(r, s["anyOf"][size_t(r.below(int(s["anyOf"].size())))], root, depth);
  if (s.contains("const")) return s["const"];
  if (s.contains("enum")) return s["enum"][size_t(r.below(int(s["enum"].size())))];
  if (!s.contains("type")) return random_value(r, 2);
  const ordered_json& t = s["type"].is_array() ? s["type"][size_t(r.below(int(s["type"].size())))] : s["type"];
  if (t == "null") return nullptr;
  if (t == "boolean") return r.chance(0.5);
  if (t == "integer" || t == "number") return random_number(r, t == "integer");
  if (t == "string") {
    if (s.contains("format")) {
      char date[16], time[32];
      std::snprintf(date, sizeof date, "%04d-%02d-%02d", r.below(10000), 1 + r.below(12), 1 + r.below(28));
      std::snprintf(time, sizeof time, "%02d:%02d:%02d%s", r.below(24), r.below(60), r.below(61),
                    r.chance(0.5) ? ".25Z" : "+01:30");
      const std::string f = s["format"];
      if (f == "date") return date;
      if (f == "time") return time;
      if (f == "date-time") return std::string(date) + "T" + time;
      return "123e4567-e89b-12d3-A456-426614174000";
    }
    const int min = s.value("minLength", 0), max = s.value("maxLength", min + 6);
    return random_text(r, min + r.below(max - min + 1), s.contains("minLength") || s.contains("maxLength"));
  }
  if (t == "array") {
    const int min = s.value("minItems", 0), max = s.value("maxItems", min + 3);
    ordered_json a = ordered_json::array();
    for (int n = depth > 6 ? min : min + r.below(max - min + 1); n > 0; --n)
      a.push_back(random_instance(r, s.value("items", ordered_json::object()), root, depth + 1));
    return a;
  }
  ordered_json o = ordered_json::object();
  const ordered_json props = s.value("properties", ordered_json::object());
  const ordered_json required = s.value("required", ordered_json::array());
  if (props.empty()) {
    const ordered_json extra = s.value("additionalProperties", ordered_json(true));
    if (extra == false) return o;
    for (int i = r.below(3); i > 0; --i)
      o[random_text(r, 2)] = extra.is_object() ? random_instance(r, extra, root, depth + 1) : random_value(r, 1);
    return o;
  }
  for (const auto& [k, v] : props.items()) {
    const bool req = std::find(required.begin(), required.end(), k) != required.end();
    if (req || (depth < 6 && r.chance(0.5))) o[k] = random_instance(r, v, root, depth + 1);
  }
  return o;
}

// A random walk through the grammar's allowed tokens, picking among the closing tokens with
// probability `close` (documents stay small) and stopping where the text may end with
// probability 0.3. The text, or nullopt when it ran out of steps before accepting.
std::optional<std::string> random_walk(Random& r, const std::shared_ptr<const Grammar>& g, double close) {
  static const std::set<std::string> closers = {"\"", "}", "]", "}]", "},", "],", "Z\""};
  const auto v = vocab();
  GrammarMatcher m(g, v);
  std::string text;
  for (int step = 0; step < 2000; ++step) {
    if (m.finished() || (m.accepting() && r.chance(0.3))) return text;
    const TokenMask& mask = m.allowed();
    std::vector<int32_t> all, closing;
    for (int32_t id = 0; id < v->size(); ++id)
      if (mask_has(mask, id)) {
        all.push_back(id);
        if (closers.count(v->bytes(id))) closing.push_back(id);
      }
    INFO("text so far: " << text);
    REQUIRE_FALSE(all.empty());  // never a dead end short of the end
    const auto& pick = !closing.empty() && r.chance(close) ? closing : all;
    const int32_t id = pick[size_t(r.below(int(pick.size())))];
    REQUIRE(m.accept_token(id));
    text += v->bytes(id);
  }
  if (m.accepting()) return text;
  return std::nullopt;
}

}  // namespace

TEST_CASE("json schema: random schemas, walks and instances agree with the validator", "[json_schema]") {
  int walks = 0, finished = 0, instances = 0;
  size_t walked_bytes = 0;
  for (uint64_t seed = 1; seed <= 3000; ++seed) {
    Random r(seed);
    ordered_json schema = random_schema(r, 4);
    if (schema.is_object()) schema["$defs"] = {{"node", kNode}};
    const json plain = json::parse(schema.dump());
    INFO("seed " << seed << " schema " << schema.dump());
    const auto g = grammar_of(schema);
    for (int i = 0; i < 3; ++i, ++walks) {
      const auto text = random_walk(r, g, std::array{0.5, 0.2, 0.1}[size_t(i)]);
      if (!text) continue;
      ++finished;
      walked_bytes += text->size();
      INFO("walk: " << *text);
      const json doc = json::parse(*text, nullptr, false);
      REQUIRE_FALSE(doc.is_discarded());
      CHECK(validate(doc, plain, plain));
    }
    for (int i = 0; i < 3; ++i, ++instances) {
      const std::string text = random_instance(r, schema, schema, 0).dump();
      INFO("instance: " << text);
      CHECK(validate(json::parse(text), plain, plain));
      CHECK(accepts(g, text));
    }
  }
  WARN(finished << " of " << walks << " walks finished, " << walked_bytes << " bytes");
  CHECK(finished > walks * 9 / 10);
  CHECK(instances == 9000);
}
