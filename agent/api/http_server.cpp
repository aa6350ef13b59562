// The agent's HTTP/1.1 server: the only agent translation unit that includes
// Beast. Every transport is an asio::generic::stream_protocol socket, so one
// Session type (one instantiation of the Beast parser and serializer) serves
// Unix sockets, AF_VSOCK and TCP alike.
//
// Shape (Beast's advanced_server): a Listener per transport accepts and
// makes a Session per connection. All socket work happens on the one I/O
// thread that runs run(); that thread is the implicit strand, so Session and
// Impl state touched from I/O completions needs no lock. A complete request
// is posted to a handler thread pool and the response posted back to the I/O
// thread, so a handler blocked in a freeze never stalls other connections.
#include "agent/api/http_server.hpp"

#include <arpa/inet.h>
#include <grp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <spdlog/spdlog.h>

#include "platform/linux/vsock.hpp"
#include "quiesce/wire/errors.hpp"

namespace quiesce::api {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using Protocol = asio::generic::stream_protocol;
using Endpoint = Protocol::endpoint;
using Acceptor = asio::basic_socket_acceptor<Protocol>;
using ErrorCode = boost::system::error_code;
using HttpResponse = http::response<http::string_body>;
using RequestParser = http::request_parser<http::string_body>;
using Clock = std::chrono::steady_clock;

// How long a connection we are closing may keep sending before we hang up.
// Reading what the client still sends after an error response (instead of
// closing at once) keeps the kernel from answering with RST, which would
// make the client drop our JSON error unread.
constexpr std::chrono::milliseconds linger_timeout{1'000};
constexpr std::size_t linger_max_bytes = 1024 * 1024;
// Pause before accepting again when the process is out of descriptors, so a
// full fd table does not turn the accept loop into a busy loop.
constexpr std::chrono::milliseconds accept_retry_delay{100};
constexpr const char* server_name = "quiesce-agent/" QUIESCE_VERSION;
constexpr const char* retry_after_seconds = "1";
// What a connection past twice max_connections gets: written at once, without
// reading the request, so the answer costs the I/O thread no session.
constexpr std::string_view overload_body =
    R"({"error":{"code":"too_many_connections","message":"the agent is at its connection limit; retry later","retryable":true}})";

std::string to_string(beast::string_view text) { return std::string(text.data(), text.size()); }

std::string error_json(std::string code, std::string message, bool retryable = false) {
  wire::ApiError error;
  error.code = std::move(code);
  error.message = std::move(message);
  error.retryable = retryable;
  return wire::error_body(error);
}

Response error_response(unsigned status, std::string code, std::string message,
                        bool retryable = false) {
  Response response;
  response.status = status;
  response.body = error_json(std::move(code), std::move(message), retryable);
  return response;
}

// Compares a presented token against the configured one in time that
// depends only on the configured token's length, so response timing does not
// tell an attacker how many leading bytes were right.
bool constant_time_equals(std::string_view presented, std::string_view expected) {
  unsigned char difference = presented.size() == expected.size() ? 0 : 1;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const unsigned char p =
        i < presented.size() ? static_cast<unsigned char>(presented[i]) : static_cast<unsigned char>(0);
    difference = static_cast<unsigned char>(difference | (p ^ static_cast<unsigned char>(expected[i])));
  }
  // volatile: keep the compiler from turning the loop into an early exit.
  const volatile unsigned char result = difference;
  return result == 0;
}

bool bearer_token_matches(std::string_view header, std::string_view token) {
  constexpr std::string_view scheme = "Bearer ";
  if (header.size() < scheme.size()) {
    return false;
  }
  // The scheme name is case-insensitive (RFC 7235); the token is not.
  for (std::size_t i = 0; i < scheme.size(); ++i) {
    const auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; };
    if (lower(header[i]) != lower(scheme[i])) {
      return false;
    }
  }
  std::string_view presented = header.substr(scheme.size());
  while (!presented.empty() && (presented.front() == ' ' || presented.front() == '\t')) {
    presented.remove_prefix(1);
  }
  while (!presented.empty() && (presented.back() == ' ' || presented.back() == '\t')) {
    presented.remove_suffix(1);
  }
  return constant_time_equals(presented, token);
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           const auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; };
           return lower(x) == lower(y);
         });
}

