#include "agent/qga/qga_guest_info.hpp"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <unistd.h>
#include <utmpx.h>

#include <bit>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <regex>
#include <sstream>

#include "platform/linux/block_devices.hpp"
#include "platform/linux/mountinfo.hpp"
#include "writers/fsfreeze/mount_selection.hpp"

namespace quiesce::agent::qga {

namespace fs = std::filesystem;

namespace {

std::string read_trimmed(const fs::path& path) {
  std::ifstream in(path);
  if (!in) {
    return {};
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back())) != 0) {
    text.pop_back();
  }
  return text;
}

// One value of an os-release line: quotes removed, backslash escapes inside
// double quotes resolved (os-release(5) follows shell quoting).
std::string os_release_value(std::string_view raw) {
  if (raw.size() >= 2 && (raw.front() == '"' || raw.front() == '\'') && raw.back() == raw.front()) {
    const char quote = raw.front();
    raw = raw.substr(1, raw.size() - 2);
    if (quote == '\'') {
      return std::string(raw);
    }
    std::string value;
    for (std::size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] == '\\' && i + 1 < raw.size()) {
        ++i;
      }
      value.push_back(raw[i]);
    }
    return value;
  }
  return std::string(raw);
}

std::uint64_t read_counter(const fs::path& path) {
  auto text = read_trimmed(path);
  try {
    return text.empty() ? 0 : std::stoull(text);
  } catch (const std::exception&) {
    return 0;
  }
}

int prefix_length(const sockaddr* netmask) {
  if (netmask == nullptr) {
    return 0;
  }
  int bits = 0;
  const unsigned char* bytes = nullptr;
  std::size_t size = 0;
  if (netmask->sa_family == AF_INET) {
    bytes = reinterpret_cast<const unsigned char*>(
        &reinterpret_cast<const sockaddr_in*>(netmask)->sin_addr);
    size = 4;
  } else if (netmask->sa_family == AF_INET6) {
    bytes = reinterpret_cast<const unsigned char*>(
        &reinterpret_cast<const sockaddr_in6*>(netmask)->sin6_addr);
    size = 16;
  }
  for (std::size_t i = 0; i < size; ++i) {
    bits += std::popcount(static_cast<unsigned>(bytes[i]));
  }
  return bits;
}

// The last PCI address ("0000:00:05.0") on a sysfs device path.
nlohmann::json pci_controller_of(const fs::path& device) {
  static const std::regex pci("^([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\\.([0-7])$");
  nlohmann::json address = {{"domain", -1}, {"bus", -1}, {"slot", -1}, {"function", -1}};
  for (const auto& part : device) {
    std::smatch match;
    const auto text = part.string();
    if (std::regex_match(text, match, pci)) {
      address = {{"domain", std::stoi(match[1], nullptr, 16)},
                 {"bus", std::stoi(match[2], nullptr, 16)},
                 {"slot", std::stoi(match[3], nullptr, 16)},
                 {"function", std::stoi(match[4], nullptr, 16)}};
    }
  }
  return address;
}

nlohmann::json disk_entry(const fs::path& disk) {
  const auto text = disk.string();
  std::string bus_type = "unknown";
  int bus = 0;
  int target = 0;
  int unit = 0;
  static const std::regex hctl("^([0-9]+):([0-9]+):([0-9]+):([0-9]+)$");
  bool scsi = false;
  for (const auto& part : disk) {
    std::smatch match;
    const auto component = part.string();
    if (std::regex_match(component, match, hctl)) {
      scsi = true;
      bus = std::stoi(match[2]);
      target = std::stoi(match[3]);
      unit = std::stoi(match[4]);
    }
  }
  if (text.find("/ata") != std::string::npos) {
    bus_type = "sata";
  } else if (scsi) {
    bus_type = "scsi";  // virtio-scsi included, as qemu-ga reports it
  } else if (text.find("/nvme/") != std::string::npos) {
    bus_type = "nvme";
  } else if (text.find("/usb") != std::string::npos) {
    bus_type = "usb";
  } else if (text.find("/virtio") != std::string::npos) {
    bus_type = "virtio";
  }
  nlohmann::json entry = {{"pci-controller", pci_controller_of(disk)},
                          {"bus-type", bus_type},
                          {"bus", bus},
                          {"target", target},
                          {"unit", unit},
                          {"dev", "/dev/" + disk.filename().string()}};
  for (const auto& candidate : {disk / "serial", disk / "device" / "serial"}) {
    if (auto serial = read_trimmed(candidate); !serial.empty()) {
      entry["serial"] = serial;
      break;
    }
  }
  return entry;
}

