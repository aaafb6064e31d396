// The JSON-schema compiler (json_schema.h). JsonRules makes the rules of JSON text that schemas
// share, each once per builder use: whitespace, strings, numbers, formats, any value. The
// SchemaCompiler walks a schema and makes a rule per schema location out of them; $ref targets
// are declared before they are compiled, so recursive definitions refer to themselves.
#include "text/grammar/json_schema.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string_view>

namespace shoal {
namespace {

using G = GrammarBuilder;
using Rule = GrammarBuilder::Rule;
using Seq = GrammarBuilder::Seq;

// Bounds on what the model may write, so that output cannot run away.
constexpr int kIntDigits = 16, kFracDigits = 16, kExpDigits = 2, kTimeFracDigits = 9, kIndent = 20;

Seq bytes(uint8_t lo, uint8_t hi) { return G::bytes(byte_range(lo, hi)); }
Seq bytes(std::string_view chars) { return G::bytes(byte_of(chars)); }
Seq digit() { return bytes('0', '9'); }
Seq hex() { return bytes("0123456789abcdefABCDEF"); }
Seq times(const Seq& item, int n) {
  Seq s;
  for (int i = 0; i < n; ++i) s += item;
  return s;
}

class JsonRules {
 public:
  explicit JsonRules(GrammarBuilder& b) : b_(b) {}

  GrammarBuilder& builder() { return b_; }
  int made() const { return made_; }  // rules made so far (the budget)
  Rule make(std::string name, std::vector<Seq> alternatives) {
    ++made_;
    return b_.rule(std::move(name), std::move(alternatives));
  }
  Rule declare(std::string name) {
    ++made_;
    return b_.declare(std::move(name));
  }

  // min..max copies of item (max < 0: no bound). The optional copies are a chain of rules
  // (up to k: "" | item, up to k-1) or a star, shared by key, which must name the item.
  Seq repeat(const std::string& key, const Seq& item, int min, int max) {
    Seq s = times(item, min);
    if (max >= 0) return s + up_to(key, item, max - min);
    auto [it, fresh] = stars_.try_emplace(key, 0);
    if (fresh) {
      ++made_;
      it->second = b_.star(key + "*", item);
    }
    return s + G::ref(it->second);
  }

  // Between two tokens: nothing, a space, or a newline and an indent of up to 20 spaces or tabs.
  Seq ws() {
    if (!ws_) ws_ = make("ws", {G::empty(), G::lit(" "), G::lit("\n") + up_to("indent", bytes(" \t"), kIndent)});
    return G::ref(*ws_);
  }

  // One character of a JSON string: valid UTF-8 (no overlong forms, no surrogates, nothing past
  // U+10FFFF) other than '"', '\' and controls, or an escape; \u escapes of surrogates only as a
  // high-low pair (nlohmann and most parsers refuse a lone one).
  Rule character() {
    if (char_) return *char_;
    std::vector<Seq> alts = bmp_alternatives();
    const Seq c = bytes(0x80, 0xbf), u = G::lit("\\u");
    alts.push_back(bytes(0xf0, 0xf0) + bytes(0x90, 0xbf) + c + c);
    alts.push_back(bytes(0xf1, 0xf3) + c + c + c);
    alts.push_back(bytes(0xf4, 0xf4) + bytes(0x80, 0x8f) + c + c);
    alts.push_back(u + bytes("dD") + bytes("89abAB") + hex() + hex() + u + bytes("dD") + bytes("cdefCDEF") + hex() + hex());
    char_ = make("char", std::move(alts));
    return *char_;
  }
  // One character of the Basic Multilingual Plane (no 4-byte UTF-8, no surrogate pair): what a
  // string with minLength/maxLength is written with, so that its length is the same counted in
  // code points (JSON Schema, Python) and in UTF-16 units (JavaScript: zod's .max()).
  Rule bmp_character() {
    if (!bmp_char_) bmp_char_ = make("bmp-char", bmp_alternatives());
    return *bmp_char_;
  }
  std::vector<Seq> bmp_alternatives() {
    ByteSet plain = byte_range(0x20, 0x7f);
    plain.reset('"');
    plain.reset('\\');
    const Seq c = bytes(0x80, 0xbf), u = G::lit("\\u");
    return {G::bytes(plain),
            bytes(0xc2, 0xdf) + c,
            bytes(0xe0, 0xe0) + bytes(0xa0, 0xbf) + c,
            bytes(0xe1, 0xec) + c + c,
            bytes(0xed, 0xed) + bytes(0x80, 0x9f) + c,
            bytes(0xee, 0xef) + c + c,
            G::lit("\\") + bytes("\"\\/bfnrt"),
            u + bytes("0123456789abcefABCEF") + hex() + hex() + hex(),
            u + bytes("dD") + bytes('0', '7') + hex() + hex()};
  }

  Rule string() {
    if (!string_) string_ = string_of_length(0, -1);
    return *string_;
  }
  // A string of min..max characters (max < 0: no bound).
  Rule string_of_length(int min, int max) {
    const std::string name = "string{" + std::to_string(min) + "," + (max < 0 ? "" : std::to_string(max)) + "}";
    auto it = strings_.find(name);
    if (it != strings_.end()) return it->second;
    const bool bounded = min > 0 || max >= 0;
    const Rule ch = bounded ? bmp_character() : character();
    const Rule r = make(name, {G::lit("\"") + repeat(bounded ? "bmp-char" : "char", G::ref(ch), min, max) + G::lit("\"")});
    return strings_[name] = r;
  }