// RFC 9112 section 6: a request framed by anything but a lone "chunked"
// transfer coding cannot be delimited safely here. Beast reads a body it
// does not recognise as absent, so the bytes of `Transfer-Encoding: xchunked`
// would be read as the next request on the connection (request smuggling).
// Returns the status and message to refuse with, or nothing when fine.
struct FramingRefusal {
  unsigned status;
  std::string code;
  std::string message;
};

std::string trimmed_lower(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) {
    text.remove_prefix(1);
  }
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) {
    text.remove_suffix(1);
  }
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; });
  return out;
}

template <class Fields>
std::optional<FramingRefusal> refuse_framing(const Fields& fields) {
  const auto codings = fields.equal_range(http::field::transfer_encoding);
  if (codings.first == codings.second) {
    return std::nullopt;
  }
  if (fields.count(http::field::content_length) != 0) {
    return FramingRefusal{400, "bad_request",
                          "a request must not carry both Transfer-Encoding and Content-Length"};
  }
  std::vector<std::string> list;
  for (auto it = codings.first; it != codings.second; ++it) {
    const auto value = it->value();
    std::string_view rest(value.data(), value.size());
    while (true) {
      const auto comma = rest.find(',');
      list.push_back(trimmed_lower(rest.substr(0, comma)));
      if (comma == std::string_view::npos) {
        break;
      }
      rest.remove_prefix(comma + 1);
    }
  }
  if (list.size() == 1 && list.front() == "chunked") {
    return std::nullopt;
  }
  if (list.back() != "chunked") {
    return FramingRefusal{400, "bad_request",
                          "Transfer-Encoding must end in chunked for a request to have a length"};
  }
  return FramingRefusal{501, "unsupported_transfer_encoding",
                        "only the chunked transfer coding is supported"};
}

// Methods the handler may see. Everything else (TRACE, CONNECT, WebDAV verbs,
// unknown tokens) is answered 405 here.
bool method_reaches_handler(http::verb verb) {
  switch (verb) {
    case http::verb::get:
    case http::verb::head:
    case http::verb::post:
    case http::verb::put:
    case http::verb::patch:
    case http::verb::delete_:
    case http::verb::options:
      return true;
    default:
      return false;
  }
}

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

std::runtime_error listener_error(const std::string& listener, const std::string& what) {
  return std::runtime_error(listener + " listener: " + what);
}

std::string errno_text(int error) { return std::error_code(error, std::generic_category()).message(); }

// A socket file left behind by an agent that died is replaced; anything else
// at the path (a regular file, a live agent) is an error, never removed.
void remove_stale_unix_socket(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return;
    }
    throw listener_error("unix " + path, "cannot stat: " + errno_text(errno));
  }
  if (!S_ISSOCK(st.st_mode)) {
    throw listener_error("unix " + path, "path exists and is not a socket; refusing to remove it");
  }
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    throw listener_error("unix " + path, "socket(): " + errno_text(errno));
  }
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address);  // NOLINT
  const int connect_errno = errno;
  ::close(fd);
  if (rc == 0) {
    throw listener_error("unix " + path, "another process is listening on this socket");
  }
  if (connect_errno == EAGAIN) {
    // Backlog full: somebody is alive behind it.
    throw listener_error("unix " + path, "another process is listening on this socket (backlog full)");
  }
  if (connect_errno != ECONNREFUSED && connect_errno != ENOENT) {
    throw listener_error("unix " + path, "cannot probe existing socket: " + errno_text(connect_errno));
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    throw listener_error("unix " + path, "cannot remove stale socket: " + errno_text(errno));
  }
}

