#include "agent/core/api_routes.hpp"

#include <regex>

#include "quiesce/json_fields.hpp"
#include "quiesce/json_nesting.hpp"

namespace quiesce::agent {

namespace {

api::Response json_response(unsigned status, const nlohmann::json& body) {
  // replace: a string that is not UTF-8 must never turn an answer into an
  // exception (the target is checked first; this is the second line).
  return api::Response{status, "application/json",
                       body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
}

// RFC 3629 UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF.
bool is_valid_utf8(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size()) {
    const auto byte = static_cast<unsigned char>(text[i]);
    std::size_t length = 0;
    unsigned char low = 0x80;
    unsigned char high = 0xBF;
    if (byte < 0x80) {
      ++i;
      continue;
    }
    if (byte >= 0xC2 && byte <= 0xDF) {
      length = 2;
    } else if (byte >= 0xE0 && byte <= 0xEF) {
      length = 3;
      low = byte == 0xE0 ? 0xA0 : 0x80;
      high = byte == 0xED ? 0x9F : 0xBF;
    } else if (byte >= 0xF0 && byte <= 0xF4) {
      length = 4;
      low = byte == 0xF0 ? 0x90 : 0x80;
      high = byte == 0xF4 ? 0x8F : 0xBF;
    } else {
      return false;
    }
    if (i + length > text.size()) {
      return false;
    }
    for (std::size_t k = 1; k < length; ++k) {
      const auto next = static_cast<unsigned char>(text[i + k]);
      const unsigned char min = k == 1 ? low : 0x80;
      const unsigned char max = k == 1 ? high : 0xBF;
      if (next < min || next > max) {
        return false;
      }
    }
    i += length;
  }
  return true;
}

api::Response error_response(const wire::ApiError& error, const nlohmann::json& session = nullptr) {
  auto body = wire::to_json(error);
  if (!session.is_null()) {
    body["session"] = session;
  }
  return json_response(error.http_status, body);
}

api::Response from(const Expected<nlohmann::json>& result, unsigned success_status,
                   Coordinator& coordinator, const std::string& session_id) {
  if (result.ok()) {
    return json_response(success_status, result.value());
  }
  // Writer failures carry the session status, so the host sees every writer.
  nlohmann::json session = nullptr;
  if (!session_id.empty()) {
    auto status = coordinator.session_status(session_id);
    if (status.ok()) {
      session = status.value();
    }
  }
  return error_response(result.error(), session);
}

// Parses a request body as a JSON object; an empty body is an empty object.
nlohmann::json parse_body(const std::string& body) {
  if (body.find_first_not_of(" \t\r\n") == std::string::npos) {
    return nlohmann::json::object();
  }
  // Before parsing: nlohmann's parser recurses per bracket, so a deep enough
  // body would overflow the stack of the handler thread.
  if (!json_nesting_within(body, default_max_json_nesting)) {
    throw wire::ApiError{400, "bad_request",
                         "the request body nests deeper than " +
                             std::to_string(default_max_json_nesting) + " levels",
                         std::nullopt, false};
  }
  auto json = nlohmann::json::parse(body, nullptr, false);
  if (json.is_discarded()) {
    throw wire::ApiError{400, "bad_request", "the request body is not valid JSON", std::nullopt,
                         false};
  }
  if (!json.is_object()) {
    throw wire::ApiError{400, "bad_request",
                         "the request body must be a JSON object, got " + describe_json(json),
                         std::nullopt, false};
  }
  return json;
}

wire::ApiError field_error(const FieldError& e) {
  return wire::ApiError{400, "invalid_field", e.what(), std::nullopt, false};
}

SessionRequest parse_session_request(const nlohmann::json& body) {
  JsonFields fields(body, "");
  SessionRequest request;
  if (fields.has("writers")) {
    request.writers = fields.strings("writers");
  }
  if (fields.has("freeze_window_ms")) {
    request.freeze_window = fields.millis("freeze_window_ms", std::nullopt, std::chrono::hours(24));
  }
  if (auto checkpoint = fields.optional_string("checkpoint_id")) {
    static const std::regex pattern("^[A-Za-z0-9_.:-]{1,128}$");
    if (!std::regex_match(*checkpoint, pattern)) {
      throw FieldError("checkpoint_id", "must be 1-128 characters of letters, digits, '_.:-'");
    }
    request.checkpoint_id = *checkpoint;
  }
  if (fields.has("mountpoints")) {
    request.mountpoints = fields.strings("mountpoints");
  }
  fields.reject_unknown();
  return request;
}

const std::regex kSessionPath("^/v1/sessions/([A-Za-z0-9_-]{1,64})(/(freeze|thaw|complete))?$");

}  // namespace

ApiRoutes::ApiRoutes(Coordinator& coordinator, std::shared_ptr<spdlog::logger> logger)
    : coordinator_(coordinator), logger_(std::move(logger)) {}

api::Response ApiRoutes::handle(const api::Request& request) {
  // Checked first: every answer below may quote the path, and JSON can only
  // carry UTF-8.
  if (!is_valid_utf8(request.target)) {
    return error_response(wire::ApiError{400, "invalid_target",
                                         "the request target (path or query) is not valid UTF-8",
                                         std::nullopt, false});
  }
  std::string path = request.target.substr(0, request.target.find('?'));
  const auto& method = request.method;
  auto not_allowed = [&](const char* allowed) {
    return error_response(wire::ApiError{405, "method_not_allowed",
                                         method + " is not allowed on " + path + " (allowed: " +
                                             allowed + ")",
                                         std::nullopt, false});
  };
  try {
    if (path == "/v1/health") {
      return method == "GET" ? json_response(200, coordinator_.health()) : not_allowed("GET");
    }
    if (path == "/v1/writers") {
      return method == "GET" ? json_response(200, coordinator_.writers_status())
                             : not_allowed("GET");
    }
    if (path == "/metrics") {
      if (method != "GET") {
        return not_allowed("GET");
      }
      return api::Response{200, "text/plain; version=0.0.4", coordinator_.metrics()};
    }
    if (path == "/v1/sessions") {
      if (method == "GET") {
        return json_response(200, coordinator_.list_sessions());
      }
      if (method != "POST") {
        return not_allowed("GET, POST");
      }
      auto body = parse_body(request.body);
      auto session_request = parse_session_request(body);
      return from(coordinator_.create_session(session_request), 201, coordinator_, {});
    }
    std::smatch match;
    if (std::regex_match(path, match, kSessionPath)) {
      const std::string id = match[1];
      const std::string action = match[3];
      if (action.empty()) {
        if (method == "GET") {
          return from(coordinator_.session_status(id), 200, coordinator_, {});
        }
        if (method == "DELETE") {
          return from(coordinator_.abort(id), 200, coordinator_, id);
        }
        return not_allowed("GET, DELETE");
      }
      if (method != "POST") {
        return not_allowed("POST");
      }
      auto body = parse_body(request.body);
      JsonFields fields(body, "");
      if (action == "complete") {
        auto snapshot_id = fields.string("snapshot_id", "");
        if (snapshot_id.size() > 256) {
          throw FieldError("snapshot_id", "longer than 256 characters");
        }
        fields.reject_unknown();
        return from(coordinator_.complete(id, snapshot_id), 200, coordinator_, id);
      }
      fields.reject_unknown();
      // Over HTTP the answer goes out as soon as it is known, before the
      // coordinator's bookkeeping that does not change it (Coordinator::Answer).
      bool answered = false;
      Coordinator::Answer answer;
      if (request.respond) {
        answer = [&](const Expected<nlohmann::json>& result) {
          answered = true;
          request.respond(from(result, 200, coordinator_, id));
        };
      }
      auto result = action == "freeze" ? coordinator_.freeze(id, answer)
                                       : coordinator_.thaw(id, answer);
      if (answered) {
        return api::Response{};  // ignored: the answer went out already
      }
      return from(result, 200, coordinator_, id);
    }
    if (path.rfind("/v1/sessions/", 0) == 0) {
      return error_response(wire::ApiError{404, "unknown_session",
                                           "no session matches " + path, std::nullopt, false});
    }
    return error_response(
        wire::ApiError{404, "not_found", "no route " + path, std::nullopt, false});
  } catch (const wire::ApiError& error) {
    return error_response(error);
  } catch (const FieldError& e) {
    return error_response(field_error(e));
  } catch (const std::exception& e) {
    logger_->error("internal error on {} {}: {}", method, path, e.what());
    return error_response(wire::ApiError{500, "internal", e.what(), std::nullopt, false});
  }
}

}  // namespace quiesce::agent
