#include "agent/dbus/bus_connection.hpp"

namespace quiesce::agent::dbus {

int open_bus(const DbusConfig& config, sd_bus** bus, std::string& where) {
  where = config.bus == "address" ? "the bus at " + config.address : "the " + config.bus + " bus";
  if (config.bus == "system") {
    return sd().sd_bus_open_system(bus);
  }
  if (config.bus == "session") {
    return sd().sd_bus_open_user(bus);
  }
  int r = sd().sd_bus_new(bus);
  if (r >= 0) {
    r = sd().sd_bus_set_address(*bus, config.address.c_str());
  }
  if (r >= 0) {
    r = sd().sd_bus_set_bus_client(*bus, 1);
  }
  if (r >= 0) {
    r = sd().sd_bus_start(*bus);
  }
  if (r < 0) {
    *bus = sd().sd_bus_unref(*bus);
  }
  return r;
}

}  // namespace quiesce::agent::dbus