gid_t lookup_group(const std::string& name) {
  long size = ::sysconf(_SC_GETGR_R_SIZE_MAX);
  std::vector<char> buffer(static_cast<std::size_t>(size > 0 ? size : 16384));
  group entry{};
  group* found = nullptr;
  int rc = 0;
  while ((rc = ::getgrnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &found)) == ERANGE) {
    buffer.resize(buffer.size() * 2);
  }
  if (rc != 0 || found == nullptr) {
    throw std::runtime_error("group '" + name + "' not found" + (rc != 0 ? ": " + errno_text(rc) : ""));
  }
  return found->gr_gid;
}

class Session;

// Everything the server shares across listeners and sessions. It lives in
// this file's anonymous namespace (HttpServer::Impl just derives from it) so
// Session can use it without HttpServer's private Impl being visible.
struct ServerState {
  ServerState(ServerConfig config_in, Handler handler_in, std::shared_ptr<spdlog::logger> logger_in)
      : config(std::move(config_in)),
        handler(std::move(handler_in)),
        logger(logger_in ? std::move(logger_in) : spdlog::default_logger()),
        pool(std::max<std::size_t>(1, config.limits.handler_threads)),
        work(asio::make_work_guard(ioc)),
        grace_timer(ioc) {}

  struct Listener : std::enable_shared_from_this<Listener> {
    Listener(ServerState& server_in, Transport transport_in, std::string name_in)
        : server(server_in), transport(transport_in), name(std::move(name_in)),
          acceptor(server_in.ioc), retry_timer(server_in.ioc) {}
    void accept();

    ServerState& server;
    Transport transport;
    std::string name;
    Acceptor acceptor;
    asio::steady_timer retry_timer;
    Endpoint peer_endpoint;
  };

  void start();
  void bind_unix(const UnixListener& listener);
  void bind_tcp(const TcpListener& listener);
  void bind_vsock(const VsockListener& listener);
  void on_accept(Listener& listener, Protocol::socket socket, const Endpoint& peer_endpoint);
  void begin_stop();
  void session_closed(Session* session, bool rejected);
  void remove_unix_socket_file();
  Response invoke_handler(const Request& request) noexcept;

  ServerConfig config;
  Handler handler;
  std::shared_ptr<spdlog::logger> logger;

  // Declaration order is destruction order reversed: the pool is joined
  // (waiting for running handlers) before the io_context goes away, so a
  // handler's final post never targets a destroyed io_context.
  asio::io_context ioc;
  asio::thread_pool pool;
  // GETs (health, status, metrics) only read the coordinator's state, never
  // wait on a writer: their own small pool keeps them answering while every
  // thread of `pool` is busy with slow operations (DESIGN.md invariant 6).
  asio::thread_pool read_pool{2};
  asio::executor_work_guard<asio::io_context::executor_type> work;
  asio::steady_timer grace_timer;

  std::vector<std::shared_ptr<Listener>> listeners;
  // I/O-thread state.
  std::map<Session*, std::weak_ptr<Session>> sessions;
  std::size_t active_connections = 0;
  std::size_t rejecting_connections = 0;
  bool stopping = false;

  std::optional<std::uint16_t> bound_tcp_port;
  bool vsock_bound = false;
  std::optional<std::string> unix_path;
  std::optional<std::pair<dev_t, ino_t>> unix_inode;  // to remove only our own socket file
  bool started = false;
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(ServerState& server, Protocol::socket socket, Peer peer, bool reject)
      : server_(server), socket_(std::move(socket)), timer_(server.ioc), peer_(std::move(peer)),
        reject_(reject) {}

  void start() { read_request(); }

  // stop(): connections not in the middle of a request go now; the others
  // finish their response and then close.
  void on_server_stop() {
    if (phase_ == Phase::idle || phase_ == Phase::reading) {
      close();
    }
  }

 private:
  enum class Phase { idle, reading, handling, writing, closing, closed };
  const ServerLimits& limits() const { return server_.config.limits; }

