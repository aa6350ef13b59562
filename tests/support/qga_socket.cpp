#include "tests/support/qga_socket.hpp"

#include <doctest/doctest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace quiesce::test {

namespace {
using Clock = std::chrono::steady_clock;
}

QgaSocket::QgaSocket(const std::filesystem::path& path) {
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd_ >= 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, path.c_str(), sizeof address.sun_path - 1);
  REQUIRE_MESSAGE(::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0,
                  "cannot connect to " << path.string() << ": " << std::strerror(errno));
}

QgaSocket QgaSocket::adopt(int fd) {
  QgaSocket socket;
  socket.fd_ = fd;
  return socket;
}

QgaSocket::QgaSocket(QgaSocket&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), buffer_(std::move(other.buffer_)) {}

QgaSocket::~QgaSocket() { close(); }

void QgaSocket::close() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

bool QgaSocket::send(std::string_view bytes) {
  while (!bytes.empty()) {
    const auto written = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (written < 0 && errno == ENOTSOCK) {
      const auto plain = ::write(fd_, bytes.data(), bytes.size());
      if (plain <= 0) {
        return false;
      }
      bytes.remove_prefix(static_cast<std::size_t>(plain));
      continue;
    }
    if (written <= 0) {
      if (errno == EINTR) {
        continue;
      }
      return false;
    }
    bytes.remove_prefix(static_cast<std::size_t>(written));
  }
  return true;
}

std::vector<std::string> QgaSocket::lines(std::size_t count, std::chrono::milliseconds timeout) {
  std::vector<std::string> out;
  const auto deadline = Clock::now() + timeout;
  while (out.size() < count) {
    const auto end = buffer_.find('\n');
    if (end != std::string::npos) {
      out.push_back(buffer_.substr(0, end));
      buffer_.erase(0, end + 1);
      continue;
    }
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      break;
    }
    pollfd fd{fd_, POLLIN, 0};
    if (::poll(&fd, 1, static_cast<int>(left.count())) <= 0) {
      continue;
    }
    char chunk[4096];
    const auto got = ::read(fd_, chunk, sizeof chunk);
    if (got <= 0) {
      break;
    }
    buffer_.append(chunk, static_cast<std::size_t>(got));
  }
  return out;
}

bool QgaSocket::closed_within(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      return false;
    }
    pollfd fd{fd_, POLLIN, 0};
    if (::poll(&fd, 1, static_cast<int>(left.count())) <= 0) {
      continue;
    }
    char chunk[4096];
    const auto got = ::read(fd_, chunk, sizeof chunk);
    if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN)) {
      return true;
    }
  }
}

}  // namespace quiesce::test
