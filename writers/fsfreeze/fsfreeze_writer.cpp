#include "writers/fsfreeze/fsfreeze_writer.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>

#include "platform/linux/freeze_holder_client.hpp"
#include "platform/linux/fsfreeze.hpp"
#include "platform/linux/mount_table_watch.hpp"
#include "platform/linux/mountinfo.hpp"
#include "quiesce/json_fields.hpp"
#include "writers/fsfreeze/freeze_record.hpp"
#include "writers/fsfreeze/mount_selection.hpp"

namespace quiesce::writers {

namespace {

namespace fs = std::filesystem;
using platform::holder::HolderClient;
using platform::holder::Message;
using platform::holder::MountResult;
using platform::holder::MountState;
using platform::holder::ReplyStatus;

constexpr const char* holder_name = "quiesce-freeze-holder";
// When the coordinator gives no hold deadline, the holder still never
// holds longer than this.
constexpr auto fallback_hold = std::chrono::minutes(10);
// How long a THAW may take the holder to answer (it thaws with one ioctl
// per filesystem and answers straight away) before the writer thaws from its
// record itself.
constexpr auto holder_thaw_answer = std::chrono::seconds(2);

struct FsfreezeOptions {
  fsfreeze::SelectionOptions selection;
  bool ignore_frozen = false;
  std::string holder_path;
  bool holder_path_explicit = false;
};

std::string default_holder_path() {
  std::error_code ec;
  auto self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) {
    return std::string("/usr/sbin/") + holder_name;
  }
  return (self.parent_path() / holder_name).string();
}

std::string normalise_mount_path(const std::string& path) {
  auto normal = fs::path(path).lexically_normal().string();
  while (normal.size() > 1 && normal.back() == '/') {
    normal.pop_back();
  }
  return normal;
}

// `checked`: the selection made to check the options, for the writer's
// first identify to reuse.
FsfreezeOptions parse_options(const nlohmann::json& json, const platform::MountTable& table,
                              fsfreeze::Selection& checked) {
  FsfreezeOptions options;
  JsonFields fields(json, "options");
  const bool has_mounts = fields.has("mounts");
  options.selection.all = fields.boolean("all", false);
  auto mounts = fields.strings("mounts", std::vector<std::string>{});
  if (has_mounts && options.selection.all) {
    throw FieldError(fields.path_of("mounts"), "give either 'mounts' or 'all': true, not both");
  }
  if (!options.selection.all && mounts.empty()) {
    throw FieldError(fields.path_of("mounts"),
                     "list the mount points to freeze, or set 'all': true");
  }
  for (std::size_t i = 0; i < mounts.size(); ++i) {
    const auto item_path = fields.path_of("mounts") + "[" + std::to_string(i) + "]";
    const auto& mount = mounts[i];
    if (mount.empty() || mount.front() != '/') {
      throw FieldError(item_path, "'" + mount + "' is not an absolute path");
    }
    std::error_code ec;
    auto canonical = fs::canonical(mount, ec);
    if (ec) {
      throw FieldError(item_path, "'" + mount + "' does not exist (" + ec.message() + ")");
    }
    options.selection.mounts.push_back(normalise_mount_path(canonical.string()));
  }
  options.selection.exclude = fields.strings("exclude", std::vector<std::string>{});
  options.selection.exclude_fstypes = fields.strings("exclude_fstypes", std::vector<std::string>{});
  if (!options.selection.all) {
    for (const char* key : {"exclude", "exclude_fstypes"}) {
      if (fields.has(key)) {
        throw FieldError(fields.path_of(key), "only meaningful with 'all': true");
      }
    }
  }
  options.ignore_frozen = fields.boolean("ignore_frozen", false);
  if (auto holder = fields.optional_string("holder_path")) {
    if (::access(holder->c_str(), X_OK) != 0) {
      throw FieldError(fields.path_of("holder_path"), "'" + *holder + "' is not an executable");
    }
    options.holder_path = *holder;
    options.holder_path_explicit = true;
  } else {
    options.holder_path = default_holder_path();
  }
  fields.reject_unknown();

  // Listed mounts must be mount points of something freezable now; a typo
  // found at start beats a freeze that fails at 3 a.m.
  const fsfreeze::StorageProbe probe;
  auto selection = fsfreeze::select_filesystems(table, options.selection, &probe);
  if (!selection.errors.empty()) {
    const auto& [index, message] = selection.errors.front();
    throw FieldError(fields.path_of("mounts") + "[" + std::to_string(index) + "]", message);
  }
  checked = std::move(selection);
  return options;
}

std::int64_t steady_ns(Clock::time_point when) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(when.time_since_epoch()).count();
}

