#pragma once
// Helpers for the HTTP server and client tests: a server running on its own
// I/O thread, a recording fake handler, and a raw blocking socket that can
// send anything (half requests, garbage) and read one response at a time.

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/logger.h>
#include <spdlog/sinks/null_sink.h>

#include "agent/api/http_server.hpp"

namespace quiesce::test {

inline std::shared_ptr<spdlog::logger> quiet_logger() {
  return std::make_shared<spdlog::logger>("http-test", std::make_shared<spdlog::sinks::null_sink_mt>());
}

// Records every request and the thread it ran on; answers with `respond`.
class FakeHandler {
 public:
  std::function<api::Response(const api::Request&)> respond = [](const api::Request& request) {
    api::Response response;
    response.body = R"({"echo":")" + request.target + R"("})";
    return response;
  };

  api::Handler handler() {
    return [this](const api::Request& request) {
      {
        std::lock_guard lock(mutex_);
        requests_.push_back(request);
        threads_.push_back(std::this_thread::get_id());
      }
      return respond(request);
    };
  }
  std::vector<api::Request> requests() {
    std::lock_guard lock(mutex_);
    return requests_;
  }
  std::vector<std::thread::id> threads() {
    std::lock_guard lock(mutex_);
    return threads_;
  }
  std::size_t count() {
    std::lock_guard lock(mutex_);
    return requests_.size();
  }

