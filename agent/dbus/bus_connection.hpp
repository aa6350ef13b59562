#pragma once
// Opening a connection to the bus the config names (system, session or an
// address), shared by the agent's own connection and each registered
// writer's outgoing one.

#include <systemd/sd-bus.h>

#include <string>

#include "agent/core/config.hpp"

namespace quiesce::agent::dbus {

// Connects to the configured bus. Returns a negative errno on failure, with
// `where` saying which bus, for the message.
[[nodiscard]] int open_bus(const DbusConfig& config, sd_bus** bus, std::string& where);

}  // namespace quiesce::agent::dbus