bool invert_order_requested() {
  const char* value = std::getenv("QUIESCE_TEST_INVERT_FREEZE_ORDER");
  return value != nullptr && std::string_view(value) == "1";
}

std::string utc_now() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&now, &tm);
  char buffer[32];
  std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buffer;
}

std::string join(const std::vector<std::string>& items) {
  std::string text;
  for (const auto& item : items) {
    text += (text.empty() ? "" : ", ") + item;
  }
  return text;
}

std::string errno_suffix(int error_number) {
  if (error_number == 0) {
    return "";
  }
  const char* name = ::strerrorname_np(error_number);
  return std::string(" (") + (name != nullptr ? name : std::to_string(error_number)) + ")";
}

// Watches the freeze holder's connection for as long as that holder
// lives, and acts while a hold is armed. A holder that dies (SIGKILL, the
// OOM killer) cannot thaw anything, and nothing would until this writer's
// thaw at the end of the window; the watch thaws from the record the
// moment the connection hangs up. It is started with the holder (outside
// any hold window) and only armed and disarmed around a hold, so that a
// freeze and a thaw neither start nor join a thread.
class HolderWatch {
 public:
  explicit HolderWatch(int connection_fd) : wake_fd_(::eventfd(0, EFD_CLOEXEC)) {
    thread_ = std::thread([this, connection_fd] {
      std::array<pollfd, 2> fds{{{connection_fd, 0, 0}, {wake_fd_, POLLIN, 0}}};
      while (::poll(fds.data(), fds.size(), -1) < 0 && errno == EINTR) {
      }
      if ((fds[0].revents & (POLLHUP | POLLERR)) == 0) {
        return;  // woken: the holder is being retired or replaced
      }
      // The connection stays hung up: nothing more to watch for.
      std::lock_guard lock(mutex_);
      gone_ = true;
      thaw_if_armed();
    });
  }
  ~HolderWatch() {
    std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
    thread_.join();
    ::close(wake_fd_);
  }
  HolderWatch(const HolderWatch&) = delete;
  HolderWatch& operator=(const HolderWatch&) = delete;

  // From FROZEN on: the mounts to thaw if the holder dies. A holder that is
  // already gone is acted on here and now.
  void arm(std::vector<fsfreeze::RecordedMount> mounts) {
    std::lock_guard lock(mutex_);
    mounts_ = std::move(mounts);
    armed_ = true;
    lost_.clear();
    if (gone_) {
      thaw_if_armed();
    }
  }

  // The hold ends: what happened, once the holder died during it; "" otherwise.
  [[nodiscard]] std::string disarm() {
    std::lock_guard lock(mutex_);
    armed_ = false;
    mounts_.clear();
    return std::exchange(lost_, {});
  }

 private:
  void thaw_if_armed() {
    if (!armed_) {
      return;
    }
    armed_ = false;
    auto outcome = fsfreeze::thaw_recorded(mounts_);
    lost_ = "the freeze holder died while holding; thawed " +
            std::to_string(outcome.thawed.size()) + " filesystem(s) from the record at once";
    if (!outcome.failed.empty()) {
      lost_ += " (could not thaw: " + join(outcome.failed) + ")";
    }
  }

  int wake_fd_;
  std::thread thread_;
  std::mutex mutex_;
  bool gone_ = false;   // the connection hung up
  bool armed_ = false;  // a hold is on: thaw mounts_ if the holder dies
  std::vector<fsfreeze::RecordedMount> mounts_;
  std::string lost_;
};

