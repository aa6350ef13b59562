/*
 * `touch-file`: an example Quiesce writer plugin in plain C.
 *
 * At freeze it writes "frozen <session>" to a marker file (and fsyncs it);
 * thaw rewrites it to "thawed <session>", abort to "aborted <session>".
 * An application that checks the marker before writing can pause itself, and
 * a test can watch the writer's phases from outside.
 *
 * options: {"path": "/run/myapp/quiesce-marker"}   required, absolute
 *          (on Windows "C:/ProgramData/myapp/quiesce-marker": forward
 *          slashes, as this small parser takes no JSON escapes)
 *
 * It runs at the application level, so it freezes before any filesystem is
 * frozen and thaws after they are thawed: writing the marker never touches a
 * frozen filesystem.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "marker_file.h"
#include "quiesce/plugin_abi.h"

struct quiesce_plugin_handle {
  char* path;
  int frozen;
  quiesce_host_log_fn log;
  void* log_opaque;
  char last_error[4608]; /* room for a path (PATH_MAX) and a reason */
  char output[4608];
};

static void set_error(quiesce_plugin_handle* h, const char* what, const char* detail) {
  snprintf(h->last_error, sizeof h->last_error, "%s%s%s", what, detail[0] != '\0' ? ": " : "",
           detail);
}

/*
 * Finds the string value of "key" at the top level of a flat JSON object.
 * Deliberately small: strings without escapes only, which is all this
 * writer's options need. Returns a malloc'd copy, or NULL with *error set.
 */
static char* json_string_field(const char* json, const char* key, const char** error) {
  char pattern[64];
  snprintf(pattern, sizeof pattern, "\"%s\"", key);
  const char* at = strstr(json, pattern);
  if (at == NULL) {
    *error = "missing";
    return NULL;
  }
  at += strlen(pattern);
  while (*at == ' ' || *at == '\t' || *at == '\n' || *at == '\r') {
    ++at;
  }
  if (*at != ':') {
    *error = "malformed";
    return NULL;
  }
  ++at;
  while (*at == ' ' || *at == '\t' || *at == '\n' || *at == '\r') {
    ++at;
  }
  if (*at != '"') {
    *error = "expected a string";
    return NULL;
  }
  ++at;
  const char* end = at;
  while (*end != '"' && *end != '\0') {
    if (*end == '\\') {
      *error = "escapes are not supported";
      return NULL;
    }
    ++end;
  }
  if (*end != '"') {
    *error = "unterminated string";
    return NULL;
  }
  size_t length = (size_t)(end - at);
  char* copy = malloc(length + 1);
  if (copy == NULL) {
    *error = "out of memory";
    return NULL;
  }
  memcpy(copy, at, length);
  copy[length] = '\0';
  return copy;
}

/* Replaces the marker's content durably (marker_file_<os>.c). */
static int32_t write_marker(quiesce_plugin_handle* h, const char* state, const char* session_id) {
  char line[512];
  snprintf(line, sizeof line, "%s %s\n", state, session_id);
  return marker_file_replace(h->path, line, h->last_error, sizeof h->last_error);
}

static void log_line(quiesce_plugin_handle* h, int32_t level, const char* state,
                     const char* session_id) {
  char message[512];
  snprintf(message, sizeof message, "marker %s: %s (session %s)", h->path, state, session_id);
  h->log(h->log_opaque, level, message);
}

QUIESCE_PLUGIN_EXPORT quiesce_plugin_version quiesce_plugin_abi_version(void) {
  quiesce_plugin_version version = {QUIESCE_PLUGIN_ABI_MAJOR, QUIESCE_PLUGIN_ABI_MINOR,
                                    QUIESCE_PLUGIN_ABI_PATCH};
  return version;
}

QUIESCE_PLUGIN_EXPORT const quiesce_plugin_description* quiesce_plugin_describe(void) {
  static const quiesce_plugin_description description = {
      "touch-file", QUIESCE_PLUGIN_LEVEL_APPLICATION,
      "writes a marker file at freeze, thaw and abort", "1.0.0"};
  return &description;
}

