// What the config accepts on Windows only (config.cpp is shared).
#include "agent/core/config.hpp"

namespace quiesce::agent {

std::string unsupported_qga_channel(const qga::QgaChannelsConfig& channels) {
  if (channels.unix_socket) {
    return "qga.unix_socket: Unix sockets are a Linux transport (Windows has qga.pipe)";
  }
  if (channels.vsock) {
    return "qga.vsock_port: vsock (viosock) is not served on Windows (docs/windows.md); on Hyper-V use qga.hyperv";
  }
  return "";
}

}  // namespace quiesce::agent