class FsfreezeWriter final : public Writer {
 public:
  // `checked` and `checked_watch`: the selection the factory made to check
  // the options, and a watch on the mount table started before it read it.
  FsfreezeWriter(WriterSpec spec, FsfreezeOptions options, WriterEnvironment env,
                 fsfreeze::Selection checked,
                 std::unique_ptr<platform::MountTableWatch> checked_watch)
      : spec_(std::move(spec)),
        options_(std::move(options)),
        env_(std::move(env)),
        record_path_(fsfreeze::record_path(env_.run_dir, spec_.name)),
        checked_(std::move(checked)),
        checked_watch_(std::move(checked_watch)) {
    if (::access(options_.holder_path.c_str(), X_OK) != 0) {
      log().warn("fsfreeze writer '{}': freeze holder {} not found; freezing will fail",
                 spec_.name, options_.holder_path);
    }
    if (invert_order_for_tests_) {
      log().warn("fsfreeze writer '{}': QUIESCE_TEST_INVERT_FREEZE_ORDER=1: freezing lower "
                 "filesystems first (a test switch that can deadlock a freeze)",
                 spec_.name);
    }
  }

  ~FsfreezeWriter() override {
    if (frozen_) {
      PhaseContext ctx;
      ctx.deadline = Clock::now() + std::chrono::seconds(10);
      HoldReport ignored;
      if (auto status = release(ctx, ignored); !status.is_ok()) {
        log().error("fsfreeze writer '{}': thaw at shutdown failed: {}", spec_.name,
                    status.error().message);
      }
    }
  }
  FsfreezeWriter(const FsfreezeWriter&) = delete;
  FsfreezeWriter& operator=(const FsfreezeWriter&) = delete;

  Status identify(const PhaseContext& ctx, Identity& out) override {
    fsfreeze::Selection selection;
    // The agent's first identify comes a few ms after the factory selected
    // the same filesystems to check the options: that selection is reused
    // when the mount table has not changed since (one poll(2)), which takes
    // a walk of mountinfo and /sys (~1 ms) out of the agent's start.
    const bool reuse_checked = checked_watch_ && !ctx.mountpoints && !checked_watch_->changed();
    if (reuse_checked) {
      selection = std::move(checked_);
    }
    checked_watch_.reset();  // once only: later identifies read the table
    if (!reuse_checked) {
      if (auto status = select(selection, ctx.mountpoints); !status.is_ok()) {
        return status;
      }
    }
    for (const auto& filesystem : selection.filesystems) {
      out.components.push_back({{"kind", "filesystem"},
                                {"name", filesystem.mount.mount_point},
                                {"path", filesystem.mount.mount_point},
                                {"mount", filesystem.mount.mount_point},
                                {"fstype", filesystem.mount.fstype},
                                {"source", filesystem.mount.source},
                                {"device", filesystem.mount.device.to_string()},
                                {"also_mounted_at", filesystem.other_mount_points},
                                {"wave", filesystem.wave},
                                {"wave_reason", filesystem.wave_reason},
                                {"stored_on", filesystem.stored_on},
                                {"notes", filesystem.notes}});
    }
    nlohmann::json skipped = nlohmann::json::array();
    for (const auto& mount : selection.skipped) {
      skipped.push_back(
          {{"mount", mount.mount_point}, {"fstype", mount.fstype}, {"reason", mount.reason}});
    }
    out.metadata["skipped"] = std::move(skipped);
    out.metadata["mode"] = options_.selection.all ? "all" : "mounts";
    out.metadata["ignore_frozen"] = options_.ignore_frozen;
    out.metadata["holder"] = options_.holder_path;
    return Status::ok();
  }

  Status prepare(const PhaseContext& ctx) override {
    // Watching from before the table is read: any mount or unmount after
    // this point makes freeze select again instead of reusing this one.
    prepared_watch_.start();
    prepared_.reset();
    fsfreeze::Selection selection;
    if (auto status = select(selection, ctx.mountpoints); !status.is_ok()) {
      prepared_watch_.stop();
      return status;
    }
    prepared_ = PreparedSelection{selection, ctx.mountpoints};
    // Starting the holder now keeps fork/exec out of the hold window.
    if (auto status = ensure_holder(); !status.is_ok()) {
      return status;
    }
    return sync_all(selection, ctx);
  }

