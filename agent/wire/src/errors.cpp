#include "quiesce/wire/errors.hpp"

namespace quiesce::wire {

nlohmann::json to_json(const ApiError& error) {
  return {{"error",
           {{"code", error.code},
            {"message", error.message},
            {"writer", error.writer ? nlohmann::json(*error.writer) : nlohmann::json(nullptr)},
            {"retryable", error.retryable}}}};
}

std::string error_body(const ApiError& error) { return to_json(error).dump(); }

std::optional<ApiError> parse_error_body(unsigned http_status, const std::string& body) {
  auto json = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object() || !json.contains("error") || !json["error"].is_object()) {
    return std::nullopt;
  }
  const auto& e = json["error"];
  ApiError error;
  error.http_status = http_status;
  error.code = e.value("code", std::string("unknown"));
  error.message = e.value("message", std::string());
  if (e.contains("writer") && e["writer"].is_string()) {
    error.writer = e["writer"].get<std::string>();
  }
  error.retryable = e.value("retryable", false);
  return error;
}

ApiError error_of_response(unsigned http_status, const std::string& body) {
  if (auto parsed = parse_error_body(http_status, body)) {
    return *parsed;
  }
  ApiError error;
  error.http_status = http_status;
  error.code = "http_" + std::to_string(http_status);
  error.message = body.substr(0, 512);
  error.retryable = http_status == 503;
  return error;
}

}  // namespace quiesce::wire