  // One deadline timer per connection. A timeout cancels the pending
  // operation (not close: we still want to send 408), and the generation
  // counter makes a timer that fired just as its operation finished harmless.
  void arm(std::chrono::milliseconds timeout) {
    const auto generation = ++timer_generation_;
    timed_out_ = false;
    timer_.expires_after(timeout);
    timer_.async_wait([self = shared_from_this(), generation](const ErrorCode& ec) {
      if (ec || generation != self->timer_generation_ || self->phase_ == Phase::closed) {
        return;
      }
      self->timed_out_ = true;
      ErrorCode ignored;
      self->socket_.cancel(ignored);
    });
  }
  void disarm() {
    ++timer_generation_;
    timer_.cancel();
  }

  void read_request() {
    if (server_.stopping) {
      close();
      return;
    }
    if (buffer_.size() == 0 && requests_served_ > 0) {
      // Keep-alive: wait for the first byte of the next request under the
      // idle timeout; the (shorter) read timeout starts once it arrives.
      phase_ = Phase::idle;
      arm(limits().keepalive_timeout);
      socket_.async_read_some(buffer_.prepare(4096),
                              [self = shared_from_this()](const ErrorCode& ec, std::size_t n) {
                                self->on_idle_read(ec, n);
                              });
      return;
    }
    parse_request();
  }

  void on_idle_read(const ErrorCode& ec, std::size_t bytes) {
    disarm();
    if (ec) {
      if (timed_out_) {
        server_.logger->debug("http: {}: keep-alive connection idle, closing", peer_.description);
      }
      close();
      return;
    }
    buffer_.commit(bytes);
    parse_request();
  }

