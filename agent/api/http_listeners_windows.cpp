// The HTTP server's Windows listeners: the named pipe for local tools
// (\\.\pipe\quiesce-agent: SYSTEM and the Administrators only, the caller
// identified and checked as the Unix socket's peer credentials are on
// Linux), and a Hyper-V socket for the host (AF_HYPERV, listen.hyperv).
// TCP + token is shared (http_server.cpp).
#include <windows.h>

#include <chrono>

#include <boost/asio/windows/overlapped_ptr.hpp>
#include <boost/asio/windows/stream_handle.hpp>

#include "agent/api/http_session.hpp"
#include "platform/win/hyperv_socket.hpp"
#include "platform/win/named_pipe.hpp"

namespace quiesce::api {
namespace detail {

using PipeStream = asio::windows::stream_handle;

// A pipe has no half-close. Closing our end at once could discard a last
// response the client has not read yet (DisconnectNamedPipe does; wine's
// CloseHandle may), so the session lingers as on TCP: it reads until the
// client, having read the response, closes its end (or the linger timeout).
template <>
struct StreamOps<PipeStream> {
  static void cancel(PipeStream& pipe, ErrorCode& ec) { pipe.cancel(ec); }
  static bool shutdown_send(PipeStream&, ErrorCode&) { return true; }
  static void close(PipeStream& pipe, ErrorCode& ec) { pipe.close(ec); }
};

namespace {

// Pause before creating the next instance after a failure (out of
// resources), so a persistent error does not become a busy loop.
constexpr std::chrono::milliseconds pipe_retry_delay{500};

// One instance always waits in ConnectNamedPipe; when a client connects it
// becomes that client's session and a fresh instance takes its place.
class PipeAcceptor : public std::enable_shared_from_this<PipeAcceptor> {
 public:
  PipeAcceptor(ServerState& server, std::string name)
      : server_(server), name_(std::move(name)), retry_timer_(server.ioc) {}

  // Creates the first instance: fails at start when the name is taken.
  void bind() {
    std::string error;
    void* handle = platform::win::create_pipe_instance(name_, true, error);
    if (handle == nullptr) {
      throw listener_error("pipe " + name_, error);
    }
    waiting_.emplace(server_.ioc, handle);
  }

  void accept() {
    if (closed_) {
      return;
    }
    if (!waiting_) {
      std::string error;
      void* handle = platform::win::create_pipe_instance(name_, false, error);
      if (handle == nullptr) {
        server_.logger->warn("http: pipe {}: cannot create an instance: {}; retrying", name_, error);
        retry_timer_.expires_after(pipe_retry_delay);
        retry_timer_.async_wait([self = shared_from_this()](const ErrorCode& ec) {
          if (!ec) {
            self->accept();
          }
        });
        return;
      }
      waiting_.emplace(server_.ioc, handle);
    }
    asio::windows::overlapped_ptr overlapped(
        server_.ioc, [self = shared_from_this()](const ErrorCode& ec, std::size_t) { self->on_connect(ec); });
    const BOOL connected = ::ConnectNamedPipe(waiting_->native_handle(), overlapped.get());
    const DWORD code = ::GetLastError();
    if (!connected && code == ERROR_PIPE_CONNECTED) {
      // The client came between CreateNamedPipe and ConnectNamedPipe: no
      // completion will be queued for it.
      overlapped.complete(ErrorCode(), 0);
    } else if (!connected && code != ERROR_IO_PENDING) {
      overlapped.complete(ErrorCode(static_cast<int>(code), asio::error::get_system_category()), 0);
    } else {
      overlapped.release();  // the completion port reports it
    }
  }

  void close() {
    closed_ = true;
    retry_timer_.cancel();
    if (waiting_) {
      ErrorCode ignored;
      waiting_->cancel(ignored);
      waiting_->close(ignored);
    }
  }

 private:
  void on_connect(const ErrorCode& ec) {
    if (closed_ || server_.stopping || ec == asio::error::operation_aborted) {
      return;
    }
    if (ec) {
      server_.logger->warn("http: pipe {}: connect failed: {}", name_, ec.message());
      ErrorCode ignored;
      waiting_->close(ignored);
      waiting_.reset();
      accept();
      return;
    }
    PipeStream connection = std::move(*waiting_);
    waiting_.reset();
    accept();
    serve(std::move(connection));
  }

