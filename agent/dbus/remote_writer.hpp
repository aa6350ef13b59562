#pragma once
// A writer that lives in another process and was registered over D-Bus
// (org.quiesce.Agent1.RegisterWriter): the agent calls its
// org.quiesce.Writer1 object through the ordinary Writer interface, so the
// coordinator runs it on its own worker with the same deadlines, errors and
// states as any writer.
//
// Each RemoteWriter has a connection of its own, opened on its worker thread
// at the first call and used only there (sd-bus objects are not
// thread-safe, and the agent's main connection belongs to the bus thread).
// Calls are asynchronous underneath so the call's stop token (abort, a
// timeout) cuts them short.

#include <atomic>
#include <memory>
#include <string>

#include <systemd/sd-bus.h>

#include "agent/core/config.hpp"
#include "quiesce/writer.hpp"

namespace quiesce::agent::dbus {

// What the bus thread and the writer's worker share about one registration.
struct RemoteWriterLink {
  std::string sender;  // the application's unique bus name (":1.42")
  std::string path;    // its org.quiesce.Writer1 object
  // Set on the bus thread when `sender` leaves the bus (the application
  // exited or closed its connection).
  std::atomic<bool> vanished{false};
};

class RemoteWriter final : public Writer {
 public:
  RemoteWriter(DbusConfig bus_config, std::shared_ptr<RemoteWriterLink> link);
  ~RemoteWriter() override;

  Status identify(const PhaseContext& ctx, Identity& out) override;
  Status prepare(const PhaseContext& ctx) override;
  Status freeze(const PhaseContext& ctx) override;
  // A writer that vanished while it held a freeze has lost its hold: thaw
  // answers ok with HoldReport::continuous false, so the verdict says so.
  Status thaw(const PhaseContext& ctx, HoldReport& hold) override;
  Status post_snapshot(const PhaseContext& ctx, const SnapshotInfo& snapshot,
                       nlohmann::json& artifacts) override;
  Status abort(const PhaseContext& ctx) override;
  Status post_restore(const PhaseContext& ctx, const RestoreInfo& restore) override;

 private:
  // Sends Writer1.<method> with string arguments and waits for the answer
  // within the call's budget; `reply` is set (and owned by the caller) on
  // success. `expected_signature` is what the answer must carry.
  Status call(const PhaseContext& ctx, const char* method,
              std::initializer_list<std::string> arguments, const char* expected_signature,
              sd_bus_message** reply);
  // A call whose answer is one JSON string ("s"), parsed into `out`.
  Status call_for_json(const PhaseContext& ctx, const char* method,
                       std::initializer_list<std::string> arguments, nlohmann::json& out);
  Status vanished_error(const char* method) const;

  DbusConfig bus_config_;
  std::shared_ptr<RemoteWriterLink> link_;
  sd_bus* bus_ = nullptr;  // worker thread only
  bool holding_ = false;   // freeze answered ok and no thaw or abort since
};

}  // namespace quiesce::agent::dbus
