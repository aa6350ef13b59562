#pragma once
// A private D-Bus for a test: the real dbus-daemon with a test config in the
// test's temp dir (no system bus needed), stopped with the object. Plus a
// small sd-bus client for it, to call methods, read properties and collect
// signals as a local tool would.

#include <systemd/sd-bus.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"

namespace quiesce::test {

class PrivateBus {
 public:
  // `include_policy`: a policy file (such as the agent's own) added after a
  // default policy that lets any local user connect, own names and call.
  explicit PrivateBus(const TempDir& dir, const std::filesystem::path& include_policy = {});
  [[nodiscard]] const std::string& address() const { return address_; }

 private:
  std::string address_;
  std::unique_ptr<ChildProcess> daemon_;
};

// One signal of org.quiesce.Agent1: its member name and its first argument
// (the session id), plus the verdict JSON for Thawed.
struct AgentSignal {
  std::string member;
  std::string session;
  std::string detail;
};

class BusClient {
 public:
  explicit BusClient(const std::string& address);
  ~BusClient();
  BusClient(const BusClient&) = delete;
  BusClient& operator=(const BusClient&) = delete;

  struct Reply {
    bool ok = false;
    std::string value;       // the "s" the method returns
    std::string error_name;  // when !ok
    std::string error_message;
  };
  // Calls org.quiesce.Agent1.<method> with string arguments.
  Reply call(const std::string& method, const std::vector<std::string>& arguments = {});
  std::string string_property(const std::string& name);
  // Writers: name, level, state.
  std::vector<std::vector<std::string>> writers_property();

  // Subscribes to the agent's signals (call before what emits them).
  void watch_signals();
  // Signals received so far, waiting up to `timeout` for `count` of them.
  std::vector<AgentSignal> signals(std::size_t count, std::chrono::milliseconds timeout);
  // PropertiesChanged signals seen so far: the names of changed properties.
  std::vector<std::string> changed_properties() const { return changed_; }

 private:
  void pump(std::chrono::milliseconds timeout);
  static int on_signal(sd_bus_message* message, void* userdata, sd_bus_error* error);

  sd_bus* bus_ = nullptr;
  sd_bus_slot* match_ = nullptr;
  sd_bus_slot* props_match_ = nullptr;
  std::vector<AgentSignal> received_;
  std::vector<std::string> changed_;
};

}  // namespace quiesce::test
