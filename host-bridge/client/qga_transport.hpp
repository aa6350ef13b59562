#pragma once
// The agent client over qemu-guest-agent's protocol (endpoint "qga:/path"):
// the host end of the org.qemu.guest_agent.0 virtio-serial channel, a Unix
// socket that QEMU or libvirt created (or any socket the agent serves qga on).
//
// Each call opens the socket, resynchronises with `guest-sync-delimited`
// and a random id (a 0xFF first, so the agent drops whatever a previous
// client left half-written; stale replies before the 0xFF and the matching
// id are skipped), sends one command and closes. The host socket takes one
// client at a time: while libvirt (or any other client) holds the channel,
// calls here fail to connect or wait. docs/host-bridge.md says so.
//
// A Quiesce agent answers `quiesce-api` {method, path, body} with {status,
// body}: the whole v1 API, the same Result as over HTTP. A stock
// qemu-guest-agent answers CommandNotFound; then the v1 calls the
// checkpointer makes are played with guest-fsfreeze-freeze/-thaw/-status
// (filesystems only, no writers, no artifacts) and every answer says so in
// `agent.kind` = "qemu-guest-agent" and `quiesced` = "filesystems".
// No Asio or Beast here: plain POSIX sockets with poll() and one deadline.

#include <chrono>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "host-bridge/client/agent_client.hpp"

namespace quiesce::client {

// What answered on a qga endpoint, learnt on the first call and kept by the
// AgentClient (and its copies) for the next ones.
struct QgaPeerState {
  enum class Kind { unknown, quiesce, qemu_guest_agent };
  Kind kind = Kind::unknown;
  std::string version;  // qemu-ga's, from guest-info
  // The fallback's one session, played on the client side: qemu-ga has no
  // sessions, only one agent-wide freeze.
  std::optional<std::string> session_id;
  std::optional<std::chrono::steady_clock::time_point> frozen_at;
  std::uint64_t filesystems_frozen = 0;
};

// One v1 request over qga. Throws TransportError when no qga answer came.
[[nodiscard]] Result qga_request(const Endpoint& endpoint, QgaPeerState& state,
                                 std::string_view method, std::string_view path,
                                 const std::string* body, std::chrono::milliseconds timeout,
                                 std::size_t max_response_bytes);

}  // namespace quiesce::client
