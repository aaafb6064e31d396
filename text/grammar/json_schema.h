// JSON schemas (OpenAI's response_format {"type": "json_schema"}) and "any JSON object"
// ({"type": "json_object"}) compiled to grammar rules (grammar.h), so that constrained decoding
// lets the model write only documents the schema accepts.
//
// The subset (anything else is refused with invalid_argument naming the schema location as a
// JSON pointer and the keyword, e.g. "response_format schema at /properties/age: 'multipleOf'
// is not supported"; a user should learn that a constraint would not be enforced):
//   type          string, number, integer, boolean, null, object, array, or a list of them.
//                 Without type, the type follows from the other keywords (properties: object,
//                 items: array, minLength: string...); with none of those, any JSON value.
//   object        properties, required, additionalProperties. Only the declared properties are
//                 written, in the schema's order, whether additionalProperties is false, true or
//                 absent (documents without extra keys are valid under all three); required ones
//                 always, optional ones may be left out. A required name must be declared. With
//                 no properties: additionalProperties false is {}, a schema gives a map of it,
//                 true or absent any JSON object.
//   array         items (one schema), minItems, maxItems (each at most max_items_expansion);
//                 uniqueItems false. prefixItems and uniqueItems true are refused.
//   string        minLength, maxLength (in characters, at most max_items_expansion; such a string is
//                 written in the Basic Multilingual Plane only, where code points and JavaScript's
//                 UTF-16 units count alike, so zod's .max() agrees), format date
//                 (YYYY-MM-DD, a real day of the month; Feb 29 in leap years only), time and
//                 date-time (RFC 3339, upper-case T and Z, fractions up to 9 digits, second 60
//                 allowed), uuid. Other formats and pattern are refused.
//   number        a JSON number of at most 16 integer digits, 16 fraction digits and a 2-digit
//                 exponent (always a finite double: 1e999 is refused by parsers); integer: -?(0|[1-9][0-9]{0,15}). minimum, maximum, exclusiveMinimum,
//                 exclusiveMaximum and multipleOf are refused.
//   enum, const   any JSON values, written as their compact JSON text (nlohmann's dump()); with
//                 type, the values of other types are dropped. No other constraint beside them.
//   anyOf         alternatives. oneOf is refused: a grammar cannot enforce "exactly one".
//   allOf         a single schema only (Pydantic wraps $ref in it).
//   $ref          "#/$defs/NAME" or "#/definitions/NAME", resolved from the root; recursive
//                 definitions (a tree) work.
//   nullable      true adds null (OpenAPI 3.0's form).
//   ignored       title, description, default, examples, $schema, $id, $comment, strict,
//                 deprecated, readOnly, writeOnly; $defs and definitions hold what $ref names.
// $ref, anyOf and allOf take no other constraint beside them (only annotations and nullable).
//
// Whitespace: none before or after the document; between its tokens nothing, one space, or a
// newline and up to 20 spaces or tabs (bounded, so the model cannot pad forever).
//
// Property order: nlohmann::json keeps object keys sorted, so a schema held in one writes its
// properties in alphabetical order. The ordered_json overloads keep the order the request gave
// (what OpenAI does; it matters when a schema puts "reasoning" before "answer").
#pragma once

#include <nlohmann/json_fwd.hpp>

#include "common/status.h"
#include "text/grammar/grammar.h"

namespace shoal {

struct JsonSchemaLimits {
  int max_depth = 64;               // schema nesting (each $ref followed counts one), enum values' depth
  int max_rules = 20000;            // grammar rules one schema may add
  int max_enum = 1024;              // values of one enum
  int max_items_expansion = 256;    // minItems, maxItems, minLength, maxLength
};

// Adds rules matching the JSON documents valid against `schema` to b (a subset of them: see
// above); returns the document's rule. The caller defines the root with it. On an error b holds
// unused rules and should be dropped.
StatusOr<GrammarBuilder::Rule> add_json_schema(GrammarBuilder& b, const nlohmann::json& schema,
                                               const JsonSchemaLimits& limits = {});
StatusOr<GrammarBuilder::Rule> add_json_schema(GrammarBuilder& b, const nlohmann::ordered_json& schema,
                                               const JsonSchemaLimits& limits = {});

// Any JSON object, nesting unbounded (recursion).
GrammarBuilder::Rule add_json_object(GrammarBuilder& b);

// A whole grammar whose root is the schema's document.
StatusOr<Grammar> json_schema_grammar(const nlohmann::json& schema, const JsonSchemaLimits& limits = {});
StatusOr<Grammar> json_schema_grammar(const nlohmann::ordered_json& schema, const JsonSchemaLimits& limits = {});

}  // namespace shoal
