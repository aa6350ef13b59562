#pragma once
// The read-only qemu-guest-agent commands libvirt (virsh guestinfo, domfsinfo,
// domtime, domifaddr --source agent) and KubeVirt poll, answered from the
// same sources qemu-ga reads: /etc/os-release and uname, utmp, the mount
// table plus statvfs and sysfs, getifaddrs plus /sys/class/net. Each returns
// the `return` value of its command, with qemu-ga's member names.
//
// Reading only: nothing here writes, so these are safe while a native
// session holds a freeze (qga's own frozen state refuses them anyway, as
// qemu-ga does).

#include <string>

#include <nlohmann/json.hpp>

namespace quiesce::agent::qga {

// Where the sources are; tests point them at prepared trees.
struct GuestSources {
  std::string os_release = "/etc/os-release";
  std::string os_release_fallback = "/usr/lib/os-release";
  std::string mountinfo = "/proc/self/mountinfo";
  std::string sysfs = "/sys";
};

[[nodiscard]] nlohmann::json guest_osinfo(const GuestSources& sources);
[[nodiscard]] nlohmann::json guest_host_name();
[[nodiscard]] nlohmann::json guest_timezone();
[[nodiscard]] nlohmann::json guest_users();
[[nodiscard]] nlohmann::json guest_time();
[[nodiscard]] nlohmann::json guest_fsinfo(const GuestSources& sources);
[[nodiscard]] nlohmann::json guest_network_interfaces(const GuestSources& sources);

// The disk entries of guest-get-fsinfo for the block device `major:minor`,
// worked out from sysfs under `sysfs` (partitions lead to their disk,
// device-mapper and md devices to every device beneath them). Exposed for
// tests on fake sysfs trees.
[[nodiscard]] nlohmann::json disks_of_device(const std::string& sysfs, unsigned major,
                                             unsigned minor);

}  // namespace quiesce::agent::qga
