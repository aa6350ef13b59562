// What the config accepts on Linux only (config.cpp is shared).
#include "agent/core/config.hpp"

namespace quiesce::agent {

std::string unsupported_qga_channel(const qga::QgaChannelsConfig& channels) {
  if (channels.pipe) {
    return "qga.pipe: named pipes are a Windows transport (Linux has qga.unix_socket)";
  }
  if (channels.hyperv) {
    return "qga.hyperv: Hyper-V sockets are a Windows transport (Linux has qga.vsock_port)";
  }
  return "";
}

}  // namespace quiesce::agent
