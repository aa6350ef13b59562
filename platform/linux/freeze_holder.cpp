#include "platform/linux/freeze_holder.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "platform/linux/freeze_holder_protocol.hpp"
#include "platform/linux/fsfreeze.hpp"

namespace quiesce::platform::holder {

namespace {

std::string errno_text(int error_number) {
  const char* name = ::strerrorname_np(error_number);
  return std::string(name != nullptr ? name : "errno " + std::to_string(error_number)) + ": " +
         std::strerror(error_number);
}

struct Mount {
  MountRequest request;
  int fd = -1;
  MountResult result;
};

// Runs `action` on every mount in `mounts` at once, one thread each: the
// freezes of independent filesystems each wait for their own writeback, so
// doing them together makes the freeze take as long as the slowest one.
void for_each_in_parallel(const std::vector<Mount*>& mounts, const std::function<void(Mount&)>& action) {
  if (mounts.size() == 1) {
    action(*mounts.front());
    return;
  }
  std::vector<std::thread> threads;
  threads.reserve(mounts.size());
  for (auto* mount : mounts) {
    try {
      threads.emplace_back([&action, mount] { action(*mount); });
    } catch (const std::system_error&) {
      // Out of threads: do this one here rather than fail the freeze.
      action(*mount);
    }
  }
  for (auto& thread : threads) {
    thread.join();
  }
}

class Holder {
 public:
  explicit Holder(const HolderConfig& config) : config_(config) {}
  ~Holder() {
    for (int fd : {signal_fd_, timer_fd_, done_fd_}) {
      if (fd >= 0) {
        ::close(fd);
      }
    }
  }
  Holder(const Holder&) = delete;
  Holder& operator=(const Holder&) = delete;

  int run() {
    auto signals = holder_signals();
    signal_fd_ = ::signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK);
    timer_fd_ = ::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    done_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (signal_fd_ < 0 || timer_fd_ < 0 || done_fd_ < 0) {
      return 2;
    }
    // The agent may already be gone (it died between fork and here).
    if (::getppid() != config_.parent_pid) {
      return 0;
    }
    int size = static_cast<int>(max_message_size);
    ::setsockopt(config_.socket_fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    ::setsockopt(config_.socket_fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    send(Message{"READY", {std::to_string(protocol_version), std::to_string(::getpid())}, {}});

    std::string buffer;
    bool socket_open = true;
    for (;;) {
      if (terminating_ && state_ != State::freezing) {
        break;
      }
      std::array<pollfd, 4> fds{{{socket_open ? config_.socket_fd : -1, POLLIN, 0},
                                 {signal_fd_, POLLIN, 0},
                                 {timer_fd_, POLLIN, 0},
                                 {done_fd_, POLLIN, 0}}};
      if (::poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR) {
          continue;
        }
        begin_terminate("poll failed: " + errno_text(errno));
        continue;
      }
      if ((fds[1].revents & POLLIN) != 0) {
        on_signal();
      }
      if ((fds[3].revents & POLLIN) != 0) {
        std::uint64_t count = 0;
        [[maybe_unused]] auto n = ::read(done_fd_, &count, sizeof count);
        on_freeze_done();
      }
      if ((fds[2].revents & POLLIN) != 0) {
        std::uint64_t expirations = 0;
        [[maybe_unused]] auto n = ::read(timer_fd_, &expirations, sizeof expirations);
        on_deadline();
      }
      if (socket_open && fds[0].revents != 0) {
        auto n = receive_datagram(config_.socket_fd, buffer);
        if (n > 0) {
          on_message(buffer);
        } else if (n < 0 && errno == EMSGSIZE) {
          send(Message{"ERROR", {"message too large"}, {}});
        } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
          socket_open = false;
          begin_terminate("the agent closed its connection (it exited or was killed)");
        }
      }
    }
    if (state_ == State::frozen) {
      thaw_all();
      send_event(terminate_reason_);
    }
    return 0;
  }

 private:
  enum class State { idle, freezing, frozen };

  void send(const Message& message, int flags = 0) {
    auto text = encode(message);
    // MSG_NOSIGNAL: the agent being gone is handled by the read side.
    while (::send(config_.socket_fd, text.data(), text.size(), MSG_NOSIGNAL | flags) < 0 &&
           errno == EINTR) {
    }
  }

  Message with_results(Message message) const {
    for (const auto& mount : mounts_) {
      message.rows.push_back(to_row(mount.result));
    }
    return message;
  }

  void send_event(const std::string& reason) {
    // Best effort and never blocking: nobody may be reading any more.
    send(with_results(Message{"AUTO-THAW", {reason}, {}}), MSG_DONTWAIT);
  }

  void begin_terminate(std::string reason) {
    if (!terminating_) {
      terminating_ = true;
      terminate_reason_ = std::move(reason);
      cancel_reason("the freeze holder is terminating: " + terminate_reason_);
    }
  }

