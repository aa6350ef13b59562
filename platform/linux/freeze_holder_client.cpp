#include "platform/linux/freeze_holder_client.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>
#include <utility>

#include "platform/linux/freeze_holder.hpp"

namespace quiesce::platform::holder {

namespace {

using Clock = std::chrono::steady_clock;

std::string describe_status(int status) {
  if (WIFEXITED(status)) {
    return "exited with code " + std::to_string(WEXITSTATUS(status));
  }
  if (WIFSIGNALED(status)) {
    const char* name = ::sigabbrev_np(WTERMSIG(status));
    return std::string("killed by SIG") + (name != nullptr ? name : std::to_string(WTERMSIG(status)));
  }
  return "ended (status " + std::to_string(status) + ")";
}

}  // namespace

std::unique_ptr<HolderClient> HolderClient::start(const std::string& holder_path,
                                                  std::string& error,
                                                  std::chrono::milliseconds startup_timeout) {
  if (::access(holder_path.c_str(), X_OK) != 0) {
    error = "freeze holder " + holder_path + " is not executable: " + std::strerror(errno);
    return nullptr;
  }
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0) {
    error = std::string("socketpair failed: ") + std::strerror(errno);
    return nullptr;
  }
  int size = static_cast<int>(max_message_size);
  ::setsockopt(fds[0], SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  ::setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &size, sizeof size);

  // Everything the child needs is prepared before fork: between fork and
  // exec in a threaded process only async-signal-safe calls are allowed.
  const pid_t parent = ::getpid();
  std::string parent_text = std::to_string(parent);
  std::string path = holder_path;
  std::string fd_flag = "--fd";
  std::string fd_text = "3";
  std::string parent_flag = "--parent";
  std::vector<char*> argv{path.data(), fd_flag.data(), fd_text.data(), parent_flag.data(),
                          parent_text.data(), nullptr};