  void parse_request() {
    phase_ = Phase::reading;
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(
        std::min<std::size_t>(limits().max_header_bytes, std::numeric_limits<std::uint32_t>::max())));
    parser_->body_limit(limits().max_body_bytes);
    arm(limits().read_timeout);
    http::async_read_header(socket_, buffer_, *parser_,
                            [self = shared_from_this()](const ErrorCode& ec, std::size_t) {
                              self->on_header(ec);
                            });
  }

  void on_header(const ErrorCode& ec) {
    if (ec) {
      on_read_error(ec);
      return;
    }
    const auto& request = parser_->get();
    keep_alive_ = request.keep_alive();
    // Decide what we can from the header alone, so a request that will be
    // refused never gets to upload its body.
    if (reject_) {
      send_error(503, "too_many_connections",
                 "the agent already serves " + std::to_string(limits().max_connections) +
                     " connections; retry later",
                 true);
      return;
    }
    if (auto refusal = refuse_framing(request)) {
      server_.logger->warn("http: {}: refused request framing: {}", peer_.description, refusal->message);
      send_error(refusal->status, std::move(refusal->code), std::move(refusal->message));
      return;
    }
    if (!method_reaches_handler(request.method())) {
      send_error(405, "method_not_allowed",
                 "method " + to_string(request.method_string()) + " is not supported");
      return;
    }
    if (peer_.transport == Transport::tcp) {
      const auto& token = server_.config.tcp->token;
      const auto header = request[http::field::authorization];
      if (!bearer_token_matches(std::string_view(header.data(), header.size()), token)) {
        server_.logger->warn("http: {}: rejected request without a valid bearer token",
                             peer_.description);
        send_error(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required");
        return;
      }
    }
    const auto target = request.target();
    if (target.empty() || target.front() != '/') {
      send_error(400, "bad_request", "request target must be an absolute path");
      return;
    }
    if (parser_->is_done()) {
      on_request_read();
      return;
    }
    if (iequals(std::string_view(request[http::field::expect].data(), request[http::field::expect].size()),
                "100-continue")) {
      continue_.emplace(http::status::continue_, request.version());
      http::async_write(socket_, *continue_, [self = shared_from_this()](const ErrorCode& write_ec, std::size_t) {
        if (write_ec) {
          self->on_read_error(write_ec);
          return;
        }
        self->read_body();
      });
      return;
    }
    read_body();
  }

  void read_body() {
    http::async_read(socket_, buffer_, *parser_, [self = shared_from_this()](const ErrorCode& ec, std::size_t) {
      if (ec) {
        self->on_read_error(ec);
        return;
      }
      self->on_request_read();
    });
  }

  void on_read_error(const ErrorCode& ec) {
    disarm();
    if (phase_ == Phase::closed) {
      return;
    }
    if (timed_out_) {
      server_.logger->info("http: {}: request not received within {} ms, closing", peer_.description,
                           limits().read_timeout.count());
      keep_alive_ = false;
      send_error(408, "timeout",
                 "request not received within " + std::to_string(limits().read_timeout.count()) + " ms");
      return;
    }
    if (ec == http::error::end_of_stream || ec == http::error::partial_message || ec == asio::error::eof ||
        ec == asio::error::operation_aborted || ec == asio::error::connection_reset ||
        ec == asio::error::broken_pipe) {
      close();
      return;
    }
    if (ec == http::error::body_limit) {
      send_error(413, "body_too_large",
                 "request body exceeds " + std::to_string(limits().max_body_bytes) + " bytes");
      return;
    }
    if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
      send_error(431, "headers_too_large",
                 "request header exceeds " + std::to_string(limits().max_header_bytes) + " bytes");
      return;
    }
    if (ec.category() == http::make_error_code(http::error::bad_method).category()) {
      send_error(400, "bad_request", "malformed HTTP request: " + ec.message());
      return;
    }
    server_.logger->debug("http: {}: read failed: {}", peer_.description, ec.message());
    close();
  }

  void on_request_read() {
    disarm();
    auto message = parser_->release();
    parser_.reset();
    phase_ = Phase::handling;
    head_ = message.method() == http::verb::head;

    Request request;
    request.method = head_ ? std::string("GET") : to_string(message.method_string());
    request.target = to_string(message.target());
    request.body = std::move(message.body());
    request.peer = peer_;

    // The handler may block for as long as a freeze takes; it runs on the
    // pool. The work guard keeps run() alive until the response is back.
    auto& pool = request.method == "GET" ? server_.read_pool : server_.pool;
    asio::post(pool, [self = shared_from_this(), request = std::move(request),
                              work = asio::make_work_guard(server_.ioc)]() mutable {
      Response response = self->server_.invoke_handler(request);
      asio::post(self->server_.ioc, [self, response = std::move(response)]() mutable {
        self->on_handled(std::move(response));
      });
    });
  }

  void on_handled(Response response) {
    if (phase_ == Phase::closed) {
      return;
    }
    if (response.status < 100 || response.status > 999) {
      server_.logger->error("http: handler returned invalid status {}", response.status);
      response = error_response(500, "internal_error", "handler returned an invalid HTTP status");
    }
    write(std::move(response));
  }

  void send_error(unsigned status, std::string code, std::string message, bool retryable = false) {
    keep_alive_ = false;
    write(error_response(status, std::move(code), std::move(message), retryable));
  }

  void write(Response response) {
    const bool keep_alive = keep_alive_ && !server_.stopping && !reject_;
    response_.emplace();
    response_->version(11);
    response_->result(response.status);
    response_->set(http::field::server, server_name);
    response_->set(http::field::content_type, response.content_type);
    response_->set(http::field::cache_control, "no-store");
    if (response.status == 401) {
      response_->set(http::field::www_authenticate, "Bearer");
    }
    if (response.status == 503) {
      // Connection limit: a client that retries after this many seconds
      // usually finds a slot (requests take milliseconds).
      response_->set(http::field::retry_after, retry_after_seconds);
    }
    if (response.status == 405) {
      response_->set(http::field::allow, "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");
    }
    response_->keep_alive(keep_alive);
    const std::size_t length = response.body.size();
    response_->body() = std::move(response.body);
    response_->prepare_payload();
    if (head_) {
      // HEAD: the headers of the GET answer, no body.
      response_->body().clear();
      response_->content_length(length);
    }
    phase_ = Phase::writing;
    arm(limits().read_timeout);
    http::async_write(socket_, *response_,
                      [self = shared_from_this(), keep_alive](const ErrorCode& ec, std::size_t) {
                        self->on_write(ec, keep_alive);
                      });
  }

  void on_write(const ErrorCode& ec, bool keep_alive) {
    disarm();
    response_.reset();
    head_ = false;
    if (ec) {
      server_.logger->debug("http: {}: write failed: {}", peer_.description,
                            timed_out_ ? std::string("timed out") : ec.message());
      close();
      return;
    }
    ++requests_served_;
    if (!keep_alive || server_.stopping) {
      linger_close();
      return;
    }
    read_request();
  }

  // Half-close, then read and discard what the client still sends (bounded
  // in time and bytes) so our last response is not lost to a TCP RST.
  void linger_close() {
    if (phase_ == Phase::closed) {
      return;
    }
    phase_ = Phase::closing;
    ErrorCode ignored;
    socket_.shutdown(Protocol::socket::shutdown_send, ignored);
    arm(linger_timeout);
    linger_read();
  }

  void linger_read() {
    socket_.async_read_some(asio::buffer(linger_buffer_),
                            [self = shared_from_this()](const ErrorCode& ec, std::size_t n) {
                              self->lingered_ += n;
                              if (ec || self->lingered_ > linger_max_bytes) {
                                self->close();
                                return;
                              }
                              self->linger_read();
                            });
  }

  void close() {
    if (phase_ == Phase::closed) {
      return;
    }
    phase_ = Phase::closed;
    disarm();
    ErrorCode ignored;
    socket_.shutdown(Protocol::socket::shutdown_both, ignored);
    socket_.close(ignored);
    server_.session_closed(this, reject_);
  }

  ServerState& server_;
  Protocol::socket socket_;
  asio::steady_timer timer_;
  Peer peer_;
  bool reject_;

  beast::flat_buffer buffer_;
  std::optional<RequestParser> parser_;
  std::optional<HttpResponse> response_;
  std::optional<http::response<http::empty_body>> continue_;
  std::array<char, 4096> linger_buffer_{};
  std::size_t lingered_ = 0;

  Phase phase_ = Phase::reading;
  std::uint64_t timer_generation_ = 0;
  bool timed_out_ = false;
  bool keep_alive_ = false;
  bool head_ = false;
  std::uint64_t requests_served_ = 0;
};

}  // namespace

