// The read-only qemu-guest-agent commands on Windows, answered from the
// sources qemu-ga's Windows build reads (qga/commands-win32.c): the version
// from ntdll, drive letters and their volumes, the IP helper's adapters.
// The Linux one is qga_guest_info.cpp; CMake builds one of the two.
//
// guest-get-users lists nobody here: Windows sessions (WTS) are not read
// yet; docs/windows.md says so.
// ws2tcpip.h before iphlpapi.h: netioapi.h declares MIB_IF_ROW2 only when
// ws2ipdef.h came first.
#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>
#include <iphlpapi.h>

#include <cstdint>
#include <stdexcept>

#include "agent/qga/qga_guest_info.hpp"
#include "platform/win/win_error.hpp"

namespace quiesce::agent::qga {

namespace {

using platform::win::narrow;

// RtlGetVersion tells the truth; GetVersionEx answers what the manifest
// claims compatibility with.
struct WindowsVersion {
  unsigned long major = 0, minor = 0, build = 0;
};

WindowsVersion windows_version() {
  WindowsVersion out;
  using RtlGetVersionFn = LONG(WINAPI*)(OSVERSIONINFOW*);
  if (HMODULE ntdll = ::GetModuleHandleW(L"ntdll.dll")) {
    auto function = reinterpret_cast<RtlGetVersionFn>(
        reinterpret_cast<void*>(::GetProcAddress(ntdll, "RtlGetVersion")));
    OSVERSIONINFOW info{};
    info.dwOSVersionInfoSize = sizeof info;
    if (function != nullptr && function(&info) == 0) {
      out = {info.dwMajorVersion, info.dwMinorVersion, info.dwBuildNumber};
    }
  }
  return out;
}

}  // namespace

nlohmann::json guest_osinfo(const GuestSources& /*sources*/) {
  const auto version = windows_version();
  const std::string number = std::to_string(version.major) + "." + std::to_string(version.minor);
  return {{"kernel-release", std::to_string(version.build)},
          {"kernel-version", number},
          {"machine", "x86_64"},
          {"id", "mswindows"},
          {"name", "Microsoft Windows"},
          {"pretty-name", "Microsoft Windows " + number + " (build " + std::to_string(version.build) + ")"},
          {"version-id", number}};
}

nlohmann::json guest_host_name() {
  wchar_t name[MAX_COMPUTERNAME_LENGTH + 256] = {};
  DWORD size = sizeof name / sizeof name[0];
  if (!::GetComputerNameExW(ComputerNameDnsHostname, name, &size)) {
    throw std::runtime_error("GetComputerNameEx failed: " + platform::win::last_error_text());
  }
  return {{"host-name", narrow(std::wstring(name, size))}};
}

nlohmann::json guest_timezone() {
  TIME_ZONE_INFORMATION zone{};
  const DWORD which = ::GetTimeZoneInformation(&zone);
  LONG bias = zone.Bias;
  const wchar_t* name = zone.StandardName;
  if (which == TIME_ZONE_ID_DAYLIGHT) {
    bias += zone.DaylightBias;
    name = zone.DaylightName;
  } else if (which == TIME_ZONE_ID_STANDARD) {
    bias += zone.StandardBias;
  }
  // Bias is minutes to add to local time for UTC; qemu-ga's offset is
  // seconds east of UTC.
  return {{"offset", -static_cast<long long>(bias) * 60}, {"zone", narrow(name)}};
}

nlohmann::json guest_users() { return nlohmann::json::array(); }

nlohmann::json guest_time() {
  FILETIME now{};
  ::GetSystemTimePreciseAsFileTime(&now);
  const auto ticks = (static_cast<std::uint64_t>(now.dwHighDateTime) << 32U) | now.dwLowDateTime;
  // 100 ns ticks since 1601-01-01; the Unix epoch is 11644473600 s later.
  constexpr std::uint64_t kEpochTicks = 116444736000000000ULL;
  return static_cast<std::int64_t>((ticks - kEpochTicks) * 100);
}

nlohmann::json guest_fsinfo(const GuestSources& /*sources*/) {
  nlohmann::json filesystems = nlohmann::json::array();
  wchar_t drives[512] = {};
  const DWORD length = ::GetLogicalDriveStringsW(sizeof drives / sizeof drives[0] - 1, drives);
  for (const wchar_t* drive = drives; length > 0 && *drive != L'\0'; drive += wcslen(drive) + 1) {
    if (::GetDriveTypeW(drive) != DRIVE_FIXED) {
      continue;
    }
    wchar_t volume[MAX_PATH] = {};
    wchar_t fstype[MAX_PATH] = {};
    if (!::GetVolumeInformationW(drive, nullptr, 0, nullptr, nullptr, nullptr, fstype, MAX_PATH)) {
      continue;
    }
    ::GetVolumeNameForVolumeMountPointW(drive, volume, MAX_PATH);
    nlohmann::json entry = {{"name", narrow(volume)},
                            {"mountpoint", narrow(drive)},
                            {"type", narrow(fstype)},
                            {"disk", nlohmann::json::array()}};
    ULARGE_INTEGER available{}, total{}, free{};
    if (::GetDiskFreeSpaceExW(drive, &available, &total, &free)) {
      entry["used-bytes"] = total.QuadPart - free.QuadPart;
      entry["total-bytes"] = total.QuadPart;
    }
    filesystems.push_back(std::move(entry));
  }
  return filesystems;
}

nlohmann::json guest_network_interfaces(const GuestSources& /*sources*/) {
  ULONG size = 16 * 1024;
  std::string buffer;
  ULONG status = ERROR_BUFFER_OVERFLOW;
  for (int attempt = 0; attempt < 3 && status == ERROR_BUFFER_OVERFLOW; ++attempt) {
    buffer.resize(size);
    status = ::GetAdaptersAddresses(AF_UNSPEC, GAA_FLAG_SKIP_ANYCAST | GAA_FLAG_SKIP_MULTICAST, nullptr,
                                    reinterpret_cast<IP_ADAPTER_ADDRESSES*>(buffer.data()), &size);
  }
  if (status != NO_ERROR) {
    throw std::runtime_error("GetAdaptersAddresses failed: " + platform::win::error_text(status));
  }
  nlohmann::json result = nlohmann::json::array();
  for (auto* adapter = reinterpret_cast<IP_ADAPTER_ADDRESSES*>(buffer.data()); adapter != nullptr;
       adapter = adapter->Next) {
    nlohmann::json entry = {{"name", narrow(adapter->FriendlyName)},
                                {"ip-addresses", nlohmann::json::array()}};
    if (adapter->PhysicalAddressLength > 0) {
      std::string mac;
      for (ULONG i = 0; i < adapter->PhysicalAddressLength; ++i) {
        char part[4];
        std::snprintf(part, sizeof part, i == 0 ? "%02x" : ":%02x", adapter->PhysicalAddress[i]);
        mac += part;
      }
      entry["hardware-address"] = mac;
    }
    MIB_IF_ROW2 row{};
    row.InterfaceLuid = adapter->Luid;
    if (::GetIfEntry2(&row) == NO_ERROR) {
      entry["statistics"] = {{"rx-bytes", row.InOctets},
                             {"rx-packets", row.InUcastPkts + row.InNUcastPkts},
                             {"rx-errs", row.InErrors},
                             {"rx-dropped", row.InDiscards},
                             {"tx-bytes", row.OutOctets},
                             {"tx-packets", row.OutUcastPkts + row.OutNUcastPkts},
                             {"tx-errs", row.OutErrors},
                             {"tx-dropped", row.OutDiscards}};
    }
    // IPv4 addresses first, as getifaddrs lists them on Linux and clients
    // that take the first address expect.
    for (const int family : {AF_INET, AF_INET6}) {
      for (auto* unicast = adapter->FirstUnicastAddress; unicast != nullptr; unicast = unicast->Next) {
      const auto* address = unicast->Address.lpSockaddr;
      if (address->sa_family != family) {
        continue;
      }
      const bool v4 = address->sa_family == AF_INET;
      char text[INET6_ADDRSTRLEN] = {};
      const void* raw = v4 ? static_cast<const void*>(&reinterpret_cast<const sockaddr_in*>(address)->sin_addr)
                           : static_cast<const void*>(&reinterpret_cast<const sockaddr_in6*>(address)->sin6_addr);
      if (::inet_ntop(address->sa_family, raw, text, sizeof text) == nullptr) {
        continue;
      }
      entry["ip-addresses"].push_back({{"ip-address-type", v4 ? "ipv4" : "ipv6"},
                                           {"ip-address", text},
                                           {"prefix", unicast->OnLinkPrefixLength}});
      }
    }
    result.push_back(std::move(entry));
  }
  return result;
}

nlohmann::json disks_of_device(const std::string& /*sysfs*/, unsigned /*major*/, unsigned /*minor*/) {
  return nlohmann::json::array();
}

}  // namespace quiesce::agent::qga
