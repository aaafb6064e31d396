// Python's operators on template values, and its two string formatting mini-languages.
#include <cmath>
#include <cstdio>

#include "text/jinja/builtins.h"
#include "text/jinja/limits.h"
#include "text/jinja/text.h"

namespace shoal::jinja {
namespace {

Status type_error(std::string_view op, const Value& a, const Value& b) {
  return invalid_argument("unsupported operand type(s) for " + std::string(op) + ": '" + a.type_name() + "' and '" +
                          b.type_name() + "'");
}

StatusOr<Value> checked_int(bool overflow, int64_t r) {
  if (overflow) return unimplemented("integer overflow (Python would use a big integer)");
  return Value(r);
}

StatusOr<Value> repeat(const Value& seq, int64_t n) {
  const int64_t unit = seq.is_string() ? int64_t(seq.str().size()) : int64_t(seq.items().size());
  if (n > 0 && unit > (seq.is_string() ? kMaxValueBytes : kMaxListItems) / n)
    return invalid_argument("a repetition of " + std::to_string(n) + " would build more than the " +
                            (seq.is_string() ? std::to_string(kMaxValueBytes) + " bytes" : std::to_string(kMaxListItems) + " items") +
                            " a template may build");
  if (seq.is_string()) {
    std::string out;
    for (int64_t i = 0; i < n; ++i) out += seq.str();
    return Value(std::move(out));
  }
  List out;
  for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq.items().begin(), seq.items().end());
  return Value::list(std::move(out), seq.tuple());
}

// Python's float floor division and modulo (the result of % takes the divisor's sign).
std::pair<double, double> float_divmod(double x, double y) {
  double mod = std::fmod(x, y);
  double div = (x - mod) / y;
  if (mod != 0) {
    if ((y < 0) != (mod < 0)) {
      mod += y;
      div -= 1.0;
    }
  } else {
    mod = std::copysign(0.0, y);
  }
  double floordiv;
  if (div != 0) {
    floordiv = std::floor(div);
    if (div - floordiv > 0.5) floordiv += 1.0;
  } else {
    floordiv = std::copysign(0.0, x / y);
  }
  return {floordiv, mod};
}

StatusOr<Value> arithmetic(std::string_view op, const Value& a, const Value& b) {
  bool ints = a.is_integral() && b.is_integral();
  if (ints) {
    int64_t x = a.as_int(), y = b.as_int(), r = 0;
    bool overflow = false;
    if (op == "+") overflow = __builtin_add_overflow(x, y, &r);
    if (op == "-") overflow = __builtin_sub_overflow(x, y, &r);
    if (op == "*") overflow = __builtin_mul_overflow(x, y, &r);
    if (op == "+" || op == "-" || op == "*") return checked_int(overflow, r);
    if ((op == "//" || op == "%") && y == 0) return invalid_argument("integer division or modulo by zero");
    if (op == "//") return Value(x / y - ((x % y != 0) && ((x < 0) != (y < 0)) ? 1 : 0));
    if (op == "%") {
      int64_t m = x % y;
      return Value(m != 0 && ((m < 0) != (y < 0)) ? m + y : m);
    }
    if (op == "**" && y >= 0) {
      int64_t acc = 1;
      for (int64_t i = 0; i < y; ++i) {
        if (__builtin_mul_overflow(acc, x, &acc)) return checked_int(true, 0);
      }
      return Value(acc);
    }
  }
  double x = a.as_double(), y = b.as_double();
  if (op == "+") return Value(x + y);
  if (op == "-") return Value(x - y);
  if (op == "*") return Value(x * y);
  if (op == "/") {
    if (y == 0) return invalid_argument("division by zero");
    return Value(x / y);
  }
  if (op == "//" || op == "%") {
    if (y == 0) return invalid_argument("float floor division or modulo by zero");
    auto [d, m] = float_divmod(x, y);
    return Value(op == "//" ? d : m);
  }
  if (x == 0 && y < 0) return invalid_argument("0.0 cannot be raised to a negative power");
  if (x < 0 && y != std::floor(y)) return unimplemented("complex results of ** are not supported");
  double r = std::pow(x, y);
  if (std::isinf(r) && std::isfinite(x) && std::isfinite(y)) return invalid_argument("(34, 'Numerical result out of range')");
  return Value(r);
}

}  // namespace

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

