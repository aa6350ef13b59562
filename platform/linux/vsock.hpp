#pragma once
// AF_VSOCK addressing without any Asio types, shared by the agent's listener
// and the host client. The sockaddr helpers are inline so code that only
// needs an address (the host client) does not have to link the platform
// library.

#include <sys/socket.h>
#include <linux/vm_sockets.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>

namespace quiesce::platform {

inline constexpr std::uint32_t vsock_cid_any = VMADDR_CID_ANY;
inline constexpr std::uint32_t vsock_cid_hypervisor = VMADDR_CID_HYPERVISOR;
inline constexpr std::uint32_t vsock_cid_host = VMADDR_CID_HOST;

struct VsockAddress {
  std::uint32_t cid = 0;
  std::uint32_t port = 0;
};

// A sockaddr_vm for bind() or connect().
[[nodiscard]] inline sockaddr_vm make_vsock_sockaddr(std::uint32_t cid, std::uint32_t port) {
  sockaddr_vm address{};
  address.svm_family = AF_VSOCK;
  address.svm_cid = cid;
  address.svm_port = port;
  return address;
}

// The CID and port in a peer address returned by accept()/getpeername();
// nullopt when the address is not an AF_VSOCK one (or is truncated).
[[nodiscard]] inline std::optional<VsockAddress> vsock_address_of(const void* address,
                                                                  std::size_t size) {
  if (address == nullptr || size < sizeof(sockaddr_vm)) {
    return std::nullopt;
  }
  // memcpy rather than a cast: the caller's storage (sockaddr_storage or an
  // Asio endpoint) need not be aligned for sockaddr_vm.
  sockaddr_vm vm{};
  std::memcpy(&vm, address, sizeof vm);
  if (vm.svm_family != AF_VSOCK) {
    return std::nullopt;
  }
  return VsockAddress{vm.svm_cid, vm.svm_port};
}

struct VsockAvailability {
  bool available = false;
  int error = 0;        // errno from socket(AF_VSOCK) when unavailable
  std::string reason;   // human text for a log line
};

// Whether this kernel can create AF_VSOCK stream sockets (the vsock module
// may be missing, e.g. in containers or on hosts without vhost-vsock).
[[nodiscard]] VsockAvailability vsock_availability();

// True for errno values that mean "this machine has no vsock", as opposed to
// a real failure such as the port being in use.
[[nodiscard]] bool is_vsock_unsupported_error(int error);

// "vsock cid 2 port 1234".
[[nodiscard]] std::string describe_vsock(const VsockAddress& address);

}  // namespace quiesce::platform
