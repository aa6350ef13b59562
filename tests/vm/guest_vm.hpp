#pragma once
// A Debian 12 guest with systemd under QEMU (TCG), for tests that need the
// installed service in a real guest (docs/testing-in-a-guest.md).
//
// The image comes from tests/vm/build-debian-image.sh (cached, keyed by its
// inputs); each GuestVm boots it through a fresh qcow2 overlay, with the
// agent build on a second disk (tests/vm/make-payload.sh) and a
// virtio-serial control port served in the guest by quiesce-test-runner,
// which keeps answering while "/" is frozen. The destructor kills QEMU and
// removes the run directory; when a test failed the directory is kept, with
// the serial console log and QEMU's own log.

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>

#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/vm/control_channel.hpp"

namespace quiesce::test {

class GuestVm {
 public:
  struct Options {
    std::filesystem::path build_dir;  // holds bin/quiesce-agent, ...
    int memory_mib = 768;
    int cpus = 1;
    std::chrono::seconds boot_timeout{300};
  };

  // Builds the image if it is not cached, makes the payload, boots, and
  // waits until the runner answers. Throws with the console's tail if not.
  explicit GuestVm(const Options& options);
  ~GuestVm();
  GuestVm(const GuestVm&) = delete;
  GuestVm& operator=(const GuestVm&) = delete;

  // Runs `command` under bash in the guest (one line, no newline), with the
  // runner's timeout `limit`. Throws when the channel gives no answer within
  // limit + a margin (the runner is stuck, e.g. on a frozen "/").
  GuestResult run(const std::string& command, std::chrono::seconds limit = std::chrono::seconds(30)) {
    return control_.run(command, limit);
  }

  // The guest's clock now (seconds), through the runner.
  double guest_now() { return control_.guest_now(); }

  // Powers the VM off without the guest's help, as a hypervisor does to
  // apply a checkpoint (QEMU quits: the disks keep what the guest had written
  // to them, nothing else), then boots it again from the same disks and
  // waits until the runner answers. Returns the seconds to runner ready.
  double power_cycle(std::chrono::seconds boot_timeout = std::chrono::seconds(300));

  [[nodiscard]] double image_seconds() const { return image_seconds_; }  // 0 when cached
  [[nodiscard]] double boot_seconds() const { return boot_seconds_; }    // QEMU start to runner ready
  [[nodiscard]] const std::filesystem::path& console_log() const { return console_log_; }
  [[nodiscard]] const std::filesystem::path& image_dir() const { return image_dir_; }
  // The last `lines` lines of the serial console, for failure messages.
  [[nodiscard]] std::string console_tail(std::size_t lines = 40) const { return file_tail(console_log_, lines); }

 private:
  void boot(std::chrono::seconds timeout);
  void shut_down();

  TempDir run_dir_{"quiesce-vm"};
  std::filesystem::path image_dir_;
  std::filesystem::path console_log_;
  std::filesystem::path control_socket_;
  std::filesystem::path overlay_;
  std::filesystem::path payload_;
  Options options_;
  int boots_ = 0;
  std::optional<ChildProcess> qemu_;
  ControlChannel control_;
  double image_seconds_ = 0;
  double boot_seconds_ = 0;
};

}  // namespace quiesce::test
