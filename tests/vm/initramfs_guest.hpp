#pragma once
// A small guest for protocol tests: Debian's kernel with the busybox
// initramfs of tests/vm/build-initramfs-guest.sh (cached, keyed by its
// inputs) and a per-run payload archive appended to it
// (tests/vm/make-initramfs-payload.sh: the agent build, its config, which
// agent /init starts). Booted under QEMU (TCG) with:
//   - a virtio-blk data disk: qcow2 over an ext4 image labelled quiesce-data,
//     mounted by /init at /mnt/data (what the tests freeze);
//   - the qga channel, virtio-serial port org.qemu.guest_agent.0, whose host
//     end is a Unix socket (chardev socket, server, no wait) as libvirt and
//     Proxmox set it up;
//   - the control channel org.quiesce.test.0 (ControlChannel), served by
//     quiesce-test-runner from the initramfs, so it answers while the data
//     disk is frozen;
//   - the serial console to a file, printed when the boot fails.
// About 3 s of guest time from the kernel to the runner under TCG.
// docs/testing-in-a-guest.md, "The initramfs guest".

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>

#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/vm/control_channel.hpp"

namespace quiesce::test {

// Which agent the guest's /init starts (tests can switch with `qt-agent`).
enum class GuestAgent { quiesce, qemu_ga, none };

// What any VM needs to boot the initramfs guest: QEMU's -kernel/-initrd/
// -append here, a libvirt domain's <kernel>/<initrd>/<cmdline> in the
// libvirt test. The guest expects virtio-serial ports org.quiesce.test.0
// (control) and org.qemu.guest_agent.0 (qga), and optionally one virtio-blk
// disk with an ext4 filesystem labelled quiesce-data.
struct InitramfsBoot {
  std::filesystem::path image_dir;  // the cached image (manifest, build.log)
  std::filesystem::path kernel;     // <image>/vmlinuz
  std::filesystem::path initrd;     // the image's initrd with the payload appended
  std::filesystem::path payload;    // the payload archive alone (newc cpio)
  std::string cmdline;              // <image>/cmdline
  double image_seconds = 0;         // time spent building the image; 0 when cached
};

struct InitramfsPayload {
  std::filesystem::path build_dir;  // bin/quiesce-agent, ...; empty: no Quiesce binaries
  GuestAgent agent = GuestAgent::quiesce;
  std::string agent_config;         // JSON for /etc/quiesce/agent.json; empty: none
};

// Builds the image if it is not cached, and writes the payload and the
// combined initrd into `out_dir`. Throws with the scripts' output on failure.
InitramfsBoot prepare_initramfs_boot(const InitramfsPayload& payload, const std::filesystem::path& out_dir);

// An ext4 filesystem image of `size_mib` labelled quiesce-data, as a qcow2
// file at `qcow2` (the raw image beside it is removed).
void make_data_disk(const std::filesystem::path& qcow2, int size_mib);

class InitramfsGuest {
 public:
  struct Options {
    InitramfsPayload payload;
    int data_disk_mib = 64;  // 0: no data disk
    int memory_mib = 512;
    int cpus = 1;
    std::chrono::seconds boot_timeout{120};
  };

  // Prepares the boot, makes the data disk, starts QEMU and waits until the
  // runner answers. Throws with the console's tail if it does not.
  explicit InitramfsGuest(const Options& options);
  ~InitramfsGuest();
  InitramfsGuest(const InitramfsGuest&) = delete;
  InitramfsGuest& operator=(const InitramfsGuest&) = delete;

  GuestResult run(const std::string& command, std::chrono::seconds limit = std::chrono::seconds(30)) {
    return control_.run(command, limit);
  }
  double guest_now() { return control_.guest_now(); }

  // The host end of org.qemu.guest_agent.0.
  [[nodiscard]] const std::filesystem::path& qga_socket() const { return qga_socket_; }
  [[nodiscard]] const InitramfsBoot& boot() const { return boot_; }
  [[nodiscard]] const std::filesystem::path& run_dir() const { return run_dir_.path(); }
  [[nodiscard]] const std::filesystem::path& console_log() const { return console_log_; }
  [[nodiscard]] std::string console_tail(std::size_t lines = 40) const { return file_tail(console_log_, lines); }
  [[nodiscard]] double boot_seconds() const { return boot_seconds_; }  // QEMU start to runner ready

 private:
  void shut_down();

  TempDir run_dir_{"quiesce-initramfs-vm"};
  InitramfsBoot boot_;
  std::filesystem::path console_log_;
  std::filesystem::path control_socket_;
  std::filesystem::path qga_socket_;
  std::optional<ChildProcess> qemu_;
  ControlChannel control_;
  double boot_seconds_ = 0;
};

}  // namespace quiesce::test
