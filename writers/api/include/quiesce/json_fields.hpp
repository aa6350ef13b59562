#pragma once
// Reads a JSON object field by field, checking types and ranges, and refuses
// fields nobody asked for. Every error names the full path of the field
// ("writers[1].options.freeze_ms: ...") so an admin knows what to fix.
// Used for the agent config, writer options and request bodies alike.

#include <chrono>
#include <cstdint>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace quiesce {

class FieldError : public std::runtime_error {
 public:
  FieldError(std::string path, const std::string& message)
      : std::runtime_error(path.empty() ? message : path + ": " + message),
        path_(std::move(path)) {}
  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
};

class JsonFields {
 public:
  // `path` names the object itself ("" for a document root).
  JsonFields(const nlohmann::json& object, std::string path);

  [[nodiscard]] bool has(std::string_view key) const;
  [[nodiscard]] std::string path_of(std::string_view key) const;

  std::string string(std::string_view key, std::optional<std::string> fallback = std::nullopt);
  std::optional<std::string> optional_string(std::string_view key);
  std::int64_t integer(std::string_view key, std::optional<std::int64_t> fallback,
                       std::int64_t min, std::int64_t max);
  bool boolean(std::string_view key, std::optional<bool> fallback = std::nullopt);
  std::chrono::milliseconds millis(std::string_view key,
                                   std::optional<std::chrono::milliseconds> fallback,
                                   std::chrono::milliseconds max = std::chrono::hours(24));
  std::vector<std::string> strings(std::string_view key,
                                   std::optional<std::vector<std::string>> fallback = std::nullopt);
  // The contents of the file an absolute path names, for secrets that must
  // not sit in the config itself (passwords). Trailing newlines are not
  // part of the secret; a missing, unreadable or empty file is an error.
  std::optional<std::string> secret_file(std::string_view key);
  // Any JSON value, unchecked (nullptr when absent). Marks the key as used.
  const nlohmann::json* raw(std::string_view key);
  // A nested object (an empty one when absent and `required` is false).
  JsonFields object(std::string_view key, bool required = false);

  // Throws for the first key that no accessor asked about.
  void reject_unknown() const;

 private:
  const nlohmann::json* lookup(std::string_view key, bool required);
  [[noreturn]] void fail(std::string_view key, const std::string& message) const;

  const nlohmann::json* object_;
  std::string path_;
  std::set<std::string, std::less<>> used_;
};

// A short rendering of a JSON value for error messages.
std::string describe_json(const nlohmann::json& value);

}  // namespace quiesce