  // -?(0|[1-9][0-9]{0,15})
  Rule integer() {
    if (integer_) return *integer_;
    const Rule natural = make("natural", {G::lit("0"), bytes('1', '9') + up_to("digit", digit(), kIntDigits - 1)});
    return *(integer_ = make("integer", {G::ref(natural), G::lit("-") + G::ref(natural)}));
  }
  // integer (\.[0-9]{1,16})? ([eE][+-]?[0-9]{1,2})?: always a finite double (a 3-digit exponent
  // could overflow, and parsers such as nlohmann's refuse 1e999).
  Rule number() {
    if (number_) return *number_;
    const Rule frac = make("fraction", {G::empty(), G::lit(".") + digit() + up_to("digit", digit(), kFracDigits - 1)});
    const Rule sign = make("exponent-sign", {G::empty(), bytes("+-")});
    const Rule exp =
        make("exponent", {G::empty(), bytes("eE") + G::ref(sign) + digit() + up_to("digit", digit(), kExpDigits - 1)});
    return *(number_ = make("number", {G::ref(integer()) + G::ref(frac) + G::ref(exp)}));
  }
  Rule boolean() { return boolean_ ? *boolean_ : *(boolean_ = make("boolean", {G::lit("true"), G::lit("false")})); }
  Rule null() { return null_ ? *null_ : *(null_ = make("null", {G::lit("null")})); }

  // Any JSON value, and any JSON object, nesting unbounded.
  Rule value() {
    if (value_) return *value_;
    value_ = declare("value");
    object_ = object_of("object", *value_);
    const Rule array = array_of("array", *value_, 0, -1);
    b_.define(*value_, {G::ref(*object_), G::ref(array), G::ref(string()), G::ref(number()), G::ref(boolean()),
                        G::ref(null())});
    return *value_;
  }
  Rule any_object() {
    value();
    return *object_;
  }

  // An object of any keys whose values are `value`s.
  Rule object_of(const std::string& name, Rule value) {
    const Seq member = G::ref(string()) + ws() + G::lit(":") + ws() + G::ref(value);
    const Seq more = repeat("member:" + std::to_string(value), ws() + G::lit(",") + ws() + member, 0, -1);
    return make(name, {G::lit("{") + ws() + G::lit("}"), G::lit("{") + ws() + member + more + ws() + G::lit("}")});
  }
  // An array of min..max `item`s (max < 0: no bound).
  Rule array_of(const std::string& name, Rule item, int min, int max) {
    const Seq empty = G::lit("[") + ws() + G::lit("]");
    if (max == 0) return make(name, {empty});
    const Seq rest = repeat("item:" + std::to_string(item), ws() + G::lit(",") + ws() + G::ref(item),
                            std::max(min, 1) - 1, max < 0 ? -1 : max - 1);
    const Seq full = G::lit("[") + ws() + G::ref(item) + rest + ws() + G::lit("]");
    if (min == 0) return make(name, {empty, full});
    return make(name, {full});
  }

  // A string in one of the formats date, time, date-time, uuid; nullopt for another name.
  std::optional<Rule> format(std::string_view f) {
    std::optional<Rule> body;
    if (f == "date") body = date();
    else if (f == "time") body = time();
    else if (f == "date-time") body = make("date-time", {G::ref(date()) + G::lit("T") + G::ref(time())});
    else if (f == "uuid") {
      const Seq h4 = times(hex(), 4), d = G::lit("-");
      body = make("uuid", {h4 + h4 + d + h4 + d + h4 + d + h4 + d + h4 + h4 + h4});
    }
    if (!body) return std::nullopt;
    return make(std::string(f) + "-string", {G::lit("\"") + G::ref(*body) + G::lit("\"")});
  }

 private:
  // Up to n copies of item, shared by key (see repeat).
  Seq up_to(const std::string& key, const Seq& item, int n) {
    if (n <= 0) return G::empty();
    std::vector<Rule>& chain = chains_[key];  // chain[k]: up to k + 1 copies
    while (int(chain.size()) < n) {
      Seq more = item;
      if (!chain.empty()) more += G::ref(chain.back());
      const std::string name = key + "{0," + std::to_string(chain.size() + 1) + "}";
      chain.push_back(make(name, {G::empty(), more}));
    }
    return G::ref(chain[size_t(n - 1)]);
  }

