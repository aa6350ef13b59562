#pragma once
// The result of a writer call. It has no default constructor and is
// [[nodiscard]]: a writer must say "ok" explicitly, and a caller cannot drop
// a failure on the floor.

#include <optional>
#include <string>
#include <utility>

#include "quiesce/protocol.hpp"

namespace quiesce {

struct WriterError {
  ErrorClass error_class;
  std::string message;
};

class [[nodiscard]] Status {
 public:
  static Status ok() { return Status{std::nullopt}; }
  static Status error(ErrorClass error_class, std::string message) {
    return Status{WriterError{error_class, std::move(message)}};
  }
  static Status retryable(std::string message) {
    return error(ErrorClass::retryable, std::move(message));
  }
  static Status non_retryable(std::string message) {
    return error(ErrorClass::non_retryable, std::move(message));
  }
  static Status timeout(std::string message) {
    return error(ErrorClass::timeout, std::move(message));
  }
  static Status inconsistent(std::string message) {
    return error(ErrorClass::inconsistent, std::move(message));
  }

  [[nodiscard]] bool is_ok() const { return !error_.has_value(); }
  // Only valid when !is_ok().
  [[nodiscard]] const WriterError& error() const { return *error_; }

 private:
  explicit Status(std::optional<WriterError> error) : error_(std::move(error)) {}
  std::optional<WriterError> error_;
};

}  // namespace quiesce
