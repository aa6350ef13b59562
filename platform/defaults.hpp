#pragma once
// Where the agent's files live by default, and what an absolute path looks
// like, on this OS: the config's defaults and its path checks come from here
// so agent/core/config.cpp has no per-OS branch.

#include <string>

namespace quiesce::platform {

struct AgentDefaults {
  std::string config_file;  // /etc/quiesce/agent.json; %ProgramData%\Quiesce\agent.json
  std::string state_dir;    // /var/lib/quiesce;        %ProgramData%\Quiesce\state
  std::string run_dir;      // /run/quiesce;            %ProgramData%\Quiesce\run
  // qemu-guest-agent's virtio-serial port: /dev/virtio-ports/org.qemu.guest_agent.0;
  // \\.\Global\org.qemu.guest_agent.0 (the virtio-win vioserial driver).
  std::string qga_port;
};

[[nodiscard]] AgentDefaults agent_defaults();

// "/..." on Linux; "C:\...", "C:/..." or "\\server\..." (and "\\.\...") on
// Windows. A drive-relative "\dir" or "C:dir" is not absolute: it depends on
// the current drive or directory of whoever starts the agent.
[[nodiscard]] bool is_absolute_path(const std::string& path);

}  // namespace quiesce::platform
