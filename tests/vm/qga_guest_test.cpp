// Issue #12, item 5 (all but libvirt): qemu-guest-agent's protocol on the
// virtio-serial port org.qemu.guest_agent.0 of a real guest, from the host
// end of the channel (a Unix socket), first against Quiesce, then against
// Debian's qemu-ga on the same port in the same boot, printed side by side.
//
// One initramfs guest boot (InitramfsGuest) for the file; /mnt/data is the
// guest's virtio-blk data disk (ext4), the only filesystem the agents freeze.
// A freeze is proven real by a write to /mnt/data started in the guest in
// the background while frozen: it must not come back before the thaw.
// docs/testing-in-a-guest.md says how to run one case.
#include <doctest/doctest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/vm/initramfs_guest.hpp"

// quiesce_tests_need_root() (root: QEMU with TCG is fine, but the image build and mkfs want it) is
// declared once for the binary, in systemd_guest_test.cpp.


namespace {

using quiesce::test::GuestAgent;
using quiesce::test::InitramfsGuest;
using Clock = std::chrono::steady_clock;
using nlohmann::json;
using namespace std::chrono_literals;

// Quiesce's window for qga sessions in this guest: short, so the test of a
// host that goes away mid-freeze waits little, and above what the other
// checks hold a freeze under TCG on a loaded host (the freeze itself ~2 s,
// then a write started and watched through the runner, ~4 s in all; 4 s
// of window was seen to run out).
constexpr int qga_window_ms = 8000;
constexpr int native_vsock_port = 7700;
constexpr int qga_vsock_port = 7701;

std::string agent_config() {
  return json{
      {"listen",
       {{"unix", {{"path", "/run/quiesce/agent.sock"}, {"mode", "0660"}}},
        // CID 1 is the guest itself (vsock_loopback): the tests' client runs in the guest.
        {"vsock", {{"port", native_vsock_port}, {"allowed_cids", {1, 2}}}}}},
      {"session", {{"freeze_window_ms", 8000}, {"max_freeze_window_ms", 10000}}},
      {"log", {{"target", "stderr"}, {"level", "info"}}},
      {"writers", {{{"type", "fsfreeze"}, {"name", "fs"}, {"options", {{"mounts", {"/mnt/data"}}}}}}},
      {"qga",
       {{"virtio_serial_path", "/dev/virtio-ports/org.qemu.guest_agent.0"},
        {"vsock_port", qga_vsock_port},
        {"allowed_cids", {1, 2}},
        {"freeze_window_ms", qga_window_ms}}}}
      .dump(2);
}

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// The host end of the qga channel, as a hypervisor stack uses it: a Unix
// socket QEMU serves; each connection is a fresh session for the guest.
class QgaClient {
 public:
  explicit QgaClient(const std::filesystem::path& socket_path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, socket_path.c_str(), sizeof address.sun_path - 1);
    if (fd_ < 0 || ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
      const std::string error = std::strerror(errno);
      close();
      throw std::runtime_error("connect " + socket_path.string() + ": " + error);
    }
  }
  ~QgaClient() { close(); }
  QgaClient(const QgaClient&) = delete;
  QgaClient& operator=(const QgaClient&) = delete;

  void close() {
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }

