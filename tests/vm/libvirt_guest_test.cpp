// Issue #12, item 5 "libvirt": libvirt drives Quiesce in a booted guest with
// nothing changed on the host. A private libvirtd (LibvirtDaemon) runs the
// initramfs guest as a transient domain of type qemu (TCG) with the qga
// channel as libvirt users write it, and the cases call virsh as a user
// would: domfsfreeze/domfsthaw, domfsinfo, guestinfo, domtime,
// qemu-agent-command, and snapshot-create-as --quiesce on a qcow2 disk while
// SQLite commits in the guest.
//
// One daemon and one domain for the file's cases, in order; the last case
// tears both down so the binary's other guests do not share the 2 cores
// with it. docs/testing-in-a-guest.md ("libvirt") says how to debug.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "tests/vm/control_channel.hpp"
#include "tests/vm/initramfs_guest.hpp"
#include "tests/vm/libvirt_daemon.hpp"
#include "tests/vm/libvirt_domain.hpp"

namespace {

using quiesce::test::ControlChannel;
using quiesce::test::GuestResult;
using quiesce::test::LibvirtDaemon;
using quiesce::test::VirshResult;
using nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr const char* domain_name = "quiesce-libvirt-guest";
constexpr const char* database = "/mnt/data/app.db";
constexpr const char* ack_log = "/run/quiesce-test/acks";  // tmpfs: never on the disk being frozen

// The agent in the guest: a sqlite writer for the workload's database and
// the fsfreeze writer for the data disk, the qga protocol on the virtio-serial
// port libvirt connects to. The qga window (8 s) is far above what libvirt
// holds a freeze for here (domfsfreeze to domfsthaw ~2 s, a snapshot < 1 s).
std::string agent_config() {
  return json{{"listen", {{"unix", {{"path", "/run/quiesce/agent.sock"}, {"mode", "0660"}}}, {"vsock", false}}},
              {"session", {{"freeze_window_ms", 8000}, {"max_freeze_window_ms", 10000}}},
              {"log", {{"target", "stderr"}, {"level", "info"}}},
              {"writers",
               {{{"type", "sqlite"}, {"name", "app-db"}, {"options", {{"databases", {database}}}}},
                {{"type", "fsfreeze"}, {"name", "data"}, {"options", {{"mounts", {"/mnt/data"}}}}}}},
              {"qga",
               {{"virtio_serial_path", "/dev/virtio-ports/org.qemu.guest_agent.0"}, {"freeze_window_ms", 8000}}}}
      .dump(2);
}

// libvirtd, the domain and the control channel, for the file's cases.
struct LibvirtGuest {
  LibvirtDaemon daemon;
  ControlChannel control;
  std::filesystem::path data_disk;
  double runner_seconds = 0;  // domain created to the guest's control runner answering
  double boot_seconds = 0;    // domain created to the agent answering through libvirt
  double daemon_seconds = 0;

