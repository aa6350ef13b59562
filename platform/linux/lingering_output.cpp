#include "platform/linux/lingering_output.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>

namespace quiesce::platform {

struct LingeringOutput::Pipe {
  int fd = -1;
  OutputStream stream = OutputStream::out;
  LineHandler on_line;
  ClosedHandler on_closed;
  std::size_t max_bytes = 0;
  std::size_t max_line_bytes = 0;
  std::size_t kept = 0;
  std::size_t dropped = 0;
  std::string pending;

  void emit() {
    std::string_view line = pending;
    if (!line.empty() && line.back() == '\r') {
      line.remove_suffix(1);
    }
    const std::size_t cost = line.size() + 1;
    if (kept + cost <= max_bytes) {
      kept += cost;
      if (on_line) {
        on_line(stream, line);
      }
    } else {
      dropped += cost;
    }
    pending.clear();
  }

  void add(std::string_view data) {
    for (char c : data) {
      if (c == '\n') {
        emit();
        continue;
      }
      pending.push_back(c);
      if (pending.size() >= std::max<std::size_t>(max_line_bytes, 1)) {
        emit();
      }
    }
  }

  // False at EOF or a read error: every writer is gone.
  bool read_available() {
    std::array<char, 16384> buffer{};
    for (;;) {
      ssize_t n = ::read(fd, buffer.data(), buffer.size());
      if (n > 0) {
        add(std::string_view(buffer.data(), static_cast<std::size_t>(n)));
        continue;
      }
      if (n < 0 && errno == EINTR) {
        continue;
      }
      return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }
  }

  void finish() {
    if (!pending.empty()) {
      emit();
    }
    ::close(fd);
    fd = -1;
    if (on_closed) {
      on_closed(dropped);
    }
  }
};

LingeringOutput::LingeringOutput(std::size_t max_pipes)
    : max_pipes_(max_pipes), wake_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

LingeringOutput::~LingeringOutput() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake();
  if (thread_.joinable()) {
    thread_.join();
  }
  for (auto* pipe : pipes_) {
    ::close(pipe->fd);
    delete pipe;
  }
  if (wake_fd_ >= 0) {
    ::close(wake_fd_);
  }
}

bool LingeringOutput::adopt(int fd, OutputStream stream, LineHandler on_line,
                            ClosedHandler on_closed, std::size_t max_bytes,
                            std::size_t max_line_bytes) {
  std::lock_guard lock(mutex_);
  if (stopping_ || wake_fd_ < 0 || pipes_.size() >= max_pipes_) {
    ::close(fd);
    return false;
  }
  auto* pipe = new Pipe{fd, stream, std::move(on_line), std::move(on_closed), max_bytes,
                        max_line_bytes, 0, 0, {}};
  pipes_.push_back(pipe);
  if (!thread_.joinable()) {
    thread_ = std::thread([this] { run(); });
  }
  wake();
  return true;
}

std::size_t LingeringOutput::held() const {
  std::lock_guard lock(mutex_);
  return pipes_.size();
}

void LingeringOutput::wake() {
  const std::uint64_t one = 1;
  [[maybe_unused]] auto written = ::write(wake_fd_, &one, sizeof one);
}

void LingeringOutput::run() {
  std::vector<pollfd> fds;
  std::vector<Pipe*> polled;
  for (;;) {
    {
      std::lock_guard lock(mutex_);
      if (stopping_) {
        return;
      }
      polled = pipes_;
    }
    fds.clear();
    fds.push_back({wake_fd_, POLLIN, 0});
    for (auto* pipe : polled) {
      fds.push_back({pipe->fd, POLLIN, 0});
    }
    if (::poll(fds.data(), fds.size(), -1) < 0 && errno != EINTR) {
      ::usleep(10000);
      continue;
    }
    if (fds[0].revents != 0) {
      std::uint64_t count = 0;
      [[maybe_unused]] auto got = ::read(wake_fd_, &count, sizeof count);
    }
    // Only this thread removes pipes, so the ones polled are still owned.
    std::vector<Pipe*> ended;
    for (std::size_t i = 0; i < polled.size(); ++i) {
      if (fds[i + 1].revents != 0 && !polled[i]->read_available()) {
        ended.push_back(polled[i]);
      }
    }
    if (ended.empty()) {
      continue;
    }
    {
      std::lock_guard lock(mutex_);
      std::erase_if(pipes_, [&](Pipe* p) {
        return std::find(ended.begin(), ended.end(), p) != ended.end();
      });
    }
    for (auto* pipe : ended) {
      pipe->finish();
      delete pipe;
    }
  }
}

}  // namespace quiesce::platform