  void send_raw(const std::string& bytes) {
    std::size_t sent = 0;
    while (sent < bytes.size()) {
      const auto n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n < 0) {
        throw std::runtime_error(std::string("qga send: ") + std::strerror(errno));
      }
      sent += static_cast<std::size_t>(n);
    }
  }

  // One reply line (without its newline), or nothing within `timeout`.
  // A 0xFF delimiter stays in the line where it came.
  std::optional<std::string> read_line(std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      if (const auto newline = pending_.find('\n'); newline != std::string::npos) {
        std::string line = pending_.substr(0, newline);
        pending_.erase(0, newline + 1);
        return line;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) {
        return std::nullopt;
      }
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
        continue;
      }
      std::array<char, 4096> buffer{};
      const auto n = ::recv(fd_, buffer.data(), buffer.size(), 0);
      if (n <= 0) {
        throw std::runtime_error("qga: QEMU closed the socket");
      }
      pending_.append(buffer.data(), static_cast<std::size_t>(n));
    }
  }

  // One command, one reply (the first line that parses as JSON).
  json call(const json& command, std::chrono::milliseconds timeout = 30s) {
    send_raw(command.dump() + "\n");
    return read_reply(timeout);
  }

  json read_reply(std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (auto line = read_line(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()))) {
      auto reply = json::parse(*line, nullptr, false);
      if (!reply.is_discarded()) {
        return reply;
      }
    }
    throw std::runtime_error("qga: no reply to a command within " + std::to_string(timeout.count()) + " ms");
  }

  // How a client flushes whatever the guest has half-read and finds the
  // start of its own replies: a 0xFF byte (never valid JSON) to reset the
  // guest's parser, guest-sync-delimited, then skip everything before the
  // guest's 0xFF and expect the id back. Returns the lines skipped.
  std::vector<std::string> resync(std::int64_t id, std::chrono::milliseconds timeout = 10s) {
    send_raw("\xff" + json{{"execute", "guest-sync-delimited"}, {"arguments", {{"id", id}}}}.dump() + "\n");
    std::vector<std::string> skipped;
    const auto deadline = Clock::now() + timeout;
    bool delimiter_seen = false;
    while (auto line = read_line(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()))) {
      if (!delimiter_seen) {
        const auto ff = line->find('\xff');
        if (ff == std::string::npos) {
          skipped.push_back(*line);
          continue;
        }
        delimiter_seen = true;
        line->erase(0, ff + 1);
      }
      const auto reply = json::parse(*line, nullptr, false);
      if (!reply.is_discarded() && reply.contains("return") && reply["return"] == id) {
        return skipped;
      }
      skipped.push_back(*line);
    }
    throw std::runtime_error("qga: no delimited sync reply with id " + std::to_string(id));
  }

 private:
  int fd_ = -1;
  std::string pending_;
};

// One guest for the file; a boot that failed is not tried again.
InitramfsGuest& guest() {
  static std::unique_ptr<InitramfsGuest> vm;
  static std::string boot_error;
  if (!vm && boot_error.empty()) {
    try {
      InitramfsGuest::Options options;
      options.payload.build_dir = QUIESCE_BUILD_DIR;
      options.payload.agent = GuestAgent::quiesce;
      options.payload.agent_config = agent_config();
      vm = std::make_unique<InitramfsGuest>(options);
      std::cout << "initramfs guest: image " << vm->boot().image_dir.filename().string()
                << (vm->boot().image_seconds > 0
                        ? " built in " + std::to_string(vm->boot().image_seconds) + " s"
                        : std::string(" (cached)"))
                << ", boot to runner ready " << std::fixed << std::setprecision(1) << vm->boot_seconds()
                << " s, run dir " << vm->run_dir() << std::endl;
    } catch (const std::exception& e) {
      boot_error = e.what();
    }
  }
  if (!vm) {
    FAIL("the initramfs guest did not boot: " << boot_error);
  }
  return *vm;
}

// What one agent did in the protocol checks, for the side-by-side table.
struct AgentReport {
  std::map<std::string, std::string> results;  // check -> "ok" or what went wrong
  double freeze_ms = -1;
  double thaw_ms = -1;
  double write_blocked_ms = -1;        // the guest's write during the freeze
  double disconnect_frozen_ms = -1;    // freeze to writable after the host went away
  std::string disconnect_outcome;
  json status_after_reconnect;
  json thaw_after_reconnect;
};

// The agent's log, for failure messages (it lives under /run in the guest).
std::string agent_log(const std::string& agent) {
  const auto log = agent == "quiesce" ? "/run/quiesce-agent.log" : "/run/qemu-ga.log";
  return guest().run(std::string("tail -n 30 ") + log + " 2>&1").output;
}