  LibvirtGuest() {
    daemon_seconds = daemon.start_seconds();
    quiesce::test::InitramfsPayload payload;
    payload.build_dir = QUIESCE_BUILD_DIR;
    // Started by the test once the database exists: the sqlite writer
    // refuses a config whose database file is missing.
    payload.agent = quiesce::test::GuestAgent::none;
    payload.agent_config = agent_config();
    const auto boot = quiesce::test::prepare_initramfs_boot(payload, daemon.dir());
    data_disk = daemon.dir() / "data.qcow2";
    quiesce::test::make_data_disk(data_disk, 64);
    quiesce::test::LibvirtDomainSpec spec;
    spec.name = domain_name;
    spec.kernel = boot.kernel;
    spec.initrd = boot.initrd;
    spec.cmdline = boot.cmdline;
    spec.data_disk = data_disk;
    spec.control_socket = daemon.dir() / "control.sock";
    spec.console_log = daemon.dir() / "console.log";
    const auto started = Clock::now();
    (void)daemon.create_domain(quiesce::test::libvirt_domain_xml(spec));
    control.connect(spec.control_socket, Clock::now() + 120s, [this] {
      return daemon.virsh({"domstate", domain_name}, 10s).output.find("running") != std::string::npos;
    });
    runner_seconds = std::chrono::duration<double>(Clock::now() - started).count();
    const auto setup = control.run(std::string("sqlite3 ") + database +
                                   " 'CREATE TABLE acks(n INTEGER PRIMARY KEY, t REAL)' && sync && "
                                   "qt-agent start quiesce");
    if (!setup.ok()) {
      throw std::runtime_error("guest setup failed: " + setup.output);
    }
    // libvirt connects to the agent's channel itself; the agent is ready
    // when a command through libvirt answers.
    std::string last;
    for (;;) {
      const auto ping = daemon.virsh({"qemu-agent-command", domain_name, R"({"execute":"guest-ping"})"}, 20s);
      if (ping.ok()) {
        break;
      }
      last = ping.output;
      if (Clock::now() - started > 120s) {
        throw std::runtime_error("the agent did not answer through libvirt within 120 s: " + last +
                                 "\nagent log:\n" + control.run("tail -n 30 /run/quiesce-agent.log").output +
                                 "\nconsole:\n" + quiesce::test::file_tail(spec.console_log));
      }
      std::this_thread::sleep_for(500ms);
    }
    boot_seconds = std::chrono::duration<double>(Clock::now() - started).count();
  }

  VirshResult virsh(const std::vector<std::string>& args, std::chrono::seconds limit = 120s) {
    return daemon.virsh(args, limit);
  }
  GuestResult run(const std::string& command, std::chrono::seconds limit = 30s) {
    return control.run(command, limit);
  }
};

std::unique_ptr<LibvirtGuest>& guest_slot() {
  static std::unique_ptr<LibvirtGuest> guest;
  return guest;
}

// One daemon and one domain for the file; a start that failed is not tried again.
LibvirtGuest& libvirt_guest() {
  static std::string start_error;
  auto& guest = guest_slot();
  if (!guest && start_error.empty()) {
    try {
      guest = std::make_unique<LibvirtGuest>();
      std::cout << "libvirt: libvirtd ready in " << std::fixed << std::setprecision(1) << guest->daemon_seconds
                << " s; domain created to runner ready " << guest->runner_seconds
                << " s, to the agent answering through libvirt " << guest->boot_seconds << " s; "
                << guest->daemon.dir() << std::endl;
    } catch (const std::exception& e) {
      start_error = e.what();
    }
  }
  if (!guest) {
    FAIL("the libvirt guest did not start: " << start_error);
  }
  return *guest;
}

// The JSON a `virsh qemu-agent-command` printed.
json agent_reply(const VirshResult& result) {
  const auto brace = result.output.find('{');
  return brace == std::string::npos ? json() : json::parse(result.output.substr(brace), nullptr, false);
}

// Waits for a qt-timed-write to come back; its "<started> <done>" or "pending".
std::string wait_write(LibvirtGuest& guest, const std::string& name, std::chrono::seconds limit) {
  const auto deadline = Clock::now() + limit;
  for (;;) {
    auto result = guest.run("qt-write-result " + name).output;
    if (result.find("pending") == std::string::npos || Clock::now() >= deadline) {
      return result;
    }
    std::this_thread::sleep_for(200ms);
  }
}

}  // namespace

TEST_CASE("libvirt: a private libvirtd runs the qemu driver (TCG) from the test's own directory") {
  auto& daemon = libvirt_guest().daemon;
  const auto version = daemon.virsh({"version"});
  INFO(version.output);
  CHECK(version.ok());
  CHECK(version.output.find("Running hypervisor: QEMU") != std::string::npos);
  // The domain type the guest uses: qemu (TCG); KVM does not run guests here.
  const auto caps = daemon.virsh({"domcapabilities", "--virttype", "qemu", "--arch", "x86_64"});
  INFO(caps.output);
  CHECK(caps.ok());
  CHECK(caps.output.find("<domain>qemu</domain>") != std::string::npos);
  // Its socket is the test's, not a system daemon's.
  CHECK(daemon.uri().find(daemon.dir().string()) != std::string::npos);
}