  // YYYY-MM-DD, a day that month has (Feb 29 in leap years only).
  Rule date() {
    if (date_) return *date_;
    const Seq year = times(digit(), 4), d = G::lit("-");
    const Seq day28 = G::ref(make("day-28", {G::lit("0") + bytes('1', '9'), G::lit("1") + digit(), G::lit("2") + bytes('0', '8')}));
    const Seq day30 = G::ref(make("day-30", {G::lit("0") + bytes('1', '9'), bytes("12") + digit(), G::lit("30")}));
    const Seq day31 = G::ref(make("day-31", {G::lit("0") + bytes('1', '9'), bytes("12") + digit(), G::lit("3") + bytes("01")}));
    const Seq month30 = G::ref(make("month-30", {G::lit("0") + bytes("469"), G::lit("11")}));
    const Seq month31 = G::ref(make("month-31", {G::lit("0") + bytes("13578"), G::lit("1") + bytes("02")}));
    // Divisible by 4 and not by 100, or by 400.
    const Seq by4 = G::ref(make("by-4", {bytes("02468") + bytes("048"), bytes("13579") + bytes("26")}));
    const Seq leap = G::ref(make("leap-year", {digit() + digit() + G::lit("0") + bytes("48"),
                                               digit() + digit() + bytes("2468") + bytes("048"),
                                               digit() + digit() + bytes("13579") + bytes("26"), by4 + G::lit("00")}));
    return *(date_ = make("date", {year + d + month31 + d + day31, year + d + month30 + d + day30,
                                   year + G::lit("-02-") + day28, leap + G::lit("-02-29")}));
  }

  // HH:MM:SS(.fraction)?(Z|[+-]HH:MM), RFC 3339's full-time.
  Rule time() {
    if (time_) return *time_;
    const Seq hour = G::ref(make("hour", {bytes("01") + digit(), G::lit("2") + bytes('0', '3')}));
    const Seq minute = bytes('0', '5') + digit(), c = G::lit(":");
    const Seq second = G::ref(make("second", {bytes('0', '5') + digit(), G::lit("60")}));
    const Seq frac = G::ref(make("second-fraction", {G::empty(), G::lit(".") + digit() + up_to("digit", digit(), kTimeFracDigits - 1)}));
    const Seq offset = G::ref(make("time-offset", {G::lit("Z"), bytes("+-") + hour + c + minute}));
    return *(time_ = make("time", {hour + c + minute + c + second + frac + offset}));
  }

  GrammarBuilder& b_;
  int made_ = 0;
  std::optional<Rule> ws_, char_, bmp_char_, string_, integer_, number_, boolean_, null_, value_, object_, date_, time_;
  std::map<std::string, std::vector<Rule>> chains_;
  std::map<std::string, Rule> stars_, strings_;
};

// Keywords that say nothing about the document (or hold what $ref names).
bool is_annotation(std::string_view k) {
  static const std::set<std::string_view> kAnnotations = {
      "title",  "description", "default",  "examples", "$schema", "$id",  "$comment",
      "strict", "deprecated",  "readOnly", "writeOnly", "$defs",  "definitions"};
  return kAnnotations.count(k) != 0;
}
bool is_supported(std::string_view k) {
  static const std::set<std::string_view> kSupported = {
      "type",     "enum",     "const",       "anyOf",     "allOf",     "$ref",     "nullable",
      "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "uniqueItems",
      "minLength", "maxLength", "format"};
  return kSupported.count(k) != 0;
}

// The JSON types, as bits of a set.
enum TypeBit : unsigned { kString = 1, kNumber = 2, kInteger = 4, kBoolean = 8, kNull = 16, kObject = 32, kArray = 64 };
unsigned type_bit(std::string_view t) {
  if (t == "string") return kString;
  if (t == "number") return kNumber;
  if (t == "integer") return kInteger;
  if (t == "boolean") return kBoolean;
  if (t == "null") return kNull;
  if (t == "object") return kObject;
  return t == "array" ? unsigned(kArray) : 0u;
}

template <class Json>
bool has_type(const Json& v, unsigned types) {
  const bool integral = v.is_number_integer() ||
                        (v.is_number_float() && std::floor(v.template get<double>()) == v.template get<double>());
  return ((types & kString) && v.is_string()) || ((types & kNumber) && v.is_number()) ||
         ((types & kInteger) && integral) || ((types & kBoolean) && v.is_boolean()) ||
         ((types & kNull) && v.is_null()) || ((types & kObject) && v.is_object()) || ((types & kArray) && v.is_array());
}

template <class Json>
bool deeper_than(const Json& v, int levels) {
  if (!v.is_structured()) return false;
  if (levels <= 0) return true;
  for (const Json& e : v)
    if (deeper_than(e, levels - 1)) return true;
  return false;
}

// Pieces of an error message: text, numbers, and User text from the schema (clipped to 80 bytes
// at a UTF-8 character boundary).
struct User {
  std::string_view text;
};
void append(std::string& out, std::string_view s) { out += s; }
void append(std::string& out, int n) { out += std::to_string(n); }
void append(std::string& out, User u) {
  if (u.text.size() <= 80) {
    out += u.text;
    return;
  }
  size_t n = 80;
  while (n > 0 && (uint8_t(u.text[n]) & 0xc0) == 0x80) --n;
  out += u.text.substr(0, n);
  out += "...";
}

// An invalid_argument naming the schema location. Messages and paths are built out of line: the
// compiler recurses once per schema level, and their temporaries in every frame overflowed the
// fuzzer's 256 KiB stack under ASan.
template <class... Parts>
[[gnu::noinline]] Status fail(const std::string& path, const Parts&... parts) {
  std::string m = "response_format schema at ";
  m += path.empty() ? std::string_view("/") : std::string_view(path);
  m += ": ";
  (append(m, parts), ...);
  return invalid_argument(std::move(m));
}

[[gnu::noinline]] Status refuse(const std::string& path, const std::string& k) {
  if (k == "oneOf")
    return fail(path, "'oneOf' is not supported (a grammar cannot enforce that exactly one alternative matches; anyOf is supported)");
  if (k == "minimum" || k == "maximum" || k == "exclusiveMinimum" || k == "exclusiveMaximum" || k == "multipleOf")
    return fail(path, "'", k, "' is not supported (number values are not constrained)");
  if (k == "pattern" || k == "patternProperties")
    return fail(path, "'", k, "' is not supported (regular expressions are not enforced)");
  return fail(path, "'", User{k}, "' is not supported");
}

// path + "/" + keyword (+ "/" + a JSON pointer token, RFC 6901, clipped).
[[gnu::noinline]] std::string child_path(const std::string& path, std::string_view keyword, std::string_view token = {}) {
  std::string out = path + "/";
  out += keyword;
  if (token.data() == nullptr) return out;
  std::string clipped;
  append(clipped, User{token});
  out += "/";
  for (char ch : clipped) {
    if (ch == '~') out += "~0";
    else if (ch == '/') out += "~1";
    else out += ch;
  }
  return out;
}
[[gnu::noinline]] std::string child_path(const std::string& path, std::string_view keyword, size_t index) {
  return child_path(path, keyword, std::to_string(index));
}
// A rule's name: the schema location.
[[gnu::noinline]] std::string rule_name(const std::string& path, std::string_view suffix = {}) {
  std::string out = "schema" + path;
  out += suffix;
  return out;
}

template <class Json>
class SchemaCompiler {
 public:
  SchemaCompiler(GrammarBuilder& b, const Json& root, const JsonSchemaLimits& limits)
      : rules_(b), root_(root), limits_(limits) {}