  pid_t pid = ::fork();
  if (pid < 0) {
    error = std::string("fork failed: ") + std::strerror(errno);
    ::close(fds[0]);
    ::close(fds[1]);
    return nullptr;
  }
  if (pid == 0) {
    // Survives exec; the holder double-checks getppid() on receipt.
    ::prctl(PR_SET_PDEATHSIG, parent_death_signal);
    if (::getppid() != parent) {
      ::_exit(0);
    }
    if (fds[1] == 3) {
      ::fcntl(3, F_SETFD, 0);
    } else if (::dup2(fds[1], 3) < 0) {
      ::_exit(126);
    }
    // The agent may block signals in the forking thread; the holder sets
    // its own mask, but must not start with handlers' masks it knows nothing of.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  std::unique_ptr<HolderClient> client(new HolderClient(pid, fds[0]));
  auto reply = client->receive(Clock::now() + startup_timeout, std::stop_token{});
  if (!reply.ok() || reply.message.verb != "READY" || reply.message.args.empty() ||
      reply.message.args[0] != std::to_string(protocol_version)) {
    error = "freeze holder " + holder_path + " did not start: " +
            (reply.ok() ? "unexpected greeting '" + reply.message.verb + "'" : reply.error);
    return nullptr;  // the destructor closes the socket and reaps it
  }
  return client;
}

void HolderClient::retire() {
  if (socket_fd_ >= 0) {
    ::close(socket_fd_);
    socket_fd_ = -1;
  }
  connected_ = false;
  retired_ = true;
}

bool HolderClient::reap() {
  note_exit(false);
  return reaped_;
}

HolderClient::~HolderClient() {
  if (socket_fd_ >= 0) {
    ::close(socket_fd_);
  }
  if (retired_) {
    note_exit(false);
    return;
  }
  // The holder thaws and exits on EOF; give it a bounded time. If it takes
  // longer (a thaw stuck in the kernel) it is left running rather than
  // killed, since killing it would leave its filesystems frozen.
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  while (!reaped_ && Clock::now() < deadline) {
    note_exit(false);
    if (!reaped_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
}

void HolderClient::note_exit(bool wait) {
  if (reaped_ || pid_ <= 0) {
    return;
  }
  int status = 0;
  pid_t r = ::waitpid(pid_, &status, wait ? 0 : WNOHANG);
  if (r == pid_) {
    reaped_ = true;
    exit_description_ = "freeze holder (pid " + std::to_string(pid_) + ") " + describe_status(status);
  } else if (r < 0 && errno == ECHILD) {
    // Someone else (a SIGCHLD reaper in the host process) collected it.
    reaped_ = true;
    exit_description_ = "freeze holder (pid " + std::to_string(pid_) + ") exited";
  }
}

bool HolderClient::alive() {
  if (!connected_) {
    return false;
  }
  poll_events();
  if (!connected_) {
    return false;
  }
  note_exit(false);
  return !reaped_;
}

void HolderClient::poll_events() {
  // A zero deadline: read what is there, wait for nothing.
  while (connected_) {
    pollfd fd{socket_fd_, POLLIN, 0};
    if (::poll(&fd, 1, 0) <= 0 || fd.revents == 0) {
      return;
    }
    auto reply = receive(Clock::now(), std::stop_token{});
    if (reply.ok()) {
      // A reply to a request that timed out; nothing waits for it any more.
      if (stale_replies_ > 0) {
        --stale_replies_;
      }
      continue;
    }
    return;
  }
}

std::vector<Message> HolderClient::take_events() {
  poll_events();
  return std::exchange(events_, {});
}

Reply HolderClient::request(const Message& request, Clock::time_point deadline,
                            const std::stop_token& stop) {
  if (!connected_) {
    note_exit(false);
    return {ReplyStatus::holder_gone, {}, exit_description_.empty() ? "freeze holder is gone" : exit_description_};
  }
  auto text = encode(request);
  if (text.size() > max_message_size) {
    return {ReplyStatus::protocol, {}, "request too large for the freeze holder"};
  }
  while (::send(socket_fd_, text.data(), text.size(), MSG_NOSIGNAL) < 0) {
    if (errno == EINTR) {
      continue;
    }
    const std::string why = std::strerror(errno);
    // The holder closed its end; whatever it said before (an AUTO-THAW)
    // is still queued. Read it up to the EOF.
    while (receive(Clock::now() + std::chrono::milliseconds(500), std::stop_token{}).ok()) {
    }
    connected_ = false;
    note_exit(false);
    return {ReplyStatus::holder_gone, {},
            exit_description_.empty() ? "cannot reach the freeze holder: " + why : exit_description_};
  }
  for (;;) {
    auto reply = receive(deadline, stop);
    if (reply.status == ReplyStatus::timeout || reply.status == ReplyStatus::stopped) {
      ++stale_replies_;
      return reply;
    }
    if (!reply.ok()) {
      return reply;
    }
    if (stale_replies_ > 0) {
      --stale_replies_;
      continue;
    }
    return reply;
  }
}

Reply HolderClient::receive(Clock::time_point deadline, const std::stop_token& stop) {
  std::string buffer;
  for (;;) {
    if (!connected_) {
      note_exit(true);
      return {ReplyStatus::holder_gone, {}, exit_description_};
    }
    auto now = Clock::now();
    if (stop.stop_requested()) {
      return {ReplyStatus::stopped, {}, "stopped while waiting for the freeze holder"};
    }
    // Wake every 20 ms to look at the stop token; cheap, and it keeps the
    // holder protocol free of a second wake-up channel.
    auto remaining = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count();
    int wait_ms = static_cast<int>(std::clamp<long long>(remaining, 0, 20));
    pollfd fd{socket_fd_, POLLIN, 0};
    int ready = ::poll(&fd, 1, wait_ms);
    if (ready < 0 && errno != EINTR) {
      connected_ = false;
      continue;
    }
    if (ready <= 0) {
      if (Clock::now() >= deadline) {
        return {ReplyStatus::timeout, {}, "the freeze holder did not answer in time"};
      }
      continue;
    }
    auto n = receive_datagram(socket_fd_, buffer, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
      continue;
    }
    if (n < 0 && errno == EMSGSIZE) {
      return {ReplyStatus::protocol, {}, "the freeze holder sent an oversized message"};
    }
    if (n <= 0) {
      // EOF: the holder exited. Its last words (an AUTO-THAW) were read before.
      connected_ = false;
      continue;
    }
    auto message = decode(buffer);
    if (!message) {
      return {ReplyStatus::protocol, {}, "the freeze holder sent an empty message"};
    }
    if (message->verb == "AUTO-THAW") {
      events_.push_back(std::move(*message));
      continue;
    }
    return {ReplyStatus::ok, std::move(*message), ""};
  }
}

}  // namespace quiesce::platform::holder
