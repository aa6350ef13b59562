#pragma once
// The byte movers of the qga protocol (docs/qga.md): the virtio-serial port
// the host reaches through QEMU, and Unix-socket and vsock listeners that
// speak the same protocol (qga_channels.cpp); on Windows the port
// \\.\Global\org.qemu.guest_agent.0 and a named pipe
// (qga_channels_windows.cpp, the same class). Nothing here knows what the bytes mean: each
// stream gets a QgaConnection from the factory and is fed to it.
//
// Threads: one per listener, one for the virtio-serial port and one per
// socket connection (a freeze blocks its connection's thread while the
// writers run; other connections and the HTTP API keep answering). Every
// wait is a poll() that also watches one stop eventfd, so stop() never
// hangs on a blocked read. Plain POSIX (Win32 on Windows): no Asio or Beast here.

#include <spdlog/logger.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/qga/qga_service.hpp"

namespace quiesce::agent::qga {

inline constexpr const char* kDefaultVirtioSerialPath = "/dev/virtio-ports/org.qemu.guest_agent.0";

struct QgaUnixSocket {
  std::string path;
  unsigned mode = 0600;
};

struct QgaVsock {
  std::uint32_t port = 0;
  std::vector<std::uint32_t> allowed_cids{2};  // VMADDR_CID_HOST
};

// Windows: local tools speak qga on a named pipe (SYSTEM and the
// Administrators only), as Linux's qga.unix_socket.
struct QgaPipe {
  std::string name;  // \\.\pipe\NAME
};

// Windows on Hyper-V: the qga protocol on a Hyper-V socket (AF_HYPERV)
// with this service GUID, as Linux's qga.vsock_port.
struct QgaHyperv {
  std::string service_id;  // lowercase 8-4-4-4-12 hex, checked by the config
};

struct QgaChannelsConfig {
  // "" turns the port off. It may not exist yet: the channel waits for it.
  std::string virtio_serial_path = kDefaultVirtioSerialPath;
  std::optional<QgaUnixSocket> unix_socket;
  std::optional<QgaVsock> vsock;
  std::optional<QgaPipe> pipe;  // Windows only
  std::optional<QgaHyperv> hyperv;  // Windows only
  // Socket (and pipe) connections served at once, over every socket listener; one more
  // is accepted and closed at once (the client sees EOF, not a hang).
  std::size_t max_connections = 16;
};

// Makes the protocol state for one stream; QgaService::connect in the agent.
using QgaConnectionFactory =
    std::function<std::unique_ptr<QgaConnection>(const std::string& peer, bool can_close)>;

class QgaChannels {
 public:
  QgaChannels(QgaChannelsConfig config, QgaConnectionFactory factory,
              std::shared_ptr<spdlog::logger> logger);
  ~QgaChannels();  // stop()
  QgaChannels(const QgaChannels&) = delete;
  QgaChannels& operator=(const QgaChannels&) = delete;

  // Binds the socket listeners and starts every thread. Throws
  // std::runtime_error naming the listener when one cannot be bound (a
  // missing vsock in the kernel is only a warning, as for the HTTP API).
  // The virtio-serial port never fails start(): it is waited for.
  void start();
  // Idempotent: wakes every thread, closes every channel, joins. A command
  // still running in the protocol (a freeze) is waited for: stop the
  // coordinator first so it returns.
  void stop();

  // For tests and the log: the bound Unix socket path, whether vsock listens.
  [[nodiscard]] bool vsock_listening() const;
  // How many host connections the virtio-serial port has seen (tests wait
  // on it to know a reconnect was noticed).
  [[nodiscard]] std::uint64_t virtio_serial_sessions() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace quiesce::agent::qga