  void cancel_reason(std::string reason) {
    std::lock_guard lock(cancel_mutex_);
    if (!cancel_) {
      cancel_text_ = std::move(reason);
      cancel_ = true;
    }
  }

  void on_signal() {
    signalfd_siginfo info{};
    while (::read(signal_fd_, &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
      auto signo = static_cast<int>(info.ssi_signo);
      if (signo == parent_death_signal) {
        if (::getppid() != config_.parent_pid) {
          begin_terminate("the agent process died");
        }
        continue;
      }
      const char* name = ::sigabbrev_np(signo);
      begin_terminate(std::string("received SIG") + (name != nullptr ? name : std::to_string(signo)));
    }
  }

  void on_message(std::string_view text) {
    auto message = decode(text);
    if (!message) {
      send(Message{"ERROR", {"empty message"}, {}});
      return;
    }
    if (message->verb == "PING") {
      static constexpr std::array<std::string_view, 3> names{"idle", "freezing", "frozen"};
      send(Message{"PONG", {std::string(names.at(static_cast<std::size_t>(state_)))}, {}});
    } else if (message->verb == "FREEZE") {
      on_freeze(*message);
    } else if (message->verb == "THAW") {
      on_thaw();
    } else {
      send(Message{"ERROR", {"unknown request '" + message->verb + "'"}, {}});
    }
  }

  void on_freeze(const Message& message) {
    if (state_ != State::idle) {
      send(Message{"ERROR", {"a freeze is already in progress or held"}, {}});
      return;
    }
    auto request = freeze_request_from(message);
    if (!request) {
      send(Message{"ERROR", {"malformed FREEZE request"}, {}});
      return;
    }
    mounts_.clear();
    for (auto& mount_request : request->mounts) {
      Mount mount;
      mount.result.mount_id = mount_request.mount_id;
      mount.result.path = mount_request.path;
      mount.request = std::move(mount_request);
      mounts_.push_back(std::move(mount));
    }
    ignore_frozen_ = request->ignore_frozen;
    hold_broken_ = false;
    hold_detail_.clear();
    cancel_ = false;
    cancel_text_.clear();
    freeze_error_.clear();
    thaw_pending_ = false;
    if (request->deadline_ns > 0) {
      itimerspec when{};
      when.it_value.tv_sec = request->deadline_ns / 1'000'000'000;
      when.it_value.tv_nsec = request->deadline_ns % 1'000'000'000;
      ::timerfd_settime(timer_fd_, TFD_TIMER_ABSTIME, &when, nullptr);
    }
    state_ = State::freezing;
    // The freeze runs on its own thread so that signals, the deadline and a
    // THAW keep being noticed while FIFREEZE waits for writeback.
    operation_ = std::thread([this] {
      freeze_all();
      std::uint64_t one = 1;
      [[maybe_unused]] auto n = ::write(done_fd_, &one, sizeof one);
    });
  }

  void on_thaw() {
    if (state_ == State::freezing) {
      thaw_pending_ = true;
      cancel_reason("thaw requested while freezing");
      return;
    }
    if (state_ == State::frozen) {
      thaw_all();
      state_ = State::idle;
    }
    disarm_timer();
    send(with_results(Message{"THAWED", {hold_broken_ ? "0" : "1", hold_detail_}, {}}));
    mounts_.clear();
    hold_broken_ = false;
    hold_detail_.clear();
  }

  void on_deadline() {
    if (state_ == State::freezing) {
      cancel_reason("the hold deadline passed while freezing");
    } else if (state_ == State::frozen) {
      thaw_all();
      state_ = State::idle;
      note_broken("the hold deadline passed; the freeze holder thawed every filesystem");
      send_event(hold_detail_);
    }
  }

  void on_freeze_done() {
    if (operation_.joinable()) {
      operation_.join();
    }
    std::string cancelled;
    {
      std::lock_guard lock(cancel_mutex_);
      if (cancel_) {
        cancelled = cancel_text_;
      }
    }
    if (freeze_error_.empty() && !cancelled.empty()) {
      thaw_all();
      freeze_error_ = "freeze cancelled: " + cancelled;
    }
    if (!freeze_error_.empty()) {
      state_ = State::idle;
      disarm_timer();
      send(with_results(Message{"FAILED", {freeze_error_}, {}}));
      if (thaw_pending_) {
        thaw_pending_ = false;
        send(with_results(Message{"THAWED", {"1", ""}, {}}));
      }
      mounts_.clear();
      return;
    }
    state_ = State::frozen;
    send(with_results(Message{"FROZEN", {}, {}}));
  }

  void note_broken(std::string detail) {
    if (!hold_broken_) {
      hold_broken_ = true;
      hold_detail_ = std::move(detail);
    }
  }

  void disarm_timer() {
    itimerspec never{};
    ::timerfd_settime(timer_fd_, 0, &never, nullptr);
  }

  bool cancelled() {
    std::lock_guard lock(cancel_mutex_);
    return cancel_;
  }

  // On the operation thread. Sets freeze_error_ when the freeze failed, in
  // which case everything it froze has been thawed again.
  void freeze_all() {
    // Every mount point is opened before anything is frozen: resolving a
    // path through a filesystem that is already frozen can block.
    for (auto& mount : mounts_) {
      int fd = open_mount_point(mount.request.path);
      if (fd < 0) {
        mount.result.state = MountState::failed;
        mount.result.error_number = -fd;
        freeze_error_ = "cannot open " + mount.request.path + ": " + errno_text(-fd);
        break;
      }
      mount.fd = fd;
      auto actual = mount_id_of(fd);
      if (mount.request.mount_id != 0 && actual != 0 && actual != mount.request.mount_id) {
        mount.result.state = MountState::failed;
        freeze_error_ = mount.request.path + " is no longer the mount that was selected (mount id " +
                        std::to_string(actual) + ", expected " +
                        std::to_string(mount.request.mount_id) + "); the mount table changed";
        break;
      }
    }
    std::set<int> waves;
    for (const auto& mount : mounts_) {
      waves.insert(mount.request.wave);
    }
    for (int wave : waves) {
      if (!freeze_error_.empty() || cancelled()) {
        break;
      }
      std::vector<Mount*> batch;
      for (auto& mount : mounts_) {
        if (mount.request.wave == wave) {
          batch.push_back(&mount);
        }
      }
      for_each_in_parallel(batch, [this](Mount& mount) { freeze_one(mount); });
      for (auto* mount : batch) {
        auto state = mount->result.state;
        if ((state == MountState::busy || state == MountState::failed) && freeze_error_.empty()) {
          freeze_error_ = state == MountState::busy
                              ? mount->request.path +
                                    " is already frozen by someone else (set ignore_frozen to "
                                    "skip such filesystems)"
                              : "cannot freeze " + mount->request.path + ": " +
                                    errno_text(mount->result.error_number);
        }
      }
    }
    if (!freeze_error_.empty()) {
      thaw_all();
    }
  }

  void freeze_one(Mount& mount) {
    auto result = freeze_filesystem(mount.fd);
    mount.result.error_number = result.error_number();
    switch (result.outcome()) {
      case FreezeOutcome::ok:
        mount.result.state = MountState::frozen;
        break;
      case FreezeOutcome::not_supported:
        mount.result.state = MountState::unsupported;
        break;
      case FreezeOutcome::already_frozen:
        mount.result.state = ignore_frozen_ ? MountState::busy_ignored : MountState::busy;
        break;
      default:
        mount.result.state = MountState::failed;
        break;
    }
  }

  // Thaws, in reverse wave order, everything in the frozen state (and only
  // that: what someone else froze is never touched), then closes the fds.
  void thaw_all() {
    std::set<int, std::greater<>> waves;
    for (const auto& mount : mounts_) {
      waves.insert(mount.request.wave);
    }
    for (int wave : waves) {
      std::vector<Mount*> batch;
      for (auto& mount : mounts_) {
        if (mount.request.wave == wave && mount.result.state == MountState::frozen) {
          batch.push_back(&mount);
        }
      }
      if (batch.empty()) {
        continue;
      }
      for_each_in_parallel(batch, [](Mount& mount) {
        auto result = thaw_filesystem(mount.fd);
        mount.result.error_number = result.error_number();
        if (result.ok()) {
          mount.result.state = MountState::thawed;
        } else if (result.outcome() == FreezeOutcome::not_frozen) {
          mount.result.state = MountState::was_thawed;
        } else {
          mount.result.state = MountState::thaw_failed;
        }
      });
      for (auto* mount : batch) {
        if (mount->result.state == MountState::was_thawed) {
          note_broken(mount->request.path + " was thawed by someone else while held");
        }
      }
    }
    for (auto& mount : mounts_) {
      if (mount.fd >= 0) {
        ::close(mount.fd);
        mount.fd = -1;
      }
    }
  }

  HolderConfig config_;
  int signal_fd_ = -1;
  int timer_fd_ = -1;
  int done_fd_ = -1;
  State state_ = State::idle;
  std::vector<Mount> mounts_;
  bool ignore_frozen_ = false;
  std::thread operation_;
  std::string freeze_error_;  // written by the operation thread, read after join
  std::mutex cancel_mutex_;
  bool cancel_ = false;
  std::string cancel_text_;
  bool thaw_pending_ = false;
  bool hold_broken_ = false;
  std::string hold_detail_;
  bool terminating_ = false;
  std::string terminate_reason_;
};

}  // namespace

sigset_t holder_signals() {
  sigset_t set;
  sigemptyset(&set);
  for (int signo : {SIGTERM, SIGINT, SIGHUP, SIGQUIT, parent_death_signal}) {
    sigaddset(&set, signo);
  }
  return set;
}

int run_holder(const HolderConfig& config) {
  Holder holder(config);
  return holder.run();
}

}  // namespace quiesce::platform::holder
