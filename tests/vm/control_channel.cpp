#include "tests/vm/control_channel.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <csignal>
#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace quiesce::test {

namespace {

// The runner's escaping of its output onto one line: "\\" and "\n".
std::string unescape_output(const std::string& in) {
  std::string out;
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '\\' && i + 1 < in.size()) {
      ++i;
      out += in[i] == 'n' ? '\n' : in[i];
    } else {
      out += in[i];
    }
  }
  return out;
}

}  // namespace

ControlChannel::~ControlChannel() { close(); }

void ControlChannel::close() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  pending_.clear();
}

void ControlChannel::connect(const std::filesystem::path& socket_path, Clock::time_point deadline,
                             const std::function<bool()>& vm_alive) {
  close();
  for (;;) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
    }
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, socket_path.c_str(), sizeof address.sun_path - 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0) {
      fd_ = fd;
      break;
    }
    ::close(fd);
    if (Clock::now() >= deadline || !vm_alive()) {
      throw std::runtime_error("cannot connect to the control socket " + socket_path.string());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  for (;;) {
    if (!vm_alive()) {
      throw std::runtime_error("the VM exited during boot");
    }
    const auto id = next_id_++;
    send_line(std::to_string(id) + " 10 echo ready");
    const auto until = std::min(deadline, Clock::now() + std::chrono::seconds(3));
    while (auto line = read_line(until)) {
      if (line->rfind("R " + std::to_string(id) + " ", 0) == 0) {
        return;
      }
    }
    if (Clock::now() >= deadline) {
      throw std::runtime_error("the guest runner did not answer within the boot timeout");
    }
  }
}

void ControlChannel::send_line(const std::string& line) {
  if (fd_ < 0) {
    throw std::logic_error("control channel: not connected");
  }
  const std::string data = line + "\n";
  std::size_t sent = 0;
  while (sent < data.size()) {
    const auto n = ::send(fd_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      throw std::runtime_error(std::string("control channel: send: ") + std::strerror(errno));
    }
    sent += static_cast<std::size_t>(n);
  }
}

std::optional<std::string> ControlChannel::read_line(Clock::time_point deadline) {
  for (;;) {
    if (const auto newline = pending_.find('\n'); newline != std::string::npos) {
      std::string line = pending_.substr(0, newline);
      pending_.erase(0, newline + 1);
      if (!line.empty() && line.back() == '\r') {
        line.pop_back();
      }
      return line;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      return std::nullopt;
    }
    pollfd p{fd_, POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 1000)));
    if (ready < 0 && errno != EINTR) {
      throw std::runtime_error(std::string("control channel: poll: ") + std::strerror(errno));
    }
    if (ready <= 0) {
      continue;
    }
    std::array<char, 65536> buffer{};
    const auto n = ::recv(fd_, buffer.data(), buffer.size(), 0);
    if (n == 0) {
      throw std::runtime_error("control channel: the VM closed the socket");
    }
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) {
        continue;
      }
      throw std::runtime_error(std::string("control channel: recv: ") + std::strerror(errno));
    }
    pending_.append(buffer.data(), static_cast<std::size_t>(n));
  }
}

GuestResult ControlChannel::run(const std::string& command, std::chrono::seconds limit) {
  if (command.find('\n') != std::string::npos) {
    throw std::invalid_argument("ControlChannel::run: one line only");
  }
  const auto id = std::to_string(next_id_++);
  send_line(id + " " + std::to_string(limit.count()) + " " + command);
  // The runner's own timeout, its kill grace, and the channel's latency.
  const auto deadline = Clock::now() + limit + std::chrono::seconds(10);
  const std::string prefix = "R " + id + " ";
  while (auto line = read_line(deadline)) {
    if (line->rfind(prefix, 0) != 0) {
      continue;  // a greeting, or the answer to a request we gave up on
    }
    std::istringstream fields(line->substr(prefix.size()));
    GuestResult result;
    fields >> result.exit_code >> result.started >> result.ended;
    std::string rest;
    std::getline(fields, rest);
    result.output = unescape_output(rest.empty() ? rest : rest.substr(1));
    return result;
  }
  throw std::runtime_error("the guest runner gave no answer to '" + command + "' within " +
                           std::to_string(limit.count()) + " s + 10 s");
}

double ControlChannel::guest_now() { return run("true").ended; }

std::string file_tail(const std::filesystem::path& path, std::size_t lines) {
  std::ifstream in(path);
  std::deque<std::string> tail;
  std::string line;
  while (std::getline(in, line)) {
    tail.push_back(line);
    if (tail.size() > lines) {
      tail.pop_front();
    }
  }
  std::string out;
  for (const auto& l : tail) {
    out += l + "\n";
  }
  return out;
}

void connect_booting_guest(ControlChannel& control, const std::filesystem::path& socket_path,
                           ControlChannel::Clock::time_point deadline, ChildProcess& qemu,
                           const std::filesystem::path& console_log) {
  try {
    control.connect(socket_path, deadline, [&qemu] { return qemu.running(); });
  } catch (const std::exception& e) {
    const std::string message =
        std::string(e.what()) + "; console (" + console_log.string() + "):\n" + file_tail(console_log);
    note_test_failed();  // keep the run dir with the console log
    control.close();
    stop_qemu(qemu);
    throw std::runtime_error(message);
  }
}

void stop_qemu(ChildProcess& qemu) {
  qemu.signal(SIGTERM);
  if (!qemu.wait_for(std::chrono::seconds(5))) {
    qemu.signal(SIGKILL);
    (void)qemu.wait_for(std::chrono::seconds(5));
  }
}

std::string last_line(const std::string& text) {
  std::istringstream in(text);
  std::string line;
  std::string last;
  while (std::getline(in, line)) {
    if (!line.empty()) {
      last = line;
    }
  }
  return last;
}

}  // namespace quiesce::test
