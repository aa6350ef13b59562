// The agent client's transport: the one host-bridge translation unit that
// includes Beast. Each call opens one connection (Connection: close): the
// agent is local or one hop away, calls are rare, and a fresh connection per
// call means a half-read response can never leak into the next call.
#include "host-bridge/client/agent_client.hpp"

#include <netinet/in.h>

#include <charconv>
#include <limits>
#include <thread>
#include <utility>

#include <boost/asio/connect.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "host-bridge/client/qga_transport.hpp"
#include "platform/linux/vsock.hpp"

namespace quiesce::client {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using Protocol = asio::generic::stream_protocol;
using ErrorCode = boost::system::error_code;
using Clock = std::chrono::steady_clock;

constexpr std::size_t max_handshake_line = 256;

template <typename Number>
std::optional<Number> parse_number(std::string_view text) {
  Number value{};
  if (text.empty()) {
    return std::nullopt;
  }
  const auto* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || ptr != end) {
    return std::nullopt;
  }
  return value;
}

std::string in_quotes(std::string_view text) { return "'" + std::string(text) + "'"; }

// One connection for one call, with one deadline for all of it.
class Connection {
 public:
  Connection(const Endpoint& endpoint, Clock::time_point deadline)
      : endpoint_(endpoint), deadline_(deadline), socket_(ioc_), resolver_(ioc_) {}

  void connect() {
    try {
      connect_endpoint();
    } catch (const boost::system::system_error& e) {
      // e.g. a Unix socket path longer than sun_path
      fail(TransportError::Kind::connect, e.code().message());
    }
  }

  void connect_endpoint() {
    switch (endpoint_.kind) {
      case Endpoint::Kind::unix_socket:
        connect_to(Protocol::endpoint(asio::local::stream_protocol::endpoint(endpoint_.path)));
        break;
      case Endpoint::Kind::hybrid_vsock:
        connect_to(Protocol::endpoint(asio::local::stream_protocol::endpoint(endpoint_.path)));
        hybrid_handshake();
        break;
      case Endpoint::Kind::vsock: {
        const auto address = platform::make_vsock_sockaddr(endpoint_.cid, endpoint_.port);
        connect_to(Protocol::endpoint(&address, sizeof address));
        break;
      }
      case Endpoint::Kind::tcp:
        connect_tcp();
        break;
      case Endpoint::Kind::qga:
        // Never here: AgentClient sends qga calls through qga_transport.
        fail(TransportError::Kind::connect, "a qga endpoint does not speak HTTP");
    }
  }

  [[nodiscard]] Result exchange(http::request<http::string_body>& request, std::size_t max_response_bytes) {
    request_sent_ = true;
    ErrorCode ec = wait("sending the request", [&](auto handler) {
      http::async_write(socket_, request, std::move(handler));
    });
    if (ec) {
      fail(TransportError::Kind::protocol, "sending the request failed: " + ec.message());
    }
    http::response_parser<http::string_body> parser;
    parser.body_limit(max_response_bytes);
    ec = wait("reading the response", [&](auto handler) {
      http::async_read(socket_, buffer_, parser, std::move(handler));
    });
    if (ec) {
      fail(TransportError::Kind::protocol, "reading the response failed: " + ec.message());
    }
    auto response = parser.release();
    Result result;
    result.status = response.result_int();
    result.raw_body = std::move(response.body());
    result.body = nlohmann::json::parse(result.raw_body, nullptr, /*allow_exceptions=*/false);
    if (result.body.is_discarded()) {
      result.body = nullptr;
    }
    if (result.status >= 400) {
      result.error = wire::error_of_response(result.status, result.raw_body);
    }
    return result;
  }

 private:
  // Runs the io_context until the started operation completes or the
  // deadline passes; on the deadline the socket is closed (which completes
  // the operation with an error) and the call fails with a timeout.
  template <typename Initiate>
  ErrorCode wait(const std::string& what, Initiate initiate) {
    std::optional<ErrorCode> outcome;
    initiate([&outcome](const ErrorCode& ec, auto&&...) { outcome = ec; });
    ioc_.restart();
    ioc_.run_until(deadline_);
    if (!outcome) {
      ErrorCode ignored;
      resolver_.cancel();
      socket_.close(ignored);
      ioc_.restart();
      ioc_.run();
      fail(TransportError::Kind::timeout, what + " timed out");
    }
    return *outcome;
  }

