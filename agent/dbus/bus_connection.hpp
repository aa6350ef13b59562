#pragma once
// Opening a connection to the bus the config names (system, session or an
// address), shared by the agent's own connection and each registered
// writer's outgoing one.

#include <string>

#include "agent/core/config.hpp"
#include "platform/linux/libsystemd_api.hpp"

namespace quiesce::agent::dbus {

// libsystemd's sd-bus and sd-event, loaded on first use (the first is
// open_bus, whose caller reports a missing library like an unreachable bus).
[[nodiscard]] inline const platform::LibsystemdApi& sd() { return platform::libsystemd(); }

// Connects to the configured bus. Returns a negative errno on failure, with
// `where` saying which bus, for the message.
[[nodiscard]] int open_bus(const DbusConfig& config, sd_bus** bus, std::string& where);

}  // namespace quiesce::agent::dbus