void collect_disks(const fs::path& node, int depth, nlohmann::json& disks) {
  std::error_code ec;
  auto device = fs::canonical(node, ec);
  if (ec || depth > 8) {
    return;
  }
  if (fs::exists(device / "partition", ec)) {
    device = device.parent_path();
  }
  bool has_slaves = false;
  for (const auto& slave : fs::directory_iterator(device / "slaves", ec)) {
    has_slaves = true;
    collect_disks(slave.path(), depth + 1, disks);
  }
  if (!has_slaves) {
    disks.push_back(disk_entry(device));
  }
}

}  // namespace

nlohmann::json disks_of_device(const std::string& sysfs, unsigned major, unsigned minor) {
  nlohmann::json disks = nlohmann::json::array();
  collect_disks(fs::path(sysfs) / "dev" / "block" /
                    (std::to_string(major) + ":" + std::to_string(minor)),
                0, disks);
  return disks;
}

nlohmann::json guest_osinfo(const GuestSources& sources) {
  nlohmann::json info = nlohmann::json::object();
  utsname names{};
  if (::uname(&names) == 0) {
    info["kernel-release"] = names.release;
    info["kernel-version"] = names.version;
    info["machine"] = names.machine;
  }
  std::ifstream in(sources.os_release);
  if (!in) {
    in.open(sources.os_release_fallback);
  }
  static const std::map<std::string, std::string> keys = {
      {"ID", "id"},           {"NAME", "name"},           {"PRETTY_NAME", "pretty-name"},
      {"VERSION", "version"}, {"VERSION_ID", "version-id"}, {"VARIANT", "variant"},
      {"VARIANT_ID", "variant-id"}};
  std::string line;
  while (std::getline(in, line)) {
    auto equals = line.find('=');
    if (equals == std::string::npos || line.starts_with('#')) {
      continue;
    }
    if (auto it = keys.find(line.substr(0, equals)); it != keys.end()) {
      info[it->second] = os_release_value(std::string_view(line).substr(equals + 1));
    }
  }
  return info;
}

nlohmann::json guest_host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0) {
    throw std::runtime_error(std::string("gethostname failed: ") + std::strerror(errno));
  }
  return {{"host-name", name}};
}

nlohmann::json guest_timezone() {
  std::time_t now = std::time(nullptr);
  std::tm local{};
  ::localtime_r(&now, &local);
  nlohmann::json zone = {{"offset", local.tm_gmtoff}};
  if (local.tm_zone != nullptr) {
    zone["zone"] = local.tm_zone;
  }
  return zone;
}

nlohmann::json guest_users() {
  // getutxent keeps its position in static state.
  static std::mutex utmp_mutex;
  std::lock_guard lock(utmp_mutex);
  std::map<std::string, double> first_login;
  std::vector<std::string> order;
  ::setutxent();
  while (const utmpx* entry = ::getutxent()) {
    if (entry->ut_type != USER_PROCESS) {
      continue;
    }
    std::string user(entry->ut_user, ::strnlen(entry->ut_user, sizeof entry->ut_user));
    const double login = static_cast<double>(entry->ut_tv.tv_sec) +
                         static_cast<double>(entry->ut_tv.tv_usec) / 1e6;
    auto [it, inserted] = first_login.emplace(user, login);
    if (inserted) {
      order.push_back(user);
    } else if (login < it->second) {
      it->second = login;
    }
  }
  ::endutxent();
  nlohmann::json users = nlohmann::json::array();
  for (const auto& user : order) {
    users.push_back({{"user", user}, {"login-time", first_login[user]}});
  }
  return users;
}