// Waits until the agent answers a delimited sync on a new connection (it
// may still be opening the port).
std::unique_ptr<QgaClient> connect_agent(std::int64_t id_base) {
  const auto deadline = Clock::now() + 20s;
  std::string last_error;
  for (std::int64_t attempt = 0; Clock::now() < deadline; ++attempt) {
    auto client = std::make_unique<QgaClient>(guest().qga_socket());
    try {
      (void)client->resync(id_base + attempt, 2s);
      return client;
    } catch (const std::exception& e) {
      last_error = e.what();
    }
  }
  throw std::runtime_error("the agent did not answer on the qga channel within 20 s: " + last_error);
}

std::string qt_write_result(const std::string& name) {
  return quiesce::test::last_line(guest().run("qt-write-result " + name).output);
}

// Waits for qt-timed-write NAME to come back; the write's start and end
// (guest clock), or nothing by the deadline.
std::optional<std::pair<double, double>> wait_write(const std::string& name, std::chrono::seconds limit) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    const auto result = qt_write_result(name);
    if (result != "pending") {
      std::istringstream fields(result);
      double started = 0;
      double done = 0;
      fields >> started >> done;
      return std::make_pair(started, done);
    }
    std::this_thread::sleep_for(200ms);
  }
  return std::nullopt;
}

