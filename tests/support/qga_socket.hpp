#pragma once
// A raw qga client for tests: what libvirt or Proxmox write on the host end
// of the channel, byte for byte, with deadlines so a test fails instead of
// hanging when an answer does not come.

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace quiesce::test {

class QgaSocket {
 public:
  // Connects to a Unix socket (fails the test when it cannot).
  explicit QgaSocket(const std::filesystem::path& path);
  // Takes an fd already connected (a pty master standing in for the host).
  static QgaSocket adopt(int fd);
  QgaSocket(QgaSocket&& other) noexcept;
  QgaSocket& operator=(QgaSocket&&) = delete;
  QgaSocket(const QgaSocket&) = delete;
  QgaSocket& operator=(const QgaSocket&) = delete;
  ~QgaSocket();

  [[nodiscard]] bool send(std::string_view bytes);
  // The next `count` reply lines (a 0xFF delimiter stays in front of its
  // line); fewer when the deadline passes or the peer closed.
  std::vector<std::string> lines(std::size_t count,
                                 std::chrono::milliseconds timeout = std::chrono::seconds(10));
  // True when the peer closed the connection within `timeout` (any bytes
  // before the close are dropped).
  bool closed_within(std::chrono::milliseconds timeout);
  void close();
  [[nodiscard]] int fd() const { return fd_; }

 private:
  QgaSocket() = default;
  int fd_ = -1;
  std::string buffer_;
};

}  // namespace quiesce::test