  Status freeze(const PhaseContext& ctx) override {
    if (frozen_) {
      return Status::ok();  // already holding; a repeated freeze changes nothing
    }
    hold_broken_.clear();
    auto hold_deadline = ctx.hold_deadline;
    if (hold_deadline == Clock::time_point{} || hold_deadline == Clock::time_point::max()) {
      hold_deadline = Clock::now() + fallback_hold;
    }
    if (hold_deadline <= Clock::now()) {
      return Status::timeout("the hold deadline has already passed; not freezing");
    }
    fsfreeze::Selection selection;
    // Inside the hold window: prepare's selection (mountinfo parsed, the
    // storage graph walked through /sys, ~100 system calls) is reused when
    // the mount table has not changed since, which one poll(2) tells. The
    // holder still checks every mount id before it freezes.
    if (prepared_ && prepared_->narrow_to == ctx.mountpoints && !prepared_watch_.changed()) {
      selection = std::move(prepared_->selection);
    } else if (auto status = select(selection, ctx.mountpoints); !status.is_ok()) {
      prepared_.reset();
      return status;
    }
    prepared_.reset();
    prepared_watch_.stop();
    if (selection.filesystems.empty()) {
      log().info("fsfreeze writer '{}': nothing to freeze", spec_.name);
      return Status::ok();
    }
    if (auto status = ensure_holder(); !status.is_ok()) {
      return status;
    }

    platform::holder::FreezeRequest request;
    request.deadline_ns = steady_ns(hold_deadline);
    // The holder gives up on the freeze a little before this call's own
    // deadline, so that its answer (which filesystem did not freeze in
    // time, and why) still reaches the session.
    if (ctx.deadline != Clock::time_point{} && ctx.deadline != Clock::time_point::max()) {
      auto margin = std::min<Clock::duration>(std::chrono::milliseconds(250),
                                              (ctx.deadline - Clock::now()) / 10);
      request.freeze_deadline_ns = steady_ns(ctx.deadline - margin);
    }
    request.ignore_frozen = options_.ignore_frozen;
    fsfreeze::FreezeRecord record{spec_.name, ctx.session_id, ::getpid(), holder_->pid(),
                                  utc_now(), {}};
    const int last_wave = selection.filesystems.back().wave;
    for (const auto& filesystem : selection.filesystems) {
      const int wave = invert_order_for_tests_ ? last_wave - filesystem.wave : filesystem.wave;
      request.mounts.push_back({wave, filesystem.mount.mount_id, filesystem.mount.mount_point});
      record.mounts.push_back({filesystem.mount.mount_point, filesystem.mount.device.to_string(),
                               filesystem.mount.mount_id, filesystem.mount.fstype, wave});
    }
    // The record goes down before the first FIFREEZE, so that nothing can be
    // frozen without a trace a restarted agent can act on.
    if (auto error = fsfreeze::write_record(record_path_, record); !error.empty()) {
      return Status::non_retryable("cannot write the freeze record: " + error);
    }
    recorded_ = record.mounts;
    record_kept_for_holder_ = 0;  // the record is this hold's now
    frozen_ = true;

    const auto started = Clock::now();
    auto reply = holder_->request(to_message(request), ctx.deadline, ctx.stop);
    if (reply.status == ReplyStatus::timeout || reply.status == ReplyStatus::stopped) {
      // Still freezing in the holder; abort/thaw (which run next) thaw it.
      return Status::timeout("freeze did not finish in time (" + reply.error +
                             "); it is rolled back on abort");
    }
    if (!reply.ok()) {
      auto status = Status::non_retryable("freeze holder failed during freeze: " + reply.error);
      HoldReport ignored;
      [[maybe_unused]] auto released = release(ctx, ignored);
      return status;
    }
    auto results = mount_results_from(reply.message);
    if (reply.message.verb == "FAILED") {
      const bool stuck = results && std::any_of(results->begin(), results->end(), [](const auto& r) {
                           return r.state == MountState::stuck;
                         });
      if (stuck) {
        retire_holder();
      }
      finish_release(stuck);
      bool busy = results && std::any_of(results->begin(), results->end(), [](const auto& r) {
                    return r.state == MountState::busy;
                  });
      auto message = reply.message.args.empty() ? std::string("freeze failed")
                                                : reply.message.args.front();
      log().warn("fsfreeze writer '{}': {}", spec_.name, message);
      return busy ? Status::retryable(message) : Status::non_retryable(message);
    }
    if (reply.message.verb != "FROZEN" || !results) {
      HoldReport ignored;
      [[maybe_unused]] auto released = release(ctx, ignored);
      return Status::non_retryable("unexpected answer from the freeze holder: " +
                                   reply.message.verb);
    }
    std::vector<std::string> frozen;
    for (const auto& result : *results) {
      if (result.state == MountState::frozen) {
        frozen.push_back(result.path);
      } else if (result.state == MountState::unsupported) {
        log().warn("fsfreeze writer '{}': {} does not support freezing{}; skipped", spec_.name,
                   result.path, errno_suffix(result.error_number));
      } else if (result.state == MountState::busy_ignored) {
        log().warn("fsfreeze writer '{}': {} is already frozen by someone else; left alone "
                   "(ignore_frozen)",
                   spec_.name, result.path);
      }
    }
    last_frozen_ = frozen;
    watch_->arm(recorded_);
    log().info("fsfreeze writer '{}': froze {} filesystem(s) in {} ms: {}", spec_.name,
               frozen.size(),
               std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count(),
               join(frozen));
    return Status::ok();
  }