 private:
  std::mutex mutex_;
  std::vector<api::Request> requests_;
  std::vector<std::thread::id> threads_;
};

// A one-shot gate a slow handler waits on.
class Gate {
 public:
  void open() {
    std::lock_guard lock(mutex_);
    open_ = true;
    cv_.notify_all();
  }
  bool wait_for(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, timeout, [this] { return open_; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool open_ = false;
};

// HttpServer started and run on its own thread; stopped and joined on exit.
class RunningServer {
 public:
  RunningServer(api::ServerConfig config, api::Handler handler)
      : server_(std::make_unique<api::HttpServer>(std::move(config), std::move(handler), quiet_logger())) {
    server_->start();
    thread_ = std::thread([this] {
      {
        std::lock_guard lock(mutex_);
        io_thread_ = std::this_thread::get_id();
      }
      server_->run();
      std::lock_guard lock(mutex_);
      run_returned_ = true;
    });
  }
  ~RunningServer() { stop(); }
  RunningServer(const RunningServer&) = delete;
  RunningServer& operator=(const RunningServer&) = delete;

  void stop() {
    if (thread_.joinable()) {
      server_->stop();
      thread_.join();
    }
  }
  [[nodiscard]] api::HttpServer& server() { return *server_; }
  [[nodiscard]] std::thread::id io_thread() {
    std::lock_guard lock(mutex_);
    return io_thread_;
  }
  [[nodiscard]] bool run_returned() {
    std::lock_guard lock(mutex_);
    return run_returned_;
  }
  [[nodiscard]] std::uint16_t tcp_port() const { return server_->tcp_port().value_or(0); }

 private:
  std::unique_ptr<api::HttpServer> server_;
  std::thread thread_;
  std::mutex mutex_;
  std::thread::id io_thread_;
  bool run_returned_ = false;
};

struct RawResponse {
  unsigned status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
};

// A blocking socket with poll-based timeouts, for speaking (bad) HTTP by hand.
class RawSocket {
 public:
  static RawSocket unix_socket(const std::string& path) {
    RawSocket s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
    if (::connect(s.fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {  // NOLINT
      throw std::runtime_error("connect " + path + ": " + std::strerror(errno));
    }
    return s;
  }
  static RawSocket tcp(std::uint16_t port) {
    RawSocket s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(s.fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {  // NOLINT
      throw std::runtime_error(std::string("connect tcp: ") + std::strerror(errno));
    }
    return s;
  }
  RawSocket(RawSocket&& other) noexcept : fd_(std::exchange(other.fd_, -1)), pending_(std::move(other.pending_)) {}
  RawSocket& operator=(RawSocket&&) = delete;
  RawSocket(const RawSocket&) = delete;
  RawSocket& operator=(const RawSocket&) = delete;
  ~RawSocket() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
  }

  // False when the peer already closed (EPIPE/ECONNRESET).
  bool send(const std::string& data) {
    std::size_t sent = 0;
    while (sent < data.size()) {
      const auto n = ::send(fd_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
      if (n < 0) {
        return false;
      }
      sent += static_cast<std::size_t>(n);
    }
    return true;
  }

  // One response (Content-Length framed), or nullopt on EOF/timeout first.
  std::optional<RawResponse> read_response(std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::size_t header_end = std::string::npos;
    while ((header_end = pending_.find("\r\n\r\n")) == std::string::npos) {
      if (!fill(deadline)) {
        return std::nullopt;
      }
    }
    RawResponse response;
    const std::string head = pending_.substr(0, header_end);
    std::size_t line_end = head.find("\r\n");
    const std::string status_line = head.substr(0, line_end);
    response.status = static_cast<unsigned>(std::stoul(status_line.substr(9, 3)));
    while (line_end != std::string::npos) {
      const auto next = head.find("\r\n", line_end + 2);
      const std::string line = head.substr(line_end + 2, next == std::string::npos ? std::string::npos : next - line_end - 2);
      const auto colon = line.find(':');
      if (colon != std::string::npos) {
        std::string name = line.substr(0, colon);
        std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
        std::string value = line.substr(colon + 1);
        value.erase(0, value.find_first_not_of(' '));
        response.headers[name] = value;
      }
      line_end = next;
    }
    pending_.erase(0, header_end + 4);
    std::size_t length = 0;
    if (auto it = response.headers.find("content-length"); it != response.headers.end()) {
      length = std::stoul(it->second);
    }
    // 1xx and HEAD answers carry no body even with a Content-Length.
    if (response.status >= 200 && !head_request_) {
      while (pending_.size() < length) {
        if (!fill(deadline)) {
          return std::nullopt;
        }
      }
      response.body = pending_.substr(0, length);
      pending_.erase(0, length);
    }
    return response;
  }

  // True when the peer closes the connection within `timeout`.
  bool closed_by_peer(std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      pollfd p{fd_, POLLIN, 0};
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
        return false;
      }
      char buffer[4096];
      const auto n = ::recv(fd_, buffer, sizeof buffer, 0);
      if (n <= 0) {
        return true;
      }
      pending_.append(buffer, static_cast<std::size_t>(n));
    }
  }

  void expect_head_response(bool head) { head_request_ = head; }
  [[nodiscard]] int fd() const { return fd_; }

 private:
  explicit RawSocket(int fd) : fd_(fd) {
    if (fd_ < 0) {
      throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
    }
  }
  bool fill(std::chrono::steady_clock::time_point deadline) {
    pollfd p{fd_, POLLIN, 0};
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
      return false;
    }
    char buffer[4096];
    const auto n = ::recv(fd_, buffer, sizeof buffer, 0);
    if (n <= 0) {
      return false;
    }
    pending_.append(buffer, static_cast<std::size_t>(n));
    return true;
  }

  int fd_ = -1;
  std::string pending_;
  bool head_request_ = false;
};

// A Unix listening socket that accepts (via the backlog) and never answers.
class SilentUnixListener {
 public:
  explicit SilentUnixListener(const std::string& path) : fd_(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||  // NOLINT
        ::listen(fd_, 16) != 0) {
      throw std::runtime_error("silent listener: " + std::string(std::strerror(errno)));
    }
  }
  ~SilentUnixListener() { ::close(fd_); }
  SilentUnixListener(const SilentUnixListener&) = delete;
  SilentUnixListener& operator=(const SilentUnixListener&) = delete;
  [[nodiscard]] int fd() const { return fd_; }

 private:
  int fd_;
};

inline std::string http_get(const std::string& target, const std::string& extra_headers = {}) {
  return "GET " + target + " HTTP/1.1\r\nHost: test\r\n" + extra_headers + "\r\n";
}

}  // namespace quiesce::test
