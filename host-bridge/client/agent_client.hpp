#pragma once
// A synchronous client for the agent's v1 HTTP API, used by quiescectl and by
// the host checkpointer. It speaks HTTP/1.1 over a Unix socket, TCP (with a
// bearer token), AF_VSOCK, or the "hybrid vsock" of Firecracker and Cloud
// Hypervisor (a host Unix socket where `CONNECT <port>\n` opens a stream to
// the guest), or qemu-guest-agent's protocol on the host end of a
// virtio-serial channel (qga_transport.hpp). No Asio or Beast type appears here; they stay in the .cpp.
//
// Every call has one deadline covering connect, handshake, request and
// response. Retries happen only where they cannot repeat an effect: GETs,
// and any request whose connection failed before a byte was sent. A POST
// freeze/thaw/complete that may have reached the agent is never resent.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "quiesce/wire/errors.hpp"

namespace quiesce::client {

struct Endpoint {
  enum class Kind { unix_socket, tcp, vsock, hybrid_vsock, qga };
  Kind kind = Kind::unix_socket;
  std::string path;       // unix_socket, hybrid_vsock, qga: the Unix socket to connect to
  std::string host;       // tcp: name or address (IPv6 without brackets)
  std::uint32_t cid = 0;  // vsock
  std::uint32_t port = 0; // tcp port, vsock port, or the guest port for hybrid_vsock

  // "unix:/run/quiesce/agent.sock" (or just "/run/..."), "tcp:host:port",
  // "tcp:[::1]:port", "vsock:cid:port", "hvsock:/path/to/uds:port",
  // "qga:/path/to/host.sock" (the host end of org.qemu.guest_agent.0).
  // Throws std::invalid_argument saying what is wrong.
  [[nodiscard]] static Endpoint parse(std::string_view text);
  [[nodiscard]] std::string to_string() const;
};

// The agent could not be reached or did not answer in HTTP (as opposed to
// answering with an error, which is an ApiError in the result).
class TransportError : public std::runtime_error {
 public:
  enum class Kind { connect, timeout, protocol };
  TransportError(Kind kind, bool request_sent, const std::string& what)
      : std::runtime_error(what), kind_(kind), request_sent_(request_sent) {}
  [[nodiscard]] Kind kind() const { return kind_; }
  // False when nothing reached the agent, so the request had no effect.
  [[nodiscard]] bool request_sent() const { return request_sent_; }

 private:
  Kind kind_;
  bool request_sent_;
};

struct Result {
  unsigned status = 0;
  nlohmann::json body;                  // parsed JSON; null when empty or not JSON
  std::string raw_body;                 // as received (e.g. /metrics text)
  std::optional<wire::ApiError> error;  // set for any status >= 400

  [[nodiscard]] bool ok() const { return !error.has_value(); }
};

struct ClientOptions {
  Endpoint endpoint;
  std::optional<std::string> token;  // sent as "Authorization: Bearer <token>"
  std::chrono::milliseconds timeout{30'000};  // per call: connect + request + response
  // GETs and never-sent requests: how many more attempts after the first.
  unsigned retries = 2;
  std::chrono::milliseconds retry_delay{200};  // doubles per attempt
  std::size_t max_response_bytes = 16 * 1024 * 1024;
};

struct QgaPeerState;

class AgentClient {
 public:
  explicit AgentClient(ClientOptions options);

  // The core call. `body` is sent as JSON when set. Throws TransportError
  // when no HTTP answer came; API errors are in Result::error.
  [[nodiscard]] Result request(std::string_view method, std::string_view path,
                               const std::optional<nlohmann::json>& body = std::nullopt,
                               std::optional<std::chrono::milliseconds> timeout = std::nullopt);

  [[nodiscard]] Result health();
  [[nodiscard]] Result writers();
  // options: {"writers": [...], "freeze_window_ms": N, "checkpoint_id": "..."}, all optional.
  [[nodiscard]] Result create_session(const nlohmann::json& options = nlohmann::json::object());
  [[nodiscard]] Result session(std::string_view id);
  [[nodiscard]] Result freeze(std::string_view id);
  [[nodiscard]] Result thaw(std::string_view id);
  [[nodiscard]] Result complete(std::string_view id, std::string_view snapshot_id);
  [[nodiscard]] Result abort(std::string_view id);
  [[nodiscard]] Result metrics();

  [[nodiscard]] const ClientOptions& options() const { return options_; }

 private:
  [[nodiscard]] Result request_once(std::string_view method, std::string_view path,
                                    const std::string* body, std::chrono::milliseconds timeout);

  ClientOptions options_;
  // qga endpoints: which agent answered (Quiesce or a stock qemu-ga) and the
  // fallback's session; shared by copies so a copy continues the session.
  std::shared_ptr<QgaPeerState> qga_state_;
};

// Session ids are put into paths; this percent-encodes anything that is not
// an unreserved URI character so an id cannot change the route.
[[nodiscard]] std::string encode_path_segment(std::string_view segment);

}  // namespace quiesce::client
