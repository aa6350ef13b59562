#pragma once
// A writer that lives in an application and talks to the agent over D-Bus
// (docs/dbus.md, "Writers registered at run time"): the application gives a
// callback per phase, BusWriter exports them as org.quiesce.Writer1 on the
// application's own sd-bus connection and registers the object with
// org.quiesce.Agent1. The agent then calls it in every session like any
// writer, with the same deadlines.
//
// Header-only, needs libsystemd (sd-bus). Threading: sd-bus connections are
// not thread-safe, so the callbacks run on whatever thread drives the
// connection (sd_bus_process / sd_bus_wait, or run() below); a callback that
// blocks holds every other call on that connection up, and past its phase's
// deadline the agent counts a timeout.
//
// Ownership: BusWriter borrows the sd_bus* (the application keeps its own
// reference and must outlive the BusWriter); it owns its object slot.

#include <systemd/sd-bus.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>

namespace quiesce::dbus_writer {

inline constexpr const char* kAgentBusName = "org.quiesce.Agent1";
inline constexpr const char* kAgentPath = "/org/quiesce/Agent1";
inline constexpr const char* kAgentInterface = "org.quiesce.Agent1";
inline constexpr const char* kWriterInterface = "org.quiesce.Writer1";

// The D-Bus error names a writer answers a failed phase with; the agent maps
// them onto its error classes (anything else counts as non_retryable).
inline constexpr const char* kErrorRetryable = "org.quiesce.Writer1.Error.Retryable";
inline constexpr const char* kErrorNonRetryable = "org.quiesce.Writer1.Error.NonRetryable";
inline constexpr const char* kErrorInconsistent = "org.quiesce.Writer1.Error.Inconsistent";

// What a phase callback answers: ok, or a failure with its D-Bus error name.
class [[nodiscard]] Outcome {
 public:
  static Outcome ok() { return Outcome{"", ""}; }
  static Outcome retryable(std::string message) { return {kErrorRetryable, std::move(message)}; }
  static Outcome non_retryable(std::string message) {
    return {kErrorNonRetryable, std::move(message)};
  }
  static Outcome inconsistent(std::string message) {
    return {kErrorInconsistent, std::move(message)};
  }
  [[nodiscard]] bool is_ok() const { return error_name_.empty(); }
  [[nodiscard]] const std::string& error_name() const { return error_name_; }
  [[nodiscard]] const std::string& message() const { return message_; }

 private:
  Outcome(std::string error_name, std::string message)
      : error_name_(std::move(error_name)), message_(std::move(message)) {}
  std::string error_name_;
  std::string message_;
};

// One callback per phase; a phase left empty answers ok (identify: no
// components). JSON travels as strings so the SDK needs no JSON library.
struct Callbacks {
  // Returns {"components": [...], "metadata": {...}} as JSON text.
  std::function<Outcome(const std::string& session, std::string& identity_json)> identify;
  std::function<Outcome(const std::string& session)> prepare;
  std::function<Outcome(const std::string& session)> freeze;
  // `continuous`: whether the hold was kept since freeze answered (false with
  // `detail` when the application lost it, e.g. a lock was broken).
  std::function<Outcome(const std::string& session, bool& continuous, std::string& detail)> thaw;
  // `artifacts_json`: a JSON object for the checkpoint manifest ("{}" if none).
  std::function<Outcome(const std::string& session, const std::string& snapshot_id,
                        std::string& artifacts_json)>
      post_snapshot;
  std::function<Outcome(const std::string& session)> abort;
  std::function<Outcome(const std::string& checkpoint_id, const std::string& session)>
      post_restore;
};

// Processes messages on `bus` until `keep_going` says stop (checked after
// each message or each `poll_usec` of quiet). For programs with no loop of
// their own; one with a loop attaches the bus to it instead. Throws
// std::runtime_error when the connection breaks.
inline void run_bus(sd_bus* bus, const std::function<bool()>& keep_going,
                    std::uint64_t poll_usec = 200'000) {
  while (keep_going()) {
    int r = sd_bus_process(bus, nullptr);
    if (r < 0) {
      throw std::runtime_error(std::string("sd_bus_process: ") + std::strerror(-r));
    }
    if (r == 0) {
      r = sd_bus_wait(bus, poll_usec);
      if (r < 0 && r != -EINTR) {
        throw std::runtime_error(std::string("sd_bus_wait: ") + std::strerror(-r));
      }
    }
  }
}

class BusWriter {
 public:
  // Exports org.quiesce.Writer1 at `object_path` on `bus`. Throws
  // std::runtime_error saying why when sd-bus refuses.
  BusWriter(sd_bus* bus, std::string object_path, Callbacks callbacks)
      : bus_(bus), path_(std::move(object_path)), callbacks_(std::move(callbacks)) {
    int r = sd_bus_add_object_vtable(bus_, &slot_, path_.c_str(), kWriterInterface, vtable(),
                                     this);
    if (r < 0) {
      throw std::runtime_error("cannot export " + path_ + ": " + std::strerror(-r));
    }
  }
  ~BusWriter() { sd_bus_slot_unref(slot_); }
  BusWriter(const BusWriter&) = delete;
  BusWriter& operator=(const BusWriter&) = delete;