TEST_CASE("libvirt: qemu-agent-command guest-info reaches Quiesce, not qemu-ga") {
  auto& guest = libvirt_guest();
  const auto result = guest.virsh({"qemu-agent-command", domain_name, R"({"execute":"guest-info"})"});
  INFO(result.output);
  REQUIRE(result.ok());
  const auto reply = agent_reply(result);
  REQUIRE(reply.contains("return"));
  std::map<std::string, bool> enabled;
  for (const auto& command : reply["return"]["supported_commands"]) {
    enabled[command.value("name", "")] = command.value("enabled", false);
  }
  CHECK(enabled["guest-fsfreeze-freeze"]);
  CHECK(enabled["guest-fsfreeze-thaw"]);
  CHECK(enabled.count("quiesce-api") == 1);  // only Quiesce has it
}

TEST_CASE("libvirt: virsh domfsfreeze holds writes on the data disk until domfsthaw") {
  auto& guest = libvirt_guest();
  const auto freeze = guest.virsh({"domfsfreeze", domain_name}, 30s);
  INFO("domfsfreeze: " << freeze.output);
  REQUIRE(freeze.ok());
  CHECK(freeze.output.find("Froze 1 filesystem(s)") != std::string::npos);
  CHECK(guest.run("qt-timed-write frozen /mnt/data/probe").ok());
  std::this_thread::sleep_for(1500ms);
  const auto during = guest.run("qt-write-result frozen").output;
  const double thaw_asked_at = guest.run("true").ended;
  const auto thaw = guest.virsh({"domfsthaw", domain_name}, 30s);
  INFO("domfsthaw: " << thaw.output);
  CHECK_MESSAGE(during.find("pending") != std::string::npos, "a write went through while frozen: " << during);
  CHECK(thaw.ok());
  CHECK(thaw.output.find("Thawed 1 filesystem(s)") != std::string::npos);
  const auto after = wait_write(guest, "frozen", 10s);
  CHECK_MESSAGE(after.find("pending") == std::string::npos, "the write still blocks after domfsthaw");
  std::istringstream times(after);
  double started = 0;
  double done = 0;
  times >> started >> done;
  std::ostringstream figures;
  figures << std::fixed << std::setprecision(2) << "domfsfreeze " << freeze.seconds << " s, domfsthaw "
          << thaw.seconds << " s, the write blocked " << done - started << " s";
  MESSAGE(figures.str());
  // It came back only once the thaw was asked for (guest clock).
  CHECK(done >= thaw_asked_at);
  const auto status = guest.virsh({"qemu-agent-command", domain_name, R"({"execute":"guest-fsfreeze-status"})"});
  CHECK(status.output.find("thawed") != std::string::npos);
}