  [[noreturn]] void fail(TransportError::Kind kind, const std::string& what) const {
    throw TransportError(kind, request_sent_, endpoint_.to_string() + ": " + what);
  }

  void connect_to(const Protocol::endpoint& endpoint) {
    ErrorCode ec;
    if (socket_.is_open()) {
      socket_.close(ec);
    }
    socket_.open(endpoint.protocol(), ec);
    if (ec) {
      fail(TransportError::Kind::connect, "cannot create socket: " + ec.message());
    }
    ec = wait("connecting", [&](auto handler) { socket_.async_connect(endpoint, std::move(handler)); });
    if (ec) {
      fail(TransportError::Kind::connect, "cannot connect: " + ec.message());
    }
  }

  void connect_tcp() {
    asio::ip::tcp::resolver::results_type results;
    ErrorCode ec = wait("resolving " + endpoint_.host, [&](auto handler) {
      resolver_.async_resolve(endpoint_.host, std::to_string(endpoint_.port),
                              [&results, handler = std::move(handler)](
                                  const ErrorCode& resolve_ec,
                                  asio::ip::tcp::resolver::results_type found) mutable {
                                results = std::move(found);
                                handler(resolve_ec);
                              });
    });
    if (ec) {
      fail(TransportError::Kind::connect, "cannot resolve " + endpoint_.host + ": " + ec.message());
    }
    std::string last_error = "no addresses";
    for (const auto& entry : results) {
      const asio::ip::tcp::endpoint address = entry.endpoint();
      socket_.close(ec);
      socket_.open(Protocol(address.protocol().family(), IPPROTO_TCP), ec);
      if (ec) {
        last_error = ec.message();
        continue;
      }
      const Protocol::endpoint generic(address);
      ec = wait("connecting", [&](auto handler) { socket_.async_connect(generic, std::move(handler)); });
      if (!ec) {
        return;
      }
      last_error = ec.message();
    }
    fail(TransportError::Kind::connect, "cannot connect: " + last_error);
  }

  // Firecracker / Cloud Hypervisor: the VMM's Unix socket forwards to the
  // guest's vsock port after "CONNECT <port>\n" is answered "OK <n>\n".
  void hybrid_handshake() {
    const std::string line = "CONNECT " + std::to_string(endpoint_.port) + "\n";
    ErrorCode ec = wait("hybrid vsock handshake", [&](auto handler) {
      asio::async_write(socket_, asio::buffer(line), std::move(handler));
    });
    if (ec) {
      fail(TransportError::Kind::connect, "hybrid vsock handshake failed: " + ec.message());
    }
    // A std::string dynamic buffer, not buffer_: Asio copies a v1 dynamic
    // buffer object such as beast::flat_buffer into the operation, so bytes
    // read past the line would be lost. The size cap bounds a peer that
    // never sends a newline.
    std::string received;
    std::size_t line_length = 0;
    ec = wait("hybrid vsock handshake", [&](auto handler) {
      asio::async_read_until(socket_, asio::dynamic_buffer(received, max_handshake_line), '\n',
                             [&line_length, handler = std::move(handler)](const ErrorCode& read_ec,
                                                                          std::size_t n) mutable {
                               line_length = n;
                               handler(read_ec);
                             });
    });
    if (ec) {
      fail(TransportError::Kind::connect,
           "hybrid vsock handshake failed (is the guest listening on port " + std::to_string(endpoint_.port) +
               "?): " + ec.message());
    }
    std::string answer = received.substr(0, line_length);
    // What follows the line is already the agent's HTTP answer.
    const std::string_view rest = std::string_view(received).substr(line_length);
    buffer_.commit(asio::buffer_copy(buffer_.prepare(rest.size()), asio::buffer(rest.data(), rest.size())));
    while (!answer.empty() && (answer.back() == '\n' || answer.back() == '\r')) {
      answer.pop_back();
    }
    if (answer.rfind("OK ", 0) != 0 && answer != "OK") {
      fail(TransportError::Kind::connect, "hybrid vsock handshake refused: " + in_quotes(answer));
    }
  }

  const Endpoint& endpoint_;
  Clock::time_point deadline_;
  asio::io_context ioc_;
  Protocol::socket socket_;
  asio::ip::tcp::resolver resolver_;
  beast::flat_buffer buffer_;
  bool request_sent_ = false;
};

