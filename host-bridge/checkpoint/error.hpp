#pragma once
// Errors of the host side travel as values (Expected<T>), each with a kind
// that the CLI maps to an exit code and a message that names what to fix.

#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace quiesce::host {

enum class ErrorKind {
  invalid_input,  // a bad vm.json, a corrupt manifest, a bad argument value
  not_found,      // no such checkpoint, a missing disk image or snapshot file
  conflict,       // the VM is in the wrong power state, a checkpoint is a parent
  agent,          // the agent could not be reached, or refused to quiesce
  backend,        // a snapshot backend failed
  system,         // mount, loop device, process or file system failure
};

[[nodiscard]] const char* to_string(ErrorKind kind);

struct Error {
  ErrorKind kind = ErrorKind::system;
  std::string message;
};

template <typename T>
class [[nodiscard]] Expected {
 public:
  Expected(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Expected(Error error) : value_(std::move(error)) {}  // NOLINT: implicit by design

  [[nodiscard]] bool ok() const { return std::holds_alternative<T>(value_); }
  explicit operator bool() const { return ok(); }
  [[nodiscard]] const T& value() const { return std::get<T>(value_); }
  [[nodiscard]] T& value() { return std::get<T>(value_); }
  [[nodiscard]] const T& operator*() const { return value(); }
  [[nodiscard]] T& operator*() { return value(); }
  [[nodiscard]] const T* operator->() const { return &value(); }
  [[nodiscard]] T* operator->() { return &value(); }
  [[nodiscard]] const Error& error() const { return std::get<Error>(value_); }

 private:
  std::variant<T, Error> value_;
};

// For operations with no value.
struct Done {};
using Status = Expected<Done>;
inline Status ok_status() { return Done{}; }

}  // namespace quiesce::host
