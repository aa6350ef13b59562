#include "tests/support/fake_writer.hpp"

#include <algorithm>
#include <stdexcept>
#include <thread>

namespace quiesce::test {

void Journal::add(const std::string& entry) {
  {
    std::lock_guard lock(mutex_);
    entries_.push_back(entry);
  }
  changed_.notify_all();
}

std::vector<std::string> Journal::entries() const {
  std::lock_guard lock(mutex_);
  return entries_;
}

std::size_t Journal::count(const std::string& entry) const {
  std::lock_guard lock(mutex_);
  return static_cast<std::size_t>(std::count(entries_.begin(), entries_.end(), entry));
}

long Journal::index_of(const std::string& entry) const {
  std::lock_guard lock(mutex_);
  auto it = std::find(entries_.begin(), entries_.end(), entry);
  return it == entries_.end() ? -1 : static_cast<long>(it - entries_.begin());
}

bool Journal::wait_for(const std::string& entry, std::chrono::milliseconds timeout) const {
  std::unique_lock lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] {
    return std::find(entries_.begin(), entries_.end(), entry) != entries_.end();
  });
}

bool Barrier::arrive_and_wait(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  ++arrived_;
  all_here_.notify_all();
  return all_here_.wait_for(lock, timeout, [&] { return arrived_ >= parties_; });
}

Status FakeWriter::act(Phase phase, const PhaseContext& ctx) {
  journal_->add(name_ + ":" + std::string(to_string(phase)));
  auto it = script_.phases.find(phase);
  if (it == script_.phases.end()) {
    return Status::ok();
  }
  const auto& script = it->second;
  if (script.barrier && !script.barrier->arrive_and_wait(std::chrono::seconds(5))) {
    return Status::non_retryable("barrier: the other writers never arrived (not parallel)");
  }
  if (script.delay.count() > 0) {
    std::this_thread::sleep_for(script.delay);
  }
  if (script.hang) {
    std::mutex mutex;
    std::condition_variable_any wake;
    std::unique_lock lock(mutex);
    wake.wait(lock, ctx.stop, [] { return false; });
    journal_->add(name_ + ":" + std::string(to_string(phase)) + ":released");
  }
  if (script.throws) {
    throw std::runtime_error("scripted exception in " + std::string(to_string(phase)));
  }
  if (script.fail) {
    return Status::error(*script.fail, "scripted failure in " + std::string(to_string(phase)));
  }
  return Status::ok();
}

Status FakeWriter::identify(const PhaseContext& ctx, Identity& out) {
  if (script_.filesystems.empty()) {
    out.components.push_back({{"kind", "fake"}, {"name", name_}});
    return act(Phase::identify, ctx);
  }
  auto wanted = ctx.mountpoints.value_or(script_.filesystems);
  for (const auto& mount : wanted) {
    if (std::find(script_.filesystems.begin(), script_.filesystems.end(), mount) ==
        script_.filesystems.end()) {
      journal_->add(name_ + ":identify");
      return Status::non_retryable("mount point '" + mount + "' is not among the filesystems "
                                   "this writer freezes");
    }
    out.components.push_back({{"kind", "filesystem"}, {"name", mount}, {"mount", mount}});
  }
  return act(Phase::identify, ctx);
}
Status FakeWriter::prepare(const PhaseContext& ctx) { return act(Phase::prepare, ctx); }
Status FakeWriter::freeze(const PhaseContext& ctx) { return act(Phase::freeze, ctx); }
Status FakeWriter::thaw(const PhaseContext& ctx, HoldReport& hold) {
  if (script_.lose_hold) {
    hold.continuous = false;
    hold.detail = "scripted lost hold";
  }
  return act(Phase::thaw, ctx);
}
Status FakeWriter::post_snapshot(const PhaseContext& ctx, const SnapshotInfo& snapshot,
                                 nlohmann::json& artifacts) {
  artifacts = script_.artifacts;
  artifacts["snapshot_id"] = snapshot.snapshot_id;
  return act(Phase::post_snapshot, ctx);
}
Status FakeWriter::abort(const PhaseContext& ctx) { return act(Phase::abort, ctx); }
Status FakeWriter::post_restore(const PhaseContext& ctx, const RestoreInfo& restore) {
  journal_->add(name_ + ":restored-from:" + restore.checkpoint_id);
  return act(Phase::post_restore, ctx);
}

}  // namespace quiesce::test
