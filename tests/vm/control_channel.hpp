#pragma once
// The host end of a guest's control channel: the virtio-serial port
// org.quiesce.test.0, served in the guest by quiesce-test-runner
// (tests/vm/guest/payload/), reached through the Unix socket QEMU (or
// libvirt) gives its chardev. Both guest fixtures (GuestVm, InitramfsGuest)
// and the libvirt test talk to their guest through it.
//
//   request  <id> <timeout_s> <command>
//   reply    R <id> <exit code> <guest start> <guest end> <escaped output>

#include <chrono>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"

namespace quiesce::test {

// One command's result as the guest runner reports it.
struct GuestResult {
  int exit_code = -1;      // 124: the runner's timeout ended it
  double started = 0;      // guest CLOCK_REALTIME, seconds
  double ended = 0;
  std::string output;      // stdout and stderr together
  [[nodiscard]] bool ok() const { return exit_code == 0; }
};

class ControlChannel {
 public:
  using Clock = std::chrono::steady_clock;

  ControlChannel() = default;
  ~ControlChannel();
  ControlChannel(const ControlChannel&) = delete;
  ControlChannel& operator=(const ControlChannel&) = delete;

  // Connects to `socket_path` (retrying while the VM starts and the socket
  // does not exist yet), then asks until the runner answers: requests sent
  // before the runner opened its port may be lost. `vm_alive` tells when to
  // stop waiting for a VM that died. Throws when the deadline passes.
  void connect(const std::filesystem::path& socket_path, Clock::time_point deadline,
               const std::function<bool()>& vm_alive);

  // Runs `command` under bash in the guest (one line, no newline), with the
  // runner's timeout `limit`. Throws when the channel gives no answer within
  // limit + a margin (the runner is stuck).
  GuestResult run(const std::string& command, std::chrono::seconds limit = std::chrono::seconds(30));

  // The guest's clock now (seconds), through the runner.
  double guest_now();

  void close();
  [[nodiscard]] bool connected() const { return fd_ >= 0; }

 private:
  void send_line(const std::string& line);
  std::optional<std::string> read_line(Clock::time_point deadline);

  int fd_ = -1;
  std::string pending_;  // bytes read past the last line
  unsigned next_id_ = 1;
};

// Waits for the runner of a guest `qemu` is booting (ControlChannel::connect).
// When it does not answer by `deadline`, stops QEMU, keeps the run directory
// (note_test_failed) and throws with the tail of the serial console.
void connect_booting_guest(ControlChannel& control, const std::filesystem::path& socket_path,
                           ControlChannel::Clock::time_point deadline, ChildProcess& qemu,
                           const std::filesystem::path& console_log);

// The last `lines` lines of a text file (a serial console log), for failure
// messages; empty when the file cannot be read.
std::string file_tail(const std::filesystem::path& path, std::size_t lines = 40);

// Ends a test VM's QEMU. Nothing in a test guest needs a clean shutdown
// (its disks are thrown away): SIGTERM lets QEMU close its files, SIGKILL
// if it does not go within 5 s.
void stop_qemu(ChildProcess& qemu);

// The last non-empty line of a command's output (the image scripts print
// their result there, progress above it).
std::string last_line(const std::string& text);

}  // namespace quiesce::test
