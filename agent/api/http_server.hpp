#pragma once
// The agent's HTTP/1.1 server (Boost.Beast). One implementation serves every
// transport (Unix socket, AF_VSOCK, TCP on Linux; TCP and a named pipe on
// Windows), so the same API, token check and limits apply everywhere. The
// listeners only one OS has are in agent/api/http_listeners_<os>.cpp.
//
// Threading: one I/O thread runs all sockets. Request handlers never run on
// it (DESIGN.md invariant 6): each request is handed to a small pool of
// handler threads and its response posted back to the I/O thread.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <spdlog/logger.h>

namespace quiesce::api {

// qga: a v1 request carried by qemu-guest-agent's `quiesce-api` command over
// the qga channel (agent/qga/), not by this server; dbus: a method call on
// org.quiesce.Agent1 (agent/dbus/).
enum class Transport { unix_socket, vsock, tcp, qga, dbus, named_pipe, hyperv };

struct Peer {
  Transport transport = Transport::unix_socket;
  std::string description;              // "unix", "vsock cid 2 port 1234", "tcp 127.0.0.1:5555"
  std::optional<std::uint32_t> vsock_cid;
  // Unix sockets only: the connecting process (SO_PEERCRED), for audit logs.
  std::optional<std::uint32_t> unix_uid;
  std::optional<std::int32_t> unix_pid;
  // Named pipes only: the client's account ("NT AUTHORITY\\SYSTEM") and
  // process (GetNamedPipeClientProcessId), for audit logs.
  std::optional<std::string> windows_account;
  std::optional<std::uint32_t> windows_pid;
};

struct Response {
  unsigned status = 200;
  std::string content_type = "application/json";
  std::string body;
};

struct Request {
  // "GET", "POST", "DELETE", ... A HEAD request reaches the handler as "GET"
  // (the server drops the body and keeps Content-Length), so routes need not
  // know about HEAD. Methods the API cannot use (TRACE, CONNECT, unknown
  // tokens) are answered 405 by the server and never reach the handler.
  std::string method;
  std::string target;  // path plus query, as received
  std::string body;
  Peer peer;
  // Set by the HTTP server (empty on the qga channel and D-Bus): sends the
  // answer at once, so that a handler can answer first and then do
  // bookkeeping that does not change what the answer says (the freeze and
  // thaw answers, docs/performance.md). Once called, the handler's return
  // value is ignored. Call it at most once; a later call is ignored.
  std::function<void(Response)> respond;
};

// May block (it calls into the coordinator); runs on a handler thread.
using Handler = std::function<Response(const Request&)>;

struct ServerLimits {
  std::size_t max_header_bytes = 8 * 1024;
  std::size_t max_body_bytes = 64 * 1024;
  std::chrono::milliseconds read_timeout{10'000};     // a request must arrive whole within this
  std::chrono::milliseconds keepalive_timeout{60'000};  // idle keep-alive connections close after
  std::size_t max_connections = 64;
  std::size_t handler_threads = 4;
  // stop(): how long in-flight requests may take to finish before run()
  // returns anyway.
  std::chrono::milliseconds stop_grace{5'000};
};

struct UnixListener {
  std::string path = "/run/quiesce/agent.sock";
  unsigned mode = 0660;
  std::optional<std::string> group;  // chgrp the socket to this group
};

struct VsockListener {
  std::uint32_t port = 7700;
  std::vector<std::uint32_t> allowed_cids{2};  // VMADDR_CID_HOST
  bool required = false;  // false: skip with a warning when AF_VSOCK is unavailable
};

struct TcpListener {
  std::string address = "127.0.0.1";
  std::uint16_t port = 0;
  std::string token;  // bearer token every request must carry
};

// Windows: local tools (quiescectl, scripts) reach the agent on a named
// pipe that only SYSTEM and the Administrators may open (its DACL), the
// Unix socket's 0660 root:quiesce in Windows terms.
struct PipeListener {
  std::string name = R"(\\.\pipe\quiesce-agent)";
};

// Windows on Hyper-V: the host reaches the agent on a Hyper-V socket
// (AF_HYPERV), addressed by a service GUID the host registers under
// GuestCommunicationServices, as vsock's port on Linux.
struct HypervListener {
  std::string service_id;  // lowercase 8-4-4-4-12 hex, checked by the config
};

struct ServerConfig {
  std::optional<UnixListener> unix_socket;
  std::optional<PipeListener> pipe;
  std::optional<HypervListener> hyperv;
  std::optional<VsockListener> vsock;
  std::optional<TcpListener> tcp;
  ServerLimits limits;
};

class HttpServer {
 public:
  HttpServer(ServerConfig config, Handler handler, std::shared_ptr<spdlog::logger> logger);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds every configured listener. Throws std::runtime_error naming the
  // listener and the OS error when one cannot be bound.
  void start();
  // Runs the I/O thread until stop(); returns after in-flight work drained
  // (or limits.stop_grace passed). Call from exactly one thread.
  void run();
  // Thread-safe, idempotent. Stops accepting, closes idle connections, lets
  // in-flight responses finish (bounded by limits.stop_grace). A handler
  // still running after run() returned is waited for by the destructor.
  void stop();

  [[nodiscard]] std::optional<std::uint16_t> tcp_port() const;  // the bound port (after start)
  [[nodiscard]] bool vsock_listening() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// What the config may ask of this OS's listeners (agent/core/config.cpp):
// the listeners on by default ("unix" and "vsock" on Linux, "pipe" on
// Windows), and "" or why a configured one cannot be served here, naming
// the field ("listen.pipe: named pipes are a Windows transport").
// Defined in agent/core/config_<os>.cpp, away from Beast.
void set_default_listeners(ServerConfig& config);
// The listeners this OS serves, for "no transport left" ("unix, vsock or tcp").
[[nodiscard]] const char* available_listeners();
[[nodiscard]] std::string unsupported_listener(const ServerConfig& config);

}  // namespace quiesce::api
