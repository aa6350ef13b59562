#pragma once
// qemu-guest-agent's protocol, served by the Quiesce agent (docs/qga.md).
//
// Layering: the channels (agent/qga/qga_channels.*: the virtio-serial port,
// Unix-socket and vsock listeners) only move bytes; everything the protocol
// means lives here. A QgaService is shared by every channel; each client
// connection (or each time the host opens the virtio-serial port) gets a
// QgaConnection, which keeps that stream's framing state (partial objects,
// discarding up to a 0xFF after a sync-delimited or a parse error).
//
// Freeze state is agent-wide, not per connection, as with qemu-ga: a host
// that disconnects mid-freeze does not thaw; the qga freeze window does.

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include <spdlog/logger.h>

namespace quiesce::agent {
class Coordinator;
class ApiRoutes;
}  // namespace quiesce::agent

namespace quiesce::agent::qga {

struct QgaOptions {
  // How long a guest-fsfreeze-freeze may hold before the agent thaws by
  // itself. qga clients have no watchdog of their own (docs/qga.md says why
  // this default). Must not exceed the coordinator's
  // SessionLimits::max_freeze_window, or every qga freeze is refused.
  std::chrono::milliseconds freeze_window{60'000};
  // One JSON object larger than this is refused (an error reply on the
  // virtio-serial port, then input is discarded up to the next 0xFF byte or
  // the object's end; socket channels close the connection).
  std::size_t max_object_bytes = 1024 * 1024;
  // Deeper nesting is refused the same way.
  std::size_t max_nesting = 64;
};

// What one feed() produced.
struct QgaOutput {
  std::string bytes;   // replies to write back, in order (may be empty)
  bool close = false;  // the connection should be closed (oversize input on a socket)
};

class QgaConnection {
 public:
  virtual ~QgaConnection() = default;
  // Feeds bytes read from the channel. Runs every complete command in order
  // (a command may block: a freeze runs the writers) and returns the replies.
  // Not thread-safe per connection (one reader per channel); connections
  // of one service may feed from different threads. Once `close` was
  // returned, every later feed returns `close` again and runs nothing.
  // A connection must not outlive its QgaService.
  virtual QgaOutput feed(std::string_view bytes) = 0;
};

class QgaService {
 public:
  QgaService(Coordinator& coordinator, ApiRoutes& routes, QgaOptions options,
             std::shared_ptr<spdlog::logger> logger);
  ~QgaService();
  QgaService(const QgaService&) = delete;
  QgaService& operator=(const QgaService&) = delete;

  // `peer` names the client for the log ("virtio-serial org.qemu.guest_agent.0",
  // "unix", "vsock cid 2"). `can_close`: false for the virtio-serial port,
  // whose stream cannot be closed by the guest.
  std::unique_ptr<QgaConnection> connect(const std::string& peer, bool can_close);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace quiesce::agent::qga
