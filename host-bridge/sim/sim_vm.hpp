#pragma once
// The simulated host: plays the hypervisor for one "VM" on this machine.
// A VM is a directory:
//
//   <vm>/vm.json          what the VM is (below)
//   <vm>/disks/*.img      its disks: ext4 images the sim makes on first power-on
//   <vm>/guest/...        where the guest sees them (loop-mounted while on)
//   <vm>/run/             volatile, like a guest's /run: the sim's record of
//                         what it attached and started, the agent's socket,
//                         config and run_dir. Power-off deletes it.
//   <vm>/logs/            the agent's and the services' logs
//   <vm>/checkpoints/     the checkpoint store
//
// vm.json:
//   {"kind"?: "sim", "name": "demo",
//    "disks": [{"name": "data", "size_mb": 128, "image"?: "disks/data.img",
//               "mount"?: "guest/data", "fstype"?: "ext4"}],
//    "state_disk"?: "data",        the disk holding the agent's state_dir (so
//                                  the restore marker is inside its snapshots)
//    "agent"?: {"binary"?: PATH, "writers"?: [...], "session"?: {...}, "log_level"?: "info"},
//    "services"?: [{"name": "db", "argv": [...]}],
//    "backend"?: {"type": "file"} | {"type": "command", ...}}
//
// In agent writers' string options and in service argv, {vm} is the VM
// directory and {mount:NAME} the mount point of disk NAME. Without
// "writers" the agent gets one fsfreeze writer over every disk.
// Power on: attach and mount the disks, start the real quiesce-agent and
// wait for its socket, then start the services (own process groups).
// Power off: SIGTERM the services, then the agent (which thaws anything it
// holds), SIGKILL after 10 s, unmount, detach, delete <vm>/run.

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "host-bridge/checkpoint/checkpointer.hpp"

namespace quiesce::host {

struct SimDisk {
  std::string name;
  std::filesystem::path image;
  std::filesystem::path mount;
  std::string fstype = "ext4";
  unsigned size_mb = 64;
};

struct SimService {
  std::string name;
  std::vector<std::string> argv;
};

class SimVm final : public VirtualMachine {
 public:
  // Reads and checks <dir>/vm.json; every error names the field.
  [[nodiscard]] static Expected<std::unique_ptr<SimVm>> open(const std::filesystem::path& dir);

  [[nodiscard]] std::vector<DiskSpec> disks() const override;
  // Powered on: the sim's record in <vm>/run exists (the agent may have died).
  [[nodiscard]] bool running() const override;
  [[nodiscard]] Status power_off() override;
  [[nodiscard]] Status power_on() override;
  [[nodiscard]] client::ClientOptions agent_client_options() const override;

  // Power state, disks and mounts, the agent's pid and health, services.
  [[nodiscard]] nlohmann::json status() const;

  [[nodiscard]] const std::filesystem::path& dir() const { return dir_; }
  [[nodiscard]] std::filesystem::path checkpoints_dir() const { return dir_ / "checkpoints"; }
  [[nodiscard]] const nlohmann::json& backend_config() const { return backend_; }
  [[nodiscard]] const std::vector<SimDisk>& sim_disks() const { return disks_; }
  [[nodiscard]] std::filesystem::path socket_path() const { return dir_ / "run" / "agent.sock"; }
  [[nodiscard]] std::filesystem::path state_file() const { return dir_ / "run" / "sim-state.json"; }
  // The agent's pid while on (0 when off or unknown).
  [[nodiscard]] int agent_pid() const;
  void set_progress(ProgressFn progress) { progress_ = std::move(progress); }

 private:
  SimVm() = default;
  [[nodiscard]] std::filesystem::path agent_binary() const;
  [[nodiscard]] nlohmann::json agent_config() const;
  [[nodiscard]] std::string expand(const std::string& text) const;
  [[nodiscard]] Status power_on_steps(nlohmann::json& state);
  void save_state(const nlohmann::json& state) const;
  void report(const std::string& step, const std::string& detail = {}, std::optional<double> ms = {},
              bool failed = false) const;

  std::filesystem::path dir_;
  std::string name_;
  std::vector<SimDisk> disks_;
  std::string state_disk_;
  nlohmann::json agent_ = nlohmann::json::object();
  std::vector<SimService> services_;
  nlohmann::json backend_;
  ProgressFn progress_;
};

// The agent binary next to the running executable (build/bin/quiesce-agent
// for build/bin/quiesce-host), unless QUIESCE_AGENT_BIN says otherwise.
[[nodiscard]] std::filesystem::path default_agent_binary();

}  // namespace quiesce::host