struct HttpServer::Impl : ServerState {
  using ServerState::ServerState;
};

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
  switch (listener.transport) {
    case Transport::unix_socket: {
      peer.description = "unix";
      ucred credentials{};
      socklen_t size = sizeof credentials;
      if (::getsockopt(socket.native_handle(), SOL_SOCKET, SO_PEERCRED, &credentials, &size) == 0) {
        peer.unix_uid = credentials.uid;
        peer.unix_pid = credentials.pid;
        peer.description += " pid " + std::to_string(credentials.pid) + " uid " + std::to_string(credentials.uid);
      }
      break;
    }
    case Transport::vsock: {
      const auto address = platform::vsock_address_of(peer_endpoint.data(), peer_endpoint.size());
      const auto& allowed = config.vsock->allowed_cids;
      if (!address || std::find(allowed.begin(), allowed.end(), address->cid) == allowed.end()) {
        logger->warn("http: refused vsock connection from {} (allowed CIDs: {})",
                     address ? platform::describe_vsock(*address) : std::string("an unknown address"),
                     fmt::join(allowed, ","));
        ErrorCode ignored;
        socket.close(ignored);
        return;
      }
      peer.vsock_cid = address->cid;
      peer.description = platform::describe_vsock(*address);
      break;
    }
    case Transport::tcp:
      peer.description = describe_tcp_peer(peer_endpoint);
      break;
    case Transport::qga:
    case Transport::dbus:
      break;  // never a listener of this server
  }

  bool reject = false;
  if (active_connections >= std::max<std::size_t>(1, config.limits.max_connections)) {
    // Answer a bounded number of the excess connections with a JSON 503 so
    // clients learn why; beyond that just hang up.
    if (rejecting_connections >= std::max<std::size_t>(1, config.limits.max_connections)) {
      // Past twice the limit: a fixed 503 written without blocking, then
      // close. A client that already sent its request may see a reset
      // instead (unread data at close); docs/api.md says so.
      logger->warn("http: {}: connection limit reached, answering 503 and closing", peer.description);
      static const std::string canned = std::string("HTTP/1.1 503 Service Unavailable\r\n") +
                                        "Server: " + server_name + "\r\n" +
                                        "Content-Type: application/json\r\n" +
                                        "Retry-After: " + retry_after_seconds + "\r\n" +
                                        "Connection: close\r\n" +
                                        "Content-Length: " + std::to_string(overload_body.size()) +
                                        "\r\n\r\n" + std::string(overload_body);
      (void)::send(socket.native_handle(), canned.data(), canned.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      ErrorCode ignored;
      socket.shutdown(Protocol::socket::shutdown_send, ignored);
      socket.close(ignored);
      return;
    }
    logger->warn("http: {}: connection limit ({}) reached, answering 503", peer.description,
                 config.limits.max_connections);
    reject = true;
    ++rejecting_connections;
  } else {
    ++active_connections;
  }
  auto session = std::make_shared<Session>(*this, std::move(socket), std::move(peer), reject);
  sessions.emplace(session.get(), session);
  session->start();
}