  // The rule of the schema s found at `path` (a JSON pointer), `depth` schemas deep.
  //
  // The functions on this recursion (compile, compile_shape, compile_object, add_property...)
  // keep small frames: checks, messages and rule building are out of line. Under ASan every
  // local and temporary of a function gets its own slot: with all of it inline a level took
  // 4 KB, and 64 levels overflowed the fuzzer's 256 KiB stack; now about 3 KB.
  [[gnu::noinline]] StatusOr<Rule> compile(const Json& s, const std::string& path, int depth) {
    Shape shape;
    SHOAL_RETURN_IF_ERROR(check_schema(s, path, depth, &shape));
    return finish(compile_shape(shape, s, path, depth), path, shape.nullable);
  }

 private:
  // What check_schema found a schema to be: the keyword that makes its rule, or its types.
  struct Shape {
    enum Kind { kRef, kAllOf, kAnyOf, kEnum, kTyped } kind = kTyped;
    const Json* value = nullptr;  // of $ref, allOf or anyOf
    unsigned types = 0;           // TypeBits (kEnum: to keep; kTyped: 0 is any value)
    bool nullable = false;
  };

  // The depth; a boolean schema true (any value); every keyword known; $ref, anyOf and allOf
  // alone; enum and const with type only. Then the shape.
  [[gnu::noinline]] Status check_schema(const Json& s, const std::string& path, int depth, Shape* shape) {
    if (depth > limits_.max_depth) return fail(path, "the schema nests deeper than ", limits_.max_depth, " levels");
    if (s.is_boolean()) {
      if (s.template get<bool>()) return Status::ok_status();
      return fail(path, "the schema false accepts no value");
    }
    SHOAL_RETURN_IF_ERROR(check_keywords(s, path, &shape->nullable));
    for (auto [keyword, kind] : {std::pair{"$ref", Shape::kRef}, {"allOf", Shape::kAllOf}, {"anyOf", Shape::kAnyOf}})
      if (auto v = s.find(keyword); v != s.end()) {
        shape->kind = kind;
        shape->value = &*v;
        return Status::ok_status();
      }
    if (s.contains("enum") || s.contains("const")) shape->kind = Shape::kEnum;
    return type_set(s, path, &shape->types);
  }

  [[gnu::noinline]] Status check_keywords(const Json& s, const std::string& path, bool* nullable) {
    if (!s.is_object()) return fail(path, "a schema must be an object or a boolean");
    std::vector<std::string_view> constraints;
    for (auto it = s.begin(); it != s.end(); ++it) {
      if (is_annotation(it.key()) || it.key() == "nullable") continue;
      if (!is_supported(it.key())) return refuse(path, it.key());
      constraints.push_back(it.key());
    }
    for (std::string_view k : constraints) {
      const bool alone = k == "$ref" || k == "anyOf" || k == "allOf";
      const bool with_type = k == "enum" || k == "const";
      for (std::string_view other : constraints)
        if (other != k && (alone || (with_type && other != "type" && other != "enum" && other != "const")))
          return fail(path, "'", k, "' together with '", other, "' is not supported");
    }
    if (auto n = s.find("nullable"); n != s.end()) {
      if (!n->is_boolean()) return fail(path, "'nullable' must be a boolean");
      *nullable = n->template get<bool>();
    }
    return Status::ok_status();
  }