  // Calls RegisterWriter(path, level, options_json) and returns the writer's
  // name as the agent knows it. `level`: application, database, filesystem.
  // `options_json`: {"name": ..., "timeouts_ms": {"freeze": ...}} or "{}".
  // Throws std::runtime_error with the agent's error name and message.
  std::string register_with_agent(const std::string& level,
                                  const std::string& options_json = "{}") {
    return call_agent("RegisterWriter", "oss", level, options_json);
  }
  // Calls UnregisterWriter(path). Throws like register_with_agent.
  void unregister_from_agent() { (void)call_agent("UnregisterWriter", "o", "", ""); }

  [[nodiscard]] const std::string& path() const { return path_; }

  // Drives the connection until `keep_going` says stop (see run_bus).
  void run(const std::function<bool()>& keep_going, std::uint64_t poll_usec = 200'000) {
    run_bus(bus_, keep_going, poll_usec);
  }

 private:
  std::string call_agent(const char* method, const char* signature, const std::string& level,
                         const std::string& options) {
    sd_bus_error error = SD_BUS_ERROR_NULL;
    sd_bus_message* reply = nullptr;
    int r = signature[1] == '\0'
                ? sd_bus_call_method(bus_, kAgentBusName, kAgentPath, kAgentInterface, method,
                                     &error, &reply, signature, path_.c_str())
                : sd_bus_call_method(bus_, kAgentBusName, kAgentPath, kAgentInterface, method,
                                     &error, &reply, signature, path_.c_str(), level.c_str(),
                                     options.c_str());
    if (r < 0) {
      std::string why = std::string(method) + " failed: " +
                        (error.name != nullptr ? error.name : std::strerror(-r)) +
                        (error.message != nullptr ? std::string(": ") + error.message : "");
      sd_bus_error_free(&error);
      throw std::runtime_error(why);
    }
    std::string answer;
    const char* text = nullptr;
    if (signature[1] != '\0' && sd_bus_message_read(reply, "s", &text) >= 0 && text != nullptr) {
      answer = text;
    }
    sd_bus_message_unref(reply);
    return answer;
  }

  static BusWriter& self(void* userdata) { return *static_cast<BusWriter*>(userdata); }

  // Every callback's failure, thrown or returned, becomes a D-Bus error: the
  // agent sees a failed phase, never a dropped call.
  static int answer(sd_bus_error* error, const std::function<Outcome()>& run,
                    const std::function<int()>& reply) {
    try {
      Outcome outcome = run();
      if (!outcome.is_ok()) {
        sd_bus_error_set(error, outcome.error_name().c_str(), outcome.message().c_str());
        return -EIO;
      }
      return reply();
    } catch (const std::exception& e) {
      sd_bus_error_set(error, kErrorNonRetryable, e.what());
      return -EIO;
    }
  }

