#include "platform/linux/vsock.hpp"

#include <unistd.h>

#include <cerrno>
#include <system_error>

namespace quiesce::platform {

bool is_vsock_unsupported_error(int error) {
  // EAFNOSUPPORT: no vsock module; ENODEV/EADDRNOTAVAIL: module loaded but
  // no transport (no hypervisor device) to bind on; EPROTONOSUPPORT and
  // ESOCKTNOSUPPORT for kernels that reject the socket type.
  return error == EAFNOSUPPORT || error == EPROTONOSUPPORT || error == ESOCKTNOSUPPORT ||
         error == ENODEV || error == EADDRNOTAVAIL;
}

VsockAvailability vsock_availability() {
  VsockAvailability result;
  const int fd = ::socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    result.error = errno;
    result.reason = std::error_code(result.error, std::generic_category()).message();
    return result;
  }
  ::close(fd);
  result.available = true;
  return result;
}

std::string describe_vsock(const VsockAddress& address) {
  return "vsock cid " + std::to_string(address.cid) + " port " + std::to_string(address.port);
}

}  // namespace quiesce::platform