std::string host_header(const Endpoint& endpoint) {
  switch (endpoint.kind) {
    case Endpoint::Kind::tcp:
      if (endpoint.host.find(':') != std::string::npos) {
        return "[" + endpoint.host + "]:" + std::to_string(endpoint.port);
      }
      return endpoint.host + ":" + std::to_string(endpoint.port);
    case Endpoint::Kind::vsock:
    case Endpoint::Kind::hybrid_vsock:
      return "vsock";
    case Endpoint::Kind::unix_socket:
    case Endpoint::Kind::qga:
      break;
  }
  return "localhost";
}

}  // namespace

Endpoint Endpoint::parse(std::string_view text) {
  const auto bad = [&](const std::string& why) {
    return std::invalid_argument("bad endpoint " + in_quotes(text) + ": " + why +
                                 " (expected unix:/path, tcp:host:port, vsock:cid:port, hvsock:/path:port or qga:/path)");
  };
  const auto split_port = [&](std::string_view rest, std::string_view what) {
    const auto colon = rest.rfind(':');
    if (colon == std::string_view::npos) {
      throw bad("missing ':port'");
    }
    const auto port = parse_number<std::uint32_t>(rest.substr(colon + 1));
    if (!port) {
      throw bad(std::string(what) + " port " + in_quotes(rest.substr(colon + 1)) + " is not a number");
    }
    return std::make_pair(rest.substr(0, colon), *port);
  };

  Endpoint endpoint;
  if (!text.empty() && text.front() == '/') {
    endpoint.kind = Kind::unix_socket;
    endpoint.path = std::string(text);
    return endpoint;
  }
  const auto colon = text.find(':');
  if (colon == std::string_view::npos) {
    throw bad("missing scheme");
  }
  const auto scheme = text.substr(0, colon);
  const auto rest = text.substr(colon + 1);
  if (scheme == "unix") {
    if (rest.empty()) {
      throw bad("empty socket path");
    }
    endpoint.kind = Kind::unix_socket;
    endpoint.path = std::string(rest);
    return endpoint;
  }
  if (scheme == "tcp") {
    auto [host, port] = split_port(rest, "tcp");
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
      host = host.substr(1, host.size() - 2);
    } else if (host.find(':') != std::string_view::npos) {
      throw bad("IPv6 addresses must be written in brackets, e.g. tcp:[::1]:7700");
    }
    if (host.empty()) {
      throw bad("empty host");
    }
    if (port == 0 || port > std::numeric_limits<std::uint16_t>::max()) {
      throw bad("tcp port must be 1-65535");
    }
    endpoint.kind = Kind::tcp;
    endpoint.host = std::string(host);
    endpoint.port = port;
    return endpoint;
  }
  if (scheme == "vsock") {
    const auto [cid_text, port] = split_port(rest, "vsock");
    const auto cid = parse_number<std::uint32_t>(cid_text);
    if (!cid) {
      throw bad("vsock cid " + in_quotes(cid_text) + " is not a number");
    }
    endpoint.kind = Kind::vsock;
    endpoint.cid = *cid;
    endpoint.port = port;
    return endpoint;
  }
  if (scheme == "hvsock") {
    const auto [path, port] = split_port(rest, "hvsock");
    if (path.empty()) {
      throw bad("empty socket path");
    }
    endpoint.kind = Kind::hybrid_vsock;
    endpoint.path = std::string(path);
    endpoint.port = port;
    return endpoint;
  }
  if (scheme == "qga") {
    if (rest.empty() || rest.front() != '/') {
      throw bad("qga needs the absolute path of the channel's host socket");
    }
    endpoint.kind = Kind::qga;
    endpoint.path = std::string(rest);
    return endpoint;
  }
  throw bad("unknown scheme " + in_quotes(scheme));
}

std::string Endpoint::to_string() const {
  switch (kind) {
    case Kind::unix_socket:
      return "unix:" + path;
    case Kind::tcp:
      return "tcp:" + host_header(*this);
    case Kind::vsock:
      return "vsock:" + std::to_string(cid) + ":" + std::to_string(port);
    case Kind::hybrid_vsock:
      return "hvsock:" + path + ":" + std::to_string(port);
    case Kind::qga:
      return "qga:" + path;
  }
  return "unknown";
}

