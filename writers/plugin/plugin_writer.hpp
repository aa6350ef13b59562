#pragma once
// The `plugin` writer: a third-party writer loaded from a shared object that
// implements the C ABI in quiesce/plugin_abi.h (usually through the C++ SDK,
// quiesce/plugin_sdk.hpp). See docs/writing-a-writer.md.
//
// options:
//   "path":    "/usr/lib/quiesce/plugins/x.so"   required, absolute
//   "options": {...}                              the plugin's own options
//   "allow_non_root_owner": false                 tests only: accept a .so
//                                                 (and directory) not owned by root
// The .so and its directory must not be writable by group or others. The
// level comes from the writer's config ("level"); the plugin's own default
// level is reported by identify and logged when the two differ.

#include <memory>

#include "quiesce/writer_registry.hpp"
#include "writers/plugin/plugin_library.hpp"

namespace quiesce::writers {

void register_plugin_writer(WriterRegistry& registry);

// The adapter alone, for a library already loaded (the conformance kit uses
// it too). `plugin_options` is the plugin's own options object. Throws
// FieldError (path "options.options") when the plugin refuses to be created.
[[nodiscard]] std::unique_ptr<Writer> make_plugin_writer(
    std::shared_ptr<plugin::PluginLibrary> library, const WriterSpec& spec,
    const nlohmann::json& plugin_options, const WriterEnvironment& env);

}  // namespace quiesce::writers
