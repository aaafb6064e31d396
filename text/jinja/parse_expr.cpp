// Expressions, one function per precedence level of jinja2/parser.py (3.1): conditional,
// or, and, not, comparisons, + -, ~, * / // %, ** (left-associative, as in Jinja), unary - +
// (whose operand takes no filter: -x|abs is (-x)|abs), then primaries with their postfixes
// (attribute, subscript, call) and filters / tests (one bare argument: x is divisibleby 3).
#include "text/jinja/builtins.h"
#include "text/jinja/parser.h"

namespace shoal::jinja {

using T = Token::Type;
using EK = Expr::Kind;

bool Parser::is_tuple_end(const std::vector<std::string_view>& extra) const {
  if (cur().type == T::kVarEnd || cur().type == T::kBlockEnd || is_op(")")) return true;
  return cur().type == T::kName && std::find(extra.begin(), extra.end(), cur().text) != extra.end();
}

StatusOr<ExprPtr> Parser::parse_tuple(bool simplified, bool with_condexpr, std::vector<std::string_view> extra,
                              bool explicit_parens) {
  int line = cur().line;
  std::vector<ExprPtr> items;
  bool is_tuple = false;
  while (true) {
    if (!items.empty()) SHOAL_RETURN_IF_ERROR(expect_op(","));
    if (is_tuple_end(extra)) break;
    StatusOr<ExprPtr> e = simplified ? parse_primary() : parse_expression(with_condexpr);
    if (!e.ok()) return e.status();
    items.push_back(std::move(e).value());
    if (!is_op(",")) break;
    is_tuple = true;
  }
  if (!is_tuple) {
    if (!items.empty()) return std::move(items[0]);
    if (!explicit_parens) return unexpected("an expression");
  }
  auto t = make_expr(EK::kTuple, line);
  t->args = std::move(items);
  return t;
}

StatusOr<ExprPtr> Parser::parse_expression(bool with_condexpr) {
  if (!with_condexpr) return parse_or();
  SHOAL_ASSIGN_OR_RETURN(ExprPtr then, parse_or());
  while (is_name("if")) {
    int line = cur().line;
    advance();
    SHOAL_ASSIGN_OR_RETURN(ExprPtr test, parse_or());
    ExprPtr otherwise;
    if (skip_name("else")) {
      SHOAL_ASSIGN_OR_RETURN(otherwise, parse_expression(true));
    }
    auto c = make_expr(EK::kCond, line);
    c->args.push_back(std::move(then));
    c->args.push_back(std::move(test));
    c->args.push_back(std::move(otherwise));
    then = std::move(c);
  }
  return then;
}

template <typename Next>
StatusOr<ExprPtr> Parser::parse_left_assoc(Next next, std::initializer_list<std::string_view> ops, bool names, EK kind) {
  SHOAL_ASSIGN_OR_RETURN(ExprPtr left, (this->*next)());
  Chain chain{this};  // a chain builds a tree as deep as it is long: each link is a level
  while (true) {
    std::string op;
    for (auto o : ops) {
      if (names ? is_name(o) : is_op(o)) op = o;
    }
    if (op.empty()) return left;
    int line = cur().line;
    SHOAL_RETURN_IF_ERROR(chain.link(line));
    advance();
    SHOAL_ASSIGN_OR_RETURN(ExprPtr right, (this->*next)());
    auto b = make_expr(kind, line);
    b->name = op;
    b->args.push_back(std::move(left));
    b->args.push_back(std::move(right));
    left = std::move(b);
  }
}

StatusOr<ExprPtr> Parser::parse_or() { return parse_left_assoc(&Parser::parse_and, {"or"}, true, EK::kOr); }

StatusOr<ExprPtr> Parser::parse_and() { return parse_left_assoc(&Parser::parse_not, {"and"}, true, EK::kAnd); }

StatusOr<ExprPtr> Parser::parse_not() {
  if (!is_name("not")) return parse_compare();
  int line = cur().line;
  SHOAL_RETURN_IF_ERROR(enter(line));
  Nest nest{this};
  advance();
  SHOAL_ASSIGN_OR_RETURN(ExprPtr operand, parse_not());
  auto n = make_expr(EK::kNot, line);
  n->args.push_back(std::move(operand));
  return n;
}

StatusOr<ExprPtr> Parser::parse_compare() {
  int line = cur().line;
  SHOAL_ASSIGN_OR_RETURN(ExprPtr first, parse_math1());
  auto cmp = make_expr(EK::kCompare, line);
  cmp->args.push_back(std::move(first));
  while (true) {
    std::string op;
    static const char* kOps[] = {"==", "!=", "<", "<=", ">", ">="};
    for (const char* o : kOps) {
      if (is_op(o)) op = o;
    }
    if (!op.empty()) {
      advance();
    } else if (skip_name("in")) {
      op = "in";
    } else if (is_name("not") && next_tok().type == T::kName && next_tok().text == "in") {
      advance();
      advance();
      op = "notin";
    } else {
      break;
    }
    SHOAL_ASSIGN_OR_RETURN(ExprPtr operand, parse_math1());
    cmp->ops.push_back(op);
    cmp->args.push_back(std::move(operand));
  }
  if (cmp->ops.empty()) return std::move(cmp->args[0]);
  return cmp;
}

StatusOr<ExprPtr> Parser::parse_math1() { return parse_left_assoc(&Parser::parse_concat, {"+", "-"}, false, EK::kBinary); }

StatusOr<ExprPtr> Parser::parse_concat() { return parse_left_assoc(&Parser::parse_math2, {"~"}, false, EK::kBinary); }

StatusOr<ExprPtr> Parser::parse_math2() {
  return parse_left_assoc(&Parser::parse_pow, {"*", "/", "//", "%"}, false, EK::kBinary);
}

StatusOr<ExprPtr> Parser::parse_pow() { return parse_left_assoc(&Parser::parse_unary_filtered, {"**"}, false, EK::kBinary); }

StatusOr<ExprPtr> Parser::parse_unary_filtered() { return parse_unary(true); }

StatusOr<ExprPtr> Parser::parse_unary(bool with_filter) {
  int line = cur().line;
  SHOAL_RETURN_IF_ERROR(enter(line));
  Nest nest{this};
  ExprPtr node;
  if (is_op("-") || is_op("+")) {
    EK kind = is_op("-") ? EK::kNeg : EK::kPos;
    advance();
    SHOAL_ASSIGN_OR_RETURN(ExprPtr operand, parse_unary(false));
    node = make_expr(kind, line);
    node->args.push_back(std::move(operand));
  } else {
    SHOAL_ASSIGN_OR_RETURN(node, parse_primary());
  }
  SHOAL_ASSIGN_OR_RETURN(node, parse_postfix(std::move(node)));
  if (with_filter) {
    SHOAL_ASSIGN_OR_RETURN(node, parse_filter_expr(std::move(node)));
  }
  return node;
}

StatusOr<ExprPtr> Parser::parse_primary() {
  const Token& t = cur();
  ExprPtr node = make_expr(EK::kConst, t.line);
  switch (t.type) {
    case T::kName:
      if (t.text == "true" || t.text == "True" || t.text == "false" || t.text == "False") {
        node->value = Value(t.text == "true" || t.text == "True");
      } else if (t.text == "none" || t.text == "None") {
        node->value = Value::none();
      } else {
        node->kind = EK::kName;
        node->name = t.text;
      }
      advance();
      return node;
    case T::kString: {
      std::string s;
      while (cur().type == T::kString) {
        s += cur().text;
        advance();
      }
      node->value = Value(std::move(s));
      return node;
    }
    case T::kInt:
      node->value = Value(t.int_value);
      advance();
      return node;
    case T::kFloat:
      node->value = Value(t.float_value);
      advance();
      return node;
    default:
      break;
  }
  if (skip_op("(")) {
    SHOAL_ASSIGN_OR_RETURN(node, parse_tuple(false, true, {}, true));
    SHOAL_RETURN_IF_ERROR(expect_op(")"));
    return node;
  }
  if (is_op("[") || is_op("{")) return parse_list_or_dict();
  return error_at(t.line, "unexpected " + describe(t));
}

StatusOr<ExprPtr> Parser::parse_list_or_dict() {
  bool is_dict = is_op("{");
  const char* close = is_dict ? "}" : "]";
  auto node = make_expr(is_dict ? EK::kDict : EK::kList, cur().line);
  advance();
  while (!is_op(close)) {
    if (!node->args.empty()) SHOAL_RETURN_IF_ERROR(expect_op(","));
    if (is_op(close)) break;
    SHOAL_ASSIGN_OR_RETURN(ExprPtr item, parse_expression(true));
    node->args.push_back(std::move(item));
    if (is_dict) {
      SHOAL_RETURN_IF_ERROR(expect_op(":"));
      SHOAL_ASSIGN_OR_RETURN(ExprPtr value, parse_expression(true));
      node->args.push_back(std::move(value));
    }
  }
  advance();
  return node;
}

StatusOr<ExprPtr> Parser::parse_postfix(ExprPtr node) {
  Chain chain{this};
  while (true) {
    if ((is_op(".") || is_op("[") || is_op("("))) SHOAL_RETURN_IF_ERROR(chain.link(cur().line));
    if (is_op(".") || is_op("[")) {
      SHOAL_ASSIGN_OR_RETURN(node, parse_subscript(std::move(node)));
    } else if (is_op("(")) {
      SHOAL_ASSIGN_OR_RETURN(node, parse_call(std::move(node)));
    } else {
      return node;
    }
  }
}

StatusOr<ExprPtr> Parser::parse_filter_expr(ExprPtr node) {
  Chain chain{this};
  while (true) {
    if (is_op("|") || is_name("is") || is_op("(")) SHOAL_RETURN_IF_ERROR(chain.link(cur().line));
    if (skip_op("|")) {
      SHOAL_ASSIGN_OR_RETURN(node, parse_filter_call(std::move(node)));
    } else if (is_name("is")) {
      SHOAL_ASSIGN_OR_RETURN(node, parse_test(std::move(node)));
    } else if (is_op("(")) {
      SHOAL_ASSIGN_OR_RETURN(node, parse_call(std::move(node)));
    } else {
      return node;
    }
  }
}

StatusOr<ExprPtr> Parser::parse_subscript(ExprPtr node) {
  int line = cur().line;
  if (skip_op(".")) {
    if (cur().type == T::kName) {
      auto g = make_expr(EK::kGetAttr, line);
      g->name = cur().text;
      g->args.push_back(std::move(node));
      advance();
      return g;
    }
    if (cur().type != T::kInt) return unexpected("a name or number");
    auto g = make_expr(EK::kGetItem, line);
    g->args.push_back(std::move(node));
    g->args.push_back(make_expr(EK::kConst, line));
    g->args.back()->value = Value(cur().int_value);
    advance();
    return g;
  }
  advance();  // "["
  std::vector<ExprPtr> parts;  // one: an index; three: a slice
  bool is_slice = false;
  if (!is_op(":")) {
    SHOAL_ASSIGN_OR_RETURN(ExprPtr index, parse_expression(true));
    parts.push_back(std::move(index));
  } else {
    parts.push_back(nullptr);
  }
  for (int k = 0; k < 2 && skip_op(":"); ++k) {
    is_slice = true;
    ExprPtr part;
    if (!is_op("]") && !is_op(":")) {
      SHOAL_ASSIGN_OR_RETURN(part, parse_expression(true));
    }
    parts.push_back(std::move(part));
  }
  if (is_op(",")) return error_at(line, "tuple subscripts are not supported", Code::kUnimplemented);
  SHOAL_RETURN_IF_ERROR(expect_op("]"));
  auto g = make_expr(is_slice ? EK::kSlice : EK::kGetItem, line);
  g->args.push_back(std::move(node));
  for (auto& p : parts) g->args.push_back(std::move(p));
  while (is_slice && g->args.size() < 4) g->args.push_back(nullptr);
  return g;
}

Status Parser::parse_call_args(Expr* call) {
  SHOAL_RETURN_IF_ERROR(expect_op("("));
  while (!is_op(")")) {
    if (call->args.size() > 1 || !call->kwargs.empty()) SHOAL_RETURN_IF_ERROR(expect_op(","));
    if (is_op(")")) break;
    if (is_op("*") || is_op("**")) {
      return error_at(cur().line, "*args and **kwargs in calls are not supported", Code::kUnimplemented);
    }
    if (cur().type == T::kName && next_tok().type == T::kOp && next_tok().text == "=") {
      std::string key = cur().text;
      advance();
      advance();
      SHOAL_ASSIGN_OR_RETURN(ExprPtr value, parse_expression(true));
      call->kwargs.emplace_back(key, std::move(value));
      continue;
    }
    if (!call->kwargs.empty()) return error_at(cur().line, "positional argument follows keyword argument");
    SHOAL_ASSIGN_OR_RETURN(ExprPtr arg, parse_expression(true));
    call->args.push_back(std::move(arg));
  }
  advance();
  return Status();
}

StatusOr<ExprPtr> Parser::parse_call(ExprPtr callee) {
  auto call = make_expr(EK::kCall, cur().line);
  call->args.push_back(std::move(callee));
  SHOAL_RETURN_IF_ERROR(parse_call_args(call.get()));
  return call;
}

// A filter name (the "|" already read) and its arguments.
StatusOr<ExprPtr> Parser::parse_filter_call(ExprPtr subject) {
  int line = cur().line;
  SHOAL_ASSIGN_OR_RETURN(std::string name, expect_name());
  switch (filter_kind(name)) {
    case Builtin::kUnknown: return error_at(line, "unknown filter '" + name + "'");
    case Builtin::kUnsupported: return error_at(line, "filter '" + name + "' is not supported", Code::kUnimplemented);
    case Builtin::kSupported: break;
  }
  auto f = make_expr(EK::kFilter, line);
  f->name = name;
  f->args.push_back(std::move(subject));
  if (is_op("(")) SHOAL_RETURN_IF_ERROR(parse_call_args(f.get()));
  return f;
}

StatusOr<ExprPtr> Parser::parse_test(ExprPtr subject) {
  int line = cur().line;
  advance();  // "is"
  bool negated = skip_name("not");
  SHOAL_ASSIGN_OR_RETURN(std::string name, expect_name());
  switch (test_kind(name)) {
    case Builtin::kUnknown: return error_at(line, "unknown test '" + name + "'");
    case Builtin::kUnsupported: return error_at(line, "test '" + name + "' is not supported", Code::kUnimplemented);
    case Builtin::kSupported: break;
  }
  auto t = make_expr(EK::kTest, line);
  t->name = name;
  t->args.push_back(std::move(subject));
  if (is_op("(")) {
    SHOAL_RETURN_IF_ERROR(parse_call_args(t.get()));
  } else if ((cur().type == T::kName || cur().type == T::kString || cur().type == T::kInt ||
              cur().type == T::kFloat || is_op("(") || is_op("[") || is_op("{")) &&
             !is_name("else") && !is_name("or") && !is_name("and")) {
    if (is_name("is")) return error_at(cur().line, "cannot chain multiple tests with 'is'");
    SHOAL_ASSIGN_OR_RETURN(ExprPtr arg, parse_primary());
    SHOAL_ASSIGN_OR_RETURN(arg, parse_postfix(std::move(arg)));
    t->args.push_back(std::move(arg));
  }
  if (!negated) return t;
  auto n = make_expr(EK::kNot, line);
  n->args.push_back(std::move(t));
  return n;
}

}  // namespace shoal::jinja
