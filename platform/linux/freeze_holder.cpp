#include "platform/linux/freeze_holder.hpp"

#include <linux/fs.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "platform/linux/freeze_holder_protocol.hpp"
#include "platform/linux/fsfreeze.hpp"

namespace quiesce::platform::holder {

namespace {

// How the holder keeps its first promise (nothing stays frozen past the
// window, whatever happens):
//
// - FIFREEZE can block inside the kernel for ever: freezing a filesystem
//   writes back its dirty data, and when that data goes through a loop
//   device (or device-mapper...) into another filesystem that is already
//   frozen, the call waits for that one to be thawed. So no thread that
//   has to thaw ever waits for a freezing thread: the main thread (and the
//   fatal-signal handler) thaw straight away every filesystem that is
//   *frozen*, in reverse wave order, which thaws the lower filesystems and
//   lets a stuck freeze above them finish. A filesystem whose FIFREEZE is
//   still in flight is never touched (FITHAW would wait on the same
//   superblock lock); its own thread thaws it the moment the call returns.
// - Who thaws a filesystem is settled by one compare-and-swap on its
//   state (frozen -> thawing), so each one is thawed exactly once, by the
//   main thread, the freezing thread or the signal handler.
// - The holder never exits while a FIFREEZE is in flight: the call would
//   finish after its thread is gone and nobody would thaw what it froze.

enum SlotState : int {
  slot_pending,     // not attempted (yet)
  slot_freezing,    // FIFREEZE in flight
  slot_frozen,      // frozen and held
  slot_thawing,     // FITHAW claimed by one thread
  slot_thawed,      // frozen, then thawed by us
  slot_was_thawed,  // frozen, but found thawed: someone else thawed it
  slot_thaw_failed,
  slot_unsupported,
  slot_busy,          // frozen by someone else: the freeze fails
  slot_busy_ignored,  // frozen by someone else: left alone (ignore_frozen)
  slot_failed,
};

struct Slot {
  MountRequest request;
  int fd = -1;
  std::atomic<int> state{slot_pending};
  std::atomic<int> error_number{0};
  std::atomic<std::int64_t> freeze_started_ns{0};
};

// One FREEZE request's filesystems, sorted by wave. Shared by the main
// thread, the freeze thread(s) and (through current_hold) the fatal-signal
// handler; it outlives every thread that works on it.
struct Hold {
  explicit Hold(std::size_t count) : slots(count) {}
  std::vector<Slot> slots;  // never resized after construction
  std::atomic<bool> release{false};
  // Who answers the FREEZE request, decided by one exchange: the freeze
  // thread (FROZEN, written the moment the last filesystem froze, without
  // waking the main thread first) or the main thread (FAILED, when it ends
  // the hold while freezing). Whoever loses leaves the answer to the other.
  std::atomic<bool> reply_claimed{false};
  bool ignore_frozen = false;
  // Written by the freeze thread only; read by the main thread after the join.
  std::string error;
};

// The hold the fatal-signal handler thaws; set while one exists. The Hold is
// kept alive by the Holder until this is cleared.
std::atomic<Hold*> current_hold{nullptr};

std::int64_t monotonic_ns() {
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<std::int64_t>(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
}

// Thaws `slot` if it is frozen and nobody else has claimed it. Only system
// calls and lock-free atomics: safe in a signal handler.
bool claim_and_thaw(Slot& slot) {
  int expected = slot_frozen;
  if (!slot.state.compare_exchange_strong(expected, slot_thawing)) {
    return false;
  }
  int unused = 0;
  int result = 0;
  do {
    result = ::ioctl(slot.fd, FITHAW, &unused);
  } while (result != 0 && errno == EINTR);
  if (result == 0) {
    slot.state.store(slot_thawed);
  } else {
    slot.error_number.store(errno);
    slot.state.store(errno == EINVAL ? slot_was_thawed : slot_thaw_failed);
  }
  return true;
}

// Stops every freeze that has not started and thaws everything frozen,
// last wave first. Async-signal-safe.
void release_hold(Hold& hold) {
  hold.release.store(true);
  for (auto slot = hold.slots.rbegin(); slot != hold.slots.rend(); ++slot) {
    claim_and_thaw(*slot);
  }
}

bool any_in_flight(const Hold& hold) {
  return std::any_of(hold.slots.begin(), hold.slots.end(), [](const Slot& slot) {
    const int state = slot.state.load();
    return state == slot_freezing || state == slot_thawing;
  });
}

// The last line of defence for a crash or a fatal signal (SIGABRT from a
// service manager's watchdog, SIGSEGV...): thaw before dying. A freeze
// still in flight gets a few seconds to return so that its own thread can
// thaw it (the lower filesystems it waits for were just thawed).
extern "C" void on_fatal_signal(int signo) {
  const int saved_errno = errno;
  if (Hold* hold = current_hold.load(); hold != nullptr) {
    release_hold(*hold);
    for (int waited_ms = 0; waited_ms < 5000 && any_in_flight(*hold); waited_ms += 10) {
      timespec pause{0, 10'000'000};
      ::nanosleep(&pause, nullptr);
    }
  }
  errno = saved_errno;
  // SA_RESETHAND made the action the default again: the signal, raised
  // again (and delivered when this returns), ends the process as it would have.
  ::raise(signo);
}

// Signals whose default action ends the process, other than those the main
// loop takes through its signalfd (holder_signals()) and SIGKILL/SIGSTOP,
// which cannot be caught.
constexpr std::array fatal_signals{SIGABRT, SIGSEGV, SIGBUS,    SIGILL,  SIGFPE,  SIGSYS,
                                   SIGTRAP, SIGXCPU, SIGXFSZ,   SIGALRM, SIGVTALRM,
                                   SIGPROF, SIGUSR1, SIGIO,     SIGPWR,  SIGSTKFLT};

void install_fatal_signal_handlers() {
  // An alternate stack, so that a stack overflow still reaches the handler.
  static std::array<char, 64 * 1024> alternate_stack;
  stack_t stack{};
  stack.ss_sp = alternate_stack.data();
  stack.ss_size = alternate_stack.size();
  ::sigaltstack(&stack, nullptr);
  struct sigaction action{};
  action.sa_handler = on_fatal_signal;
  action.sa_flags = SA_RESETHAND | SA_ONSTACK;
  sigfillset(&action.sa_mask);
  for (int signo : fatal_signals) {
    ::sigaction(signo, &action, nullptr);
  }
}

std::string errno_text(int error_number) {
  const char* name = ::strerrorname_np(error_number);
  return std::string(name != nullptr ? name : "errno " + std::to_string(error_number)) + ": " +
         std::strerror(error_number);
}

std::string seconds_text(std::int64_t ns) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.1f s", static_cast<double>(ns) / 1e9);
  return buffer;
}

MountState reported_state(int state) {
  switch (state) {
    case slot_pending:
      return MountState::pending;
    case slot_freezing:
    case slot_thawing:
      return MountState::stuck;
    case slot_frozen:
      return MountState::frozen;
    case slot_thawed:
      return MountState::thawed;
    case slot_was_thawed:
      return MountState::was_thawed;
    case slot_thaw_failed:
      return MountState::thaw_failed;
    case slot_unsupported:
      return MountState::unsupported;
    case slot_busy:
      return MountState::busy;
    case slot_busy_ignored:
      return MountState::busy_ignored;
    default:
      return MountState::failed;
  }
}

// A thread kept parked between holds and handed one job at a time: inside
// the hold window a freeze then costs a wake-up, not a clone and a new
// thread's start (measured with strace at load 10: 0.5-1.1 ms from FREEZE
// received to FIFREEZE issued with a new thread per freeze). joinable() and
// join() mean what they do for std::thread: a job was handed and not yet
// joined; join() waits for that job. Only its owner calls start/join.
class ParkedThread {
 public:
  ParkedThread() = default;
  ~ParkedThread() {
    if (!thread_.joinable()) {
      return;
    }
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_one();
    thread_.join();  // idle by then: the holder joins every job before it ends
  }
  ParkedThread(const ParkedThread&) = delete;
  ParkedThread& operator=(const ParkedThread&) = delete;

