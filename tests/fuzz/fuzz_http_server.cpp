// The HTTP layer as a client sees it: the real HttpServer (Beast's parser,
// the framing refusals, the limits, keep-alive and the linger close) on a
// Unix socket, fed each input as the bytes of one connection. Checks the
// promises that matter for an agent running as root in every guest:
// - the server never crashes and never hangs: every connection ends (the
//   input is followed by EOF, so a server waiting for more must give up
//   within its read timeout);
// - every byte that reaches the handler came through a request the server
//   accepted: a request target that starts with '/', a method the API uses;
// - a body is never read as the next request: the handler sees no more
//   requests than the input holds "HTTP/1." version tokens (every request
//   line carries one; a body read as a request would be one too many only if
//   the body held no such token, so the bound is loose but never wrong).
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include <spdlog/logger.h>
#include <spdlog/sinks/null_sink.h>

#include "agent/api/http_server.hpp"

namespace {

using quiesce::api::HttpServer;
using quiesce::api::Request;
using quiesce::api::Response;

std::atomic<std::size_t> handled_requests{0};

// One server for the whole run: starting one per input would measure
// socket setup, not parsing.
class ServerUnderFuzz {
 public:
  ServerUnderFuzz() {
    char pattern[] = "/tmp/quiesce-fuzz-http.XXXXXX";
    const char* dir = ::mkdtemp(pattern);
    if (dir == nullptr) {
      std::abort();
    }
    dir_ = dir;
    socket_path_ = dir_ + "/agent.sock";
    quiesce::api::ServerConfig config;
    config.unix_socket = quiesce::api::UnixListener{socket_path_, 0600, std::nullopt};
    // Small limits so inputs of fuzzer size reach every refusal; a short
    // read timeout so an input that stops mid-request costs little.
    config.limits.max_header_bytes = 2048;
    config.limits.max_body_bytes = 4096;
    config.limits.read_timeout = std::chrono::milliseconds(500);
    config.limits.max_connections = 8;
    config.limits.handler_threads = 2;
    auto logger =
        std::make_shared<spdlog::logger>("fuzz-http", std::make_shared<spdlog::sinks::null_sink_mt>());
    server_ = std::make_unique<HttpServer>(config, &handle, logger);
    server_->start();
    thread_ = std::thread([this] { server_->run(); });
  }
  ~ServerUnderFuzz() {
    server_->stop();
    thread_.join();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  ServerUnderFuzz(const ServerUnderFuzz&) = delete;
  ServerUnderFuzz& operator=(const ServerUnderFuzz&) = delete;

  [[nodiscard]] const std::string& socket_path() const { return socket_path_; }

 private:
  static Response handle(const Request& request) {
    if (request.target.empty() || request.target.front() != '/') {
      std::abort();  // the server promised an absolute path
    }
    if (request.method == "TRACE" || request.method == "CONNECT") {
      std::abort();  // answered 405 by the server, never handled
    }
    handled_requests.fetch_add(1);
    Response response;
    response.body = R"({"ok":true})";
    return response;
  }

  std::string dir_;
  std::string socket_path_;
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
};

std::size_t count_request_lines(std::string_view input) {
  std::size_t count = 0;
  for (std::size_t at = input.find("HTTP/1."); at != std::string_view::npos;
       at = input.find("HTTP/1.", at + 1)) {
    ++count;
  }
  return count;
}

// Writes the whole input (as far as the server reads it), half-closes, and
// reads until the server closes. False when the server did not close within
// `limit`: a hang.
bool play_connection(const std::string& socket_path, std::string_view input,
                     std::chrono::milliseconds limit) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    std::abort();
  }
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, socket_path.c_str(), sizeof(address.sun_path) - 1);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    std::abort();  // the server stopped listening
  }
  const auto deadline = std::chrono::steady_clock::now() + limit;
  bool write_open = true;
  char buffer[4096];
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd entry{fd, static_cast<short>(POLLIN | (write_open ? POLLOUT : 0)), 0};
    if (::poll(&entry, 1, 50) < 0) {
      continue;
    }
    if (write_open && (entry.revents & (POLLOUT | POLLERR | POLLHUP)) != 0) {
      if (input.empty()) {
        ::shutdown(fd, SHUT_WR);
        write_open = false;
      } else {
        const ssize_t sent = ::send(fd, input.data(), input.size(), MSG_NOSIGNAL);
        if (sent > 0) {
          input.remove_prefix(static_cast<std::size_t>(sent));
        } else if (sent < 0 && errno != EAGAIN) {
          write_open = false;  // the server closed on us: allowed after a refusal
        }
      }
    }
    if ((entry.revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      const ssize_t got = ::recv(fd, buffer, sizeof(buffer), 0);
      if (got == 0 || (got < 0 && errno != EAGAIN)) {
        ::close(fd);
        return true;
      }
    }
  }
  ::close(fd);
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static ServerUnderFuzz server;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const std::size_t before = handled_requests.load();
  // Read timeout 500 ms, linger close bounded too: 5 s is a hang.
  if (!play_connection(server.socket_path(), input, std::chrono::seconds(5))) {
    std::abort();
  }
  // Handlers run on the pool; the connection closed only after the last
  // response was written, so every handled request is counted by now.
  if (handled_requests.load() - before > count_request_lines(input)) {
    std::abort();  // more requests handled than request lines sent: a body was read as a request
  }
  return 0;
}