  // The rule made nullable when asked; the rule budget checked.
  [[gnu::noinline]] StatusOr<Rule> finish(StatusOr<Rule>&& r, const std::string& path, bool nullable) {
    if (!r.ok()) return std::move(r);
    Rule out = r.value();
    if (nullable) out = rules_.make(rule_name(path, "|null"), {G::ref(out), G::ref(rules_.null())});
    if (rules_.made() > limits_.max_rules)
      return fail(path, "the schema needs more than ", limits_.max_rules, " grammar rules");
    return out;
  }

  [[gnu::noinline]] StatusOr<Rule> compile_shape(const Shape& shape, const Json& s, const std::string& path, int depth) {
    switch (shape.kind) {
      case Shape::kRef: return compile_ref(*shape.value, path, depth);
      case Shape::kAllOf: return compile_all_of(*shape.value, path, depth);
      case Shape::kAnyOf: return compile_any_of(*shape.value, path, depth);
      case Shape::kEnum: return compile_enum(s, shape.types, path);
      case Shape::kTyped: break;
    }
    if ((shape.types & (shape.types - 1)) == 0) return compile_type(shape.types, s, path, depth);  // any value, or one
    return compile_types(shape.types, s, path, depth);
  }

  // A list of types: one alternative each.
  [[gnu::noinline]] StatusOr<Rule> compile_types(unsigned types, const Json& s, const std::string& path, int depth) {
    std::vector<Seq> alternatives;
    for (unsigned bit = 1; bit <= kArray; bit <<= 1) {
      if (!(types & bit)) continue;
      SHOAL_ASSIGN_OR_RETURN(Rule r, compile_type(bit, s, path, depth));
      alternatives.push_back(G::ref(r));
    }
    return rules_.make(rule_name(path), std::move(alternatives));
  }

  [[gnu::noinline]] StatusOr<Rule> compile_all_of(const Json& all, const std::string& path, int depth) {
    if (!all.is_array() || all.size() != 1) return fail(path, "'allOf' is supported with exactly one schema only");
    return compile(all[0], child_path(path, "allOf", size_t(0)), depth + 1);
  }

  [[gnu::noinline]] StatusOr<Rule> compile_any_of(const Json& any, const std::string& path, int depth) {
    if (!any.is_array() || any.empty()) return fail(path, "'anyOf' must be a non-empty list of schemas");
    std::vector<Seq> alternatives;
    for (size_t i = 0; i < any.size(); ++i) {
      SHOAL_ASSIGN_OR_RETURN(Rule r, compile(any[i], child_path(path, "anyOf", i), depth + 1));
      alternatives.push_back(G::ref(r));
    }
    return rules_.make(rule_name(path), std::move(alternatives));
  }

  // The types `type` names, or those the keywords imply without it; none: any value.
  [[gnu::noinline]] Status type_set(const Json& s, const std::string& path, unsigned* types) {
    auto t = s.find("type");
    if (t == s.end()) {
      if (s.contains("enum") || s.contains("const")) return Status::ok_status();
      if (s.contains("properties") || s.contains("required") || s.contains("additionalProperties")) *types |= kObject;
      if (s.contains("items") || s.contains("minItems") || s.contains("maxItems") || s.contains("uniqueItems"))
        *types |= kArray;
      if (s.contains("minLength") || s.contains("maxLength") || s.contains("format")) *types |= kString;
      return Status::ok_status();
    }
    const bool list = t->is_array();
    if (list ? t->empty() : !t->is_string()) return fail(path, "'type' must be a type name or a non-empty list of them");
    for (size_t i = 0; i < (list ? t->size() : 1); ++i) {  // (no copy: a value may nest deep)
      const Json& e = list ? (*t)[i] : *t;
      if (!e.is_string()) return fail(path, "'type' must be a type name or a non-empty list of them");
      const std::string& n = e.template get_ref<const std::string&>();
      if (!type_bit(n)) return fail(path, "'type' \"", User{n}, "\" is not a JSON schema type");
      *types |= type_bit(n);
    }
    return Status::ok_status();
  }

  // One type (a TypeBit), or none: any value.
  StatusOr<Rule> compile_type(unsigned type, const Json& s, const std::string& path, int depth) {
    switch (type) {
      case kString: return compile_string(s, path);
      case kNumber: return rules_.number();
      case kInteger: return rules_.integer();
      case kBoolean: return rules_.boolean();
      case kNull: return rules_.null();
      case kObject: return compile_object(s, path, depth);
      case kArray: return compile_array(s, path, depth);
      default: return rules_.value();
    }
  }

  // A count keyword (minItems...): absent leaves *out; at most max_items_expansion.
  [[gnu::noinline]] Status count(const Json& s, const char* k, const std::string& path, int* out) {
    auto v = s.find(k);
    if (v == s.end()) return Status::ok_status();
    if (!v->is_number() || v->template get<double>() < 0 || std::floor(v->template get<double>()) != v->template get<double>())
      return fail(path, "'", k, "' must be a non-negative integer");
    if (v->template get<double>() > limits_.max_items_expansion)
      return fail(path, "'", k, "' over ", limits_.max_items_expansion, " is not supported");
    *out = v->template get<int>();
    return Status::ok_status();
  }

