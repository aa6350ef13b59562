#pragma once
// A QgaService on a real Coordinator with scripted fake writers, for the qga
// unit tests: an application writer, a database writer and a filesystem
// writer of type "fsfreeze" that holds "/" and "/srv" (so freeze counts and
// guest-fsfreeze-freeze-list have something to count and narrow).

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <spdlog/sinks/null_sink.h>

#include "agent/core/api_routes.hpp"
#include "agent/core/coordinator.hpp"
#include "agent/qga/qga_service.hpp"
#include "tests/support/fake_writer.hpp"

namespace quiesce::test {

struct QgaRig {
  std::shared_ptr<Journal> journal = std::make_shared<Journal>();
  std::shared_ptr<spdlog::logger> logger =
      std::make_shared<spdlog::logger>("qga-test", std::make_shared<spdlog::sinks::null_sink_mt>());
  std::unique_ptr<agent::Coordinator> coordinator;
  std::unique_ptr<agent::ApiRoutes> routes;
  std::unique_ptr<agent::qga::QgaService> service;

  explicit QgaRig(agent::qga::QgaOptions options = {}, FakeScript db_script = {},
                  agent::SessionLimits limits = {}) {
    std::vector<agent::ConfiguredWriter> writers;
    auto add = [&](const std::string& type, const std::string& name, Level level,
                   FakeScript script) {
      agent::ConfiguredWriter writer;
      writer.spec = WriterSpec{type, name, level, nlohmann::json::object()};
      writer.writer = std::make_unique<FakeWriter>(name, journal, std::move(script));
      writers.push_back(std::move(writer));
    };
    add("fake", "app", Level::application, {});
    add("fake", "db", Level::database, std::move(db_script));
    FakeScript fs;
    fs.filesystems = {"/", "/srv"};
    add("fsfreeze", "fs", Level::filesystem, fs);
    coordinator = std::make_unique<agent::Coordinator>(std::move(writers), limits, logger);
    routes = std::make_unique<agent::ApiRoutes>(*coordinator, logger);
    service = std::make_unique<agent::qga::QgaService>(*coordinator, *routes, options, logger);
  }
};

// Splits a reply stream into its lines (each one JSON reply); a 0xFF before
// a line is kept at the start of that line.
inline std::vector<std::string> reply_lines(const std::string& bytes) {
  std::vector<std::string> lines;
  std::size_t start = 0;
  while (start < bytes.size()) {
    auto end = bytes.find('\n', start);
    if (end == std::string::npos) {
      lines.push_back(bytes.substr(start));
      break;
    }
    lines.push_back(bytes.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

// Sends one request on `connection` and returns its single reply, parsed.
inline nlohmann::json call(agent::qga::QgaConnection& connection, const nlohmann::json& request) {
  auto output = connection.feed(request.dump());
  auto lines = reply_lines(output.bytes);
  if (lines.size() != 1) {
    throw std::runtime_error("expected one reply line, got " + std::to_string(lines.size()) +
                             ": " + output.bytes);
  }
  return nlohmann::json::parse(lines.front());
}

inline nlohmann::json execute(agent::qga::QgaConnection& connection, const std::string& command,
                              const nlohmann::json& arguments = nullptr) {
  nlohmann::json request = {{"execute", command}};
  if (!arguments.is_null()) {
    request["arguments"] = arguments;
  }
  return call(connection, request);
}

}  // namespace quiesce::test
