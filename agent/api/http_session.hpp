#pragma once
// The HTTP server's insides, shared by agent/api/http_server.cpp (the
// transport-independent part and TCP) and the per-OS listener files
// (http_listeners_linux.cpp: Unix sockets and vsock; http_listeners_windows.cpp:
// named pipes). Private to agent/api: only these files include Beast.
//
// Shape (Beast's advanced_server): a listener per transport accepts and
// makes a Session per connection. All socket work happens on the one I/O
// thread that runs run(); that thread is the implicit strand, so Session and
// ServerState state touched from I/O completions needs no lock. A complete
// request is posted to a handler thread pool and the response posted back to
// the I/O thread, so a handler blocked in a freeze never stalls other
// connections.
//
// Session is a template on its stream: sockets (Unix, vsock, TCP) are all
// one asio::generic::stream_protocol::socket, so Linux has one
// instantiation; Windows adds a second for named pipes.

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/asio/basic_socket_acceptor.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <spdlog/spdlog.h>

#include "agent/api/handler_pool.hpp"
#include "agent/api/http_server.hpp"
#include "quiesce/wire/errors.hpp"

namespace quiesce::api::detail {

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

inline std::string to_string(beast::string_view text) { return std::string(text.data(), text.size()); }

inline std::string error_json(std::string code, std::string message, bool retryable = false) {
  wire::ApiError error;
  error.code = std::move(code);
  error.message = std::move(message);
  error.retryable = retryable;
  return wire::error_body(error);
}

inline Response error_response(unsigned status, std::string code, std::string message,
                        bool retryable = false) {
  Response response;
  response.status = status;
  response.body = error_json(std::move(code), std::move(message), retryable);
  return response;
}

// Compares a presented token against the configured one in time that
// depends only on the configured token's length, so response timing does not
// tell an attacker how many leading bytes were right.
inline bool constant_time_equals(std::string_view presented, std::string_view expected) {
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

inline bool bearer_token_matches(std::string_view header, std::string_view token) {
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

inline bool iequals(std::string_view a, std::string_view b) {
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

inline std::string trimmed_lower(std::string_view text) {
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
inline bool method_reaches_handler(http::verb verb) {
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

inline std::runtime_error listener_error(const std::string& listener, const std::string& what) {
  return std::runtime_error(listener + " listener: " + what);
}

// What a Session needs of its stream beyond Beast's AsyncStream: cancel the
// pending operation (a timeout), half-close (false when the transport has
// none) and close. Sockets here; pipes in http_listeners_windows.cpp.
template <class Stream>
struct StreamOps;

template <>
struct StreamOps<Protocol::socket> {
  static void cancel(Protocol::socket& socket, ErrorCode& ec) { socket.cancel(ec); }
  static bool shutdown_send(Protocol::socket& socket, ErrorCode& ec) {
    socket.shutdown(Protocol::socket::shutdown_send, ec);
    return true;
  }
  static void close(Protocol::socket& socket, ErrorCode& ec) {
    socket.shutdown(Protocol::socket::shutdown_both, ec);
    socket.close(ec);
  }
};

// What the server keeps of a session, whatever its stream.
class SessionBase {
 public:
  virtual ~SessionBase() = default;
  // stop(): connections not in the middle of a request go now; the others
  // finish their response and then close.
  virtual void on_server_stop() = 0;
};

enum class Admission { serve, reject_503, hang_up };

struct OsListeners;

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
  void bind_tcp(const TcpListener& listener);
  void on_accept(Listener& listener, Protocol::socket socket, const Endpoint& peer_endpoint);
  // The connection limit, for a connection of any transport: counts the
  // connection in when it is served (or answered 503).
  Admission admit(const Peer& peer);
  // Makes and starts the Session of an admitted connection (I/O thread).
  template <class Stream>
  void start_session(Stream stream, Peer peer, bool reject);
  void begin_stop();
  void session_closed(SessionBase* session, bool rejected);
  Response invoke_handler(const Request& request) noexcept;

  ServerConfig config;
  Handler handler;
  std::shared_ptr<spdlog::logger> logger;

  // Declaration order is destruction order reversed: the pool is joined
  // (waiting for running handlers) before the io_context goes away, so a
  // handler's final post never targets a destroyed io_context.
  asio::io_context ioc;
  // Threads start with the first requests (handler_pool.hpp).
  HandlerPool pool;
  // GETs (health, status, metrics) only read the coordinator's state, never
  // wait on a writer: their own small pool keeps them answering while every
  // thread of `pool` is busy with slow operations (DESIGN.md invariant 6).
  HandlerPool read_pool{2};
  asio::executor_work_guard<asio::io_context::executor_type> work;
  asio::steady_timer grace_timer;

  std::vector<std::shared_ptr<Listener>> listeners;
  // I/O-thread state.
  std::map<SessionBase*, std::weak_ptr<SessionBase>> sessions;
  std::size_t active_connections = 0;
  std::size_t rejecting_connections = 0;
  bool stopping = false;

  std::optional<std::uint16_t> bound_tcp_port;
  bool vsock_bound = false;
  // The listeners only one OS has (Unix socket and vsock files, pipes), in
  // that OS's file; shared_ptr so this file needs no complete type.
  std::shared_ptr<OsListeners> os_listeners;
  bool started = false;
};

// The per-OS part (http_listeners_<os>.cpp).
// Binds every configured listener, in this OS's order (the log shows it),
// TCP through server.bind_tcp; throws listener_error naming the listener.
void bind_os_listeners(ServerState& server);
// Closes them (stop, or a failed start) and removes what they left in the
// file system; idempotent.
void close_os_listeners(ServerState& server);
// A socket accepted by one of the OS's socket listeners (Unix, vsock): fills
// `peer` (who is calling, for the audit log), or returns false to refuse the
// connection (a vsock CID not allowed).
bool describe_os_peer(ServerState& server, Transport transport, Protocol::socket& socket,
                      const Endpoint& endpoint, Peer& peer);
// Socket options of the TCP listener before bind (address reuse, which
// means different things on each OS).
void prepare_tcp_acceptor(Acceptor& acceptor);

template <class Stream>
class Session final : public SessionBase, public std::enable_shared_from_this<Session<Stream>> {
 public:
  using std::enable_shared_from_this<Session<Stream>>::shared_from_this;
  using std::enable_shared_from_this<Session<Stream>>::weak_from_this;

  Session(ServerState& server, Stream socket, Peer peer, bool reject)
      : server_(server), socket_(std::move(socket)), timer_(server.ioc), peer_(std::move(peer)),
        reject_(reject) {}

  void start() { read_request(); }

  // stop(): connections not in the middle of a request go now; the others
  // finish their response and then close.
  void on_server_stop() override {
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
      StreamOps<Stream>::cancel(self->socket_, ignored);
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
    // pool. The work guard keeps run() alive until the handler returned,
    // including whatever it does after an early answer (Request::respond).
    auto answered = std::make_shared<std::atomic<bool>>(false);
    // A weak reference: the Request may be copied and outlive the handler
    // call (a test handler keeps what it was given), and a strong one would
    // then keep the session, and its timer, alive past the io_context that
    // owns the timer's service. While the handler runs, the pool's task
    // below holds the session, so an early answer always finds it.
    request.respond = [weak = this->weak_from_this(), answered](Response response) {
      if (answered->exchange(true)) {
        return;
      }
      auto self = weak.lock();
      if (!self) {
        return;
      }
      asio::post(self->server_.ioc, [self, response = std::move(response)]() mutable {
        self->on_handled(std::move(response));
      });
    };
    auto& pool = request.method == "GET" ? server_.read_pool : server_.pool;
    pool.post([self = shared_from_this(), request = std::move(request), answered,
               work = asio::make_work_guard(server_.ioc)]() mutable {
      Response response = self->server_.invoke_handler(request);
      if (answered->exchange(true)) {
        return;  // answered early; the response went out already
      }
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
    if (!StreamOps<Stream>::shutdown_send(socket_, ignored)) {
      close();  // no half-close on this transport, and no RST to fear
      return;
    }
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
    StreamOps<Stream>::close(socket_, ignored);
    server_.session_closed(this, reject_);
  }

  ServerState& server_;
  Stream socket_;
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

template <class Stream>
void ServerState::start_session(Stream stream, Peer peer, bool reject) {
  auto session = std::make_shared<Session<Stream>>(*this, std::move(stream), std::move(peer), reject);
  sessions.emplace(session.get(), session);
  session->start();
}

}  // namespace quiesce::api::detail