nlohmann::json guest_time() {
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  return static_cast<std::int64_t>(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
}

nlohmann::json guest_fsinfo(const GuestSources& sources) {
  auto table = platform::read_mountinfo(sources.mountinfo);
  if (!table.table) {
    throw std::runtime_error(table.error);
  }
  nlohmann::json filesystems = nlohmann::json::array();
  for (const auto& mount : table.table->entries) {
    if (writers::fsfreeze::unfreezable_reason(mount.fstype) ||
        table.table->is_overmounted(mount)) {
      continue;
    }
    auto device = mount.device;
    if (device.major == 0 && mount.source.starts_with("/dev/")) {
      // btrfs and others report an anonymous device; the source names the disk.
      if (auto node = platform::block_device_node(mount.source)) {
        device = *node;
      }
    }
    if (device.major == 0) {
      continue;  // not stored on a block device
    }
    std::error_code ec;
    auto sys_node = fs::canonical(fs::path(sources.sysfs) / "dev" / "block" / device.to_string(), ec);
    nlohmann::json entry = {
        {"name", ec ? fs::path(mount.source).filename().string() : sys_node.filename().string()},
        {"mountpoint", mount.mount_point},
        {"type", mount.fstype},
        {"disk", disks_of_device(sources.sysfs, device.major, device.minor)}};
    struct statvfs stats{};
    if (::statvfs(mount.mount_point.c_str(), &stats) == 0) {
      const auto fragment = static_cast<std::uint64_t>(stats.f_frsize);
      const auto used = (stats.f_blocks - stats.f_bfree) * fragment;
      entry["used-bytes"] = used;
      // As qemu-ga: what an unprivileged user could fill, not the raw size.
      entry["total-bytes"] = used + stats.f_bavail * fragment;
    }
    filesystems.push_back(std::move(entry));
  }
  return filesystems;
}

nlohmann::json guest_network_interfaces(const GuestSources& sources) {
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) {
    throw std::runtime_error(std::string("getifaddrs failed: ") + std::strerror(errno));
  }
  std::vector<std::string> order;
  std::map<std::string, nlohmann::json> interfaces;
  for (const ifaddrs* item = list; item != nullptr; item = item->ifa_next) {
    if (item->ifa_name == nullptr) {
      continue;
    }
    const std::string name = item->ifa_name;
    auto [it, inserted] = interfaces.emplace(name, nlohmann::json::object());
    auto& interface = it->second;
    if (inserted) {
      order.push_back(name);
      interface["name"] = name;
      const auto net = fs::path(sources.sysfs) / "class" / "net" / name;
      if (auto address = read_trimmed(net / "address"); !address.empty()) {
        interface["hardware-address"] = address;
      }
      interface["ip-addresses"] = nlohmann::json::array();
      const auto stats = net / "statistics";
      if (fs::exists(stats)) {
        interface["statistics"] = {{"rx-bytes", read_counter(stats / "rx_bytes")},
                                   {"rx-packets", read_counter(stats / "rx_packets")},
                                   {"rx-errs", read_counter(stats / "rx_errors")},
                                   {"rx-dropped", read_counter(stats / "rx_dropped")},
                                   {"tx-bytes", read_counter(stats / "tx_bytes")},
                                   {"tx-packets", read_counter(stats / "tx_packets")},
                                   {"tx-errs", read_counter(stats / "tx_errors")},
                                   {"tx-dropped", read_counter(stats / "tx_dropped")}};
      }
    }
    if (item->ifa_addr == nullptr) {
      continue;
    }
    const auto family = item->ifa_addr->sa_family;
    if (family != AF_INET && family != AF_INET6) {
      continue;
    }
    char text[INET6_ADDRSTRLEN] = {};
    const void* address =
        family == AF_INET
            ? static_cast<const void*>(&reinterpret_cast<const sockaddr_in*>(item->ifa_addr)->sin_addr)
            : static_cast<const void*>(
                  &reinterpret_cast<const sockaddr_in6*>(item->ifa_addr)->sin6_addr);
    if (::inet_ntop(family, address, text, sizeof text) == nullptr) {
      continue;
    }
    interface["ip-addresses"].push_back({{"ip-address-type", family == AF_INET ? "ipv4" : "ipv6"},
                                         {"ip-address", text},
                                         {"prefix", prefix_length(item->ifa_netmask)}});
  }
  ::freeifaddrs(list);
  nlohmann::json result = nlohmann::json::array();
  for (const auto& name : order) {
    result.push_back(std::move(interfaces[name]));
  }
  return result;
}

}  // namespace quiesce::agent::qga
