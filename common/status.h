// Status and StatusOr: the one mechanism for failures a user or the network can cause
// (bad file, bad config, bad request, peer gone). Bugs use SHOAL_CHECK (common/check.h).
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace shoal {

enum class Code {
  kOk = 0,
  kInvalidArgument,   // malformed input: file, config, request, ids
  kNotFound,          // a file or tensor that should exist does not
  kOutOfRange,        // offsets or ids past the end
  kResourceExhausted, // memory, KV blocks
  kUnavailable,       // a peer is gone
  kDeadlineExceeded,  // a wait ran out of time
  kUnimplemented,     // a valid but unsupported value (e.g. a dtype we do not read)
  kInternal,
};

const char* code_name(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status ok_status() { return {}; }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string to_string() const;

  // Prefix the message with where it happened ("tensor x: ", "file y: ").
  Status with_context(const std::string& context) const;

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

inline Status invalid_argument(std::string m) { return {Code::kInvalidArgument, std::move(m)}; }
inline Status not_found(std::string m) { return {Code::kNotFound, std::move(m)}; }
inline Status out_of_range(std::string m) { return {Code::kOutOfRange, std::move(m)}; }
inline Status unimplemented(std::string m) { return {Code::kUnimplemented, std::move(m)}; }
inline Status internal_error(std::string m) { return {Code::kInternal, std::move(m)}; }

template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(T value) : v_(std::move(value)) {}           // NOLINT: implicit by design
  StatusOr(Status status) : v_(std::move(status)) {}     // NOLINT: must not be ok

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace shoal

#define SHOAL_CONCAT_INNER(a, b) a##b
#define SHOAL_CONCAT(a, b) SHOAL_CONCAT_INNER(a, b)

#define SHOAL_RETURN_IF_ERROR(expr)            \
  do {                                         \
    ::shoal::Status shoal_status_ = (expr);    \
    if (!shoal_status_.ok()) return shoal_status_; \
  } while (0)

#define SHOAL_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return tmp.status();               \
  lhs = std::move(tmp).value()

// SHOAL_ASSIGN_OR_RETURN(auto x, make_x()); returns the error status if make_x() failed.
#define SHOAL_ASSIGN_OR_RETURN(lhs, expr) \
  SHOAL_ASSIGN_OR_RETURN_IMPL(SHOAL_CONCAT(shoal_or_, __LINE__), lhs, expr)
