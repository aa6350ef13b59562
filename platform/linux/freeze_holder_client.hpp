#pragma once
// The agent's end of the freeze holder: starts quiesce-freeze-holder once,
// sends it requests and waits for replies without ever blocking past a
// deadline or a stop request (see freeze_holder_protocol.hpp).

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <stop_token>
#include <string>
#include <vector>

#include "platform/linux/freeze_holder_protocol.hpp"

namespace quiesce::platform::holder {

enum class ReplyStatus {
  ok,           // `message` is the reply
  timeout,      // the deadline passed first; the reply will be discarded when it comes
  stopped,      // the stop token fired first; likewise
  holder_gone,  // the holder exited (or was killed); see HolderClient::exit_description()
  protocol,     // the holder sent something that is not a message
};

struct [[nodiscard]] Reply {
  ReplyStatus status = ReplyStatus::protocol;
  Message message;
  std::string error;
  [[nodiscard]] bool ok() const { return status == ReplyStatus::ok; }
};

class HolderClient {
 public:
  // Starts the holder at `holder_path` and waits (up to `startup_timeout`)
  // for its READY. Returns nullptr with `error` set when it cannot.
  [[nodiscard]] static std::unique_ptr<HolderClient> start(
      const std::string& holder_path, std::string& error,
      std::chrono::milliseconds startup_timeout = std::chrono::seconds(5));

  // Closes the connection, which makes the holder thaw anything it still
  // holds and exit; waits a bounded time for it to do so.
  ~HolderClient();
  HolderClient(const HolderClient&) = delete;
  HolderClient& operator=(const HolderClient&) = delete;

  // Lets go of a holder that still has a FIFREEZE stuck in the kernel (its
  // THAWED said stuck=1): closes the connection without waiting, so the
  // holder thaws what it has, finishes the stuck call's thaw and exits on
  // its own time. Call reap() later to collect it; the destructor of a
  // retired client does not wait.
  void retire();
  // True once the holder process has been collected (never blocks).
  [[nodiscard]] bool reap();

  [[nodiscard]] pid_t pid() const { return pid_; }
  // The connection, for a watcher that only waits for it to hang up (poll
  // with no events); never read from it or write to it.
  [[nodiscard]] int connection_fd() const { return socket_fd_; }
  // False once the holder has exited or the connection broke.
  [[nodiscard]] bool alive();
  [[nodiscard]] const std::string& exit_description() const { return exit_description_; }

  // Sends `request` and waits for its reply until `deadline` or `stop`.
  // AUTO-THAW events that arrive meanwhile are kept for take_events().
  [[nodiscard]] Reply request(const Message& request, std::chrono::steady_clock::time_point deadline,
                              const std::stop_token& stop);
  // Reads whatever events have arrived, without waiting.
  void poll_events();
  [[nodiscard]] std::vector<Message> take_events();

 private:
  HolderClient(pid_t pid, int socket_fd) : pid_(pid), socket_fd_(socket_fd) {}
  // One message, waiting until `deadline`/`stop`; `ok` with an empty verb never happens.
  [[nodiscard]] Reply receive(std::chrono::steady_clock::time_point deadline,
                              const std::stop_token& stop);
  void note_exit(bool wait);

  pid_t pid_ = -1;
  int socket_fd_ = -1;
  bool connected_ = true;
  bool reaped_ = false;
  bool retired_ = false;
  std::string exit_description_;
  // Replies still owed for requests that timed out; skipped when they come.
  int stale_replies_ = 0;
  std::vector<Message> events_;
};

}  // namespace quiesce::platform::holder