StatusOr<Value> binary_op(std::string_view op, const Value& a, const Value& b) {
  if (op == "~") return Value(a.to_str() + b.to_str());
  if (a.is_undefined()) return a.undefined_error();
  if (b.is_undefined()) return b.undefined_error();
  if (a.is_number() && b.is_number()) return arithmetic(op, a, b);
  if (op == "+" && a.is_string() && b.is_string()) {
    // Markup + str escapes the plain side, as markupsafe does.
    if (a.markup() != b.markup()) {
      return Value(a.markup() ? a.str() + html_escape(b.str()) : html_escape(a.str()) + b.str(), true);
    }
    return Value(a.str() + b.str(), a.markup());
  }
  if (op == "+" && a.list_or_tuple() && b.list_or_tuple() && a.tuple() == b.tuple()) {
    List out = a.items();
    out.insert(out.end(), b.items().begin(), b.items().end());
    return Value::list(std::move(out), a.tuple());
  }
  if (op == "+" && (a.is_string() || a.list_or_tuple())) {
    return invalid_argument("can only concatenate " + a.type_name() + " (not \"" + b.type_name() + "\") to " +
                            a.type_name());
  }
  if (op == "*") {
    bool a_seq = a.is_string() || a.list_or_tuple();
    bool b_seq = b.is_string() || b.list_or_tuple();
    if (a_seq && b.is_integral()) return repeat(a, b.as_int());
    if (b_seq && a.is_integral()) return repeat(b, a.as_int());
  }
  if (op == "%" && a.is_string()) {
    SHOAL_ASSIGN_OR_RETURN(std::string s, percent_format(a.str(), b));
    return Value(std::move(s));
  }
  return type_error(op, a, b);
}

StatusOr<Value> unary_op(std::string_view op, const Value& a) {
  if (a.is_undefined()) return a.undefined_error();
  if (!a.is_number()) {
    return invalid_argument("bad operand type for unary " + std::string(op) + ": '" + a.type_name() + "'");
  }
  if (a.kind() == Value::Kind::kFloat) return Value(op == "-" ? -a.as_double() : a.as_double());
  return Value(op == "-" ? -a.as_int() : a.as_int());
}

StatusOr<bool> contains(const Value& container, const Value& item) {
  using K = Value::Kind;
  switch (container.kind()) {
    case K::kUndefined:
      return false;
    case K::kString:
      if (!item.is_string()) {
        return invalid_argument("'in <string>' requires string as left operand, not " + item.type_name());
      }
      return container.str().find(item.str()) != std::string::npos;
    case K::kList:
      if (container.seq() == Value::Seq::kIterator) {  // consumes up to the match, as Python does
        while (auto v = container.next_item()) {
          if (equals(*v, item)) return true;
        }
        return false;
      }
      for (const Value& v : container.items()) {
        if (equals(v, item)) return true;
      }
      return false;
    case K::kDict:
      return item.is_string() && container.dict().find(item.str()) != nullptr;
    default:
      return invalid_argument("argument of type '" + container.type_name() + "' is not iterable");
  }
}

namespace {

// One %-conversion: flags, width, precision, type.
StatusOr<std::string> convert_one(const std::string& flags, int width, int precision, char type, const Value& v) {
  std::string body;
  if (type == 's' || type == 'r' || type == 'a') {
    body = type == 's' ? v.to_str() : v.repr();
    if (precision >= 0) body = text::encode(text::decode(body).substr(0, static_cast<size_t>(precision)));
  } else if (type == 'c') {
    if (v.is_string() && text::length(v.str()) == 1) {
      body = v.str();
    } else if (v.is_integral()) {
      text::append_utf8(body, static_cast<char32_t>(v.as_int()));
    } else {
      return invalid_argument("%c requires int or char");
    }
  } else {
    if (!v.is_number()) {
      return invalid_argument(std::string("%") + type + " format: a real number is required, not " + v.type_name());
    }
    std::string spec = "%" + flags;
    if (std::string("diuxXo").find(type) != std::string::npos) {
      long long n = v.kind() == Value::Kind::kFloat ? static_cast<long long>(v.as_double()) : v.as_int();
      char conv = type == 'i' || type == 'u' ? 'd' : type;
      if (precision >= 0) spec += "." + std::to_string(precision);
      spec += "ll";
      spec.push_back(conv);
      char buf[128];
      std::snprintf(buf, sizeof buf, spec.c_str(), n);
      body = buf;
    } else if (std::string("eEfFgG").find(type) != std::string::npos) {
      spec += "." + std::to_string(precision >= 0 ? precision : 6);
      spec.push_back(type);
      char buf[512];
      std::snprintf(buf, sizeof buf, spec.c_str(), v.as_double());
      body = buf;
    } else {
      return invalid_argument(std::string("unsupported format character '") + type + "'");
    }
  }
  size_t len = text::length(body);
  if (width > 0 && len < static_cast<size_t>(width)) {
    std::string pad(static_cast<size_t>(width) - len, ' ');
    bool zero = flags.find('0') != std::string::npos && flags.find('-') == std::string::npos &&
                type != 's' && type != 'r' && type != 'a' && type != 'c';
    if (flags.find('-') != std::string::npos) {
      body += pad;
    } else if (zero) {
      size_t sign = (!body.empty() && (body[0] == '-' || body[0] == '+' || body[0] == ' ')) ? 1 : 0;
      body.insert(sign, std::string(pad.size(), '0'));
    } else {
      body = pad + body;
    }
  }
  return body;
}

}  // namespace

