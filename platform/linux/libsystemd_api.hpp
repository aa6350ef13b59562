#pragma once
// The libsystemd functions the agent calls (sd-bus and sd-event for its
// place on D-Bus, sd_journal_sendv for the journald log sink), loaded with
// dlopen the first time one of them is needed: an agent with D-Bus off and
// another log target never maps libsystemd, nor the compression and crypto
// libraries it pulls in (libzstd, liblzma, liblz4, libgcrypt, libgpg-error,
// libcap: 0.95 MiB of its idle RSS when it was linked). sd_notify needs no
// library: platform/linux/systemd_notify.cpp speaks its datagram protocol.
// Types come from the systemd headers, so a signature that differs from the
// header the agent was built against fails to compile rather than to run.
// Same pattern as the database clients (writers/*/*_api.hpp).

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>
// Without this, sd_journal_sendv is a macro adding CODE_FILE/CODE_LINE of
// the call, which would name the journald sink rather than what logged.
#ifndef SD_JOURNAL_SUPPRESS_LOCATION
#define SD_JOURNAL_SUPPRESS_LOCATION
#endif
#include <systemd/sd-journal.h>

// Exactly the functions the agent uses; add one here before calling it.
#define QUIESCE_LIBSYSTEMD_FUNCTIONS(X) \
  X(sd_bus_add_object_vtable) \
  X(sd_bus_attach_event) \
  X(sd_bus_call_async) \
  X(sd_bus_call_method_async) \
  X(sd_bus_creds_get_egid) \
  X(sd_bus_creds_get_euid) \
  X(sd_bus_creds_get_gid) \
  X(sd_bus_creds_get_pid) \
  X(sd_bus_creds_get_supplementary_gids) \
  X(sd_bus_creds_get_uid) \
  X(sd_bus_creds_unref) \
  X(sd_bus_emit_properties_changed_strv) \
  X(sd_bus_emit_signal) \
  X(sd_bus_error_set) \
  X(sd_bus_error_setf) \
  X(sd_bus_flush_close_unref) \
  X(sd_bus_message_append) \
  X(sd_bus_message_close_container) \
  X(sd_bus_message_get_error) \
  X(sd_bus_message_get_member) \
  X(sd_bus_message_get_sender) \
  X(sd_bus_message_get_signature) \
  X(sd_bus_message_new_method_call) \
  X(sd_bus_message_open_container) \
  X(sd_bus_message_read) \
  X(sd_bus_message_ref) \
  X(sd_bus_message_unref) \
  X(sd_bus_new) \
  X(sd_bus_open_system) \
  X(sd_bus_open_user) \
  X(sd_bus_process) \
  X(sd_bus_query_sender_creds) \
  X(sd_bus_reply_method_errorf) \
  X(sd_bus_reply_method_return) \
  X(sd_bus_request_name) \
  X(sd_bus_set_address) \
  X(sd_bus_set_bus_client) \
  X(sd_bus_slot_unref) \
  X(sd_bus_start) \
  X(sd_bus_track_add_sender) \
  X(sd_bus_track_new) \
  X(sd_bus_track_set_userdata) \
  X(sd_bus_track_unref) \
  X(sd_bus_unref) \
  X(sd_bus_wait) \
  X(sd_event_add_io) \
  X(sd_event_exit) \
  X(sd_event_loop) \
  X(sd_event_new) \
  X(sd_event_unref) \
  X(sd_journal_sendv)

namespace quiesce::platform {

// libsystemd's soname and the Debian package that provides it.
inline constexpr const char* kLibsystemdSoname = "libsystemd.so.0";
inline constexpr const char* kLibsystemdPackage = "libsystemd0";

struct LibsystemdApi {
#define QUIESCE_LIBSYSTEMD_SLOT(name) decltype(&::name) name = nullptr;
  QUIESCE_LIBSYSTEMD_FUNCTIONS(QUIESCE_LIBSYSTEMD_SLOT)
#undef QUIESCE_LIBSYSTEMD_SLOT
  // Not a function: the variable whose address SD_BUS_VTABLE_START puts in
  // a vtable's first entry (the vtable format it was built for). A vtable
  // made before the library is loaded gets it from here (dbus_service.cpp).
  const unsigned* sd_bus_object_vtable_format = nullptr;
};

// The table, loaded once (thread-safe); every call after the first is a
// check of a static. Throws std::runtime_error ("cannot load
// libsystemd.so.0 (...): install the libsystemd0 package") while the
// library cannot be loaded: D-Bus then fails to start with that message,
// as it does when the bus is unreachable.
[[nodiscard]] const LibsystemdApi& libsystemd();

// True once libsystemd() has succeeded. Code that releases sd-bus objects
// in a destructor checks it (no object can exist before), so that a
// missing library is never looked up, and thrown, from a destructor.
[[nodiscard]] bool libsystemd_loaded();

}  // namespace quiesce::platform
