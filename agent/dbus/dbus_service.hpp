#pragma once
// The agent on D-Bus (docs/dbus.md): org.quiesce.Agent1 at /org/quiesce/Agent1
// with its properties, methods that carry the v1 routes (the same route table
// as HTTP and qga), signals at every phase of a session, and a logind
// inhibitor while anything is frozen.
//
// Threads: one bus thread runs an sd-event loop with the connection (sd-bus
// objects are not thread-safe, so nothing else touches them); methods that
// change something run on a small pool of their own and post their reply
// back, so properties and Health answer while a writer is busy. The
// coordinator's observer calls only queue work for the bus thread, so the
// coordinator is never held up by the bus. Nothing here writes to a disk.

#include <memory>

#include <spdlog/logger.h>

#include "agent/core/api_routes.hpp"
#include "agent/core/config.hpp"
#include "agent/core/coordinator.hpp"

namespace quiesce::agent::dbus {

inline constexpr const char* kBusName = "org.quiesce.Agent1";
inline constexpr const char* kObjectPath = "/org/quiesce/Agent1";
inline constexpr const char* kInterface = "org.quiesce.Agent1";

class DbusService final : public CoordinatorObserver {
 public:
  DbusService(Coordinator& coordinator, ApiRoutes& routes, DbusConfig config,
              std::shared_ptr<spdlog::logger> logger);
  ~DbusService() override;
  DbusService(const DbusService&) = delete;
  DbusService& operator=(const DbusService&) = delete;

  // Connects, exports the object, takes the bus name and starts the bus
  // thread. Throws std::runtime_error saying why when any step fails.
  void start();
  // Stops the bus thread and waits for methods in progress (call after the
  // coordinator's shutdown, so none is blocked on a writer).
  void stop();

  void hold_started() override;
  void hold_ended() override;
  void session_changed(const std::string& session_id, const std::string& state,
                       const nlohmann::json& verdict) override;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace quiesce::agent::dbus
