#include "tests/support/writer_harness.hpp"

#include <doctest/doctest.h>

#include <sys/stat.h>

#include <fstream>
#include <functional>

namespace quiesce::test {

std::unique_ptr<Writer> WriterMaker::operator()(const nlohmann::json& options) const {
  WriterRegistry registry;
  register_type(registry);
  const auto* found = registry.find(type);
  REQUIRE(found != nullptr);
  CHECK(found->default_level == level);
  const WriterSpec spec{.type = type, .name = name, .level = level, .options = options};
  return found->create(spec, environment);
}

PhaseContext context(std::string session, Clock::duration deadline, Clock::duration hold,
                     std::stop_token stop) {
  return {.session_id = std::move(session),
          .deadline = Clock::now() + deadline,
          .hold_deadline = Clock::now() + hold,
          .stop = std::move(stop)};
}

std::string message_of(const Status& status) {
  return status.is_ok() ? "ok" : status.error().message;
}

std::string password_file(const TempDir& dir, const std::string& password) {
  const auto path = dir / ("pw-" + std::to_string(std::hash<std::string>{}(password)));
  std::ofstream(path) << password << "\n";
  ::chmod(path.c_str(), 0600);
  return path.string();
}

}  // namespace quiesce::test