  Status thaw(const PhaseContext& ctx, HoldReport& hold) override {
    if (!frozen_) {
      if (!hold_broken_.empty()) {
        hold.continuous = false;
        hold.detail = hold_broken_;
      }
      return Status::ok();
    }
    return release(ctx, hold);
  }

  Status post_snapshot(const PhaseContext&, const SnapshotInfo&,
                       nlohmann::json& artifacts) override {
    artifacts["frozen"] = last_frozen_;
    return Status::ok();
  }

  Status abort(const PhaseContext& ctx) override {
    if (!frozen_) {
      return Status::ok();
    }
    HoldReport ignored;
    return release(ctx, ignored);
  }

  Status post_restore(const PhaseContext&, const RestoreInfo&) override {
    // A snapshot of a frozen filesystem is clean: nothing to replay.
    return Status::ok();
  }

 private:
  spdlog::logger& log() { return *env_.logger; }

  // `narrow_to`: the session's mount points (guest-fsfreeze-freeze-list);
  // the selection keeps only the filesystems mounted there, and one that is
  // not among what this writer would freeze fails the call, so the session
  // fails at identify, before anything freezes.
  Status select(fsfreeze::Selection& selection,
                const std::optional<std::vector<std::string>>& narrow_to) {
    auto table = platform::read_mountinfo();
    if (!table.table) {
      return Status::non_retryable(table.error);
    }
    selection = fsfreeze::select_filesystems(*table.table, options_.selection, &probe_);
    if (!selection.errors.empty()) {
      std::vector<std::string> messages;
      for (const auto& [index, message] : selection.errors) {
        messages.push_back(message);
      }
      return Status::non_retryable("the mounts to freeze changed since the agent started: " +
                                   join(messages));
    }
    if (narrow_to) {
      return narrow(selection, *narrow_to);
    }
    return Status::ok();
  }

  static Status narrow(fsfreeze::Selection& selection, const std::vector<std::string>& wanted) {
    std::vector<bool> keep(selection.filesystems.size(), false);
    for (const auto& path : wanted) {
      std::error_code ec;
      auto canonical = fs::canonical(path, ec);
      const auto normal = normalise_mount_path(ec ? path : canonical.string());
      bool found = false;
      for (std::size_t i = 0; i < selection.filesystems.size(); ++i) {
        const auto& filesystem = selection.filesystems[i];
        const auto& others = filesystem.other_mount_points;
        if (filesystem.mount.mount_point == normal ||
            std::find(others.begin(), others.end(), normal) != others.end()) {
          keep[i] = true;
          found = true;
        }
      }
      if (!found) {
        std::vector<std::string> freezable;
        for (const auto& filesystem : selection.filesystems) {
          freezable.push_back(filesystem.mount.mount_point);
        }
        return Status::non_retryable(
            "mount point '" + path + "' is not among the filesystems this writer freezes (" +
            (freezable.empty() ? std::string("none") : join(freezable)) + ")");
      }
    }
    std::vector<fsfreeze::SelectedFilesystem> kept;
    for (std::size_t i = 0; i < selection.filesystems.size(); ++i) {
      if (keep[i]) {
        kept.push_back(std::move(selection.filesystems[i]));
      }
    }
    selection.filesystems = std::move(kept);
    return Status::ok();
  }

  // A holder with a FIFREEZE stuck in the kernel refuses new freezes until
  // the call returns (and its thread thaws what it froze): let it finish on
  // its own and start the next session with a fresh one.
  void retire_holder() {
    if (!holder_) {
      return;
    }
    log().warn("fsfreeze writer '{}': freeze holder (pid {}) still has a freeze inside the "
               "kernel; it thaws that filesystem when the call returns, the next session uses a "
               "new holder",
               spec_.name, holder_->pid());
    watch_.reset();  // before the connection it polls is closed
    holder_->retire();
    retired_.push_back(std::move(holder_));
  }

