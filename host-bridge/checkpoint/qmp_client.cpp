#include "host-bridge/checkpoint/qmp_client.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <thread>

namespace quiesce::host {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {
std::string errno_text() { return std::strerror(errno); }

// Waits until `fd` is ready for `events` or the deadline passes.
bool wait_ready(int fd, short events, Clock::time_point deadline) {
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      return false;
    }
    pollfd pfd{fd, events, 0};
    const int n = ::poll(&pfd, 1, static_cast<int>(left));
    if (n > 0) {
      return true;
    }
    if (n < 0 && errno != EINTR) {
      return false;
    }
  }
}
}  // namespace

Expected<QmpClient> QmpClient::connect(const std::string& socket_path, std::chrono::milliseconds timeout) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(addr.sun_path)) {
    return Error{ErrorKind::invalid_input, "QMP socket path is too long: " + socket_path};
  }
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return Error{ErrorKind::system, "socket: " + errno_text()};
  }
  // A Unix socket connect does not block for long; the deadline covers the
  // greeting and the capabilities reply, where a wedged QEMU would hang.
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    const auto error = errno_text();
    ::close(fd);
    return Error{ErrorKind::backend, "cannot connect to QMP socket " + socket_path + ": " + error};
  }
  QmpClient client(fd, socket_path, timeout);
  auto greeting = client.read_message();
  if (!greeting) {
    return greeting.error();
  }
  if (!greeting->contains("QMP")) {
    return Error{ErrorKind::backend, "QMP socket " + socket_path + " sent no QMP greeting: " + greeting->dump()};
  }
  if (auto caps = client.execute("qmp_capabilities"); !caps) {
    return caps.error();
  }
  return client;
}

Expected<std::optional<QmpClient>> QmpClient::connect_if_running(const std::string& socket_path,
                                                                 std::chrono::milliseconds timeout) {
  std::error_code ec;
  if (socket_path.empty() || !std::filesystem::exists(socket_path, ec)) {
    return std::optional<QmpClient>();
  }
  // How long a QEMU that resets connections may take to finish exiting.
  const auto exiting_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  while (true) {
    auto connected = connect(socket_path, timeout);
    if (connected) {
      return std::optional<QmpClient>(std::move(*connected));
    }
    const auto& message = connected.error().message;
    if (message.rfind("cannot connect to QMP socket", 0) == 0) {
      return std::optional<QmpClient>();
    }
    const bool silent = message.find("no reply within") != std::string::npos;
    if (silent || std::chrono::steady_clock::now() > exiting_deadline) {
      return Error{ErrorKind::conflict, "QEMU's QMP socket " + socket_path +
                                            " does not answer (another QMP client holds it, such as a delete "
                                            "merging with a block job): nothing deleted, try again later (" +
                                            message + ")"};
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

QmpClient::~QmpClient() {
  if (fd_ >= 0) {
    ::close(fd_);
  }
}

QmpClient::QmpClient(QmpClient&& other) noexcept
    : fd_(other.fd_),
      socket_path_(std::move(other.socket_path_)),
      timeout_(other.timeout_),
      buffer_(std::move(other.buffer_)),
      next_id_(other.next_id_) {
  other.fd_ = -1;
}

QmpClient& QmpClient::operator=(QmpClient&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) {
      ::close(fd_);
    }
    fd_ = other.fd_;
    socket_path_ = std::move(other.socket_path_);
    timeout_ = other.timeout_;
    buffer_ = std::move(other.buffer_);
    next_id_ = other.next_id_;
    other.fd_ = -1;
  }
  return *this;
}

Status QmpClient::write_all(const std::string& data) {
  const auto deadline = Clock::now() + timeout_;
  std::size_t done = 0;
  while (done < data.size()) {
    if (!wait_ready(fd_, POLLOUT, deadline)) {
      return Error{ErrorKind::system, "QMP " + socket_path_ + ": write timed out"};
    }
    const ssize_t n = ::send(fd_, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) {
        continue;
      }
      return Error{ErrorKind::system, "QMP " + socket_path_ + ": write: " + errno_text()};
    }
    done += static_cast<std::size_t>(n);
  }
  return ok_status();
}