  // Starts the thread (parked) if it is not running yet. Throws
  // std::system_error when no thread can be started.
  void park() {
    if (!thread_.joinable()) {
      thread_ = std::thread([this] { serve(); });
    }
  }

  void start(std::function<void()> job) {
    park();
    {
      std::lock_guard lock(mutex_);
      job_ = std::move(job);
      busy_ = true;
    }
    handed_ = true;
    wake_.notify_one();
  }

  [[nodiscard]] bool joinable() const { return handed_; }

  void join() {
    std::unique_lock lock(mutex_);
    done_.wait(lock, [this] { return !busy_; });
    handed_ = false;
  }

 private:
  void serve() {
    std::unique_lock lock(mutex_);
    for (;;) {
      wake_.wait(lock, [this] { return busy_ || stopping_; });
      if (!busy_) {
        return;  // stopping
      }
      auto job = std::move(job_);
      lock.unlock();
      job();
      lock.lock();
      busy_ = false;
      done_.notify_all();
    }
  }

  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::function<void()> job_;
  bool busy_ = false;      // a job is handed and not finished (under mutex_)
  bool stopping_ = false;  // under mutex_
  bool handed_ = false;    // the owner's view: a job was handed and not joined
};

// The freeze thread's helpers, one per filesystem of the largest wave seen
// so far but one, parked between holds. Only the freeze thread touches it.
using Crew = std::vector<std::unique_ptr<ParkedThread>>;

// Runs `action` on every slot in `batch` at once, one thread each (the
// freezes of independent filesystems each wait for their own writeback),
// and waits for all of them. Only the freeze thread calls this.
void for_each_in_parallel(const std::vector<Slot*>& batch, Crew& crew,
                          const std::function<void(Slot&)>& action) {
  std::vector<ParkedThread*> started;
  started.reserve(batch.size());
  for (std::size_t i = 0; i + 1 < batch.size(); ++i) {
    Slot* slot = batch[i];
    try {
      if (crew.size() <= i) {
        crew.push_back(std::make_unique<ParkedThread>());
      }
      crew[i]->start([&action, slot] { action(*slot); });
      started.push_back(crew[i].get());
    } catch (const std::system_error&) {
      action(*slot);  // out of threads: do this one here rather than fail the freeze
    }
  }
  // The last one on this thread, which would otherwise only wait: one
  // thread fewer to wake inside the hold window.
  action(*batch.back());
  for (auto* helper : started) {
    helper->join();
  }
}

// FIFREEZE on one slot; thaws it straight away if the hold was released
// while the call was in flight.
void freeze_slot(Hold& hold, Slot& slot) {
  if (hold.release.load()) {
    return;  // released before this wave started: stays pending
  }
  slot.freeze_started_ns.store(monotonic_ns());
  slot.state.store(slot_freezing);
  auto result = freeze_filesystem(slot.fd);
  slot.error_number.store(result.error_number());
  switch (result.outcome()) {
    case FreezeOutcome::ok:
      slot.state.store(slot_frozen);
      // Paired with release_hold(): it sets `release` and then looks at
      // the states; this stores the state and then looks at `release`.
      // With sequentially consistent atomics one of the two sees the other.
      if (hold.release.load()) {
        claim_and_thaw(slot);
      }
      break;
    case FreezeOutcome::not_supported:
      slot.state.store(slot_unsupported);
      break;
    case FreezeOutcome::already_frozen:
      slot.state.store(hold.ignore_frozen ? slot_busy_ignored : slot_busy);
      break;
    default:
      slot.state.store(slot_failed);
      break;
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
    install_fatal_signal_handlers();
    // The agent may already be gone (it died between fork and here).
    if (::getppid() != config_.parent_pid) {
      return 0;
    }
    // The freeze thread waits parked from the start, outside any hold
    // window. Out of threads: the first FREEZE tries again.
    try {
      operation_.park();
    } catch (const std::system_error&) {
    }
    int size = static_cast<int>(max_message_size);
    ::setsockopt(config_.socket_fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    ::setsockopt(config_.socket_fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    send(Message{"READY", {std::to_string(protocol_version), std::to_string(::getpid())}, {}});

    std::string buffer;
    bool socket_open = true;
    for (;;) {
      // A freeze still in flight keeps the holder alive: its thread thaws
      // what it froze when the call returns (see the note at the top).
      if (terminating_ && !operation_.joinable()) {
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
      // Whatever woke the main thread, a FROZEN the freeze thread already
      // sent comes first: PONG, THAW and the deadlines must see the hold frozen.
      if (state_ == State::freezing && hold_->reply_claimed.load()) {
        settle_frozen();
      }
      if ((fds[1].revents & POLLIN) != 0) {
        on_signal();
      }
      if ((fds[3].revents & POLLIN) != 0) {
        std::uint64_t count = 0;
        [[maybe_unused]] auto n = ::read(done_fd_, &count, sizeof count);
        on_operation_done();
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
    return 0;
  }

 private:
  // idle: no hold. freezing: the freeze thread runs, a FREEZE reply is owed.
  // frozen: every filesystem held. draining: released, but a FIFREEZE is
  // still in flight (stuck in the kernel); new freezes are refused.
  enum class State { idle, freezing, frozen, draining };

  void send(const Message& message, int flags = 0) {
    auto text = encode(message);
    // MSG_NOSIGNAL: the agent being gone is handled by the read side.
    while (::send(config_.socket_fd, text.data(), text.size(), MSG_NOSIGNAL | flags) < 0 &&
           errno == EINTR) {
    }
  }

  Message with_results(Message message) const {
    if (hold_) {
      add_results(*hold_, message);
    }
    return message;
  }

  static void add_results(const Hold& hold, Message& message) {
    for (const auto& slot : hold.slots) {
      message.rows.push_back(to_row(MountResult{reported_state(slot.state.load()),
                                                slot.request.mount_id, slot.error_number.load(),
                                                slot.request.path}));
    }
  }

  // The freeze thread answered FROZEN itself (see on_freeze): from here the
  // hold is frozen. The thread has only its done signal left to write, so
  // the join is short; it must come before anything else is sent, so that
  // FROZEN is on the socket ahead of whatever the main thread answers next.
  void settle_frozen() {
    if (operation_.joinable()) {
      operation_.join();
    }
    state_ = State::frozen;
    arm_timer(hold_deadline_ns_);
  }

  // Before the main thread ends a hold that is still freezing: true when it
  // now owns the answer to FREEZE (the freeze thread will not send FROZEN),
  // false when the freeze thread had already answered FROZEN, in which case
  // the hold is settled as frozen and the caller takes the frozen path.
  bool take_freeze_reply() {
    if (!hold_->reply_claimed.exchange(true)) {
      return true;
    }
    settle_frozen();
    return false;
  }

  void send_event(const std::string& reason) {
    // Best effort and never blocking: nobody may be reading any more.
    send(with_results(Message{"AUTO-THAW", {reason}, {}}), MSG_DONTWAIT);
  }

  void begin_terminate(const std::string& reason) {
    if (terminating_) {
      return;
    }
    terminating_ = true;
    if (state_ == State::freezing) {
      (void)take_freeze_reply();
    }
    if (state_ == State::freezing) {
      release_now("the freeze holder is terminating: " + reason);
      send_event(hold_detail_);
    } else if (state_ == State::frozen) {
      release_hold(*hold_);
      note_broken("the freeze holder is terminating (" + reason + "); it thawed every filesystem");
      note_thawed_by_others();
      send_event(hold_detail_);
      finish_hold();
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
      static constexpr std::array<std::string_view, 4> names{"idle", "freezing", "frozen",
                                                             "draining"};
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
    if (state_ == State::draining) {
      send(Message{"ERROR",
                   {"a freeze of the previous hold is still inside the kernel; this holder takes "
                    "no new freeze (start a new one)"},
                   {}});
      return;
    }
    if (state_ != State::idle) {
      send(Message{"ERROR", {"a freeze is already in progress or held"}, {}});
      return;
    }
    auto request = freeze_request_from(message);
    if (!request) {
      send(Message{"ERROR", {"malformed FREEZE request"}, {}});
      return;
    }
    std::stable_sort(request->mounts.begin(), request->mounts.end(),
                     [](const auto& a, const auto& b) { return a.wave < b.wave; });
    auto hold = std::make_shared<Hold>(request->mounts.size());
    hold->ignore_frozen = request->ignore_frozen;
    for (std::size_t i = 0; i < request->mounts.size(); ++i) {
      hold->slots[i].request = std::move(request->mounts[i]);
    }
    hold_ = hold;
    hold_deadline_ns_ = request->deadline_ns;
    freeze_deadline_ns_ = request->freeze_deadline_ns;
    hold_broken_ = false;
    hold_detail_.clear();
    freeze_error_.clear();
    stuck_ = false;
    current_hold.store(hold.get());
    arm_timer(earliest(freeze_deadline_ns_, hold_deadline_ns_));
    state_ = State::freezing;
    // The freeze runs on its own thread so that signals, the deadlines and
    // a THAW keep being handled while FIFREEZE waits for writeback.
    operation_.start([this, hold] {
      freeze_all(*hold, crew_);
      // FROZEN goes out from here, the moment the last filesystem froze:
      // handing it to the main thread first would add a wake-up inside the
      // hold window. The main thread learns of it through reply_claimed.
      if (hold->error.empty() && !hold->reply_claimed.exchange(true)) {
        Message frozen{"FROZEN", {}, {}};
        add_results(*hold, frozen);
        send(frozen);
      }
      std::uint64_t one = 1;
      [[maybe_unused]] auto n = ::write(done_fd_, &one, sizeof one);
    });
  }

  void on_thaw() {
    if (state_ == State::freezing) {
      (void)take_freeze_reply();
    }
    if (state_ == State::freezing) {
      release_now("a thaw was requested while freezing");
      send(with_results(Message{"FAILED", {freeze_error_}, {}}));
    } else if (state_ == State::frozen) {
      release_hold(*hold_);
      note_thawed_by_others();
      finish_hold();
    }
    send(with_results(Message{"THAWED", {hold_broken_ ? "0" : "1", hold_detail_, stuck_ ? "1" : "0"},
                              {}}));
    if (state_ == State::idle) {
      hold_.reset();
      hold_broken_ = false;
      hold_detail_.clear();
    }
  }

  void on_deadline() {
    if (state_ == State::freezing) {
      (void)take_freeze_reply();
      if (state_ == State::frozen) {
        return;  // the freeze deadline fired after FROZEN was sent: the hold timer is armed now
      }
    }
    if (state_ == State::freezing) {
      const bool hold_over = hold_deadline_ns_ > 0 && monotonic_ns() >= hold_deadline_ns_;
      release_now(hold_over ? "the hold deadline passed while freezing"
                            : "the freeze did not finish by its deadline");
      send(with_results(Message{"FAILED", {freeze_error_}, {}}));
    } else if (state_ == State::frozen) {
      release_hold(*hold_);
      note_broken("the hold deadline passed; the freeze holder thawed every filesystem");
      note_thawed_by_others();
      send_event(hold_detail_);
      finish_hold();
    }
  }

  // The freeze thread finished: either the freeze is complete (or failed,
  // already rolled back), or a released hold's stuck call returned and its
  // thread thawed what it froze.
  void on_operation_done() {
    if (operation_.joinable()) {
      operation_.join();
    }
    if (state_ == State::draining) {
      finish_hold();
      return;
    }
    if (state_ != State::freezing) {
      return;
    }
    if (!take_freeze_reply()) {
      return;  // the freeze thread answered FROZEN; settled as frozen
    }
    freeze_error_ = hold_->error;
    if (!freeze_error_.empty()) {
      send(with_results(Message{"FAILED", {freeze_error_}, {}}));
      finish_hold();
      return;
    }
    state_ = State::frozen;
    arm_timer(hold_deadline_ns_);
    send(with_results(Message{"FROZEN", {}, {}}));
  }

  // Ends a hold that is still freezing, now: nothing more is frozen, what
  // is frozen is thawed (lowest first), a freeze stuck in the kernel is
  // named and thawed by its own thread when it returns.
  void release_now(const std::string& reason) {
    release_hold(*hold_);
    note_thawed_by_others();
    std::string stuck_text;
    const auto now = monotonic_ns();
    for (const auto& slot : hold_->slots) {
      if (slot.state.load() == slot_freezing) {
        stuck_ = true;
        stuck_text += std::string(stuck_text.empty() ? "" : "; ") + "the freeze of " +
                      slot.request.path + " had not returned after " +
                      seconds_text(now - slot.freeze_started_ns.load());
      }
    }
    if (freeze_error_.empty()) {
      freeze_error_ = "freeze cancelled: " + reason;
      if (!stuck_text.empty()) {
        freeze_error_ += "; " + stuck_text +
                         " (blocked inside the kernel, typically writing back into a filesystem "
                         "it is stored on that was frozen before it); every frozen filesystem was "
                         "thawed, lowest first, and a stuck one is thawed as soon as its freeze "
                         "returns";
      }
    }
    note_broken(freeze_error_);
    // The freeze thread is still running (it may be stuck): draining until
    // it reports done.
    state_ = State::draining;
    disarm_timer();
  }

  void note_thawed_by_others() {
    for (const auto& slot : hold_->slots) {
      if (slot.state.load() == slot_was_thawed) {
        note_broken(slot.request.path + " was thawed by someone else while held");
      }
    }
  }

  // Back to idle once nothing of the hold is in flight: the fds are closed
  // (after the signal handler stops looking at them).
  void finish_hold() {
    if (operation_.joinable()) {
      state_ = State::draining;
      return;
    }
    current_hold.store(nullptr);
    if (hold_) {
      for (auto& slot : hold_->slots) {
        if (slot.fd >= 0) {
          ::close(slot.fd);
          slot.fd = -1;
        }
      }
    }
    disarm_timer();
    state_ = State::idle;
    stuck_ = false;
  }

  void note_broken(std::string detail) {
    if (!hold_broken_) {
      hold_broken_ = true;
      hold_detail_ = std::move(detail);
    }
  }

  static std::int64_t earliest(std::int64_t a, std::int64_t b) {
    if (a <= 0) {
      return b;
    }
    if (b <= 0) {
      return a;
    }
    return std::min(a, b);
  }

  void arm_timer(std::int64_t deadline_ns) {
    if (deadline_ns <= 0) {
      disarm_timer();
      return;
    }
    itimerspec when{};
    when.it_value.tv_sec = deadline_ns / 1'000'000'000;
    when.it_value.tv_nsec = deadline_ns % 1'000'000'000;
    ::timerfd_settime(timer_fd_, TFD_TIMER_ABSTIME, &when, nullptr);
  }

  void disarm_timer() {
    itimerspec never{};
    ::timerfd_settime(timer_fd_, 0, &never, nullptr);
  }

  // On the freeze thread. Sets hold.error when the freeze failed, in which
  // case everything it froze has been thawed again.
  static void freeze_all(Hold& hold, Crew& crew) {
    std::string error;
    // Every mount point is opened before anything is frozen: resolving a
    // path through a filesystem that is already frozen can block.
    for (auto& slot : hold.slots) {
      int fd = open_mount_point(slot.request.path);
      if (fd < 0) {
        slot.error_number.store(-fd);
        slot.state.store(slot_failed);
        error = "cannot open " + slot.request.path + ": " + errno_text(-fd);
        break;
      }
      slot.fd = fd;
      auto actual = mount_id_of(fd);
      if (slot.request.mount_id != 0 && actual != 0 && actual != slot.request.mount_id) {
        slot.state.store(slot_failed);
        error = slot.request.path + " is no longer the mount that was selected (mount id " +
                std::to_string(actual) + ", expected " + std::to_string(slot.request.mount_id) +
                "); the mount table changed";
        break;
      }
    }
    std::set<int> waves;
    for (const auto& slot : hold.slots) {
      waves.insert(slot.request.wave);
    }
    for (int wave : waves) {
      if (!error.empty() || hold.release.load()) {
        break;
      }
      std::vector<Slot*> batch;
      for (auto& slot : hold.slots) {
        if (slot.request.wave == wave) {
          batch.push_back(&slot);
        }
      }
      for_each_in_parallel(batch, crew, [&hold](Slot& slot) { freeze_slot(hold, slot); });
      for (auto* slot : batch) {
        const int state = slot->state.load();
        if ((state == slot_busy || state == slot_failed) && error.empty()) {
          error = state == slot_busy
                      ? slot->request.path +
                            " is already frozen by someone else (set ignore_frozen to skip such "
                            "filesystems)"
                      : "cannot freeze " + slot->request.path + ": " +
                            errno_text(slot->error_number.load());
        }
      }
    }
    if (!error.empty()) {
      release_hold(hold);
    }
    hold.error = std::move(error);
  }

  HolderConfig config_;
  int signal_fd_ = -1;
  int timer_fd_ = -1;
  int done_fd_ = -1;
  State state_ = State::idle;
  std::shared_ptr<Hold> hold_;
  std::int64_t hold_deadline_ns_ = 0;
  std::int64_t freeze_deadline_ns_ = 0;
  // Declared before operation_: destroyed after it, so the freeze thread
  // that uses it is gone first.
  Crew crew_;
  ParkedThread operation_;  // the freeze thread
  std::string freeze_error_;
  bool stuck_ = false;  // a FIFREEZE of this hold was still in flight at its release
  bool hold_broken_ = false;
  std::string hold_detail_;
  bool terminating_ = false;
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