  [[gnu::noinline]] StatusOr<Rule> compile_enum(const Json& s, unsigned types, const std::string& path) {
    std::vector<const Json*> values;
    auto e = s.find("enum"), c = s.find("const");
    if (e != s.end()) {
      if (!e->is_array()) return fail(path, "'enum' must be a list of values");
      if (int64_t(e->size()) > limits_.max_enum)
        return fail(path, "'enum' of more than ", limits_.max_enum, " values is not supported");
      for (const Json& v : *e) values.push_back(&v);
    }
    for (const Json* v : {e != s.end() ? &*e : nullptr, c != s.end() ? &*c : nullptr})  // before ==, dump()
      if (v && deeper_than(*v, limits_.max_depth + 1))
        return fail(path, "an 'enum' or 'const' value nests deeper than ", limits_.max_depth, " levels");
    if (e == s.end()) values.push_back(&*c);
    std::vector<Seq> alternatives;
    for (const Json* v : values) {
      if ((types != 0 && !has_type(*v, types)) || (e != s.end() && c != s.end() && *v != *c)) continue;
      try {
        alternatives.push_back(G::lit(v->dump(-1, ' ', false, Json::error_handler_t::strict)));
      } catch (const std::exception&) {
        return fail(path, "an 'enum' or 'const' value is not valid UTF-8");
      }
    }
    if (alternatives.empty()) return fail(path, "no value of 'enum' or 'const' is possible (the schema accepts nothing)");
    return rules_.make(rule_name(path), std::move(alternatives));
  }

  // "#/$defs/NAME" or "#/definitions/NAME": the definition and its location.
  [[gnu::noinline]] StatusOr<std::pair<const Json*, std::string>> resolve(const Json& ref, const std::string& path) {
    if (!ref.is_string()) return fail(path, "'$ref' must be a string");
    const std::string& r = ref.template get_ref<const std::string&>();
    std::string container, token;
    for (const char* prefix : {"#/$defs/", "#/definitions/"}) {
      const std::string_view p(prefix);
      if (r.starts_with(p) && r.size() > p.size() && r.find('/', p.size()) == std::string::npos) {
        container = std::string(p.substr(2, p.size() - 3));
        token = r.substr(p.size());
      }
    }
    if (container.empty())
      return fail(path, "'$ref' \"", User{r}, "\" is not supported (only #/$defs/NAME and #/definitions/NAME are)");
    std::string key;  // the token unescaped (RFC 6901)
    for (size_t i = 0; i < token.size(); ++i) {
      if (token[i] == '~' && i + 1 < token.size() && (token[i + 1] == '0' || token[i + 1] == '1')) {
        key += token[++i] == '0' ? '~' : '/';
      } else {
        key += token[i];
      }
    }
    auto defs = root_.is_object() ? root_.find(container) : root_.end();
    if (defs == root_.end() || !defs->is_object() || !defs->contains(key))
      return fail(path, "'$ref' \"", User{r}, "\" names no definition");
    return std::pair<const Json*, std::string>(&defs->at(key), child_path("", container, key));
  }

  // Each $ref's rule is declared before its definition is compiled: recursion refers to it.
  [[gnu::noinline]] StatusOr<Rule> compile_ref(const Json& ref, const std::string& path, int depth) {
    if (ref.is_string())
      if (auto it = refs_.find(ref.template get_ref<const std::string&>()); it != refs_.end()) return it->second;
    const StatusOr<std::pair<const Json*, std::string>> def = resolve(ref, path);
    if (!def.ok()) return def.status();
    const Rule declared = declare_ref(ref.template get_ref<const std::string&>(), def->second);
    const StatusOr<Rule> body = compile(*def->first, def->second, depth + 1);
    if (!body.ok()) return body;
    define_ref(declared, body.value());
    return declared;
  }
  [[gnu::noinline]] Rule declare_ref(const std::string& ref, const std::string& def_path) {
    const Rule declared = rules_.declare(rule_name(def_path));
    refs_.emplace(ref, declared);
    return declared;
  }
  [[gnu::noinline]] void define_ref(Rule declared, Rule body) { rules_.builder().define(declared, {G::ref(body)}); }

  [[gnu::noinline]] StatusOr<Rule> compile_string(const Json& s, const std::string& path) {
    int min = 0, max = -1;
    SHOAL_RETURN_IF_ERROR(count(s, "minLength", path, &min));
    SHOAL_RETURN_IF_ERROR(count(s, "maxLength", path, &max));
    if (auto f = s.find("format"); f != s.end()) {
      if (!f->is_string()) return fail(path, "'format' must be a string");
      if (s.contains("minLength") || s.contains("maxLength"))
        return fail(path, "'minLength' and 'maxLength' are not supported together with 'format'");
      const std::string& name = f->template get_ref<const std::string&>();
      if (std::optional<Rule> r = rules_.format(name)) return *r;
      return fail(path, "'format' \"", User{name}, "\" is not supported (date, time, date-time and uuid are)");
    }
    if (max >= 0 && min > max) return fail(path, "'minLength' is over 'maxLength' (the schema accepts nothing)");
    return rules_.string_of_length(min, max);
  }

