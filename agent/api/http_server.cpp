// The agent's HTTP/1.1 server, the part every OS shares: the listener
// and session machinery (agent/api/http_session.hpp), TCP, start and stop.
// The listeners only one OS has are in http_listeners_<os>.cpp.
#include "agent/api/http_server.hpp"

#include <cstring>
#include <system_error>

// The OS's socket headers (sockaddr_in, inet_ntop, ntohs), whichever the OS.
#include <boost/asio/detail/socket_types.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "agent/api/http_session.hpp"

namespace quiesce::api {
namespace detail {
namespace {

std::string describe_tcp_peer(const Endpoint& endpoint) {
  const auto* data = endpoint.data();
  char text[INET6_ADDRSTRLEN] = {};
  if (data->sa_family == AF_INET && endpoint.size() >= sizeof(sockaddr_in)) {
    sockaddr_in in{};
    std::memcpy(&in, data, sizeof in);
    ::inet_ntop(AF_INET, &in.sin_addr, text, sizeof text);
    return "tcp " + std::string(text) + ":" + std::to_string(ntohs(in.sin_port));
  }
  if (data->sa_family == AF_INET6 && endpoint.size() >= sizeof(sockaddr_in6)) {
    sockaddr_in6 in6{};
    std::memcpy(&in6, data, sizeof in6);
    ::inet_ntop(AF_INET6, &in6.sin6_addr, text, sizeof text);
    return "tcp [" + std::string(text) + "]:" + std::to_string(ntohs(in6.sin6_port));
  }
  return "tcp";
}

std::optional<std::uint16_t> port_of(const Endpoint& endpoint) {
  const auto* data = endpoint.data();
  if (data->sa_family == AF_INET && endpoint.size() >= sizeof(sockaddr_in)) {
    sockaddr_in in{};
    std::memcpy(&in, data, sizeof in);
    return ntohs(in.sin_port);
  }
  if (data->sa_family == AF_INET6 && endpoint.size() >= sizeof(sockaddr_in6)) {
    sockaddr_in6 in6{};
    std::memcpy(&in6, data, sizeof in6);
    return ntohs(in6.sin6_port);
  }
  return std::nullopt;
}

}  // namespace

Response ServerState::invoke_handler(const Request& request) noexcept {
  try {
    return handler(request);
  } catch (const std::exception& e) {
    logger->error("http: handler for {} {} threw: {}", request.method, request.target, e.what());
  } catch (...) {
    logger->error("http: handler for {} {} threw a non-exception", request.method, request.target);
  }
  try {
    return error_response(500, "internal_error", "the request handler failed; see the agent log");
  } catch (...) {
    // Out of memory while building the error: answer without a body.
    Response bare;
    bare.status = 500;
    return bare;
  }
}

void ServerState::Listener::accept() {
  acceptor.async_accept(
      peer_endpoint, [self = shared_from_this()](const ErrorCode& ec, Protocol::socket socket) {
        if (ec == asio::error::operation_aborted || !self->acceptor.is_open() || self->server.stopping) {
          return;
        }
        if (ec) {
          self->server.logger->warn("http: {} accept failed: {}", self->name, ec.message());
          if (ec == asio::error::no_descriptors || ec.value() == ENFILE || ec == asio::error::no_memory ||
              ec == asio::error::no_buffer_space) {
            self->retry_timer.expires_after(accept_retry_delay);
            self->retry_timer.async_wait([self](const ErrorCode& wait_ec) {
              if (!wait_ec) {
                self->accept();
              }
            });
            return;
          }
          self->accept();
          return;
        }
        self->server.on_accept(*self, std::move(socket), self->peer_endpoint);
        self->accept();
      });
}

void ServerState::on_accept(Listener& listener, Protocol::socket socket, const Endpoint& peer_endpoint) {
  Peer peer;
  peer.transport = listener.transport;
  if (listener.transport == Transport::tcp) {
    peer.description = describe_tcp_peer(peer_endpoint);
  } else if (!describe_os_peer(*this, listener.transport, socket, peer_endpoint, peer)) {
    ErrorCode ignored;
    socket.close(ignored);
    return;
  }
  const Admission admission = admit(peer);
  if (admission == Admission::hang_up) {
    // Past twice the limit: a fixed 503 written without blocking, then
    // close. A client that already sent its request may see a reset
    // instead (unread data at close); docs/api.md says so.
    static const std::string canned = std::string("HTTP/1.1 503 Service Unavailable\r\n") +
                                      "Server: " + server_name + "\r\n" +
                                      "Content-Type: application/json\r\n" +
                                      "Retry-After: " + retry_after_seconds + "\r\n" +
                                      "Connection: close\r\n" +
                                      "Content-Length: " + std::to_string(overload_body.size()) +
                                      "\r\n\r\n" + std::string(overload_body);
    ErrorCode ignored;
    // Asio's non-blocking send (MSG_NOSIGNAL where the OS has it): what
    // does not fit in the socket buffer now is dropped, never waited for.
    socket.non_blocking(true, ignored);
    (void)socket.write_some(asio::buffer(canned), ignored);
    socket.shutdown(Protocol::socket::shutdown_send, ignored);
    socket.close(ignored);
    return;
  }
  start_session(std::move(socket), std::move(peer), admission == Admission::reject_503);
}

Admission ServerState::admit(const Peer& peer) {
  if (active_connections < std::max<std::size_t>(1, config.limits.max_connections)) {
    ++active_connections;
    return Admission::serve;
  }
  // Answer a bounded number of the excess connections with a JSON 503 so
  // clients learn why; beyond that just hang up.
  if (rejecting_connections >= std::max<std::size_t>(1, config.limits.max_connections)) {
    logger->warn("http: {}: connection limit reached, answering 503 and closing", peer.description);
    return Admission::hang_up;
  }
  logger->warn("http: {}: connection limit ({}) reached, answering 503", peer.description,
               config.limits.max_connections);
  ++rejecting_connections;
  return Admission::reject_503;
}

void ServerState::session_closed(SessionBase* session, bool rejected) {
  sessions.erase(session);
  if (rejected) {
    --rejecting_connections;
  } else {
    --active_connections;
  }
  if (stopping && sessions.empty()) {
    // Nothing in flight any more: let run() return without waiting out the grace.
    grace_timer.cancel();
  }
}

void ServerState::begin_stop() {
  if (stopping) {
    return;
  }
  stopping = true;
  logger->info("http: stopping ({} connections open)", sessions.size());
  for (auto& listener : listeners) {
    ErrorCode ignored;
    listener->acceptor.close(ignored);
    listener->retry_timer.cancel();
  }
  close_os_listeners(*this);
  // Copy: closing a session erases it from the map.
  std::vector<std::shared_ptr<SessionBase>> open;
  for (auto& [raw, weak] : sessions) {
    if (auto session = weak.lock()) {
      open.push_back(std::move(session));
    }
  }
  for (auto& session : open) {
    session->on_server_stop();
  }
  work.reset();
  if (!sessions.empty()) {
    grace_timer.expires_after(config.limits.stop_grace);
    grace_timer.async_wait([this](const ErrorCode& ec) {
      if (ec) {
        return;
      }
      logger->warn("http: {} requests still in flight after {} ms; stopping anyway", sessions.size(),
                   config.limits.stop_grace.count());
      ioc.stop();
    });
  }
}

void ServerState::bind_tcp(const TcpListener& config_in) {
  const std::string name = "tcp " + config_in.address + ":" + std::to_string(config_in.port);
  if (config_in.token.empty()) {
    throw listener_error(name, "a bearer token is required for TCP");
  }
  ErrorCode ec;
  const auto address = asio::ip::make_address(config_in.address, ec);
  if (ec) {
    throw listener_error(name, "invalid address: " + ec.message());
  }
  auto listener = std::make_shared<Listener>(*this, Transport::tcp, name);
  const asio::ip::tcp::endpoint tcp_endpoint(address, config_in.port);
  const Endpoint endpoint{tcp_endpoint};
  try {
    listener->acceptor.open(Protocol(tcp_endpoint.protocol().family(), IPPROTO_TCP));
    prepare_tcp_acceptor(listener->acceptor);
    listener->acceptor.bind(endpoint);
    listener->acceptor.listen(asio::socket_base::max_listen_connections);
    bound_tcp_port = port_of(listener->acceptor.local_endpoint());
  } catch (const boost::system::system_error& e) {
    throw listener_error(name, e.code().message());
  }
  listeners.push_back(std::move(listener));
  logger->info("http: listening on tcp {}:{} (bearer token required)", config_in.address,
               bound_tcp_port.value_or(0));
}

void ServerState::start() {
  if (started) {
    throw std::logic_error("HttpServer::start called twice");
  }
  started = true;
  if (!config.unix_socket && !config.vsock && !config.tcp && !config.pipe && !config.hyperv) {
    throw std::runtime_error("http: no listener configured");
  }
  try {
    bind_os_listeners(*this);
  } catch (...) {
    for (auto& listener : listeners) {
      ErrorCode ignored;
      listener->acceptor.close(ignored);
    }
    listeners.clear();
    close_os_listeners(*this);
    throw;
  }
  if (listeners.empty()) {
    logger->warn("http: no listener could be opened; the agent is unreachable until restarted");
  }
  for (auto& listener : listeners) {
    listener->accept();
  }
}

}  // namespace detail

struct HttpServer::Impl : detail::ServerState {
  using ServerState::ServerState;
};

using detail::ServerState;

HttpServer::HttpServer(ServerConfig config, Handler handler, std::shared_ptr<spdlog::logger> logger)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(handler), std::move(logger))) {}

HttpServer::~HttpServer() {
  // Running handlers hold sessions that point at impl_; wait for them before
  // the io_context (and the sessions it owns) goes away.
  impl_->pool.join();
  impl_->read_pool.join();
  close_os_listeners(*impl_);
}

void HttpServer::start() { impl_->start(); }

void HttpServer::run() { impl_->ioc.run(); }

void HttpServer::stop() {
  // Posted, so stop() is safe from any thread, and a stop() before run()
  // takes effect as soon as run() starts.
  boost::asio::post(impl_->ioc, [impl = impl_.get()] { impl->begin_stop(); });
}

std::optional<std::uint16_t> HttpServer::tcp_port() const { return impl_->bound_tcp_port; }

bool HttpServer::vsock_listening() const { return impl_->vsock_bound; }

}  // namespace quiesce::api
