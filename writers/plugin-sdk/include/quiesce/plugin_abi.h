/*
 * The Quiesce writer plugin ABI: a plain C boundary between the agent (the
 * host) and a writer built as a shared object (the plugin).
 *
 * Naming: functions a plugin exports, which the host calls, are
 * `quiesce_plugin_<name>`; functions the host passes to the plugin, which the
 * plugin calls back, are `quiesce_host_<name>_fn` pointer types.
 *
 * Versioning. QUIESCE_PLUGIN_ABI_{MAJOR,MINOR,PATCH} is a semantic version.
 * The host calls quiesce_plugin_abi_version() before anything else and loads
 * a plugin only when the majors are equal and the host's minor is at least
 * the plugin's. A minor version only adds: new optional entry points, new
 * fields appended at the end of a struct (the host never reads or writes a
 * field that the plugin's minor does not have), new error codes a plugin may
 * return. quiesce_plugin_abi_version() itself never changes.
 *
 * Entry points. Required: abi_version, describe, create, destroy, identify,
 * prepare, freeze, thaw, abort, get_last_error. Optional: post_snapshot,
 * post_restore. The host derives a plugin's capabilities from which optional
 * entry points it exports, and treats a missing one as "nothing to do".
 *
 * Threading. Calls on one handle never overlap: the host makes them one after
 * another from one worker thread (not necessarily the same thread each time).
 * Calls on different handles of the same plugin may run in parallel, so
 * global state in a plugin needs its own locking.
 *
 * Errors. Every call returns an int32_t code: QUIESCE_PLUGIN_OK or one of the
 * error classes below; on an error the host reads quiesce_plugin_get_last_error
 * for the message. Nothing else crosses the boundary: no C++ exception may
 * escape an entry point (the C++ SDK catches them) and no C++ type appears in
 * it.
 *
 * Ownership. Each item says who owns a pointer and how long it stays valid.
 * In short: what the host passes is borrowed for the duration of the call
 * (init input: the duration of create, except the log callback); what the
 * plugin returns is owned by the plugin and stays valid until the next call
 * on the same handle (or its destruction); describe's strings are static.
 */
#ifndef QUIESCE_PLUGIN_ABI_H
#define QUIESCE_PLUGIN_ABI_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QUIESCE_PLUGIN_ABI_MAJOR 1
#define QUIESCE_PLUGIN_ABI_MINOR 0
#define QUIESCE_PLUGIN_ABI_PATCH 0

/* Marks the entry points a plugin defines so they stay visible when the
 * plugin is built with -fvisibility=hidden. */
#if defined(_WIN32)
#define QUIESCE_PLUGIN_EXPORT __declspec(dllexport)
#else
#define QUIESCE_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

/* ---- codes ------------------------------------------------------------ */

/* Return codes of every entry point that returns int32_t. */
#define QUIESCE_PLUGIN_OK 0
/* A later attempt may succeed (busy, locked). */
#define QUIESCE_PLUGIN_ERROR_RETRYABLE 1
/* Needs an admin (bad options, missing privilege, bad credentials). */
#define QUIESCE_PLUGIN_ERROR_NON_RETRYABLE 2
/* The call could not finish before its deadline or was told to stop. */
#define QUIESCE_PLUGIN_ERROR_TIMEOUT 3
/* The plugin cannot vouch for consistency (it lost its hold). */
#define QUIESCE_PLUGIN_ERROR_INCONSISTENT 4

/* Freeze order: application writers first, filesystems last. */
#define QUIESCE_PLUGIN_LEVEL_APPLICATION 0
#define QUIESCE_PLUGIN_LEVEL_DATABASE 1
#define QUIESCE_PLUGIN_LEVEL_FILESYSTEM 2

/* Levels of the log callback. */
#define QUIESCE_PLUGIN_LOG_TRACE 0
#define QUIESCE_PLUGIN_LOG_DEBUG 1
#define QUIESCE_PLUGIN_LOG_INFO 2
#define QUIESCE_PLUGIN_LOG_WARN 3
#define QUIESCE_PLUGIN_LOG_ERROR 4

/* ---- types ------------------------------------------------------------ */

typedef struct quiesce_plugin_version {
  uint32_t major;
  uint32_t minor;
  uint32_t patch;
} quiesce_plugin_version;

/* A writer instance, opaque to the host. Created by quiesce_plugin_create,
 * owned by the host from then on, released with quiesce_plugin_destroy. */
typedef struct quiesce_plugin_handle quiesce_plugin_handle;

/* What the plugin says about itself. Returned by quiesce_plugin_describe;
 * the struct and every string in it are owned by the plugin and must stay
 * valid (and unchanged) as long as the library is loaded: static storage. */
