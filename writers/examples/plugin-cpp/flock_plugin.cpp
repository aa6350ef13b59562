// `flock`: an example Quiesce writer plugin in C++, through the SDK.
//
// Applications that cooperate take a shared flock(2) on a lock file around
// each write. At freeze this writer takes the exclusive lock, which waits for
// writes in flight to finish and keeps new ones out until thaw. It shows the
// parts a real writer needs: options, a bounded wait that polls should_stop
// and the deadline, idempotent thaw/abort, identify and post_snapshot output.
//
// options: {"lock_file": "/run/myapp/quiesce.lock", "poll_ms": 10}

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "quiesce/plugin_sdk.hpp"

namespace {

namespace qp = quiesce::plugin;

class FlockWriter {
 public:
  explicit FlockWriter(const qp::InitInput& init) : log_(init.log) {
    const qp::Json options = init.options();
    if (!options.is_object() || !options.contains("lock_file") ||
        !options["lock_file"].is_string()) {
      throw qp::Error(qp::Code::non_retryable, "options.lock_file: required, a string");
    }
    lock_file_ = options["lock_file"].get<std::string>();
    if (lock_file_.empty() || lock_file_.front() != '/') {
      throw qp::Error(qp::Code::non_retryable, "options.lock_file: must be an absolute path");
    }
    if (options.contains("poll_ms")) {
      if (!options["poll_ms"].is_number_unsigned() || options["poll_ms"].get<int>() < 1) {
        throw qp::Error(qp::Code::non_retryable, "options.poll_ms: expected a positive integer");
      }
      poll_ = std::chrono::milliseconds(options["poll_ms"].get<int>());
    }
    for (const auto& item : options.items()) {
      if (item.key() != "lock_file" && item.key() != "poll_ms") {
        throw qp::Error(qp::Code::non_retryable, "options." + item.key() + ": unknown option");
      }
    }
  }

  ~FlockWriter() { release(); }
  FlockWriter(const FlockWriter&) = delete;
  FlockWriter& operator=(const FlockWriter&) = delete;

  qp::Result identify(const qp::Context&, qp::Identity& identity) {
    identity.components.push_back({{"kind", "lock"}, {"name", "flock"}, {"path", lock_file_}});
    identity.metadata["poll_ms"] = poll_.count();
    return qp::Result::ok();
  }

  qp::Result prepare(const qp::Context&) {
    // Open early so a missing directory fails the session before the hold.
    return open_lock_file();
  }

  qp::Result freeze(const qp::Context& ctx) {
    if (auto opened = open_lock_file(); !opened.is_ok()) {
      return opened;
    }
    // flock has no timeout: try without blocking and poll, so the host's
    // deadline and stop request are honoured.
    while (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      if (errno != EWOULDBLOCK && errno != EINTR) {
        return qp::Result::non_retryable("flock " + lock_file_ + ": " + std::strerror(errno));
      }
      if (ctx.should_stop() || ctx.remaining().count() == 0) {
        return qp::Result::timeout("writes in flight still hold " + lock_file_);
      }
      std::this_thread::sleep_for(std::min(poll_, ctx.remaining()));
    }
    locked_ = true;
    log_.info("holding " + lock_file_ + " for session " + std::string(ctx.session_id()));
    return qp::Result::ok();
  }

  qp::Result thaw(const qp::Context&, qp::HoldReport&) {
    release();  // idempotent: nothing held, nothing to do
    return qp::Result::ok();
  }

  qp::Result abort(const qp::Context&) {
    release();
    return qp::Result::ok();
  }

  qp::Result post_snapshot(const qp::Context&, std::string_view snapshot_id, qp::Json& artifacts) {
    artifacts["lock_file"] = lock_file_;
    artifacts["snapshot_id"] = std::string(snapshot_id);
    return qp::Result::ok();
  }

 private:
  qp::Result open_lock_file() {
    if (fd_ >= 0) {
      return qp::Result::ok();
    }
    fd_ = ::open(lock_file_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) {
      return qp::Result::non_retryable("open " + lock_file_ + ": " + std::strerror(errno));
    }
    return qp::Result::ok();
  }

  void release() {
    if (fd_ >= 0) {
      if (locked_) {
        log_.info("released " + lock_file_);
      }
      ::close(fd_);  // closing drops the lock
      fd_ = -1;
    }
    locked_ = false;
  }

  qp::Log log_;
  std::string lock_file_;
  std::chrono::milliseconds poll_{10};
  int fd_ = -1;
  bool locked_ = false;
};

}  // namespace

QUIESCE_PLUGIN(FlockWriter, "flock", quiesce::plugin::Level::application,
               "holds an exclusive flock on a lock file from freeze to thaw")
