#pragma once
// A VM of kind "qemu": quiesce-host runs QEMU itself. A VM is a directory:
//
//   <vm>/vm.json                what the machine is (below)
//   <vm>/qemu-command.json      the exact argv of the last start, kept after
//                               power-off: restoring memory state needs the
//                               same machine
//   <vm>/active-disks.json      the file each disk runs from (its top layer),
//                               when that is not the configured image
//   <vm>/disks/<name>.top-*.qcow2  top layers made at power-off (below)
//   <vm>/run/                   while on: qmp.sock, qga.sock (the agent's
//                               channel), qemu.pid, the channels' sockets
//   <vm>/logs/console.log       the serial console
//   <vm>/checkpoints/           the checkpoint store
//
// vm.json:
//   {"kind": "qemu", "name": "demo",
//    "memory_mib"?: 512, "vcpus"?: 1,
//    "accel"?: "kvm" | "tcg",         default: kvm when /dev/kvm can be opened, else tcg
//    "machine"?: "pc",
//    "kernel"?: PATH, "initrd"?: PATH, "cmdline"?: "...",  a direct kernel boot, or
//    "boot_disk"?: NAME,              boot from that disk of "disks" (bootindex 0)
//    "disks": [{"name": "data", "image": "disks/data.qcow2"}],   qcow2 images, existing
//    "agent"?: {"channel": "virtio-serial"},  org.qemu.guest_agent.0 at run/qga.sock,
//                                     spoken to with the qga client transport
//                                     (quiesce-api; a stock qemu-ga falls back)
//    "channels"?: [{"name": "org.example.0", "socket": "run/example.sock"}],
//                                     more virtio-serial ports, host end a Unix socket
//    "shutdown_timeout_s"?: 60,       ACPI power-down deadline before the hard stop
//    "boot_timeout_s"?: 300,          how long `up` waits for the agent to answer
//    "qemu"?: "/usr/bin/qemu-system-x86_64",
//    "checkpoint_type"?: "production" (falls back to standard) | "production-only" |
//                       "standard" | "disabled": what `checkpoint create` takes
//                       without --type, as Hyper-V's setting; default production
//    "memory_save_bandwidth_mib_s"?: N,  how fast a standard checkpoint writes the
//                                     VM's state (QEMU's max-bandwidth); default
//                                     unlimited: the VM is paused while it is written
//    "backend"?: {...}}               default: {"type": "qmp"} over run/qmp.sock
//
// Paths are relative to the VM directory unless absolute. Each disk is
// attached as -drive id=disk-<name>, which is how QMP names it.
//
// Why the top layer moves: a checkpoint (qmp backend) switches each disk to
// an overlay in the checkpoint, and the image it wrote to until then becomes
// the checkpoint's frozen state. The VM must keep running from that overlay
// after a restart, and nothing may ever write into a file a checkpoint
// depends on. So at power-off, a disk whose top layer belongs to a
// checkpoint gets a fresh, empty top layer of its own (backed by it), which
// the next start and an apply (flattening the checkpoint into it) write to.
// Applying one checkpoint and taking new ones then leaves every older one
// intact.

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "host-bridge/checkpoint/checkpointer.hpp"
#include "host-bridge/qemu/memory_state.hpp"

namespace quiesce::host {

struct QemuDisk {
  std::string name;
  std::filesystem::path image;
};

struct QemuChannel {
  std::string name;  // the virtio-serial port name the guest sees
  std::filesystem::path socket;
};

// vm.json of kind qemu, checked.
struct QemuVmConfig {
  std::filesystem::path dir;
  std::string name;
  unsigned memory_mib = 512;
  unsigned vcpus = 1;
  std::string accel;  // "kvm" or "tcg", resolved
  std::string machine = "pc";
  std::filesystem::path kernel;
  std::filesystem::path initrd;
  std::string cmdline;
  std::string boot_disk;
  std::vector<QemuDisk> disks;
  bool agent_channel = true;
  std::vector<QemuChannel> channels;
  std::chrono::seconds shutdown_timeout{60};
  std::chrono::seconds boot_timeout{300};
  std::filesystem::path qemu = "/usr/bin/qemu-system-x86_64";
  nlohmann::json backend;  // as given, or the qmp default
  std::string checkpoint_type = "production";
  unsigned memory_save_bandwidth_mib_s = 0;  // 0: unlimited

