// Internals of the interpreter: tokens (lexer.cpp), the parsed tree (parser.cpp) that eval.cpp
// walks, and how errors name the template line.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "text/jinja/jinja.h"
#include "text/jinja/value.h"

namespace shoal::jinja {

// "chat template line 7: unknown filter 'foo'".
Status error_at(int line, const std::string& message, Code code = Code::kInvalidArgument);
// Adds the line to an error that does not name one yet (errors from values and builtins).
Status located(int line, const Status& s);
template <typename T>
StatusOr<T> at(int line, StatusOr<T> r) {
  if (!r.ok()) return located(line, r.status());
  return r;
}

struct Token {
  enum class Type { kText, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd, kName, kString, kInt, kFloat, kOp, kEnd };
  Type type;
  std::string text;  // text, name, decoded string literal, or operator
  int line = 1;
  int64_t int_value = 0;
  double float_value = 0;
};

// Splits the source into text and tags, applying Jinja2's whitespace control as transformers
// configures it (trim_blocks, lstrip_blocks, "-" and "+" modifiers); comments are dropped and
// {% raw %} bodies become text. Tag contents become expression tokens.
StatusOr<std::vector<Token>> tokenize(const std::string& source);

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    kConst,     // value
    kName,      // name
    kList,      // args: items
    kTuple,     // args: items
    kDict,      // args: key, value, key, value...
    kGetAttr,   // args[0].name
    kGetItem,   // args[0][args[1]]
    kSlice,     // args[0][args[1]:args[2]:args[3]], absent parts null
    kCall,      // args[0](args[1..], kwargs)
    kFilter,    // args[0] | name(args[1..], kwargs); args[0] null inside {% filter %} / {% set %}
    kTest,      // args[0] is name(args[1..], kwargs)
    kNeg,       // -args[0]
    kPos,       // +args[0]
    kNot,       // not args[0]
    kBinary,    // args[0] name args[1], name one of + - * / // % ** ~
    kAnd,       // args[0] and args[1]
    kOr,        // args[0] or args[1]
    kCompare,   // args[0] ops[0] args[1] ops[1] args[2]... (== != < <= > >= in notin)
    kCond,      // args[0] if args[1] else args[2] (args[2] null: undefined)
  };
  Kind kind;
  int line;
  Value value;
  std::string name;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;
};

using Node = Template::Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

struct Template::Node {
  enum class Kind {
    kBody,         // bodies[0]
    kText,         // text
    kPrint,        // {{ exprs[0] }}
    kIf,           // if exprs[i]: bodies[i]; bodies[n] (if present) is the else branch
    kFor,          // for targets in exprs[0] if exprs[1] (may be null): bodies[0], else bodies[1]
    kSet,          // targets = exprs[0]
    kSetAttr,      // targets[0].text = exprs[0]
    kSetBlock,     // targets = bodies[0] rendered, through the filters exprs
    kMacro,        // macro text(targets = defaults exprs, null for none): bodies[0]
    kBreak,
    kContinue,
    kFilterBlock,  // bodies[0] rendered, through the filters exprs
    kWith,         // with targets = exprs: bodies[0]
    kScope,        // bodies[0] (transformers' {% generation %})
  };
  Kind kind;
  int line;
  std::string text;
  std::vector<std::string> targets;
  bool unpack = false;  // targets came as a tuple (for a, b in ...)
  std::vector<ExprPtr> exprs;
  std::vector<Body> bodies;
};

StatusOr<std::shared_ptr<const Node>> parse_template(const std::string& source);

}  // namespace shoal::jinja