TEST_CASE("libvirt: virsh domfsinfo, guestinfo and domtime") {
  auto& guest = libvirt_guest();
  const auto fsinfo = guest.virsh({"domfsinfo", domain_name});
  INFO("domfsinfo:\n" << fsinfo.output);
  REQUIRE(fsinfo.ok());
  // libvirt maps the guest's disk (PCI address, serial) back to its target.
  bool data_disk_row = false;
  std::istringstream rows(fsinfo.output);
  std::string row;
  while (std::getline(rows, row)) {
    std::istringstream fields(row);
    std::string mountpoint, name, type, target;
    fields >> mountpoint >> name >> type >> target;
    if (mountpoint == "/mnt/data") {
      data_disk_row = type == "ext4" && target == "vda";
    }
  }
  CHECK_MESSAGE(data_disk_row, "no row '/mnt/data ... ext4 vda'");

  const auto info = guest.virsh({"guestinfo", domain_name});
  INFO("guestinfo:\n" << info.output);
  REQUIRE(info.ok());
  CHECK(info.output.find("hostname") != std::string::npos);
  CHECK(info.output.find("os.kernel-release") != std::string::npos);
  CHECK(info.output.find("timezone.name") != std::string::npos);
  CHECK(info.output.find("/mnt/data") != std::string::npos);
  CHECK(info.output.find("quiesce-data") != std::string::npos);  // the disk's serial

  const auto time = guest.virsh({"domtime", domain_name});
  INFO("domtime: " << time.output);
  REQUIRE(time.ok());
  long long guest_seconds = 0;
  std::istringstream(time.output.substr(time.output.find(':') + 1)) >> guest_seconds;
  const double guest_clock = guest.run("true").ended;
  // The agent's answer is the guest's clock (not the host's): within a few
  // seconds of what the runner reads there.
  CHECK(std::abs(static_cast<double>(guest_seconds) - guest_clock) < 5.0);
}