typedef struct quiesce_plugin_description {
  /* Short type name, e.g. "touch-file". [A-Za-z0-9_.-], not empty. */
  const char* type_name;
  /* One of QUIESCE_PLUGIN_LEVEL_*: where the writer belongs in the freeze
   * order unless the agent's config says otherwise. */
  int32_t default_level;
  /* One line for `GET /v1/writers` and the logs. May be NULL. */
  const char* description;
  /* The plugin's own version, free form ("1.2.3"). May be NULL. */
  const char* plugin_version;
} quiesce_plugin_description;

/* Host -> plugin log callback. `host_opaque` is the value from the init input.
 * `message` is borrowed for the duration of the call; the host copies it.
 * May be called from any thread of the plugin, at any time between create
 * returning and destroy returning (the host keeps it valid that long). */
typedef void (*quiesce_host_log_fn)(void* host_opaque, int32_t level, const char* message);

/* Host -> plugin stop query: nonzero once the host gave up on the current call
 * (its deadline passed, or the session is being aborted). A plugin polls it in
 * anything that can block and returns QUIESCE_PLUGIN_ERROR_TIMEOUT soon after.
 * Valid only during the phase call it came with, on any thread. */
typedef int32_t (*quiesce_host_should_stop_fn)(void* host_opaque);

/* Passed to quiesce_plugin_create. The struct and all its strings are
 * borrowed for the duration of create only: copy what you keep. The one
 * exception is the log callback pair (log, log_opaque), valid until destroy
 * returns. Strings are never NULL (possibly empty). */
typedef struct quiesce_plugin_init_input {
  /* The writer's own options, a JSON object serialized as text ("{}" when the
   * config gives none). The plugin validates it and fails create with
   * QUIESCE_PLUGIN_ERROR_NON_RETRYABLE and a message naming the bad field. */
  const char* options_json;
  /* The writer's name in the agent config (several writers may use one
   * plugin, each with its own handle). */
  const char* writer_name;
  quiesce_host_log_fn log;
  void* log_opaque;
  /* The agent's version ("0.1.0") and the ABI version the host implements. */
  const char* agent_version;
  quiesce_plugin_version host_abi_version;
  /* Volatile state directory (/run/quiesce) and persistent one
   * (/var/lib/quiesce). A plugin keeps files in a subdirectory named after
   * its writer_name. */
  const char* run_dir;
  const char* state_dir;
} quiesce_plugin_init_input;

/* Passed to every phase call. Borrowed for the duration of the call. */
typedef struct quiesce_plugin_call_context {
  /* The session this call belongs to (never NULL). */
  const char* session_id;
  /* This call's deadline, as wall-clock milliseconds since the Unix epoch,
   * and as milliseconds remaining when the call began (>= 0). Use the
   * remaining form with a monotonic clock when the wall clock may jump. */
  int64_t deadline_unix_ms;
  int64_t remaining_ms;
  /* End of the freeze window (freeze and thaw only), as wall-clock ms since
   * the epoch; 0 when it does not apply. */
  int64_t hold_deadline_unix_ms;
  quiesce_host_should_stop_fn should_stop;
  void* should_stop_opaque;
} quiesce_plugin_call_context;

/* What thaw reports about the hold. The host initializes it to
 * {continuous = 1, detail = NULL} before the call. */
typedef struct quiesce_plugin_hold_report {
  /* 0 when the plugin lost its hold at some point since it reported frozen
   * (then the snapshot is labelled crash-consistent). */
  int32_t continuous;
  /* Why the hold broke, for the operator. Owned by the plugin, valid until the
   * next call on the handle. May be NULL. */
  const char* detail;
} quiesce_plugin_hold_report;

/* ---- entry points ----------------------------------------------------- *
 * Declared as function types so that the host's dlsym() casts and the
 * plugin's definitions are checked against one declaration. A plugin defines
 * them with QUIESCE_PLUGIN_EXPORT and exactly these names.                */

/* REQUIRED. The ABI version the plugin was compiled against: return
 * {QUIESCE_PLUGIN_ABI_MAJOR, QUIESCE_PLUGIN_ABI_MINOR, QUIESCE_PLUGIN_ABI_PATCH}.
 * Called first, before any other symbol is even looked up. */
typedef quiesce_plugin_version quiesce_plugin_abi_version_fn(void);

/* REQUIRED. Static description (see quiesce_plugin_description). Never NULL. */
typedef const quiesce_plugin_description* quiesce_plugin_describe_fn(void);

/* REQUIRED. Creates one writer instance from `input`. Sets *rc to
 * QUIESCE_PLUGIN_OK and returns a handle, or sets *rc to an error code. On an
 * error the plugin should still return a handle when it can, so the host can
 * read get_last_error from it; the host then calls destroy on it. NULL with
 * an error code is allowed when even that is impossible (out of memory). */
