// The D-Bus section of the config, and when the logind inhibitor is taken
// and released (logind itself cannot run here: PID 1 is not systemd; the
// real one is the vm label's business).

#include <doctest/doctest.h>

#include "agent/core/config.hpp"
#include "agent/dbus/logind_inhibitor.hpp"

using namespace quiesce;
using namespace quiesce::agent;
using Action = dbus::InhibitorState::Action;

namespace {

std::string dbus_error_of(const nlohmann::json& section) {
  WriterRegistry registry;
  register_builtin_writers(registry);
  try {
    (void)parse_config({{"dbus", section}}, registry);
  } catch (const FieldError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("dbus config: off by default, system bus and group quiesce when enabled") {
  WriterRegistry registry;
  auto config = parse_config(nlohmann::json::object(), registry);
  CHECK_FALSE(config.dbus.enabled);
  config = parse_config({{"dbus", {{"enabled", true}}}}, registry);
  CHECK(config.dbus.enabled);
  CHECK(config.dbus.bus == "system");
  CHECK(config.dbus.group == "quiesce");
  CHECK(config.dbus.logind_inhibit);
  config = parse_config(
      {{"dbus", {{"enabled", true}, {"bus", "address"}, {"address", "unix:path=/tmp/b"}}}},
      registry);
  CHECK(config.dbus.address == "unix:path=/tmp/b");
}

TEST_CASE("dbus config: mistakes name the field") {
  CHECK(dbus_error_of({{"bus", "kernel"}}).find("dbus.bus") != std::string::npos);
  CHECK(dbus_error_of({{"bus", "address"}}).find("dbus.address") != std::string::npos);
  CHECK(dbus_error_of({{"bus", "address"}, {"address", "nowhere"}}).find("D-Bus address") !=
        std::string::npos);
  CHECK(dbus_error_of({{"address", "unix:path=/x"}}).find("only valid with") !=
        std::string::npos);
  CHECK(dbus_error_of({{"group", ""}}).find("dbus.group") != std::string::npos);
  CHECK(dbus_error_of({{"enabled", "yes"}}).find("dbus.enabled") != std::string::npos);
  CHECK(dbus_error_of({{"bogus", 1}}).find("dbus.bogus") != std::string::npos);
}

TEST_CASE("logind inhibitor: asked for once per hold, released at the thaw") {
  dbus::InhibitorState state;
  CHECK(state.hold_started() == Action::request);
  CHECK(state.pending());
  CHECK(state.hold_started() == Action::none);  // a second hold start asks nothing more
  CHECK(state.granted() == Action::none);
  CHECK(state.held());
  CHECK(state.hold_ended() == Action::release);
  CHECK_FALSE(state.held());
  CHECK(state.hold_ended() == Action::none);  // nothing left to release
}

TEST_CASE("logind inhibitor: granted after the thaw is released at once") {
  dbus::InhibitorState state;
  CHECK(state.hold_started() == Action::request);
  CHECK(state.hold_ended() == Action::none);  // nothing held yet
  CHECK(state.granted() == Action::release);
  CHECK_FALSE(state.held());
  CHECK_FALSE(state.pending());
}

TEST_CASE("logind inhibitor: a new hold while the answer is on its way keeps what arrives") {
  dbus::InhibitorState state;
  CHECK(state.hold_started() == Action::request);
  CHECK(state.hold_ended() == Action::none);
  CHECK(state.hold_started() == Action::none);  // one call is already on its way
  CHECK(state.granted() == Action::none);
  CHECK(state.held());
}

TEST_CASE("logind inhibitor: without logind nothing is held and the next hold asks again") {
  dbus::InhibitorState state;
  CHECK(state.hold_started() == Action::request);
  state.refused();
  CHECK_FALSE(state.held());
  CHECK(state.hold_ended() == Action::none);
  CHECK(state.hold_started() == Action::request);
}