// The protocol checks, the same for both agents, each recorded in `report`
// as it ends (so a check that throws leaves the others' outcomes for the
// table) and checked: qemu-ga is the reference, so every check must pass for
// both; only the host going away mid-freeze differs (the caller checks it).
void run_protocol_checks(const std::string& agent, AgentReport& report) {
  auto& vm = guest();
  auto record = [&](const std::string& check, bool ok, const std::string& detail) {
    report.results[check] = ok ? "ok" : detail;
    CHECK_MESSAGE(ok, agent << ": " << check << ": " << detail);
  };
  auto client = connect_agent(1000);

  // Proxmox: guest-sync-delimited and the command in one write.
  {
    client->send_raw(json{{"execute", "guest-sync-delimited"}, {"arguments", {{"id", 4242}}}}.dump() + "\n" +
                     json{{"execute", "guest-ping"}}.dump() + "\n");
    const auto sync = client->read_line(10s);
    const auto ping = client->read_line(10s);
    const bool ok = sync && !sync->empty() && sync->front() == '\xff' &&
                    json::parse(sync->substr(1), nullptr, false) == json{{"return", 4242}} && ping &&
                    json::parse(*ping, nullptr, false) == json{{"return", json::object()}};
    record("proxmox framing", ok, "sync: " + sync.value_or("(none)") + ", ping: " + ping.value_or("(none)"));
  }
  // libvirt: guest-sync with a millisecond id, then guest-info.
  {
    const auto id = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count();
    const auto sync = client->call({{"execute", "guest-sync"}, {"arguments", {{"id", id}}}});
    const auto info = client->call({{"execute", "guest-info"}});
    const bool ok = sync == json{{"return", id}} && info.contains("return") &&
                    info["return"].contains("version") && info["return"]["supported_commands"].is_array();
    record("libvirt framing", ok, "sync: " + sync.dump() + ", info: " + info.dump().substr(0, 200));
  }

  // A freeze that holds: a write to /mnt/data blocks until the thaw.
  {
    const auto status = client->call({{"execute", "guest-fsfreeze-status"}});
    record("status thawed", status == json{{"return", "thawed"}}, status.dump());
    auto started = Clock::now();
    const auto frozen = client->call({{"execute", "guest-fsfreeze-freeze"}});
    report.freeze_ms = ms_since(started);
    record("freeze", frozen.contains("return") && frozen["return"] == 1, frozen.dump() + "\n" + agent_log(agent));
    const auto status_frozen = client->call({{"execute", "guest-fsfreeze-status"}});
    record("status frozen", status_frozen == json{{"return", "frozen"}}, status_frozen.dump());
    (void)vm.run("qt-timed-write " + agent + "-hold /mnt/data/probe");
    std::this_thread::sleep_for(1500ms);
    const auto during = qt_write_result(agent + "-hold");
    record("write blocked while frozen", during == "pending", "the write came back while frozen: " + during);
    // The frozen allowlist: ping and info run, anything else is disabled.
    const auto ping = client->call({{"execute", "guest-ping"}});
    record("ping while frozen", ping == json{{"return", json::object()}}, ping.dump());
    const auto disabled = client->call({{"execute", "guest-get-time"}});
    const bool is_disabled = disabled.contains("error") && disabled["error"]["class"] == "CommandNotFound" &&
                             disabled["error"]["desc"].get<std::string>().find("disabled") != std::string::npos;
    record("command disabled while frozen", is_disabled, disabled.dump());
    const auto thaw_started_guest = vm.guest_now();
    started = Clock::now();
    const auto thawed = client->call({{"execute", "guest-fsfreeze-thaw"}});
    report.thaw_ms = ms_since(started);
    record("thaw", thawed.contains("return") && thawed["return"] == 1, thawed.dump());
    const auto write = wait_write(agent + "-hold", 10s);
    record("write done after thaw", write && write->second >= thaw_started_guest,
           write ? "done at " + std::to_string(write->second) + ", thaw asked at " +
                       std::to_string(thaw_started_guest)
                 : std::string("the write never came back"));
    if (write) {
      report.write_blocked_ms = (write->second - write->first) * 1000;
    }
    const auto after = client->call({{"execute", "guest-fsfreeze-status"}});
    record("status thawed after thaw", after == json{{"return", "thawed"}}, after.dump());
  }

  // freeze-list narrows to the mountpoints asked for.
  {
    const auto frozen = client->call(
        {{"execute", "guest-fsfreeze-freeze-list"}, {"arguments", {{"mountpoints", {"/mnt/data"}}}}});
    const auto status = client->call({{"execute", "guest-fsfreeze-status"}});
    const auto thawed = client->call({{"execute", "guest-fsfreeze-thaw"}});
    record("freeze-list", frozen == json{{"return", 1}} && status == json{{"return", "frozen"}} &&
                              thawed == json{{"return", 1}},
           frozen.dump() + " " + status.dump() + " " + thawed.dump());
  }

  // Garbage, then half-written JSON: the channel works again after a resync.
  {
    client->send_raw("}}not json at all{\"x\":\n");
    const auto skipped_garbage = client->resync(5001);
    client->send_raw("{\"execute\":\"guest-ping\",\"arguments\":{\"");
    const auto skipped_half = client->resync(5002);
    const auto ping = client->call({{"execute", "guest-ping"}});
    record("garbage and half-written JSON, then resync", ping == json{{"return", json::object()}},
           "after resync: " + ping.dump());
    // Nesting far past any parser's limit: an error, never a crash.
    client->send_raw(std::string(100000, '[') + "\n");
    const auto skipped_deep = client->resync(5003, 30s);
    const auto ping_deep = client->call({{"execute", "guest-ping"}});
    record("100,000-deep nesting, then resync", ping_deep == json{{"return", json::object()}},
           "after resync: " + ping_deep.dump() + "\n" + agent_log(agent));
    std::ostringstream seen;
    for (const auto& line : skipped_garbage) {
      seen << "  garbage -> " << line << "\n";
    }
    for (const auto& line : skipped_half) {
      seen << "  half-written -> " << line << "\n";
    }
    seen << "  100,000-deep nesting -> " << skipped_deep.size() << " replies"
         << (skipped_deep.empty() ? std::string() : ", the first: " + skipped_deep.front().substr(0, 120)) << "\n";
    std::cout << agent << ": replies before the resyncs:\n" << seen.str();
    // An unknown command is an error, not a dropped channel.
    const auto unknown = client->call({{"execute", "guest-no-such-command"}});
    record("unknown command", unknown.contains("error") && unknown["error"]["class"] == "CommandNotFound",
           unknown.dump());
  }

  // The host goes away mid-freeze; then it reconnects.
  {
    (void)client->call({{"execute", "guest-fsfreeze-freeze"}});
    (void)vm.run("qt-timed-write " + agent + "-gone /mnt/data/probe");
    const auto frozen_at = Clock::now();
    client.reset();
    // Quiesce ends a qga session at its window; qemu-ga has none and stays
    // frozen, so the wait is bounded and the reconnect below thaws it.
    const auto write = wait_write(agent + "-gone", std::chrono::seconds(qga_window_ms / 1000 + 3));
    if (write) {
      report.disconnect_frozen_ms = ms_since(frozen_at);
      report.disconnect_outcome = "thawed by itself";
    } else {
      report.disconnect_outcome = "still frozen " + std::to_string(qga_window_ms / 1000 + 3) + " s later";
    }
    report.results["disconnect mid-freeze"] = report.disconnect_outcome;
    client = connect_agent(6000);
    // What the host finds, then the thaw a stack sends when its snapshot
    // job ends either way: qemu-ga is still frozen and thaws 1; Quiesce has
    // thawed at its window and answers this one thaw with an error saying
    // the hold broke (docs/qga.md, "The freeze window"); its session ended
    // when the window thawed, so the native API was never kept out.
    report.status_after_reconnect = client->call({{"execute", "guest-fsfreeze-status"}});
    report.thaw_after_reconnect = client->call({{"execute", "guest-fsfreeze-thaw"}});
    report.results["thaw after reconnect"] = report.thaw_after_reconnect.dump().substr(0, 60);
    const auto status = client->call({{"execute", "guest-fsfreeze-status"}});
    const auto done = wait_write(agent + "-gone", 10s);
    record("reconnect, thawed, write done", status == json{{"return", "thawed"}} && done.has_value(),
           status.dump());
  }
}