StatusOr<std::string> percent_format(const std::string& fmt, const Value& args) {
  List positional;
  const Dict* mapping = nullptr;
  if (args.kind() == Value::Kind::kList && args.tuple()) {
    positional = args.items();
  } else if (args.kind() == Value::Kind::kDict) {
    mapping = &args.dict();
    positional.push_back(args);
  } else {
    positional.push_back(args);
  }
  std::string out;
  size_t next = 0;
  bool used_mapping = false;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out.push_back(fmt[i]);
      continue;
    }
    if (++i >= fmt.size()) return invalid_argument("incomplete format");
    if (fmt[i] == '%') {
      out.push_back('%');
      continue;
    }
    const Value* v = nullptr;
    if (fmt[i] == '(') {
      size_t close = fmt.find(')', i);
      if (close == std::string::npos || !mapping) return invalid_argument("format requires a mapping");
      v = mapping->find(fmt.substr(i + 1, close - i - 1));
      if (!v) return invalid_argument("KeyError: '" + fmt.substr(i + 1, close - i - 1) + "'");
      used_mapping = true;
      i = close + 1;
    }
    std::string flags;
    while (i < fmt.size() && std::string("-+ #0").find(fmt[i]) != std::string::npos) flags.push_back(fmt[i++]);
    int width = 0, precision = -1;
    while (i < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[i]))) width = width * 10 + (fmt[i++] - '0');
    if (i < fmt.size() && fmt[i] == '.') {
      precision = 0;
      ++i;
      while (i < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[i]))) {
        precision = precision * 10 + (fmt[i++] - '0');
      }
    }
    if (i >= fmt.size()) return invalid_argument("incomplete format");
    if (!v) {
      if (next >= positional.size()) return invalid_argument("not enough arguments for format string");
      v = &positional[next++];
    }
    SHOAL_ASSIGN_OR_RETURN(std::string piece, convert_one(flags, width, precision, fmt[i], *v));
    out += piece;
  }
  if (!used_mapping && !mapping && next < positional.size()) {
    return invalid_argument("not all arguments converted during string formatting");
  }
  return out;
}

StatusOr<std::string> str_format(const std::string& fmt, const Args& args) {
  std::string out;
  int auto_index = 0;
  bool manual = false, automatic = false;
  for (size_t i = 0; i < fmt.size(); ++i) {
    char c = fmt[i];
    if (c == '}' ) {
      if (i + 1 < fmt.size() && fmt[i + 1] == '}') ++i;
      else return invalid_argument("Single '}' encountered in format string");
      out.push_back('}');
      continue;
    }
    if (c != '{') {
      out.push_back(c);
      continue;
    }
    if (i + 1 < fmt.size() && fmt[i + 1] == '{') {
      out.push_back('{');
      ++i;
      continue;
    }
    size_t close = fmt.find('}', i);
    if (close == std::string::npos) return invalid_argument("Single '{' encountered in format string");
    std::string field = fmt.substr(i + 1, close - i - 1);
    i = close;
    char conversion = 's';
    if (size_t bang = field.find('!'); bang != std::string::npos) {
      if (bang + 2 != field.size() || (field[bang + 1] != 's' && field[bang + 1] != 'r')) {
        return unimplemented("format field '{" + field + "}' is not supported");
      }
      conversion = field[bang + 1];
      field.resize(bang);
    }
    if (field.find_first_of(":.[") != std::string::npos) {
      return unimplemented("format field '{" + field + "}' is not supported (no format specs or lookups)");
    }
    const Value* v = nullptr;
    if (field.empty() || std::isdigit(static_cast<unsigned char>(field[0]))) {
      size_t index;
      if (field.empty()) {
        automatic = true;
        index = static_cast<size_t>(auto_index++);
      } else {
        manual = true;
        index = std::stoul(field);
      }
      if (manual && automatic) {
        return invalid_argument("cannot switch between manual field specification and automatic field numbering");
      }
      if (index >= args.pos.size()) return invalid_argument("Replacement index " + field + " out of range");
      v = &args.pos[index];
    } else {
      for (const auto& [k, kv] : args.kw) {
        if (k == field) v = &kv;
      }
      if (!v) return invalid_argument("KeyError: '" + field + "'");
    }
    out += conversion == 'r' ? v->repr() : v->to_str();
  }
  return out;
}

}  // namespace shoal::jinja