  static int read_session(sd_bus_message* message, std::string& session) {
    const char* text = nullptr;
    int r = sd_bus_message_read(message, "s", &text);
    if (r >= 0) {
      session = text;
    }
    return r;
  }

  template <auto Member>
  static int simple_phase(sd_bus_message* message, void* userdata, sd_bus_error* error) {
    std::string session;
    if (int r = read_session(message, session); r < 0) {
      return r;
    }
    const auto& callback = self(userdata).callbacks_.*Member;
    return answer(
        error, [&] { return callback ? callback(session) : Outcome::ok(); },
        [&] { return sd_bus_reply_method_return(message, ""); });
  }

  static int on_identify(sd_bus_message* message, void* userdata, sd_bus_error* error) {
    std::string session;
    if (int r = read_session(message, session); r < 0) {
      return r;
    }
    std::string identity = R"({"components": [], "metadata": {}})";
    const auto& callback = self(userdata).callbacks_.identify;
    return answer(
        error, [&] { return callback ? callback(session, identity) : Outcome::ok(); },
        [&] { return sd_bus_reply_method_return(message, "s", identity.c_str()); });
  }

  static int on_thaw(sd_bus_message* message, void* userdata, sd_bus_error* error) {
    std::string session;
    if (int r = read_session(message, session); r < 0) {
      return r;
    }
    bool continuous = true;
    std::string detail;
    const auto& callback = self(userdata).callbacks_.thaw;
    return answer(
        error,
        [&] { return callback ? callback(session, continuous, detail) : Outcome::ok(); },
        [&] {
          return sd_bus_reply_method_return(message, "bs", static_cast<int>(continuous),
                                            detail.c_str());
        });
  }

  static int on_post_snapshot(sd_bus_message* message, void* userdata, sd_bus_error* error) {
    const char* session = nullptr;
    const char* snapshot_id = nullptr;
    if (int r = sd_bus_message_read(message, "ss", &session, &snapshot_id); r < 0) {
      return r;
    }
    std::string artifacts = "{}";
    const auto& callback = self(userdata).callbacks_.post_snapshot;
    return answer(
        error,
        [&] { return callback ? callback(session, snapshot_id, artifacts) : Outcome::ok(); },
        [&] { return sd_bus_reply_method_return(message, "s", artifacts.c_str()); });
  }

  static int on_post_restore(sd_bus_message* message, void* userdata, sd_bus_error* error) {
    const char* checkpoint_id = nullptr;
    const char* session = nullptr;
    if (int r = sd_bus_message_read(message, "ss", &checkpoint_id, &session); r < 0) {
      return r;
    }
    const auto& callback = self(userdata).callbacks_.post_restore;
    return answer(
        error,
        [&] { return callback ? callback(checkpoint_id, session) : Outcome::ok(); },
        [&] { return sd_bus_reply_method_return(message, ""); });
  }

  static const sd_bus_vtable* vtable() {
    static const sd_bus_vtable table[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD("Identify", "s", "s", on_identify, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Prepare", "s", "", simple_phase<&Callbacks::prepare>,
                      SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Freeze", "s", "", simple_phase<&Callbacks::freeze>,
                      SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Thaw", "s", "bs", on_thaw, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("PostSnapshot", "ss", "s", on_post_snapshot, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Abort", "s", "", simple_phase<&Callbacks::abort>,
                      SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("PostRestore", "ss", "", on_post_restore, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END};
    return table;
  }

  sd_bus* bus_;
  std::string path_;
  Callbacks callbacks_;
  sd_bus_slot* slot_ = nullptr;
};

}  // namespace quiesce::dbus_writer