  // Every error names the field; `kvm_usable` decides the default accel.
  [[nodiscard]] static Expected<QemuVmConfig> from_json(const nlohmann::json& json,
                                                        const std::filesystem::path& dir, bool kvm_usable);

  [[nodiscard]] std::filesystem::path run_dir() const { return dir / "run"; }
  [[nodiscard]] std::filesystem::path qmp_socket() const { return run_dir() / "qmp.sock"; }
  [[nodiscard]] std::filesystem::path qga_socket() const { return run_dir() / "qga.sock"; }
  [[nodiscard]] std::filesystem::path pid_file() const { return run_dir() / "qemu.pid"; }
  [[nodiscard]] std::filesystem::path console_log() const { return dir / "logs" / "console.log"; }
  [[nodiscard]] std::filesystem::path command_file() const { return dir / "qemu-command.json"; }
};

// Whether this host can run KVM guests (/dev/kvm opens read-write).
[[nodiscard]] bool kvm_usable();

// The QEMU argv for `config`; `extra` is appended (e.g. -incoming defer).
// Pure: the same config gives the same command line, which is what lets a
// checkpoint's memory state be loaded into the machine that saved it.
[[nodiscard]] std::vector<std::string> qemu_command_line(const QemuVmConfig& config,
                                                         const std::vector<std::string>& extra = {});

// How a power-off ended.
enum class PowerOffMethod { already_off, acpi, quit, kill };
// "acpi", "quit", ... (machine output) and a sentence (people).
[[nodiscard]] const char* key_of(PowerOffMethod method);
[[nodiscard]] const char* to_string(PowerOffMethod method);

class QemuVm final : public VirtualMachine {
 public:
  [[nodiscard]] static Expected<std::unique_ptr<QemuVm>> open(const std::filesystem::path& dir);

  [[nodiscard]] std::vector<DiskSpec> disks() const override;
  // QEMU's process is alive (its pid file names a live qemu).
  [[nodiscard]] bool running() const override;
  // ACPI power-down, then `quit` after shutdown_timeout, then SIGKILL.
  [[nodiscard]] Status power_off() override;
  // Starts QEMU (daemonized) and waits until the agent answers health.
  [[nodiscard]] Status power_on() override;
  [[nodiscard]] client::ClientOptions agent_client_options() const override;
  // Standard checkpoints with memory: migration to a file (memory_state.hpp).
  [[nodiscard]] VmStateCapture* state_capture() override { return memory_.get(); }

  // Power state, pid, QMP's run state, the accelerator, the agent's health.
  [[nodiscard]] nlohmann::json status() const;
  [[nodiscard]] const QemuVmConfig& config() const { return config_; }
  [[nodiscard]] std::filesystem::path checkpoints_dir() const { return config_.dir / "checkpoints"; }
  [[nodiscard]] const nlohmann::json& backend_config() const { return config_.backend; }
  // What the last power_off did.
  [[nodiscard]] PowerOffMethod last_power_off() const { return last_power_off_; }
  // QEMU's pid while on, else 0.
  [[nodiscard]] int qemu_pid() const;
  void set_progress(ProgressFn progress) { progress_ = std::move(progress); }

 private:
  QemuVm() = default;
  void report(const std::string& step, const std::string& detail = {}, std::optional<double> ms = {},
              bool failed = false) const;
  [[nodiscard]] bool wait_gone(int pid, std::chrono::milliseconds limit) const;
  // The top layer of each disk as QEMU reports it (query-block), or nothing
  // when QMP does not answer.
  [[nodiscard]] std::optional<std::map<std::string, std::string>> query_top_layers() const;
  // Records the top layers of a stopped VM, giving a fresh one to each
  // disk whose top layer belongs to a checkpoint.
  [[nodiscard]] Status settle_top_layers(const std::map<std::string, std::string>& tops);
  void load_active_disks();

  QemuVmConfig config_;
  std::unique_ptr<QemuMemoryState> memory_;
  PowerOffMethod last_power_off_ = PowerOffMethod::already_off;
  ProgressFn progress_;
};

}  // namespace quiesce::host
