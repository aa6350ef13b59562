#pragma once
// A scripted writer for coordinator tests: every call is written to a shared
// journal ("name:phase"), and each phase can be told to fail, throw, hang
// until its stop token fires, wait at a barrier, or report a lost hold.

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "quiesce/writer.hpp"

namespace quiesce::test {

class Journal {
 public:
  void add(const std::string& entry);
  [[nodiscard]] std::vector<std::string> entries() const;
  [[nodiscard]] std::size_t count(const std::string& entry) const;
  // Index of the first entry equal to `entry`, or -1.
  [[nodiscard]] long index_of(const std::string& entry) const;
  // Waits until `entry` was recorded (bounded).
  bool wait_for(const std::string& entry, std::chrono::milliseconds timeout) const;

 private:
  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;
  std::vector<std::string> entries_;
};

// All parties arrive or the wait gives up: proves calls run at the same time.
class Barrier {
 public:
  explicit Barrier(std::size_t parties) : parties_(parties) {}
  bool arrive_and_wait(std::chrono::milliseconds timeout);

 private:
  std::mutex mutex_;
  std::condition_variable all_here_;
  std::size_t parties_;
  std::size_t arrived_ = 0;
};

struct PhaseScript {
  std::optional<ErrorClass> fail;
  bool throws = false;
  bool hang = false;  // until the call's stop token fires
  std::chrono::milliseconds delay{0};
  std::shared_ptr<Barrier> barrier;
};

struct FakeScript {
  std::map<Phase, PhaseScript> phases;
  bool lose_hold = false;
  nlohmann::json artifacts = {{"label", "fake"}};
  // Mount points this writer reports at identify as {"kind": "filesystem"}
  // components, as the fsfreeze writer does; with these set it honours
  // PhaseContext::mountpoints like fsfreeze (narrows, or fails identify on a
  // mount point it does not hold). Empty: one {"kind": "fake"} component.
  std::vector<std::string> filesystems;
};

class FakeWriter final : public Writer {
 public:
  FakeWriter(std::string name, std::shared_ptr<Journal> journal, FakeScript script = {})
      : name_(std::move(name)), journal_(std::move(journal)), script_(std::move(script)) {}

  Status identify(const PhaseContext& ctx, Identity& out) override;
  Status prepare(const PhaseContext& ctx) override;
  Status freeze(const PhaseContext& ctx) override;
  Status thaw(const PhaseContext& ctx, HoldReport& hold) override;
  Status post_snapshot(const PhaseContext& ctx, const SnapshotInfo& snapshot,
                       nlohmann::json& artifacts) override;
  Status abort(const PhaseContext& ctx) override;
  Status post_restore(const PhaseContext& ctx, const RestoreInfo& restore) override;

 private:
  Status act(Phase phase, const PhaseContext& ctx);

  std::string name_;
  std::shared_ptr<Journal> journal_;
  FakeScript script_;
};

}  // namespace quiesce::test