  void serve(PipeStream connection) {
    Peer peer;
    peer.transport = Transport::named_pipe;
    const auto client = platform::win::identify_pipe_client(connection.native_handle());
    peer.description = "pipe pid " + std::to_string(client.pid);
    ErrorCode ignored;
    if (!client.error.empty()) {
      server_.logger->warn("http: {}: refused: {}", peer.description, client.error);
      connection.close(ignored);
      return;
    }
    peer.description += " " + client.account;
    peer.windows_pid = client.pid;
    peer.windows_account = client.account;
    if (!client.privileged) {
      // The pipe's DACL already keeps others out; this holds even if an
      // administrator loosened it, as the Unix socket's mode does on Linux.
      server_.logger->warn("http: {}: refused: not SYSTEM or an administrator", peer.description);
      connection.close(ignored);
      return;
    }
    server_.logger->debug("http: {} connected", peer.description);
    const Admission admission = server_.admit(peer);
    if (admission == Admission::hang_up) {
      connection.close(ignored);
      return;
    }
    server_.start_session(std::move(connection), std::move(peer), admission == Admission::reject_503);
  }

  ServerState& server_;
  std::string name_;
  asio::steady_timer retry_timer_;
  std::optional<PipeStream> waiting_;
  bool closed_ = false;
};

// The host's listener: a Hyper-V stream socket on the configured service
// GUID, served by the shared acceptor loop as TCP is. Where the OS has no
// Hyper-V sockets (an older Windows, not on Hyper-V, or wine) socket()
// fails, and so does the start: a transport the config asks for is never
// left out quietly.
void bind_hyperv(ServerState& server, const HypervListener& config) {
  namespace win = platform::win;
  const std::string name = "hyperv service " + config.service_id;
  auto listener = std::make_shared<ServerState::Listener>(server, Transport::hyperv, name);
  const auto address = win::hyperv_listen_address(config.service_id);
  const Endpoint endpoint(address.data(), address.size(), win::hyperv_protocol());
  ErrorCode ec;
  listener->acceptor.open(Protocol(win::hyperv_address_family(), win::hyperv_protocol()), ec);
  if (ec) {
    throw listener_error(name, win::hyperv_socket_error("socket(AF_HYPERV, SOCK_STREAM, HV_PROTOCOL_RAW)",
                                                        ec.value()));
  }
  listener->acceptor.bind(endpoint, ec);
  if (ec) {
    throw listener_error(name, win::hyperv_socket_error("bind", ec.value()));
  }
  listener->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    throw listener_error(name, win::hyperv_socket_error("listen", ec.value()));
  }
  server.listeners.push_back(std::move(listener));
  server.logger->info("http: listening on {} (from the Hyper-V host)", name);
}

}  // namespace

struct OsListeners {
  std::shared_ptr<PipeAcceptor> pipe;
};

void bind_os_listeners(ServerState& server) {
  server.os_listeners = std::make_shared<OsListeners>();
  if (server.config.unix_socket || server.config.vsock) {
    throw listener_error(server.config.unix_socket ? "unix" : "vsock",
                         "not a Windows transport (Windows has listen.pipe and listen.tcp)");
  }
  // First: the transport most likely to be missing fails the start before
  // anything else is bound.
  if (server.config.hyperv) {
    bind_hyperv(server, *server.config.hyperv);
  }
  if (server.config.pipe) {
    auto pipe = std::make_shared<PipeAcceptor>(server, server.config.pipe->name);
    pipe->bind();
    server.os_listeners->pipe = pipe;
    server.logger->info("http: listening on pipe {} (SYSTEM and Administrators only)", server.config.pipe->name);
  }
  if (server.config.tcp) {
    server.bind_tcp(*server.config.tcp);
  }
  if (server.os_listeners->pipe) {
    server.os_listeners->pipe->accept();
  }
}

void close_os_listeners(ServerState& server) {
  if (server.os_listeners && server.os_listeners->pipe) {
    server.os_listeners->pipe->close();
  }
}

bool describe_os_peer(ServerState&, Transport transport, Protocol::socket&, const Endpoint& endpoint, Peer& peer) {
  if (transport != Transport::hyperv) {
    return false;  // TCP is described in http_server.cpp
  }
  peer.transport = Transport::hyperv;
  peer.description = platform::win::describe_hyperv_peer(endpoint.data(), endpoint.size());
  return true;
}

void prepare_tcp_acceptor(Acceptor& acceptor) {
  // Not SO_REUSEADDR: on Windows it lets another process bind the same port
  // and take connections meant for the agent. SO_EXCLUSIVEADDRUSE refuses that.
  using exclusive_address_use = asio::detail::socket_option::boolean<SOL_SOCKET, SO_EXCLUSIVEADDRUSE>;
  acceptor.set_option(exclusive_address_use(true));
}

}  // namespace detail

}  // namespace quiesce::api
