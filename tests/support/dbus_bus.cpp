#include "tests/support/dbus_bus.hpp"

#include <sys/stat.h>

#include <cstring>
#include <fstream>
#include <stdexcept>

namespace quiesce::test {

namespace {

constexpr const char* kAgentName = "org.quiesce.Agent1";
constexpr const char* kAgentPath = "/org/quiesce/Agent1";

}  // namespace

PrivateBus::PrivateBus(const TempDir& dir, const std::filesystem::path& include_policy) {
  const auto socket = dir / "bus.sock";
  const auto config = dir / "bus.conf";
  {
    std::ofstream out(config);
    out << "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN\"\n"
           " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
           "<busconfig>\n"
           "  <type>session</type>\n"
           "  <listen>unix:path="
        << socket.string()
        << "</listen>\n"
           "  <auth>EXTERNAL</auth>\n"
           "  <policy context=\"default\">\n"
           "    <allow user=\"*\"/>\n"
           "    <allow own=\"*\"/>\n"
           "    <allow send_destination=\"*\"/>\n"
           "    <allow receive_sender=\"*\"/>\n"
           "  </policy>\n";
    if (!include_policy.empty()) {
      out << "  <include>" << include_policy.string() << "</include>\n";
    }
    out << "</busconfig>\n";
  }
  // Callers run as `nobody` in some tests: they must reach the socket.
  ::chmod(dir.path().c_str(), 0755);
  address_ = "unix:path=" + socket.string();
  daemon_ = std::make_unique<ChildProcess>(
      std::vector<std::string>{"/usr/bin/dbus-daemon", "--config-file=" + config.string(),
                               "--nofork", "--nopidfile", "--nosyslog"},
      dir / "dbus-daemon.out");
  if (!eventually(std::chrono::seconds(10), [&] { return std::filesystem::exists(socket); })) {
    throw std::runtime_error("dbus-daemon did not create " + socket.string());
  }
}

BusClient::BusClient(const std::string& address) {
  int r = sd_bus_new(&bus_);
  if (r >= 0) {
    r = sd_bus_set_address(bus_, address.c_str());
  }
  if (r >= 0) {
    r = sd_bus_set_bus_client(bus_, 1);
  }
  if (r >= 0) {
    r = sd_bus_start(bus_);
  }
  if (r < 0) {
    throw std::runtime_error("cannot connect to " + address + ": " + std::strerror(-r));
  }
}

BusClient::~BusClient() {
  sd_bus_slot_unref(match_);
  sd_bus_slot_unref(props_match_);
  sd_bus_flush_close_unref(bus_);
}

BusClient::Reply BusClient::call(const std::string& method,
                                 const std::vector<std::string>& arguments) {
  sd_bus_message* request = nullptr;
  sd_bus_message* answer = nullptr;
  sd_bus_error error = SD_BUS_ERROR_NULL;
  Reply reply;
  int r = sd_bus_message_new_method_call(bus_, &request, kAgentName, kAgentPath, kAgentName,
                                         method.c_str());
  for (const auto& argument : arguments) {
    if (r >= 0) {
      r = sd_bus_message_append(request, "s", argument.c_str());
    }
  }
  if (r >= 0) {
    r = sd_bus_call(bus_, request, 120'000'000, &error, &answer);
  }
  if (r >= 0) {
    const char* value = nullptr;
    if (sd_bus_message_read(answer, "s", &value) >= 0) {
      reply.ok = true;
      reply.value = value;
    } else {
      reply.error_name = "(reply is not one string)";
    }
  } else {
    reply.error_name = error.name != nullptr ? error.name : std::strerror(-r);
    reply.error_message = error.message != nullptr ? error.message : "";
  }
  sd_bus_error_free(&error);
  sd_bus_message_unref(request);
  sd_bus_message_unref(answer);
  return reply;
}

std::string BusClient::string_property(const std::string& name) {
  sd_bus_error error = SD_BUS_ERROR_NULL;
  char* value = nullptr;
  int r = sd_bus_get_property_string(bus_, kAgentName, kAgentPath, kAgentName, name.c_str(),
                                     &error, &value);
  std::string text = r >= 0 ? value : "<error: " + std::string(error.message ? error.message : "") + ">";
  free(value);
  sd_bus_error_free(&error);
  return text;
}

std::vector<std::vector<std::string>> BusClient::writers_property() {
  sd_bus_error error = SD_BUS_ERROR_NULL;
  sd_bus_message* reply = nullptr;
  std::vector<std::vector<std::string>> writers;
  if (sd_bus_get_property(bus_, kAgentName, kAgentPath, kAgentName, "Writers", &error, &reply,
                          "a(sss)") >= 0 &&
      sd_bus_message_enter_container(reply, 'a', "(sss)") >= 0) {
    const char* name = nullptr;
    const char* level = nullptr;
    const char* state = nullptr;
    while (sd_bus_message_read(reply, "(sss)", &name, &level, &state) > 0) {
      writers.push_back({name, level, state});
    }
  }
  sd_bus_error_free(&error);
  sd_bus_message_unref(reply);
  return writers;
}

int BusClient::on_signal(sd_bus_message* message, void* userdata, sd_bus_error* /*error*/) {
  auto& self = *static_cast<BusClient*>(userdata);
  const std::string member = sd_bus_message_get_member(message);
  if (member == "PropertiesChanged") {
    const char* interface = nullptr;
    if (sd_bus_message_read(message, "s", &interface) < 0 ||
        sd_bus_message_enter_container(message, 'a', "{sv}") < 0) {
      return 0;
    }
    while (sd_bus_message_enter_container(message, 'e', "sv") > 0) {
      const char* name = nullptr;
      sd_bus_message_read(message, "s", &name);
      self.changed_.emplace_back(name);
      sd_bus_message_skip(message, "v");
      sd_bus_message_exit_container(message);
    }
    return 0;
  }
  AgentSignal signal{member, "", ""};
  const char* session = nullptr;
  if (sd_bus_message_read(message, "s", &session) >= 0) {
    signal.session = session;
  }
  if (member == "Thawed") {
    int continuous = 0;
    const char* verdict = nullptr;
    if (sd_bus_message_read(message, "bs", &continuous, &verdict) >= 0) {
      signal.detail = verdict;
    }
  } else if (member == "Aborted") {
    const char* state = nullptr;
    if (sd_bus_message_read(message, "s", &state) >= 0) {
      signal.detail = state;
    }
  }
  self.received_.push_back(std::move(signal));
  return 0;
}

void BusClient::watch_signals() {
  if (sd_bus_match_signal(bus_, &match_, kAgentName, kAgentPath, kAgentName, nullptr, on_signal,
                          this) < 0 ||
      sd_bus_match_signal(bus_, &props_match_, kAgentName, kAgentPath,
                          "org.freedesktop.DBus.Properties", "PropertiesChanged", on_signal,
                          this) < 0) {
    throw std::runtime_error("cannot subscribe to the agent's signals");
  }
}

void BusClient::pump(std::chrono::milliseconds timeout) {
  while (sd_bus_process(bus_, nullptr) > 0) {
  }
  sd_bus_wait(bus_, static_cast<std::uint64_t>(timeout.count()) * 1000);
  while (sd_bus_process(bus_, nullptr) > 0) {
  }
}

std::vector<AgentSignal> BusClient::signals(std::size_t count, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  pump(std::chrono::milliseconds(0));
  while (received_.size() < count && std::chrono::steady_clock::now() < deadline) {
    pump(std::chrono::milliseconds(50));
  }
  return received_;
}

}  // namespace quiesce::test