typedef quiesce_plugin_handle* quiesce_plugin_create_fn(const quiesce_plugin_init_input* input,
                                                        int32_t* rc);

/* REQUIRED. Releases everything the handle holds (including a hold the host
 * never thawed: release it). Joins any thread that might still call the log
 * callback. The handle is invalid afterwards. */
typedef void quiesce_plugin_destroy_fn(quiesce_plugin_handle* handle);

/* REQUIRED. Describes what the writer protects. On OK, sets *identity_json to
 * a JSON object {"components": [...], "metadata": {...}} (both optional), or
 * to NULL for "nothing to add". Owned by the plugin, valid until the next call
 * on the handle. */
typedef int32_t quiesce_plugin_identify_fn(quiesce_plugin_handle* handle,
                                           const quiesce_plugin_call_context* ctx,
                                           const char** identity_json);

/* REQUIRED. Slow work before the hold window (a database CHECKPOINT, a sync). */
typedef int32_t quiesce_plugin_prepare_fn(quiesce_plugin_handle* handle,
                                          const quiesce_plugin_call_context* ctx);

/* REQUIRED. Reach a consistent state and hold it until thaw or abort. */
typedef int32_t quiesce_plugin_freeze_fn(quiesce_plugin_handle* handle,
                                         const quiesce_plugin_call_context* ctx);

/* REQUIRED. Release the hold. Idempotent: valid in any state, including
 * without a freeze and twice in a row. Fills in `hold` (never NULL). */
typedef int32_t quiesce_plugin_thaw_fn(quiesce_plugin_handle* handle,
                                       const quiesce_plugin_call_context* ctx,
                                       quiesce_plugin_hold_report* hold);

/* REQUIRED. Undo whatever prepare / freeze did. Idempotent, valid in any
 * state. */
typedef int32_t quiesce_plugin_abort_fn(quiesce_plugin_handle* handle,
                                        const quiesce_plugin_call_context* ctx);

/* REQUIRED. The message for the last call on `handle` that failed (create
 * included), or NULL. Owned by the plugin, valid until the next call on the
 * handle. Must not fail. */
typedef const char* quiesce_plugin_get_last_error_fn(quiesce_plugin_handle* handle);

/* OPTIONAL (capability "post_snapshot"). After the host's snapshot, with the
 * host's snapshot id (borrowed for the call). On OK, sets *artifacts_json to
 * a JSON object for the checkpoint manifest, or to NULL. Owned by the plugin,
 * valid until the next call on the handle. */
typedef int32_t quiesce_plugin_post_snapshot_fn(quiesce_plugin_handle* handle,
                                                const quiesce_plugin_call_context* ctx,
                                                const char* snapshot_id,
                                                const char** artifacts_json);

/* OPTIONAL (capability "post_restore"). First start after the VM was restored
 * from a checkpoint; `checkpoint_id` is borrowed for the call. ctx->session_id
 * is the session that took the checkpoint. */
typedef int32_t quiesce_plugin_post_restore_fn(quiesce_plugin_handle* handle,
                                               const quiesce_plugin_call_context* ctx,
                                               const char* checkpoint_id);

QUIESCE_PLUGIN_EXPORT quiesce_plugin_abi_version_fn quiesce_plugin_abi_version;
QUIESCE_PLUGIN_EXPORT quiesce_plugin_describe_fn quiesce_plugin_describe;
QUIESCE_PLUGIN_EXPORT quiesce_plugin_create_fn quiesce_plugin_create;
QUIESCE_PLUGIN_EXPORT quiesce_plugin_destroy_fn quiesce_plugin_destroy;
QUIESCE_PLUGIN_EXPORT quiesce_plugin_identify_fn quiesce_plugin_identify;
QUIESCE_PLUGIN_EXPORT quiesce_plugin_prepare_fn quiesce_plugin_prepare;
QUIESCE_PLUGIN_EXPORT quiesce_plugin_freeze_fn quiesce_plugin_freeze;
QUIESCE_PLUGIN_EXPORT quiesce_plugin_thaw_fn quiesce_plugin_thaw;
QUIESCE_PLUGIN_EXPORT quiesce_plugin_abort_fn quiesce_plugin_abort;
QUIESCE_PLUGIN_EXPORT quiesce_plugin_get_last_error_fn quiesce_plugin_get_last_error;
QUIESCE_PLUGIN_EXPORT quiesce_plugin_post_snapshot_fn quiesce_plugin_post_snapshot;
QUIESCE_PLUGIN_EXPORT quiesce_plugin_post_restore_fn quiesce_plugin_post_restore;

#ifdef __cplusplus
}
#endif

#endif /* QUIESCE_PLUGIN_ABI_H */