QUIESCE_PLUGIN_EXPORT quiesce_plugin_handle* quiesce_plugin_create(
    const quiesce_plugin_init_input* input, int32_t* rc) {
  quiesce_plugin_handle* h = calloc(1, sizeof *h);
  if (h == NULL) {
    *rc = QUIESCE_PLUGIN_ERROR_RETRYABLE;
    return NULL;
  }
  h->log = input->log;
  h->log_opaque = input->log_opaque;
  const char* error = NULL;
  h->path = json_string_field(input->options_json, "path", &error);
  if (h->path == NULL) {
    set_error(h, "options.path", error);
    *rc = QUIESCE_PLUGIN_ERROR_NON_RETRYABLE;
    return h; /* the host reads last_error, then destroys it */
  }
  if (!marker_path_is_absolute(h->path)) {
    set_error(h, "options.path", "must be an absolute path");
    *rc = QUIESCE_PLUGIN_ERROR_NON_RETRYABLE;
    return h;
  }
  *rc = QUIESCE_PLUGIN_OK;
  return h;
}

QUIESCE_PLUGIN_EXPORT void quiesce_plugin_destroy(quiesce_plugin_handle* h) {
  free(h->path);
  free(h);
}

QUIESCE_PLUGIN_EXPORT int32_t quiesce_plugin_identify(quiesce_plugin_handle* h,
                                                      const quiesce_plugin_call_context* ctx,
                                                      const char** identity_json) {
  (void)ctx;
  /* The path has no quotes or backslashes (create refused escapes). */
  snprintf(h->output, sizeof h->output,
           "{\"components\":[{\"kind\":\"file\",\"name\":\"marker\",\"path\":\"%s\"}]}", h->path);
  *identity_json = h->output;
  return QUIESCE_PLUGIN_OK;
}

QUIESCE_PLUGIN_EXPORT int32_t quiesce_plugin_prepare(quiesce_plugin_handle* h,
                                                     const quiesce_plugin_call_context* ctx) {
  (void)h;
  (void)ctx;
  return QUIESCE_PLUGIN_OK;
}

QUIESCE_PLUGIN_EXPORT int32_t quiesce_plugin_freeze(quiesce_plugin_handle* h,
                                                    const quiesce_plugin_call_context* ctx) {
  if (ctx->should_stop(ctx->should_stop_opaque) != 0) {
    set_error(h, "freeze", "stopped by the host");
    return QUIESCE_PLUGIN_ERROR_TIMEOUT;
  }
  int32_t rc = write_marker(h, "frozen", ctx->session_id);
  if (rc == QUIESCE_PLUGIN_OK) {
    h->frozen = 1;
    log_line(h, QUIESCE_PLUGIN_LOG_INFO, "frozen", ctx->session_id);
  }
  return rc;
}

QUIESCE_PLUGIN_EXPORT int32_t quiesce_plugin_thaw(quiesce_plugin_handle* h,
                                                  const quiesce_plugin_call_context* ctx,
                                                  quiesce_plugin_hold_report* hold) {
  (void)hold; /* a marker file cannot lose its hold */
  if (!h->frozen) {
    return QUIESCE_PLUGIN_OK; /* idempotent: thaw without freeze, thaw twice */
  }
  int32_t rc = write_marker(h, "thawed", ctx->session_id);
  if (rc == QUIESCE_PLUGIN_OK) {
    h->frozen = 0;
    log_line(h, QUIESCE_PLUGIN_LOG_INFO, "thawed", ctx->session_id);
  }
  return rc;
}

QUIESCE_PLUGIN_EXPORT int32_t quiesce_plugin_abort(quiesce_plugin_handle* h,
                                                   const quiesce_plugin_call_context* ctx) {
  if (!h->frozen) {
    return QUIESCE_PLUGIN_OK;
  }
  int32_t rc = write_marker(h, "aborted", ctx->session_id);
  if (rc == QUIESCE_PLUGIN_OK) {
    h->frozen = 0;
    log_line(h, QUIESCE_PLUGIN_LOG_WARN, "aborted", ctx->session_id);
  }
  return rc;
}

QUIESCE_PLUGIN_EXPORT const char* quiesce_plugin_get_last_error(quiesce_plugin_handle* h) {
  return h->last_error[0] != '\0' ? h->last_error : NULL;
}

/* Optional: the marker's path goes into the checkpoint manifest. */
QUIESCE_PLUGIN_EXPORT int32_t quiesce_plugin_post_snapshot(quiesce_plugin_handle* h,
                                                           const quiesce_plugin_call_context* ctx,
                                                           const char* snapshot_id,
                                                           const char** artifacts_json) {
  (void)ctx;
  (void)snapshot_id;
  snprintf(h->output, sizeof h->output, "{\"marker\":\"%s\"}", h->path);
  *artifacts_json = h->output;
  return QUIESCE_PLUGIN_OK;
}
/* No quiesce_plugin_post_restore: this plugin lacks that capability. */