  // minItems, maxItems (-1: none) and uniqueItems checked.
  [[gnu::noinline]] Status check_array(const Json& s, const std::string& path, int* min, int* max) {
    SHOAL_RETURN_IF_ERROR(count(s, "minItems", path, min));
    SHOAL_RETURN_IF_ERROR(count(s, "maxItems", path, max));
    if (auto u = s.find("uniqueItems"); u != s.end()) {
      if (!u->is_boolean()) return fail(path, "'uniqueItems' must be a boolean");
      if (u->template get<bool>()) return fail(path, "'uniqueItems' true is not supported");
    }
    auto items = s.find("items");
    if (items != s.end() && items->is_array()) return fail(path, "'items' as a list of schemas (tuples) is not supported");
    if (items != s.end() && items->is_boolean() && !items->template get<bool>()) *max = 0;  // no item is valid
    if (*max >= 0 && *min > *max) return fail(path, "'minItems' is over 'maxItems' (the schema accepts nothing)");
    return Status::ok_status();
  }

  [[gnu::noinline]] StatusOr<Rule> compile_array(const Json& s, const std::string& path, int depth) {
    int min = 0, max = -1;
    SHOAL_RETURN_IF_ERROR(check_array(s, path, &min, &max));
    auto items = s.find("items");
    if (max == 0 || items == s.end()) return array_rule(path, max == 0 ? 0 : rules_.value(), min, max);
    const StatusOr<Rule> item = compile(*items, child_path(path, "items"), depth + 1);
    if (!item.ok()) return item;
    return array_rule(path, item.value(), min, max);
  }
  [[gnu::noinline]] Rule array_rule(const std::string& path, Rule item, int min, int max) {
    return rules_.array_of(rule_name(path), item, min, max);
  }

  // properties, required (each declared) and additionalProperties checked.
  [[gnu::noinline]] Status check_object(const Json& s, const std::string& path, std::set<std::string>* required) {
    auto props = s.find("properties"), req = s.find("required"), extra = s.find("additionalProperties");
    if (props != s.end() && !props->is_object()) return fail(path, "'properties' must be an object of schemas");
    if (extra != s.end() && !extra->is_boolean() && !extra->is_object())
      return fail(path, "'additionalProperties' must be a boolean or a schema");
    if (req == s.end()) return Status::ok_status();
    if (!req->is_array()) return fail(path, "'required' must be a list of property names");
    for (const Json& n : *req) {
      if (!n.is_string()) return fail(path, "'required' must be a list of property names");
      const std::string& k = n.template get_ref<const std::string&>();
      if (props == s.end() || !props->contains(k))
        return fail(path, "'required' names \"", User{k}, "\", which is not in 'properties'");
      required->insert(k);
    }
    return Status::ok_status();
  }

  // An object without properties: additionalProperties absent or true: any object; false: {};
  // a schema: a map of it.
  [[gnu::noinline]] StatusOr<Rule> compile_open_object(const Json& s, const std::string& path, int depth) {
    auto extra = s.find("additionalProperties");
    if (extra == s.end() || (extra->is_boolean() && extra->template get<bool>())) return rules_.any_object();
    if (extra->is_boolean()) return empty_object(path);
    const StatusOr<Rule> value = compile(*extra, child_path(path, "additionalProperties"), depth + 1);
    if (!value.ok()) return value;
    return map_object(path, value.value());
  }
  [[gnu::noinline]] Rule empty_object(const std::string& path) {
    return rules_.make(rule_name(path), {G::lit("{") + rules_.ws() + G::lit("}")});
  }
  [[gnu::noinline]] Rule map_object(const std::string& path, Rule value) { return rules_.object_of(rule_name(path), value); }

  struct Property {
    Seq member;  // "key" ws : ws value
    bool required;
  };

  [[gnu::noinline]] StatusOr<Rule> compile_object(const Json& s, const std::string& path, int depth) {
    std::set<std::string> required;
    SHOAL_RETURN_IF_ERROR(check_object(s, path, &required));
    auto props = s.find("properties");
    if (props == s.end() || props->empty()) return compile_open_object(s, path, depth);
    // Only the declared properties are written, also when additionalProperties is true or absent:
    // such documents are valid either way, and the model keeps to the keys the schema names.
    std::vector<Property> list;
    for (auto it = props->begin(); it != props->end(); ++it)
      SHOAL_RETURN_IF_ERROR(add_property(it.key(), it.value(), required.count(it.key()) != 0, path, depth, list));
    return declared_object(path, list);
  }

  // Property `key` of the object at path, unless its schema is false (never written).
  [[gnu::noinline]] Status add_property(const std::string& key, const Json& schema, bool required,
                                        const std::string& path, int depth, std::vector<Property>& list) {
    if (schema.is_boolean() && !schema.template get<bool>() && !required) return Status::ok_status();
    const StatusOr<Rule> value = compile(schema, child_path(path, "properties", key), depth + 1);
    if (!value.ok()) return value.status();
    return add_member(key, value.value(), required, path, list);
  }
  [[gnu::noinline]] Status add_member(const std::string& key, Rule value, bool required, const std::string& path,
                                      std::vector<Property>& list) {
    std::string text;
    try {
      text = Json(key).dump(-1, ' ', false, Json::error_handler_t::strict);
    } catch (const std::exception&) {
      return fail(path, "a property name is not valid UTF-8");
    }
    list.push_back({G::lit(text) + rules_.ws() + G::lit(":") + rules_.ws() + G::ref(value), required});
    return Status::ok_status();
  }