Expected<json> QmpClient::read_message() {
  const auto deadline = Clock::now() + timeout_;
  while (true) {
    const auto eol = buffer_.find('\n');
    if (eol != std::string::npos) {
      const auto line = buffer_.substr(0, eol);
      buffer_.erase(0, eol + 1);
      if (line.find_first_not_of(" \r\t") == std::string::npos) {
        continue;
      }
      auto parsed = json::parse(line, nullptr, false);
      if (parsed.is_discarded() || !parsed.is_object()) {
        return Error{ErrorKind::backend, "QMP " + socket_path_ + " sent something that is not a JSON object: " + line};
      }
      return parsed;
    }
    if (!wait_ready(fd_, POLLIN, deadline)) {
      return Error{ErrorKind::system, "QMP " + socket_path_ + ": no reply within " +
                                          std::to_string(timeout_.count()) + " ms"};
    }
    char chunk[4096];
    const ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) {
        continue;
      }
      return Error{ErrorKind::system, "QMP " + socket_path_ + ": read: " + errno_text()};
    }
    if (n == 0) {
      return Error{ErrorKind::system, "QMP " + socket_path_ + ": QEMU closed the connection"};
    }
    buffer_.append(chunk, static_cast<std::size_t>(n));
  }
}

Expected<json> QmpClient::execute(const std::string& command, const json& arguments) {
  const auto id = "quiesce-" + std::to_string(next_id_++);
  json request{{"execute", command}, {"id", id}};
  if (!arguments.is_null()) {
    request["arguments"] = arguments;
  }
  if (auto status = write_all(request.dump() + "\n"); !status) {
    return status.error();
  }
  return await_reply(command, id);
}

Status QmpClient::pass_fd(const std::string& name, int fd) {
  const auto id = "quiesce-" + std::to_string(next_id_++);
  const auto request = json{{"execute", "getfd"}, {"arguments", {{"fdname", name}}}, {"id", id}}.dump() + "\n";
  // QEMU takes the descriptor from whichever read of the command carries
  // it, so it rides on the first byte; the rest goes as usual.
  char control[CMSG_SPACE(sizeof(int))] = {};
  char first = request[0];
  iovec iov{&first, 1};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
  const auto deadline = Clock::now() + timeout_;
  while (true) {
    if (!wait_ready(fd_, POLLOUT, deadline)) {
      return Error{ErrorKind::system, "QMP " + socket_path_ + ": getfd: write timed out"};
    }
    const ssize_t n = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
    if (n == 1) {
      break;
    }
    if (n < 0 && errno != EINTR && errno != EAGAIN) {
      return Error{ErrorKind::system, "QMP " + socket_path_ + ": getfd: sendmsg: " + errno_text()};
    }
  }
  if (auto status = write_all(request.substr(1)); !status) {
    return status.error();
  }
  auto reply = await_reply("getfd", id);
  if (!reply) {
    return reply.error();
  }
  return ok_status();
}

Expected<json> QmpClient::await_reply(const std::string& command, const std::string& id) {
  while (true) {
    auto message = read_message();
    if (!message) {
      return message.error();
    }
    // Events ({"event": ...}) arrive whenever QEMU likes; only the reply
    // carrying our id answers this command.
    if (message->contains("event")) {
      continue;
    }
    const auto it = message->find("id");
    if (it == message->end() || *it != id) {
      continue;
    }
    if (auto error = message->find("error"); error != message->end()) {
      return Error{ErrorKind::backend, command + ": " + error->value("class", std::string("GenericError")) + ": " +
                                           error->value("desc", std::string("no description"))};
    }
    if (auto ret = message->find("return"); ret != message->end()) {
      return *ret;
    }
    return Error{ErrorKind::backend, command + ": reply has neither return nor error: " + message->dump()};
  }
}

}  // namespace quiesce::host
