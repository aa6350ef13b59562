#include "platform/defaults.hpp"

namespace quiesce::platform {

AgentDefaults agent_defaults() {
  return {"/etc/quiesce/agent.json", "/var/lib/quiesce", "/run/quiesce",
          "/dev/virtio-ports/org.qemu.guest_agent.0"};
}

bool is_absolute_path(const std::string& path) { return !path.empty() && path.front() == '/'; }

}  // namespace quiesce::platform
