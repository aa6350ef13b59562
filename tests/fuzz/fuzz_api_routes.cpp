// The v1 route table with the real coordinator (no writers): the input picks
// a method and route, and supplies the rest of the target and the body. What
// must hold: every answer is a valid status with a JSON body that parses
// (errors included), whatever bytes came in.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <spdlog/sinks/null_sink.h>

#include "agent/core/api_routes.hpp"

namespace {

struct Rig {
  std::shared_ptr<spdlog::logger> logger =
      std::make_shared<spdlog::logger>("fuzz", std::make_shared<spdlog::sinks::null_sink_mt>());
  quiesce::agent::Coordinator coordinator{{}, quiesce::agent::SessionLimits{}, logger};
  quiesce::agent::ApiRoutes routes{coordinator, logger};
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static Rig rig;
  if (size == 0) {
    return 0;
  }
  static const char* const methods[] = {"GET", "POST", "DELETE", "PUT"};
  static const char* const prefixes[] = {"/v1/sessions", "/v1/sessions/s-1/", "/v1/health", "/", "/metrics",
                                         "/v1/writers"};
  const std::string input(reinterpret_cast<const char*>(data + 1), size - 1);
  const auto newline = input.find('\n');
  quiesce::api::Request request;
  request.method = methods[data[0] % 4];
  request.target = std::string(prefixes[(data[0] / 4) % 6]) + input.substr(0, newline);
  request.body = newline == std::string::npos ? std::string() : input.substr(newline + 1);
  const auto response = rig.routes.handle(request);
  if (response.status < 200 || response.status > 599) {
    std::abort();
  }
  if (response.content_type == "application/json" &&
      nlohmann::json::parse(response.body, nullptr, false).is_discarded()) {
    std::abort();
  }
  return 0;
}
