/*
 * Deliberately broken plugins for the loader tests, one per FIXTURE_KIND:
 *   1 wrong ABI major   exports only quiesce_plugin_abi_version, so a loader
 *                       that looked at other symbols first would say so
 *   2 newer ABI minor   same
 *   3 missing thaw      a complete plugin except quiesce_plugin_thaw
 *   4 not a plugin      no quiesce_plugin_* symbol at all
 */
#include <stddef.h>

#include "quiesce/plugin_abi.h"

#if FIXTURE_KIND == 4
QUIESCE_PLUGIN_EXPORT int not_a_quiesce_plugin(void);
QUIESCE_PLUGIN_EXPORT int not_a_quiesce_plugin(void) { return 0; }
#else
QUIESCE_PLUGIN_EXPORT quiesce_plugin_version quiesce_plugin_abi_version(void) {
#if FIXTURE_KIND == 1
  quiesce_plugin_version version = {QUIESCE_PLUGIN_ABI_MAJOR + 1, 0, 0};
#elif FIXTURE_KIND == 2
  quiesce_plugin_version version = {QUIESCE_PLUGIN_ABI_MAJOR, QUIESCE_PLUGIN_ABI_MINOR + 1, 0};
#else
  quiesce_plugin_version version = {QUIESCE_PLUGIN_ABI_MAJOR, QUIESCE_PLUGIN_ABI_MINOR,
                                    QUIESCE_PLUGIN_ABI_PATCH};
#endif
  return version;
}
#endif

#if FIXTURE_KIND == 3
struct quiesce_plugin_handle {
  int unused;
};
static quiesce_plugin_handle the_handle;

QUIESCE_PLUGIN_EXPORT const quiesce_plugin_description* quiesce_plugin_describe(void) {
  static const quiesce_plugin_description description = {"no-thaw", QUIESCE_PLUGIN_LEVEL_APPLICATION,
                                                         NULL, NULL};
  return &description;
}
QUIESCE_PLUGIN_EXPORT quiesce_plugin_handle* quiesce_plugin_create(
    const quiesce_plugin_init_input* input, int32_t* rc) {
  (void)input;
  *rc = QUIESCE_PLUGIN_OK;
  return &the_handle;
}
QUIESCE_PLUGIN_EXPORT void quiesce_plugin_destroy(quiesce_plugin_handle* h) { (void)h; }
QUIESCE_PLUGIN_EXPORT int32_t quiesce_plugin_identify(quiesce_plugin_handle* h,
                                                      const quiesce_plugin_call_context* ctx,
                                                      const char** out) {
  (void)h;
  (void)ctx;
  *out = NULL;
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
  (void)h;
  (void)ctx;
  return QUIESCE_PLUGIN_OK;
}
QUIESCE_PLUGIN_EXPORT int32_t quiesce_plugin_abort(quiesce_plugin_handle* h,
                                                   const quiesce_plugin_call_context* ctx) {
  (void)h;
  (void)ctx;
  return QUIESCE_PLUGIN_OK;
}
QUIESCE_PLUGIN_EXPORT const char* quiesce_plugin_get_last_error(quiesce_plugin_handle* h) {
  (void)h;
  return NULL;
}
#endif