  Status ensure_holder() {
    reap_retired_holders();
    if (holder_ && holder_->alive()) {
      if (!watch_) {
        watch_ = std::make_unique<HolderWatch>(holder_->connection_fd());
      }
      return Status::ok();
    }
    watch_.reset();  // before the connection it polls is closed
    if (holder_) {
      log().warn("fsfreeze writer '{}': {}; starting a new one", spec_.name,
                 holder_->exit_description());
      holder_.reset();
    }
    std::string error;
    holder_ = HolderClient::start(options_.holder_path, error);
    if (!holder_) {
      return Status::non_retryable(error);
    }
    watch_ = std::make_unique<HolderWatch>(holder_->connection_fd());
    return Status::ok();
  }

  // syncfs on every selected filesystem at once, so the freeze inside the
  // hold window has little left to flush. Threads are detached if the call
  // is stopped: syncfs cannot be interrupted, and each one only owns copies.
  Status sync_all(const fsfreeze::Selection& selection, const PhaseContext& ctx) {
    struct Shared {
      std::mutex mutex;
      std::condition_variable done;
      std::size_t remaining = 0;
      std::vector<std::string> failures;
    };
    auto shared = std::make_shared<Shared>();
    shared->remaining = selection.filesystems.size();
    for (const auto& filesystem : selection.filesystems) {
      std::thread([shared, path = filesystem.mount.mount_point] {
        std::string failure;
        int fd = platform::open_mount_point(path);
        if (fd < 0) {
          failure = path + ": cannot open" + errno_suffix(-fd);
        } else {
          auto result = platform::sync_filesystem(fd);
          ::close(fd);
          if (!result.ok()) {
            failure = path + ": syncfs " + result.describe();
          }
        }
        std::lock_guard lock(shared->mutex);
        if (!failure.empty()) {
          shared->failures.push_back(failure);
        }
        --shared->remaining;
        shared->done.notify_all();
      }).detach();
    }
    std::unique_lock lock(shared->mutex);
    while (shared->remaining > 0) {
      if (ctx.stop.stop_requested() || Clock::now() >= ctx.deadline) {
        return Status::timeout("syncing the filesystems took too long");
      }
      shared->done.wait_for(lock, std::chrono::milliseconds(20));
    }
    if (!shared->failures.empty()) {
      // Writeback errors: a retry reports them no more, but data may be lost.
      return Status::retryable("sync before freeze failed: " + join(shared->failures));
    }
    return Status::ok();
  }

