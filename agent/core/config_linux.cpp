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

// The listener side of the config (declared in agent/api/http_server.hpp).
// Here, not with the listeners, so that config.cpp links without Beast (the
// config fuzzer, tests/fuzz).
namespace quiesce::api {

void set_default_listeners(ServerConfig& config) {
  config.unix_socket = UnixListener{};
  config.vsock = VsockListener{};
}

const char* available_listeners() { return "unix, vsock or tcp"; }

std::string unsupported_listener(const ServerConfig& config) {
  if (config.pipe) {
    return "listen.pipe: named pipes are a Windows transport (Linux has listen.unix)";
  }
  if (config.hyperv) {
    return "listen.hyperv: Hyper-V sockets are a Windows transport (Linux has listen.vsock)";
  }
  return "";
}

}  // namespace quiesce::api
