#pragma once
// The error body every route and every transport answers with:
//   {"error": {"code": "...", "message": "...", "writer": null|"name", "retryable": bool}}
// Codes are stable, machine-readable strings (listed in docs/api.md).

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace quiesce::wire {

struct ApiError {
  unsigned http_status = 500;
  std::string code;
  std::string message;
  std::optional<std::string> writer;
  bool retryable = false;
};

nlohmann::json to_json(const ApiError& error);
std::string error_body(const ApiError& error);
// Parses an error body; nullopt when `body` is not one.
std::optional<ApiError> parse_error_body(unsigned http_status, const std::string& body);
// The error a client reports for an answer with status >= 400: the agent's
// error body when it is one, else a generic `http_<status>` error carrying
// the body's start (a proxy in between, or an older agent).
ApiError error_of_response(unsigned http_status, const std::string& body);

}  // namespace quiesce::wire