  // Ends the hold (thaw or abort): asks the holder to thaw, and if the
  // holder is gone, thaws from the record itself.
  Status release(const PhaseContext& ctx, HoldReport& hold) {
    std::string holder_lost;
    if (watch_) {
      holder_lost = watch_->disarm();
    }
    auto deadline = ctx.deadline;
    if (deadline == Clock::time_point{}) {
      deadline = Clock::now() + std::chrono::seconds(30);
    }
    // The holder answers a THAW at once, even with a freeze stuck in the
    // kernel; one that does not is hung or dying, and the record is thawed
    // here instead of waiting for the rest of the phase.
    deadline = std::min(deadline, Clock::now() + holder_thaw_answer);
    platform::holder::Reply reply{ReplyStatus::holder_gone, {}, "freeze holder not running"};
    // Set when the holder still has a FIFREEZE inside the kernel: see
    // finish_release().
    bool keep_record = false;
    if (holder_) {
      reply = holder_->request(Message{"THAW", {}, {}}, deadline, ctx.stop);
      // A FREEZE still being answered (after a timed-out freeze) is
      // skipped by the client; its THAWED follows.
    }
    std::string broken;
    if (holder_) {
      for (const auto& event : holder_->take_events()) {
        if (broken.empty()) {
          broken = event.args.empty() ? "the freeze holder thawed on its own" : event.args.front();
        }
      }
    }
    if (broken.empty()) {
      broken = holder_lost;
    }
    if (reply.ok() && reply.message.verb == "THAWED") {
      if (reply.message.args.size() >= 2 && reply.message.args[0] == "0" && broken.empty()) {
        broken = reply.message.args[1];
      }
      if (reply.message.args.size() >= 3 && reply.message.args[2] == "1") {
        retire_holder();
        keep_record = true;
      }
      std::vector<std::string> failures;
      if (auto results = mount_results_from(reply.message)) {
        for (const auto& result : *results) {
          if (result.state == MountState::thaw_failed) {
            failures.push_back(result.path + errno_suffix(result.error_number));
          }
        }
      }
      if (!failures.empty()) {
        return Status::non_retryable("thaw failed, may still be frozen: " + join(failures));
      }
    } else {
      // The holder died without thawing (SIGKILL, a crash), does not answer
      // (hung, or killed while a freeze of its is stuck in the kernel) or
      // answered nonsense: thaw from the record here, and keep thawing
      // while a thread of it may still be inside a FIFREEZE.
      const bool silent =
          reply.status == ReplyStatus::timeout || reply.status == ReplyStatus::stopped;
      auto why = reply.ok() ? "unexpected answer '" + reply.message.verb + "'" : reply.error;
      const pid_t holder_pid = holder_ ? holder_->pid() : 0;
      auto outcome = fsfreeze::thaw_recorded_until_holder_gone(recorded_, holder_pid,
                                                               std::chrono::seconds(2));
      log().warn("fsfreeze writer '{}': freeze holder {} ({}); thawed {} myself: [{}]", spec_.name,
                 silent ? "does not answer" : "lost", why, outcome.thawed.size(),
                 join(outcome.thawed));
      if (broken.empty()) {
        broken = silent ? "the freeze holder did not answer the thaw (" + why +
                              "); the agent thawed from its record"
                        : "the freeze holder died while holding (" + why + ")";
      }
      if (holder_) {
        watch_.reset();  // before the connection it polls is closed
        holder_->retire();
        retired_.push_back(std::move(holder_));
      }
      if (!outcome.failed.empty()) {
        note_broken(hold, broken);
        return Status::non_retryable("thaw failed, may still be frozen: " + join(outcome.failed));
      }
    }
    note_broken(hold, broken);
    finish_release(keep_record);
    return Status::ok();
  }

  void note_broken(HoldReport& hold, const std::string& broken) {
    if (!broken.empty()) {
      hold.continuous = false;
      hold.detail = broken;
      hold_broken_ = broken;
      log().warn("fsfreeze writer '{}': hold was not continuous: {}", spec_.name, broken);
    }
  }

  // `keep_record`: a retired holder still has a FIFREEZE inside the kernel.
  // It thaws that filesystem when the call returns, unless it is killed
  // first (systemd's final SIGKILL of the unit, the OOM killer): the call
  // then completes in a dead process and nothing of ours would be left to
  // thaw it. The record (with that holder's pid) stays for a restarted
  // agent's start-up recovery, which thaws until the holder is gone; it is
  // removed once the retired holder has exited (reap_retired_holders()) or
  // replaced by the next freeze's record.
  void finish_release(bool keep_record = false) {
    if (watch_) {
      (void)watch_->disarm();
    }
    frozen_ = false;
    recorded_.clear();
    record_kept_for_holder_ = keep_record && !retired_.empty() ? retired_.back()->pid() : 0;
    if (record_kept_for_holder_ == 0) {
      std::error_code ec;
      fs::remove(record_path_, ec);
    }
  }

  void reap_retired_holders() {
    std::erase_if(retired_, [](const auto& retired) { return retired->reap(); });
    const bool still_retired = std::any_of(retired_.begin(), retired_.end(), [this](const auto& retired) {
      return retired->pid() == record_kept_for_holder_;
    });
    if (record_kept_for_holder_ != 0 && !still_retired && !frozen_) {
      std::error_code ec;
      fs::remove(record_path_, ec);
      record_kept_for_holder_ = 0;
    }
  }

