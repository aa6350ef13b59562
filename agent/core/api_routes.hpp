#pragma once
// Maps the v1 routes (docs/api.md) onto the coordinator: parses and checks
// request bodies (unknown fields and wrong types are refused before anything
// happens) and turns results into JSON responses.

#include <spdlog/logger.h>

#include "agent/api/http_server.hpp"
#include "agent/core/coordinator.hpp"

namespace quiesce::agent {

class ApiRoutes {
 public:
  ApiRoutes(Coordinator& coordinator, std::shared_ptr<spdlog::logger> logger);
  api::Response handle(const api::Request& request);

 private:
  Coordinator& coordinator_;
  std::shared_ptr<spdlog::logger> logger_;
};

}  // namespace quiesce::agent
