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

// The listener side of the config (declared in agent/api/http_server.hpp).
// Here, not with the listeners, so that config.cpp links without Beast (the
// config fuzzer, tests/fuzz).
namespace quiesce::api {

void set_default_listeners(ServerConfig& config) { config.pipe = PipeListener{}; }

const char* available_listeners() { return "pipe, tcp or hyperv"; }

std::string unsupported_listener(const ServerConfig& config) {
  if (config.unix_socket) {
    return "listen.unix: Unix sockets are a Linux transport (Windows has listen.pipe)";
  }
  if (config.vsock) {
    return "listen.vsock: vsock (viosock) is not served on Windows (docs/windows.md); on Hyper-V use listen.hyperv";
  }
  return "";
}

}  // namespace quiesce::api