TEST_CASE("libvirt: snapshot-create-as --quiesce while SQLite commits holds every acknowledged row") {
  auto& guest = libvirt_guest();
  // The workload: one sqlite3 process per row (a busy timeout far above the
  // hold), then its acknowledgement "ack N <guest time>" on tmpfs. fd 3 is
  // the runner's port: the background loop must not keep it open.
  const std::string loop =
      std::string("n=0; while [ ! -e /run/quiesce-test/stop-workload ]; do n=$((n+1)); ") + "sqlite3 -cmd '.timeout 60000' " +
      database + " \"INSERT INTO acks(n, t) VALUES($n, $EPOCHREALTIME)\" || exit 1; " +
      "echo \"ack $n $EPOCHREALTIME\" >>" + ack_log + "; done";
  std::string quoted;
  for (const char c : loop) {
    quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  }
  REQUIRE(guest.run("setsid bash -c '" + quoted +
                    "' </dev/null >/dev/null 2>/run/quiesce-test/workload.err 3>&- & echo started")
              .ok());
  std::this_thread::sleep_for(4s);  // rows before the snapshot

  // The freeze cannot begin before the host asks: every row acknowledged
  // before this guest time must be in the snapshot.
  const double asked_at = guest.run("true").ended;
  const auto overlay = guest.daemon.dir() / "data-after-snapshot.qcow2";
  const auto snapshot =
      guest.virsh({"snapshot-create-as", domain_name, "quiesced", "--disk-only", "--quiesce", "--atomic",
                   "--no-metadata", "--diskspec", "vda,file=" + overlay.string()},
                  60s);
  INFO("snapshot-create-as: " << snapshot.output);
  REQUIRE(snapshot.ok());
  std::this_thread::sleep_for(2s);  // rows after it
  const auto acks = guest.run(std::string("touch /run/quiesce-test/stop-workload; sleep 1; cat ") + ack_log +
                              "; cat /run/quiesce-test/workload.err");

  // The agent's record of the qga session libvirt ran: its id from the
  // native API through libvirt (quiesce-api), its hold from quiescectl.
  const auto sessions = agent_reply(guest.virsh(
      {"qemu-agent-command", domain_name,
       R"({"execute":"quiesce-api","arguments":{"method":"GET","path":"/v1/sessions"}})"}));
  std::string session_id;
  if (sessions.contains("return")) {
    for (const auto& s : sessions["return"]["body"]["sessions"]) {
      if (s.value("origin", "") == "qga") {
        session_id = s.value("id", "");
      }
    }
  }
  CHECK_MESSAGE(!session_id.empty(), "no qga session in GET /v1/sessions: " << sessions.dump());
  const auto shown = guest.run("quiescectl --json session show " + session_id);
  const auto session = json::parse(shown.output, nullptr, false);
  const bool continuous = session.is_object() && session["verdict"].value("continuous", false);
  const double hold_ms = session.is_object() ? session["verdict"].value("hold_ms", -1.0) : -1.0;
  CHECK_MESSAGE(continuous, "quiescectl session show: " << shown.output);
  CHECK(session.is_object());
  if (session.is_object()) {
    std::vector<std::string> writers;
    for (const auto& w : session["writers"]) {
      writers.push_back(w.value("name", "") + "=" + w.value("state", ""));
    }
    MESSAGE("session " << session_id << " writers: " << json(writers).dump());
  }

  // The snapshot: the data disk's image as it was at the snapshot is now
  // the overlay's backing file, which QEMU only reads.
  const auto dir = guest.daemon.dir();
  std::string output;
  REQUIRE_MESSAGE(quiesce::test::run_command({"qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw",
                                              guest.data_disk.string(), (dir / "snapshot.raw").string()},
                                             &output) == 0,
                  output);
  output.clear();
  (void)quiesce::test::run_command({"dumpe2fs", "-h", (dir / "snapshot.raw").string()}, &output);
  // A frozen ext4 has its journal flushed: the snapshot needs no recovery.
  CHECK_MESSAGE(output.find("needs_recovery") == std::string::npos, output);
  std::filesystem::create_directories(dir / "snapshot-mnt");
  output.clear();
  REQUIRE_MESSAGE(quiesce::test::run_command({"mount", "-o", "ro,loop", (dir / "snapshot.raw").string(),
                                              (dir / "snapshot-mnt").string()},
                                             &output) == 0,
                  "mount of the snapshot: " << output);
  std::error_code ignored;
  std::filesystem::copy_file(dir / "snapshot-mnt/app.db", dir / "snapshot.db", ignored);
  const bool had_journal = std::filesystem::exists(dir / "snapshot-mnt/app.db-journal") ||
                           std::filesystem::exists(dir / "snapshot-mnt/app.db-wal");
  (void)quiesce::test::run_command({"umount", (dir / "snapshot-mnt").string()});
  CHECK_FALSE(had_journal);
  std::string integrity;
  (void)quiesce::test::run_command({"sqlite3", (dir / "snapshot.db").string(), "PRAGMA integrity_check"},
                                   &integrity);
  CHECK_MESSAGE(integrity == "ok\n", "integrity_check: " << integrity);
  std::string rows_text;
  REQUIRE(quiesce::test::run_command({"sqlite3", (dir / "snapshot.db").string(), "SELECT n FROM acks"},
                                     &rows_text) == 0);
  std::set<long> rows;
  std::istringstream row_lines(rows_text);
  for (long n = 0; row_lines >> n;) {
    rows.insert(n);
  }

  long acked = 0;
  long acked_before = 0;
  long missing = 0;
  std::istringstream ack_lines(acks.output);
  std::string word;
  long n = 0;
  double at = 0;
  while (ack_lines >> word) {
    if (word != "ack" || !(ack_lines >> n >> at)) {
      continue;
    }
    ++acked;
    if (at < asked_at) {
      ++acked_before;
      if (rows.count(n) == 0) {
        ++missing;
      }
    }
  }
  std::ostringstream figures;
  figures << std::fixed << std::setprecision(2) << "libvirt snapshot: " << acked << " rows acknowledged, "
          << acked_before << " before the snapshot was asked for, " << rows.size() << " in the snapshot, "
          << missing << " missing; snapshot-create-as took " << snapshot.seconds << " s; hold " << hold_ms
          << " ms (quiescectl), continuous " << continuous;
  MESSAGE(figures.str());
  CHECK(acked_before > 0);
  CHECK(acked > acked_before);  // the workload went on after the thaw
  CHECK(missing == 0);
  CHECK(acks.output.find("Error") == std::string::npos);
}

TEST_CASE("libvirt: tear down (domain destroyed, daemon stopped)") {
  guest_slot().reset();
}
