#include "quiesce/json_fields.hpp"

#include <filesystem>
#include <fstream>
#include <iterator>

namespace quiesce {

namespace {
const nlohmann::json& empty_object() {
  static const nlohmann::json empty = nlohmann::json::object();
  return empty;
}
}  // namespace

std::string describe_json(const nlohmann::json& value) {
  std::string text = value.dump();
  if (text.size() > 60) {
    text = text.substr(0, 57) + "...";
  }
  return std::string(value.type_name()) + " " + text;
}

JsonFields::JsonFields(const nlohmann::json& object, std::string path)
    : object_(&object), path_(std::move(path)) {
  if (!object.is_object()) {
    throw FieldError(path_, "expected an object, got " + describe_json(object));
  }
}

bool JsonFields::has(std::string_view key) const { return object_->contains(key); }

std::string JsonFields::path_of(std::string_view key) const {
  return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
}

void JsonFields::fail(std::string_view key, const std::string& message) const {
  throw FieldError(path_of(key), message);
}

const nlohmann::json* JsonFields::lookup(std::string_view key, bool required) {
  used_.emplace(key);
  auto it = object_->find(key);
  if (it == object_->end()) {
    if (required) {
      fail(key, "required field is missing");
    }
    return nullptr;
  }
  return &*it;
}

std::string JsonFields::string(std::string_view key, std::optional<std::string> fallback) {
  const auto* value = lookup(key, !fallback.has_value());
  if (value == nullptr) {
    return *fallback;
  }
  if (!value->is_string()) {
    fail(key, "expected a string, got " + describe_json(*value));
  }
  return value->get<std::string>();
}

std::optional<std::string> JsonFields::optional_string(std::string_view key) {
  if (!has(key)) {
    used_.emplace(key);
    return std::nullopt;
  }
  return string(key);
}

std::optional<std::string> JsonFields::secret_file(std::string_view key) {
  auto path = optional_string(key);
  if (!path) {
    return std::nullopt;
  }
  if (path->empty() || !std::filesystem::path(*path).is_absolute()) {
    fail(key, "'" + *path + "' is not an absolute path");
  }
  std::ifstream in(*path);
  if (!in) {
    fail(key, "cannot read '" + *path + "' (it must exist and be readable by the agent)");
  }
  std::string secret((std::istreambuf_iterator<char>(in)), {});
  // Editors and `echo` leave a newline that is not part of the secret.
  while (!secret.empty() && (secret.back() == '\n' || secret.back() == '\r')) {
    secret.pop_back();
  }
  if (secret.empty()) {
    fail(key, "'" + *path + "' is empty");
  }
  return secret;
}

std::int64_t JsonFields::integer(std::string_view key, std::optional<std::int64_t> fallback,
                                 std::int64_t min, std::int64_t max) {
  const auto* value = lookup(key, !fallback.has_value());
  if (value == nullptr) {
    return *fallback;
  }
  if (!value->is_number_integer()) {
    fail(key, "expected an integer, got " + describe_json(*value));
  }
  // Unsigned values above int64 max would wrap; treat them as out of range.
  if (value->is_number_unsigned() && value->get<std::uint64_t>() > static_cast<std::uint64_t>(max)) {
    fail(key, "must be between " + std::to_string(min) + " and " + std::to_string(max));
  }
  const auto number = value->get<std::int64_t>();
  if (number < min || number > max) {
    fail(key, "must be between " + std::to_string(min) + " and " + std::to_string(max) +
                  ", got " + std::to_string(number));
  }
  return number;
}

bool JsonFields::boolean(std::string_view key, std::optional<bool> fallback) {
  const auto* value = lookup(key, !fallback.has_value());
  if (value == nullptr) {
    return *fallback;
  }
  if (!value->is_boolean()) {
    fail(key, "expected true or false, got " + describe_json(*value));
  }
  return value->get<bool>();
}

std::chrono::milliseconds JsonFields::millis(std::string_view key,
                                             std::optional<std::chrono::milliseconds> fallback,
                                             std::chrono::milliseconds max) {
  std::optional<std::int64_t> fallback_count;
  if (fallback) {
    fallback_count = fallback->count();
  }
  return std::chrono::milliseconds(integer(key, fallback_count, 0, max.count()));
}

std::vector<std::string> JsonFields::strings(std::string_view key,
                                             std::optional<std::vector<std::string>> fallback) {
  const auto* value = lookup(key, !fallback.has_value());
  if (value == nullptr) {
    return *fallback;
  }
  if (!value->is_array()) {
    fail(key, "expected an array of strings, got " + describe_json(*value));
  }
  std::vector<std::string> result;
  for (std::size_t i = 0; i < value->size(); ++i) {
    const auto& item = (*value)[i];
    if (!item.is_string()) {
      throw FieldError(path_of(key) + "[" + std::to_string(i) + "]",
                       "expected a string, got " + describe_json(item));
    }
    result.push_back(item.get<std::string>());
  }
  return result;
}

const nlohmann::json* JsonFields::raw(std::string_view key) { return lookup(key, false); }

JsonFields JsonFields::object(std::string_view key, bool required) {
  const auto* value = lookup(key, required);
  if (value == nullptr) {
    return JsonFields(empty_object(), path_of(key));
  }
  return JsonFields(*value, path_of(key));
}

void JsonFields::reject_unknown() const {
  for (const auto& [key, value] : object_->items()) {
    if (!used_.contains(key)) {
      fail(key, "unknown field");
    }
  }
}

}  // namespace quiesce