  WriterSpec spec_;
  FsfreezeOptions options_;
  WriterEnvironment env_;
  std::string record_path_;
  fsfreeze::StorageProbe probe_;  // the real /sys, stat and loop ioctls
  // What prepare selected, for the freeze that follows it.
  struct PreparedSelection {
    fsfreeze::Selection selection;
    std::optional<std::vector<std::string>> narrow_to;
  };
  std::optional<PreparedSelection> prepared_;
  platform::MountTableWatch prepared_watch_;
  // The factory's selection, for the first identify (see identify()).
  fsfreeze::Selection checked_;
  std::unique_ptr<platform::MountTableWatch> checked_watch_;
  std::unique_ptr<HolderClient> holder_;
  std::vector<std::unique_ptr<HolderClient>> retired_;  // see retire_holder()
  pid_t record_kept_for_holder_ = 0;                     // see finish_release()
  std::unique_ptr<HolderWatch> watch_;  // holder_'s; declared after it, so destroyed first
  // Test-only (QUIESCE_TEST_INVERT_FREEZE_ORDER=1 in the agent's
  // environment): freeze in the reverse of the safe order, lower
  // filesystems first, to force the deadlock the holder must survive.
  bool invert_order_for_tests_ = invert_order_requested();
  bool frozen_ = false;  // a FREEZE was sent and no thaw has finished since
  std::vector<fsfreeze::RecordedMount> recorded_;
  std::vector<std::string> last_frozen_;
  std::string hold_broken_;
};

}  // namespace

void register_fsfreeze_writer(WriterRegistry& registry) {
  registry.add(WriterType{
      .type = "fsfreeze",
      .default_level = Level::filesystem,
      .description = "freezes filesystems (FIFREEZE) through a holder process that thaws if the "
                     "agent dies",
      .create = [](const WriterSpec& spec,
                   const WriterEnvironment& env) -> std::unique_ptr<Writer> {
        // Watching from before the table is read: a mount or unmount after
        // this point makes the first identify select again.
        auto watch = std::make_unique<platform::MountTableWatch>();
        watch->start();
        auto table = platform::read_mountinfo();
        if (!table.table) {
          throw FieldError("options", table.error);
        }
        fsfreeze::Selection checked;
        auto options = parse_options(spec.options, *table.table, checked);
        return std::make_unique<FsfreezeWriter>(spec, std::move(options), env, std::move(checked),
                                                std::move(watch));
      },
  });
}

StaleFreezeReport recover_stale_fsfreeze(const std::string& run_dir, spdlog::logger& logger) {
  StaleFreezeReport report;
  std::error_code ec;
  std::vector<fs::path> records;
  for (const auto& item : fs::directory_iterator(run_dir, ec)) {
    auto name = item.path().filename().string();
    if (name.starts_with(fsfreeze::record_prefix) && name.ends_with(".json")) {
      records.push_back(item.path());
    }
  }
  std::sort(records.begin(), records.end());
  for (const auto& path : records) {
    std::string error;
    auto record = fsfreeze::read_record(path.string(), error);
    report.records.push_back(path.string());
    if (!record) {
      logger.error("fsfreeze recovery: {}; removing it", error);
      fs::remove(path, ec);
      continue;
    }
    // The holder of a dead agent normally thaws and exits on its own; one
    // still inside a stuck FIFREEZE is waited for (a little) and thawed after.
    auto outcome = fsfreeze::thaw_recorded_until_holder_gone(record->mounts, record->holder_pid,
                                                             std::chrono::seconds(2));
    for (const auto& mount : outcome.thawed) {
      logger.warn("fsfreeze recovery: thawed {}, left frozen by writer '{}' (agent pid {}, "
                  "session {}, frozen at {})",
                  mount, record->writer, record->agent_pid, record->session_id,
                  record->written_at);
    }
    for (const auto& mount : outcome.not_frozen) {
      logger.info("fsfreeze recovery: {} was already thawed", mount);
    }
    for (const auto& mount : outcome.skipped) {
      logger.info("fsfreeze recovery: left {} alone", mount);
    }
    for (const auto& failure : outcome.failed) {
      logger.error("fsfreeze recovery: cannot thaw {}", failure);
    }
    report.thawed.insert(report.thawed.end(), outcome.thawed.begin(), outcome.thawed.end());
    report.not_frozen.insert(report.not_frozen.end(), outcome.not_frozen.begin(),
                             outcome.not_frozen.end());
    report.skipped.insert(report.skipped.end(), outcome.skipped.begin(), outcome.skipped.end());
    report.failed.insert(report.failed.end(), outcome.failed.begin(), outcome.failed.end());
    if (outcome.failed.empty()) {
      fs::remove(path, ec);
    }
  }
  return report;
}

}  // namespace quiesce::writers