  // The properties in order, the optional ones skippable. Rule item[j] is property j and what
  // may follow it: "," and the next property, or also the end when no required one follows. The
  // next property from l is the next required one r, or any optional one in [l, r); those come
  // from a segment tree over the properties (a rule per index range: either of its halves), so
  // that a choice is O(log n) rules deep (the matcher expands rules that write nothing
  // recursively: a chain of skips n long overflowed the fuzzer's stack) and the grammar O(n log n).
  [[gnu::noinline]] Rule declared_object(const std::string& path, const std::vector<Property>& list) {
    const std::string name = rule_name(path);
    const size_t n = list.size();
    const Seq open = G::lit("{") + rules_.ws(), close = rules_.ws() + G::lit("}");
    if (n == 0) return rules_.make(name, {open + G::lit("}")});
    std::vector<size_t> next_required(n + 1, n);
    for (size_t i = n; i-- > 0;) next_required[i] = list[i].required ? i : next_required[i + 1];
    std::vector<Rule> item(n);
    for (size_t j = 0; j < n; ++j) item[j] = rules_.declare(name + ":" + std::to_string(j));
    std::map<std::pair<size_t, size_t>, Rule> nodes;  // segment tree: any property in [lo, hi)
    auto node = [&](auto& self, size_t lo, size_t hi) -> Rule {
      if (hi - lo == 1) return item[lo];
      if (auto it = nodes.find({lo, hi}); it != nodes.end()) return it->second;
      const size_t mid = (lo + hi) / 2;
      const Rule r = rules_.make(name + ":" + std::to_string(lo) + ".." + std::to_string(hi - 1),
                                 {G::ref(self(self, lo, mid)), G::ref(self(self, mid, hi))});
      return nodes[{lo, hi}] = r;
    };
    auto cover = [&](auto& self, size_t lo, size_t hi, size_t l, size_t r, std::vector<Seq>& out) -> void {
      if (r <= lo || hi <= l) return;
      if (l <= lo && hi <= r) {
        out.push_back(G::ref(node(node, lo, hi)));
        return;
      }
      self(self, lo, (lo + hi) / 2, l, r, out);
      self(self, (lo + hi) / 2, hi, l, r, out);
    };
    auto choice = [&](size_t l) -> Seq {  // the next property from l
      std::vector<Seq> alts;
      cover(cover, 0, n, l, next_required[l], alts);
      if (next_required[l] < n) alts.push_back(G::ref(item[next_required[l]]));
      return alts.size() == 1 ? alts[0] : G::ref(rules_.make(name + ":from-" + std::to_string(l), std::move(alts)));
    };
    for (size_t j = 0; j < n; ++j) {
      if (j + 1 == n) {
        rules_.builder().define(item[j], {list[j].member});
        continue;
      }
      const Seq more = rules_.ws() + G::lit(",") + rules_.ws() + choice(j + 1);
      if (next_required[j + 1] < n) {
        rules_.builder().define(item[j], {list[j].member + more});
      } else {
        const Rule after = rules_.make(name + ":" + std::to_string(j) + "-after", {more, G::empty()});
        rules_.builder().define(item[j], {list[j].member + G::ref(after)});
      }
    }
    std::vector<Seq> alts = {open + choice(0) + close};
    if (next_required[0] == n) alts.push_back(open + G::lit("}"));
    return rules_.make(name, std::move(alts));
  }

  JsonRules rules_;
  const Json& root_;
  JsonSchemaLimits limits_;
  std::map<std::string, Rule> refs_;  // $ref -> its rule
};

template <class Json>
StatusOr<Rule> add_schema(GrammarBuilder& b, const Json& schema, const JsonSchemaLimits& limits) {
  try {
    SchemaCompiler<Json> compiler(b, schema, limits);
    return compiler.compile(schema, "", 0);
  } catch (const nlohmann::json::exception& e) {  // a bug: every access is checked first
    return invalid_argument(std::string("response_format schema: ") + e.what());
  }
}

template <class Json>
StatusOr<Grammar> schema_grammar(const Json& schema, const JsonSchemaLimits& limits) {
  GrammarBuilder b;
  SHOAL_ASSIGN_OR_RETURN(Rule r, add_schema(b, schema, limits));
  b.define(GrammarBuilder::root(), {GrammarBuilder::ref(r)});
  StatusOr<Grammar> g = std::move(b).build();
  if (!g.ok()) return invalid_argument("response_format schema: " + g.status().message());
  return g;
}

}  // namespace

StatusOr<GrammarBuilder::Rule> add_json_schema(GrammarBuilder& b, const nlohmann::json& schema, const JsonSchemaLimits& limits) {
  return add_schema(b, schema, limits);
}
StatusOr<GrammarBuilder::Rule> add_json_schema(GrammarBuilder& b, const nlohmann::ordered_json& schema,
                                               const JsonSchemaLimits& limits) {
  return add_schema(b, schema, limits);
}
GrammarBuilder::Rule add_json_object(GrammarBuilder& b) { return JsonRules(b).any_object(); }
StatusOr<Grammar> json_schema_grammar(const nlohmann::json& schema, const JsonSchemaLimits& limits) {
  return schema_grammar(schema, limits);
}
StatusOr<Grammar> json_schema_grammar(const nlohmann::ordered_json& schema, const JsonSchemaLimits& limits) {
  return schema_grammar(schema, limits);
}

}  // namespace shoal
