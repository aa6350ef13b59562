#include "agent/dbus/remote_writer.hpp"

#include <algorithm>
#include <cstring>

#include "agent/dbus/bus_connection.hpp"
#include "quiesce/dbus_writer.hpp"

namespace quiesce::agent::dbus {

namespace {

// Long enough for sd_bus_wait to notice a stop soon, short enough to cost
// nothing: the wait returns at once when the answer comes.
constexpr std::chrono::milliseconds kStopCheck{50};

ErrorClass class_of(const char* error_name) {
  const std::string name = error_name != nullptr ? error_name : "";
  if (name == quiesce::dbus_writer::kErrorRetryable) {
    return ErrorClass::retryable;
  }
  if (name == quiesce::dbus_writer::kErrorInconsistent) {
    return ErrorClass::inconsistent;
  }
  return ErrorClass::non_retryable;
}

struct PendingCall {
  bool done = false;
  sd_bus_message* reply = nullptr;
};

int on_reply(sd_bus_message* reply, void* userdata, sd_bus_error* /*error*/) {
  auto& pending = *static_cast<PendingCall*>(userdata);
  pending.done = true;
  pending.reply = sd().sd_bus_message_ref(reply);
  return 0;
}

}  // namespace

RemoteWriter::RemoteWriter(DbusConfig bus_config, std::shared_ptr<RemoteWriterLink> link)
    : bus_config_(std::move(bus_config)), link_(std::move(link)) {}

RemoteWriter::~RemoteWriter() {
  if (bus_ != nullptr) {
    sd().sd_bus_flush_close_unref(bus_);
  }
}

Status RemoteWriter::vanished_error(const char* method) const {
  return Status::non_retryable("cannot call " + std::string(method) + ": the writer's bus name " +
                               link_->sender +
                               " vanished (the application exited or closed its connection)");
}

Status RemoteWriter::call(const PhaseContext& ctx, const char* method,
                          std::initializer_list<std::string> arguments,
                          const char* expected_signature, sd_bus_message** reply) {
  const std::string what = std::string(quiesce::dbus_writer::kWriterInterface) + "." + method;
  if (link_->vanished) {
    return vanished_error(method);
  }
  if (bus_ == nullptr) {
    std::string where;
    if (int r = open_bus(bus_config_, &bus_, where); r < 0) {
      return Status::retryable("cannot connect to " + where + " to call " + what + ": " +
                               std::strerror(-r));
    }
  }
  sd_bus_message* message = nullptr;
  int r = sd().sd_bus_message_new_method_call(bus_, &message, link_->sender.c_str(),
                                              link_->path.c_str(),
                                              quiesce::dbus_writer::kWriterInterface, method);
  for (auto it = arguments.begin(); r >= 0 && it != arguments.end(); ++it) {
    r = sd().sd_bus_message_append(message, "s", it->c_str());
  }
  PendingCall pending;
  sd_bus_slot* slot = nullptr;
  if (r >= 0) {
    // The budget below is what limits the call; sd-bus's own timeout only
    // backs it up.
    r = sd().sd_bus_call_async(bus_, &slot, message, on_reply, &pending, 0);
  }
  sd().sd_bus_message_unref(message);
  if (r < 0) {
    return Status::retryable("cannot send " + what + ": " + std::strerror(-r));
  }
  const auto budget = CallBudget::of(ctx);
  while (!pending.done) {
    if (auto spent = budget.spent(); !spent.empty()) {
      sd().sd_bus_slot_unref(slot);  // a late answer is dropped
      return Status::timeout(what + " did not answer: " + spent);
    }
    r = sd().sd_bus_process(bus_, nullptr);
    if (r < 0) {
      sd().sd_bus_slot_unref(slot);
      return Status::retryable("the connection to the bus broke during " + what + ": " +
                               std::strerror(-r));
    }
    if (r == 0) {
      auto wait = std::min<Clock::duration>(kStopCheck, budget.deadline - Clock::now());
      (void)sd().sd_bus_wait(
          bus_, static_cast<std::uint64_t>(
                    std::max<std::int64_t>(
                        1, std::chrono::duration_cast<std::chrono::microseconds>(wait).count())));
    }
  }
  sd().sd_bus_slot_unref(slot);
  if (const sd_bus_error* failure = sd().sd_bus_message_get_error(pending.reply)) {
    const std::string name = failure->name != nullptr ? failure->name : "";
    std::string text = what + " failed: " + name +
                       (failure->message != nullptr ? std::string(": ") + failure->message : "");
    const auto error_class = class_of(failure->name);
    if (name == SD_BUS_ERROR_SERVICE_UNKNOWN || name == SD_BUS_ERROR_NAME_HAS_NO_OWNER) {
      // Gone before the bus thread heard of it.
      link_->vanished = true;
    }
    sd().sd_bus_message_unref(pending.reply);
    return Status::error(error_class, text);
  }
  const char* signature = sd().sd_bus_message_get_signature(pending.reply, 1);
  if (std::strcmp(signature != nullptr ? signature : "", expected_signature) != 0) {
    std::string text = what + " answered with the wrong type: signature '" +
                       (signature != nullptr ? signature : "") + "', expected '" +
                       expected_signature + "'";
    sd().sd_bus_message_unref(pending.reply);
    return Status::non_retryable(text);
  }
  *reply = pending.reply;
  return Status::ok();
}

Status RemoteWriter::call_for_json(const PhaseContext& ctx, const char* method,
                                   std::initializer_list<std::string> arguments,
                                   nlohmann::json& out) {
  sd_bus_message* reply = nullptr;
  auto status = call(ctx, method, arguments, "s", &reply);
  if (!status.is_ok()) {
    return status;
  }
  const char* text = nullptr;
  (void)sd().sd_bus_message_read(reply, "s", &text);
  // Not JSON: a discarded value, which the caller's shape check refuses.
  out = nlohmann::json::parse(text != nullptr ? text : "", nullptr, false);
  sd().sd_bus_message_unref(reply);
  return Status::ok();
}

Status RemoteWriter::identify(const PhaseContext& ctx, Identity& out) {
  nlohmann::json identity;
  if (auto status = call_for_json(ctx, "Identify", {ctx.session_id}, identity); !status.is_ok()) {
    return status;
  }
  if (!identity.is_object() ||
      (identity.contains("components") && !identity["components"].is_array()) ||
      (identity.contains("metadata") && !identity["metadata"].is_object())) {
    return Status::non_retryable(
        "org.quiesce.Writer1.Identify answered something that is not "
        "{\"components\": [...], \"metadata\": {...}}");
  }
  out.components = identity.value("components", nlohmann::json::array());
  out.metadata = identity.value("metadata", nlohmann::json::object());
  out.metadata["bus_name"] = link_->sender;
  out.metadata["object_path"] = link_->path;
  return Status::ok();
}

Status RemoteWriter::prepare(const PhaseContext& ctx) {
  sd_bus_message* reply = nullptr;
  auto status = call(ctx, "Prepare", {ctx.session_id}, "", &reply);
  sd().sd_bus_message_unref(reply);
  return status;
}

Status RemoteWriter::freeze(const PhaseContext& ctx) {
  sd_bus_message* reply = nullptr;
  // Counted as holding from the moment Freeze is sent: a writer that dies
  // mid-freeze may already have taken its hold.
  holding_ = true;
  auto status = call(ctx, "Freeze", {ctx.session_id}, "", &reply);
  sd().sd_bus_message_unref(reply);
  return status;
}

Status RemoteWriter::thaw(const PhaseContext& ctx, HoldReport& hold) {
  const bool was_holding = holding_;
  holding_ = false;
  if (link_->vanished) {
    if (was_holding) {
      hold.continuous = false;
      hold.detail = "its bus name " + link_->sender +
                    " vanished while it held a freeze (the application exited or closed its "
                    "connection)";
    }
    return Status::ok();
  }
  sd_bus_message* reply = nullptr;
  auto status = call(ctx, "Thaw", {ctx.session_id}, "bs", &reply);
  if (!status.is_ok()) {
    if (link_->vanished && was_holding) {
      hold.continuous = false;
      hold.detail = "its bus name " + link_->sender + " vanished while it held a freeze";
      return Status::ok();
    }
    return status;
  }
  int continuous = 1;
  const char* detail = nullptr;
  (void)sd().sd_bus_message_read(reply, "bs", &continuous, &detail);
  hold.continuous = continuous != 0;
  hold.detail = detail != nullptr ? detail : "";
  sd().sd_bus_message_unref(reply);
  return Status::ok();
}

Status RemoteWriter::post_snapshot(const PhaseContext& ctx, const SnapshotInfo& snapshot,
                                   nlohmann::json& artifacts) {
  nlohmann::json parsed;
  if (auto status =
          call_for_json(ctx, "PostSnapshot", {ctx.session_id, snapshot.snapshot_id}, parsed);
      !status.is_ok()) {
    return status;
  }
  if (!parsed.is_object()) {
    return Status::non_retryable(
        "org.quiesce.Writer1.PostSnapshot answered something that is not a JSON object");
  }
  artifacts = std::move(parsed);
  return Status::ok();
}

Status RemoteWriter::abort(const PhaseContext& ctx) {
  holding_ = false;
  if (link_->vanished) {
    return Status::ok();  // the process that held anything is gone
  }
  sd_bus_message* reply = nullptr;
  auto status = call(ctx, "Abort", {ctx.session_id}, "", &reply);
  sd().sd_bus_message_unref(reply);
  return status;
}

Status RemoteWriter::post_restore(const PhaseContext& ctx, const RestoreInfo& restore) {
  sd_bus_message* reply = nullptr;
  auto status = call(ctx, "PostRestore", {restore.checkpoint_id, restore.session_id}, "", &reply);
  sd().sd_bus_message_unref(reply);
  return status;
}

}  // namespace quiesce::agent::dbus