std::string encode_path_segment(std::string_view segment) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(segment.size());
  for (const char c : segment) {
    const auto byte = static_cast<unsigned char>(c);
    const bool unreserved = (byte >= 'A' && byte <= 'Z') || (byte >= 'a' && byte <= 'z') ||
                            (byte >= '0' && byte <= '9') || byte == '-' || byte == '_' || byte == '.' ||
                            byte == '~';
    if (unreserved) {
      out.push_back(c);
    } else {
      out.push_back('%');
      out.push_back(hex[byte >> 4]);
      out.push_back(hex[byte & 0x0F]);
    }
  }
  return out;
}

AgentClient::AgentClient(ClientOptions options)
    : options_(std::move(options)), qga_state_(std::make_shared<QgaPeerState>()) {}

Result AgentClient::request(std::string_view method, std::string_view path,
                            const std::optional<nlohmann::json>& body,
                            std::optional<std::chrono::milliseconds> timeout) {
  const std::optional<std::string> payload = body ? std::optional<std::string>(body->dump()) : std::nullopt;
  // DELETE is abort, which the agent makes idempotent.
  const bool idempotent = method == "GET" || method == "HEAD" || method == "DELETE";
  const auto total = timeout.value_or(options_.timeout);
  const auto deadline = Clock::now() + total;
  auto delay = options_.retry_delay;
  for (unsigned attempt = 0;; ++attempt) {
    const auto remaining = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    try {
      return request_once(method, path, payload ? &*payload : nullptr,
                          std::max(remaining, std::chrono::milliseconds(0)));
    } catch (const TransportError& e) {
      // A request that may have reached the agent is only resent when doing
      // it twice is harmless (GET); freeze/thaw/complete never are.
      const bool may_retry = idempotent || !e.request_sent();
      if (!may_retry || attempt >= options_.retries || Clock::now() + delay >= deadline) {
        throw;
      }
    }
    std::this_thread::sleep_for(delay);
    delay *= 2;
  }
}

Result AgentClient::request_once(std::string_view method, std::string_view path, const std::string* body,
                                 std::chrono::milliseconds timeout) {
  if (options_.endpoint.kind == Endpoint::Kind::qga) {
    return qga_request(options_.endpoint, *qga_state_, method, path, body, timeout,
                       options_.max_response_bytes);
  }
  Connection connection(options_.endpoint, Clock::now() + timeout);
  connection.connect();

  http::request<http::string_body> request;
  const auto verb = http::string_to_verb(beast::string_view(method.data(), method.size()));
  if (verb == http::verb::unknown) {
    request.method_string(beast::string_view(method.data(), method.size()));
  } else {
    request.method(verb);
  }
  request.target(beast::string_view(path.data(), path.size()));
  request.version(11);
  request.set(http::field::host, host_header(options_.endpoint));
  request.set(http::field::user_agent, "quiesce-client/" QUIESCE_VERSION);
  request.set(http::field::accept, "application/json");
  if (options_.token) {
    request.set(http::field::authorization, "Bearer " + *options_.token);
  }
  request.keep_alive(false);
  if (body != nullptr) {
    request.set(http::field::content_type, "application/json");
    request.body() = *body;
  }
  request.prepare_payload();
  return connection.exchange(request, options_.max_response_bytes);
}

Result AgentClient::health() { return request("GET", "/v1/health"); }

Result AgentClient::writers() { return request("GET", "/v1/writers"); }

Result AgentClient::create_session(const nlohmann::json& options) {
  return request("POST", "/v1/sessions", options);
}

Result AgentClient::session(std::string_view id) {
  return request("GET", "/v1/sessions/" + encode_path_segment(id));
}

Result AgentClient::freeze(std::string_view id) {
  return request("POST", "/v1/sessions/" + encode_path_segment(id) + "/freeze");
}

Result AgentClient::thaw(std::string_view id) {
  return request("POST", "/v1/sessions/" + encode_path_segment(id) + "/thaw");
}

Result AgentClient::complete(std::string_view id, std::string_view snapshot_id) {
  return request("POST", "/v1/sessions/" + encode_path_segment(id) + "/complete",
                 nlohmann::json{{"snapshot_id", std::string(snapshot_id)}});
}

Result AgentClient::abort(std::string_view id) {
  return request("DELETE", "/v1/sessions/" + encode_path_segment(id));
}

Result AgentClient::metrics() { return request("GET", "/metrics"); }

}  // namespace quiesce::client
