#pragma once
// Expected<T>: a value or the API error to answer with. Recoverable errors
// travel as values (the ccache habit); exceptions are for the fatal.

#include <utility>
#include <variant>

#include "quiesce/wire/errors.hpp"

namespace quiesce::agent {

template <typename T>
class [[nodiscard]] Expected {
 public:
  Expected(T value) : value_(std::move(value)) {}                     // NOLINT: implicit by design
  Expected(wire::ApiError error) : value_(std::move(error)) {}        // NOLINT: implicit by design

  [[nodiscard]] bool ok() const { return std::holds_alternative<T>(value_); }
  [[nodiscard]] const T& value() const { return std::get<T>(value_); }
  [[nodiscard]] T& value() { return std::get<T>(value_); }
  [[nodiscard]] const wire::ApiError& error() const { return std::get<wire::ApiError>(value_); }

 private:
  std::variant<T, wire::ApiError> value_;
};

}  // namespace quiesce::agent