void ServerState::session_closed(Session* session, bool rejected) {
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
  remove_unix_socket_file();
  // Copy: closing a session erases it from the map.
  std::vector<std::shared_ptr<Session>> open;
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

void ServerState::remove_unix_socket_file() {
  if (!unix_path || !unix_inode) {
    return;
  }
  // Only our own socket: another agent may have replaced it since.
  struct stat st {};
  if (::lstat(unix_path->c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == unix_inode->first &&
      st.st_ino == unix_inode->second) {
    ::unlink(unix_path->c_str());
  }
  unix_inode.reset();
}

void ServerState::bind_unix(const UnixListener& config_in) {
  const std::string name = "unix " + config_in.path;
  if (config_in.path.empty()) {
    throw listener_error("unix", "empty socket path");
  }
  if (config_in.path.size() >= sizeof(sockaddr_un::sun_path)) {
    throw listener_error(name, "path longer than " + std::to_string(sizeof(sockaddr_un::sun_path) - 1) +
                                   " bytes");
  }
  const std::filesystem::path path(config_in.path);
  if (path.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(path.parent_path(), ec);
    if (ec) {
      throw listener_error(name, "cannot create directory " + path.parent_path().string() + ": " + ec.message());
    }
  }
  remove_stale_unix_socket(config_in.path);

  auto listener = std::make_shared<Listener>(*this, Transport::unix_socket, name);
  const Endpoint endpoint{asio::local::stream_protocol::endpoint(config_in.path)};
  try {
    listener->acceptor.open(endpoint.protocol());
    // Bind with a umask that leaves the socket owner-only until the chmod
    // below, so nobody can connect in between.
    const mode_t old_umask = ::umask(0177);
    boost::system::error_code bind_error;
    listener->acceptor.bind(endpoint, bind_error);
    ::umask(old_umask);
    if (bind_error) {
      throw boost::system::system_error(bind_error);
    }
    listener->acceptor.listen(asio::socket_base::max_listen_connections);
  } catch (const boost::system::system_error& e) {
    throw listener_error(name, e.code().message());
  }
  unix_path = config_in.path;
  struct stat st {};
  if (::lstat(config_in.path.c_str(), &st) == 0) {
    unix_inode = std::make_pair(st.st_dev, st.st_ino);
  }
  if (::chmod(config_in.path.c_str(), static_cast<mode_t>(config_in.mode)) != 0) {
    throw listener_error(name, "chmod: " + errno_text(errno));
  }
  if (config_in.group) {
    try {
      const gid_t gid = lookup_group(*config_in.group);
      if (::chown(config_in.path.c_str(), static_cast<uid_t>(-1), gid) != 0) {
        throw std::runtime_error("chgrp " + *config_in.group + ": " + errno_text(errno));
      }
    } catch (const std::runtime_error& e) {
      throw listener_error(name, e.what());
    }
  }
  listeners.push_back(std::move(listener));
  logger->info("http: listening on {} (mode {:o}{})", name, config_in.mode,
               config_in.group ? ", group " + *config_in.group : std::string());
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
    listener->acceptor.set_option(asio::socket_base::reuse_address(true));
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

void ServerState::bind_vsock(const VsockListener& config_in) {
  const std::string name = "vsock port " + std::to_string(config_in.port);
  const auto skip_or_throw = [&](int error, const std::string& what) {
    if (!config_in.required && platform::is_vsock_unsupported_error(error)) {
      logger->warn("http: vsock unavailable ({}); not listening on {}", what, name);
      return;
    }
    throw listener_error(name, what);
  };
  const auto availability = platform::vsock_availability();
  if (!availability.available) {
    skip_or_throw(availability.error, availability.reason);
    return;
  }
  auto listener = std::make_shared<Listener>(*this, Transport::vsock, name);
  const auto address = platform::make_vsock_sockaddr(platform::vsock_cid_any, config_in.port);
  const Endpoint endpoint(&address, sizeof address);
  try {
    listener->acceptor.open(Protocol(AF_VSOCK, 0));
    listener->acceptor.bind(endpoint);
    listener->acceptor.listen(asio::socket_base::max_listen_connections);
  } catch (const boost::system::system_error& e) {
    skip_or_throw(e.code().category() == boost::system::system_category() ? e.code().value() : 0,
                  e.code().message());
    return;
  }
  vsock_bound = true;
  listeners.push_back(std::move(listener));
  logger->info("http: listening on {} (allowed CIDs: {})", name, fmt::join(config_in.allowed_cids, ","));
}

void ServerState::start() {
  if (started) {
    throw std::logic_error("HttpServer::start called twice");
  }
  started = true;
  if (!config.unix_socket && !config.vsock && !config.tcp) {
    throw std::runtime_error("http: no listener configured");
  }
  try {
    if (config.unix_socket) {
      bind_unix(*config.unix_socket);
    }
    if (config.tcp) {
      bind_tcp(*config.tcp);
    }
    if (config.vsock) {
      bind_vsock(*config.vsock);
    }
  } catch (...) {
    for (auto& listener : listeners) {
      ErrorCode ignored;
      listener->acceptor.close(ignored);
    }
    listeners.clear();
    remove_unix_socket_file();
    throw;
  }
  if (listeners.empty()) {
    logger->warn("http: no listener could be opened; the agent is unreachable until restarted");
  }
  for (auto& listener : listeners) {
    listener->accept();
  }
}

HttpServer::HttpServer(ServerConfig config, Handler handler, std::shared_ptr<spdlog::logger> logger)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(handler), std::move(logger))) {}

HttpServer::~HttpServer() {
  // Running handlers hold sessions that point at impl_; wait for them before
  // the io_context (and the sessions it owns) goes away.
  impl_->pool.join();
  impl_->read_pool.join();
  impl_->remove_unix_socket_file();
}

void HttpServer::start() { impl_->start(); }

void HttpServer::run() { impl_->ioc.run(); }

void HttpServer::stop() {
  // Posted, so stop() is safe from any thread, and a stop() before run()
  // takes effect as soon as run() starts.
  asio::post(impl_->ioc, [impl = impl_.get()] { impl->begin_stop(); });
}

std::optional<std::uint16_t> HttpServer::tcp_port() const { return impl_->bound_tcp_port; }

bool HttpServer::vsock_listening() const { return impl_->vsock_bound; }

}  // namespace quiesce::api
