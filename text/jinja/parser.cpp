// Statements: recursive descent over the tokens, following jinja2/parser.py (3.1). Unknown
// tags (and, in parse_expr.cpp, unknown filters and tests) are errors here, at parse time.
#include "text/jinja/parser.h"

#include "text/jinja/builtins.h"
#include "text/jinja/limits.h"

namespace shoal::jinja {

using T = Token::Type;
using NK = Node::Kind;

ExprPtr make_expr(Expr::Kind kind, int line) {
  auto e = std::make_unique<Expr>();
  e->kind = kind;
  e->line = line;
  return e;
}

NodePtr make_node(NK kind, int line) {
  auto n = std::make_unique<Node>();
  n->kind = kind;
  n->line = line;
  return n;
}

std::string describe(const Token& t) {
  switch (t.type) {
    case T::kEnd: return "end of template";
    case T::kVarEnd: return "end of print statement";
    case T::kBlockEnd: return "end of statement block";
    case T::kText: return "template data";
    case T::kString: return "string";
    default: return "'" + t.text + "'";
  }
}

StatusOr<std::shared_ptr<const Node>> Parser::run() {
  auto root = make_node(Node::Kind::kBody, 1);
  SHOAL_ASSIGN_OR_RETURN(Body body, subparse({}, ""));
  root->bodies.push_back(std::move(body));
  return std::shared_ptr<const Node>(std::move(root));
}

bool Parser::skip_op(std::string_view op) {
  if (!is_op(op)) return false;
  advance();
  return true;
}

bool Parser::skip_name(std::string_view n) {
  if (!is_name(n)) return false;
  advance();
  return true;
}

Status Parser::unexpected(const std::string& expected) const {
  return error_at(cur().line, "expected " + expected + ", got " + describe(cur()));
}

Status Parser::expect_op(std::string_view op) {
  if (!skip_op(op)) return unexpected(std::string("'").append(op) + "'");
  return Status();
}

Status Parser::expect_block_end() {
  if (cur().type != T::kBlockEnd) return unexpected("end of statement block");
  advance();
  return Status();
}

StatusOr<std::string> Parser::expect_name() {
  if (cur().type != T::kName) return unexpected("a name");
  std::string n = cur().text;
  advance();
  return n;
}

// Statements until one of `ends` opens a tag (left current, after its "{%").
Status Parser::enter(int line) {
  if (++nesting_ > kMaxNesting) {
    --nesting_;
    return error_at(line, "the template nests more than " + std::to_string(kMaxNesting) + " levels deep");
  }
  return {};
}

StatusOr<Body> Parser::subparse(std::vector<std::string_view> ends, const std::string& opener) {
  SHOAL_RETURN_IF_ERROR(enter(cur().line));
  Nest nest{this};
  Body body;
  while (true) {
    const Token& t = cur();
    if (t.type == T::kEnd) {
      if (ends.empty()) return body;
      return error_at(t.line, "unexpected end of template: " + opener + " is not closed");
    }
    if (t.type == T::kText) {
      auto n = make_node(NK::kText, t.line);
      n->text = t.text;
      body.push_back(std::move(n));
      advance();
    } else if (t.type == T::kVarBegin) {
      auto n = make_node(NK::kPrint, t.line);
      advance();
      SHOAL_ASSIGN_OR_RETURN(ExprPtr e, parse_tuple(false, true, {}, false));
      n->exprs.push_back(std::move(e));
      if (cur().type != T::kVarEnd) return unexpected("end of print statement");
      advance();
      body.push_back(std::move(n));
    } else {  // kBlockBegin
      advance();
      if (cur().type == T::kName && std::find(ends.begin(), ends.end(), cur().text) != ends.end()) return body;
      SHOAL_ASSIGN_OR_RETURN(NodePtr n, parse_statement(ends, opener));
      body.push_back(std::move(n));
    }
  }
}

StatusOr<NodePtr> Parser::parse_statement(const std::vector<std::string_view>& ends, const std::string& opener) {
  const Token& t = cur();
  int line = t.line;
  if (t.type != T::kName) return error_at(line, "tag name expected");
  std::string tag = t.text;
  if (tag == "for") return parse_for();
  if (tag == "if") return parse_if();
  if (tag == "set") return parse_set();
  if (tag == "macro") return parse_macro();
  if (tag == "filter") return parse_filter_block();
  if (tag == "with") return parse_with();
  if (tag == "generation") return parse_scope("endgeneration");
  if (tag == "print") {
    advance();
    auto n = make_node(NK::kPrint, line);
    SHOAL_ASSIGN_OR_RETURN(ExprPtr e, parse_tuple(false, true, {}, false));
    n->exprs.push_back(std::move(e));
    SHOAL_RETURN_IF_ERROR(expect_block_end());
    return n;
  }
  if (tag == "break" || tag == "continue") {
    if (loop_depth_ == 0) return error_at(line, "'" + tag + "' outside of a loop");
    advance();
    SHOAL_RETURN_IF_ERROR(expect_block_end());
    return make_node(tag == "break" ? NK::kBreak : NK::kContinue, line);
  }
  static const char* kUnsupported[] = {"block", "extends", "include", "import", "from", "call", "autoescape",
                                       "raw", "trans", "pluralize"};
  for (const char* u : kUnsupported) {
    if (tag == u) return error_at(line, "tag '" + tag + "' is not supported", Code::kUnimplemented);
  }
  if (!ends.empty()) {
    std::string expected;
    for (auto e : ends) expected += (expected.empty() ? "'" : " or '") + std::string(e) + "'";
    return error_at(line, "unknown tag '" + tag + "' (" + opener + " expects " + expected + ")");
  }
  return error_at(line, "unknown tag '" + tag + "'");
}

// Ends a block: the end tag is current (subparse stopped on it).
Status Parser::close_block(std::string_view end) {
  if (!skip_name(end)) return unexpected(std::string("'").append(end) + "'");
  return expect_block_end();
}

StatusOr<NodePtr> Parser::parse_for() {
  auto n = make_node(NK::kFor, cur().line);
  std::string opener = "the 'for' on line " + std::to_string(n->line);
  advance();
  SHOAL_RETURN_IF_ERROR(parse_targets(n.get(), "in"));
  if (!skip_name("in")) return unexpected("'in'");
  SHOAL_ASSIGN_OR_RETURN(ExprPtr iter, parse_tuple(false, false, {"recursive"}, false));
  n->exprs.push_back(std::move(iter));
  ExprPtr filter;
  if (skip_name("if")) {
    SHOAL_ASSIGN_OR_RETURN(filter, parse_expression(true));
  }
  n->exprs.push_back(std::move(filter));
  if (is_name("recursive")) return error_at(cur().line, "recursive loops are not supported", Code::kUnimplemented);
  SHOAL_RETURN_IF_ERROR(expect_block_end());
  ++loop_depth_;
  auto body = subparse({"endfor", "else"}, opener);
  --loop_depth_;
  if (!body.ok()) return body.status();
  n->bodies.push_back(std::move(body).value());
  if (skip_name("else")) {
    SHOAL_RETURN_IF_ERROR(expect_block_end());
    SHOAL_ASSIGN_OR_RETURN(Body else_body, subparse({"endfor"}, opener));
    n->bodies.push_back(std::move(else_body));
  }
  SHOAL_RETURN_IF_ERROR(close_block("endfor"));
  return n;
}

// Names to assign: "x" or "a, b" or "(a, b)".
Status Parser::parse_targets(Node* n, std::string_view end_name) {
  bool parens = skip_op("(");
  while (true) {
    SHOAL_ASSIGN_OR_RETURN(std::string name, expect_name());
    n->targets.push_back(name);
    if (!skip_op(",")) break;
    n->unpack = true;
    if (is_name(end_name) || is_op("=") || is_op(")") || cur().type == T::kBlockEnd) break;
  }
  if (parens) {
    n->unpack = true;
    SHOAL_RETURN_IF_ERROR(expect_op(")"));
  }
  return Status();
}

StatusOr<NodePtr> Parser::parse_if() {
  auto n = make_node(NK::kIf, cur().line);
  std::string opener = "the 'if' on line " + std::to_string(n->line);
  advance();
  while (true) {
    SHOAL_ASSIGN_OR_RETURN(ExprPtr cond, parse_tuple(false, false, {}, false));
    n->exprs.push_back(std::move(cond));
    SHOAL_RETURN_IF_ERROR(expect_block_end());
    SHOAL_ASSIGN_OR_RETURN(Body body, subparse({"elif", "else", "endif"}, opener));
    n->bodies.push_back(std::move(body));
    if (!skip_name("elif")) break;
  }
  if (skip_name("else")) {
    SHOAL_RETURN_IF_ERROR(expect_block_end());
    SHOAL_ASSIGN_OR_RETURN(Body body, subparse({"endif"}, opener));
    n->bodies.push_back(std::move(body));
  }
  SHOAL_RETURN_IF_ERROR(close_block("endif"));
  return n;
}

StatusOr<NodePtr> Parser::parse_set() {
  int line = cur().line;
  advance();
  if (cur().type == T::kName && next_tok().type == T::kOp && next_tok().text == ".") {
    auto n = make_node(NK::kSetAttr, line);
    n->targets.push_back(cur().text);
    advance();
    advance();
    SHOAL_ASSIGN_OR_RETURN(n->text, expect_name());
    SHOAL_RETURN_IF_ERROR(expect_op("="));
    SHOAL_ASSIGN_OR_RETURN(ExprPtr value, parse_tuple(false, true, {}, false));
    n->exprs.push_back(std::move(value));
    SHOAL_RETURN_IF_ERROR(expect_block_end());
    return n;
  }
  auto n = make_node(NK::kSet, line);
  SHOAL_RETURN_IF_ERROR(parse_targets(n.get(), ""));
  if (skip_op("=")) {
    SHOAL_ASSIGN_OR_RETURN(ExprPtr value, parse_tuple(false, true, {}, false));
    n->exprs.push_back(std::move(value));
    SHOAL_RETURN_IF_ERROR(expect_block_end());
    return n;
  }
  n->kind = NK::kSetBlock;
  if (is_op("|")) SHOAL_RETURN_IF_ERROR(parse_filter_chain(n.get()));
  SHOAL_RETURN_IF_ERROR(expect_block_end());
  SHOAL_ASSIGN_OR_RETURN(Body body, subparse({"endset"}, "the 'set' on line " + std::to_string(line)));
  n->bodies.push_back(std::move(body));
  SHOAL_RETURN_IF_ERROR(close_block("endset"));
  return n;
}

// "| f(args) | g" for {% set x | f %} and {% filter f %}: filters with no subject, in order.
Status Parser::parse_filter_chain(Node* n) {
  bool first = !is_op("|");
  while (first || skip_op("|")) {
    first = false;
    SHOAL_ASSIGN_OR_RETURN(ExprPtr f, parse_filter_call(nullptr));
    n->exprs.push_back(std::move(f));
  }
  return Status();
}

StatusOr<NodePtr> Parser::parse_macro() {
  auto n = make_node(NK::kMacro, cur().line);
  advance();
  SHOAL_ASSIGN_OR_RETURN(n->text, expect_name());
  SHOAL_RETURN_IF_ERROR(expect_op("("));
  while (!is_op(")")) {
    if (!n->targets.empty()) SHOAL_RETURN_IF_ERROR(expect_op(","));
    if (is_op(")")) break;
    SHOAL_ASSIGN_OR_RETURN(std::string param, expect_name());
    n->targets.push_back(param);
    ExprPtr def;
    if (skip_op("=")) {
      SHOAL_ASSIGN_OR_RETURN(def, parse_expression(true));
    } else if (!n->exprs.empty() && n->exprs.back()) {
      return error_at(n->line, "non-default argument follows default argument");
    }
    n->exprs.push_back(std::move(def));
  }
  advance();
  SHOAL_RETURN_IF_ERROR(expect_block_end());
  int saved_depth = loop_depth_;
  loop_depth_ = 0;
  auto body = subparse({"endmacro"}, "the macro on line " + std::to_string(n->line));
  loop_depth_ = saved_depth;
  if (!body.ok()) return body.status();
  n->bodies.push_back(std::move(body).value());
  SHOAL_RETURN_IF_ERROR(close_block("endmacro"));
  return n;
}

StatusOr<NodePtr> Parser::parse_filter_block() {
  auto n = make_node(NK::kFilterBlock, cur().line);
  advance();
  SHOAL_RETURN_IF_ERROR(parse_filter_chain(n.get()));
  SHOAL_RETURN_IF_ERROR(expect_block_end());
  SHOAL_ASSIGN_OR_RETURN(Body body, subparse({"endfilter"}, "the 'filter' on line " + std::to_string(n->line)));
  n->bodies.push_back(std::move(body));
  SHOAL_RETURN_IF_ERROR(close_block("endfilter"));
  return n;
}

StatusOr<NodePtr> Parser::parse_with() {
  auto n = make_node(NK::kWith, cur().line);
  advance();
  while (cur().type != T::kBlockEnd) {
    if (!n->targets.empty()) SHOAL_RETURN_IF_ERROR(expect_op(","));
    SHOAL_ASSIGN_OR_RETURN(std::string name, expect_name());
    n->targets.push_back(name);
    SHOAL_RETURN_IF_ERROR(expect_op("="));
    SHOAL_ASSIGN_OR_RETURN(ExprPtr value, parse_expression(true));
    n->exprs.push_back(std::move(value));
  }
  advance();
  SHOAL_ASSIGN_OR_RETURN(Body body, subparse({"endwith"}, "the 'with' on line " + std::to_string(n->line)));
  n->bodies.push_back(std::move(body));
  SHOAL_RETURN_IF_ERROR(close_block("endwith"));
  return n;
}

StatusOr<NodePtr> Parser::parse_scope(std::string_view end) {
  auto n = make_node(NK::kScope, cur().line);
  std::string opener = "the '" + cur().text + "' on line " + std::to_string(n->line);
  advance();
  SHOAL_RETURN_IF_ERROR(expect_block_end());
  SHOAL_ASSIGN_OR_RETURN(Body body, subparse({end}, opener));
  n->bodies.push_back(std::move(body));
  SHOAL_RETURN_IF_ERROR(close_block(end));
  return n;
}

StatusOr<std::shared_ptr<const Node>> parse_template(const std::string& source) {
  SHOAL_ASSIGN_OR_RETURN(std::vector<Token> tokens, tokenize(source));
  return Parser(std::move(tokens)).run();
}

}  // namespace shoal::jinja