std::map<std::string, AgentReport>& reports() {
  static std::map<std::string, AgentReport> all;
  return all;
}

std::string format_ms(double ms) {
  if (ms < 0) {
    return "-";
  }
  std::ostringstream out;
  out << std::fixed << std::setprecision(0) << ms << " ms";
  return out.str();
}

}  // namespace

TEST_SUITE("initramfs qga") {

TEST_CASE("qga protocol against Quiesce on virtio-serial") {
  auto& report = reports()["quiesce"];
  try {
    run_protocol_checks("quiesce", report);
  } catch (const std::exception& e) {
    FAIL(e.what() << "\nthe agent's log:\n" << agent_log("quiesce"));
  }
  // Quiesce's qga sessions end at their window when the host is gone.
  CHECK_MESSAGE(report.disconnect_frozen_ms >= 0, "quiesce stayed frozen after the host went away");
  CHECK_MESSAGE(report.disconnect_frozen_ms <= qga_window_ms + 1500,
                "quiesce thawed " << report.disconnect_frozen_ms << " ms after the freeze, window "
                                  << qga_window_ms << " ms");
  CHECK(report.status_after_reconnect == json{{"return", "thawed"}});
  const auto& thaw = report.thaw_after_reconnect;
  CHECK_MESSAGE((thaw.contains("error") &&
                 thaw["error"]["desc"].get<std::string>().find("did not hold") != std::string::npos),
                "the first thaw after the window: " << thaw.dump());
}

TEST_CASE("vsock in the guest: the native API and the qga listener on vsock_loopback") {
  auto& vm = guest();
  const auto endpoint = "vsock:1:" + std::to_string(native_vsock_port);
  const auto status = vm.run("quiescectl --connect " + endpoint + " status");
  CHECK_MESSAGE(status.ok(), "quiescectl status over vsock:\n" << status.output << agent_log("quiesce"));
  const auto run = vm.run("quiescectl --connect " + endpoint + " run --freeze-window-ms 8000", 60s);
  CHECK_MESSAGE(run.ok(), "quiescectl run over vsock:\n"
                              << run.output << "\nstatus before it:\n" << status.output);
  const auto qga = vm.run("printf '%s\\n' '{\"execute\":\"guest-sync\",\"arguments\":{\"id\":77}}' "
                          "'{\"execute\":\"guest-fsfreeze-status\"}' | socat -t 3 - VSOCK-CONNECT:1:" +
                          std::to_string(qga_vsock_port));
  // Compare replies as JSON: qemu-ga writes `{"return": 77}`, Quiesce `{"return":77}`.
  std::vector<json> replies;
  std::istringstream lines(qga.output);
  for (std::string line; std::getline(lines, line);) {
    if (auto reply = json::parse(line, nullptr, false); !reply.is_discarded()) {
      replies.push_back(reply);
    }
  }
  const std::vector<json> expected{json{{"return", 77}}, json{{"return", "thawed"}}};
  CHECK_MESSAGE(replies == expected, "qga over vsock:\n" << qga.output);
}

TEST_CASE("the same checks against Debian's qemu-ga, side by side") {
  auto& vm = guest();
  const auto stop = vm.run("qt-agent stop quiesce");
  REQUIRE_MESSAGE(stop.ok(), stop.output);
  const auto start = vm.run("qt-agent start qemu-ga");
  REQUIRE_MESSAGE(start.ok(), start.output);
  auto& report = reports()["qemu-ga"];
  try {
    run_protocol_checks("qemu-ga", report);
  } catch (const std::exception& e) {
    FAIL_CHECK(e.what() << "\nqemu-ga's log:\n" << agent_log("qemu-ga"));
  }
  // qemu-ga has no window: still frozen when the host comes back.
  CHECK(report.status_after_reconnect == json{{"return", "frozen"}});
  CHECK(report.thaw_after_reconnect == json{{"return", 1}});

  const auto& quiesce = reports()["quiesce"];
  std::ostringstream table;
  table << std::left << std::setw(46) << "check" << std::setw(28) << "Quiesce" << "qemu-ga\n";
  std::map<std::string, bool> checks;
  for (const AgentReport* one : {&quiesce, static_cast<const AgentReport*>(&report)}) {
    for (const auto& result : one->results) {
      checks[result.first] = true;
    }
  }
  auto outcome = [](const AgentReport& of, const std::string& check) {
    const auto it = of.results.find(check);
    std::string text = it == of.results.end() ? "(not run)" : it->second;
    text = text.substr(0, text.find('\n'));
    return text.substr(0, 26);
  };
  for (const auto& [check, seen] : checks) {
    table << std::setw(46) << check << std::setw(28) << outcome(quiesce, check) << outcome(report, check)
          << "\n";
  }
  table << std::setw(46) << "freeze (host round trip)" << std::setw(28) << format_ms(quiesce.freeze_ms)
        << format_ms(report.freeze_ms) << "\n";
  table << std::setw(46) << "thaw (host round trip)" << std::setw(28) << format_ms(quiesce.thaw_ms)
        << format_ms(report.thaw_ms) << "\n";
  table << std::setw(46) << "guest write blocked by the freeze" << std::setw(28)
        << format_ms(quiesce.write_blocked_ms) << format_ms(report.write_blocked_ms) << "\n";
  table << std::setw(46) << "frozen after the host went away" << std::setw(28)
        << format_ms(quiesce.disconnect_frozen_ms) << report.disconnect_outcome << "\n";
  std::cout << "\nqga on virtio-serial, side by side (" << vm.boot().image_dir.filename().string() << "):\n"
            << table.str() << std::endl;
}

}  // TEST_SUITE
