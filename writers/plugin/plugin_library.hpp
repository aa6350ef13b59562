#pragma once
// One writer plugin shared object, loaded and checked: the file's ownership
// and mode, then the ABI version (before any other symbol is looked up), then
// every required entry point. The optional ones that exist are the plugin's
// capabilities. The library stays loaded as long as this object lives.

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "platform/shared_library.hpp"
#include "quiesce/plugin_abi.h"

namespace quiesce::writers::plugin {

// Why a plugin could not be loaded; the message names the file.
class PluginLoadError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct LoadRules {
  // Tests only: accept a file and directory not owned by root. Group- or
  // world-writable ones are refused regardless.
  bool allow_non_root_owner = false;
};

// The entry points, resolved. Optional ones are null when absent.
struct PluginFunctions {
  quiesce_plugin_abi_version_fn* abi_version = nullptr;
  quiesce_plugin_describe_fn* describe = nullptr;
  quiesce_plugin_create_fn* create = nullptr;
  quiesce_plugin_destroy_fn* destroy = nullptr;
  quiesce_plugin_identify_fn* identify = nullptr;
  quiesce_plugin_prepare_fn* prepare = nullptr;
  quiesce_plugin_freeze_fn* freeze = nullptr;
  quiesce_plugin_thaw_fn* thaw = nullptr;
  quiesce_plugin_abort_fn* abort = nullptr;
  quiesce_plugin_get_last_error_fn* get_last_error = nullptr;
  quiesce_plugin_post_snapshot_fn* post_snapshot = nullptr;  // optional
  quiesce_plugin_post_restore_fn* post_restore = nullptr;    // optional
};

struct PluginDescription {
  std::string type_name;
  int level = QUIESCE_PLUGIN_LEVEL_APPLICATION;
  std::string description;
  std::string plugin_version;
};

class PluginLibrary {
 public:
  // Throws PluginLoadError.
  [[nodiscard]] static std::shared_ptr<PluginLibrary> load(const std::string& path,
                                                           const LoadRules& rules);
  PluginLibrary(const PluginLibrary&) = delete;
  PluginLibrary& operator=(const PluginLibrary&) = delete;

  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] const PluginFunctions& functions() const { return functions_; }
  [[nodiscard]] const PluginDescription& description() const { return description_; }
  [[nodiscard]] quiesce_plugin_version abi_version() const { return abi_version_; }
  // "post_snapshot", "post_restore": the optional entry points it exports.
  [[nodiscard]] std::vector<std::string> capabilities() const;

 private:
  PluginLibrary(std::string path, platform::SharedLibrary library)
      : path_(std::move(path)), library_(std::move(library)) {}

  std::string path_;
  platform::SharedLibrary library_;
  PluginFunctions functions_;
  PluginDescription description_;
  quiesce_plugin_version abi_version_{};
};

// The host's side of the version rule, as a sentence ("" when compatible):
// same major, and the host's minor at least the plugin's.
[[nodiscard]] std::string abi_version_problem(quiesce_plugin_version plugin,
                                              quiesce_plugin_version host);
[[nodiscard]] std::string to_string(quiesce_plugin_version version);
[[nodiscard]] constexpr quiesce_plugin_version host_abi_version() {
  return {QUIESCE_PLUGIN_ABI_MAJOR, QUIESCE_PLUGIN_ABI_MINOR, QUIESCE_PLUGIN_ABI_PATCH};
}

}  // namespace quiesce::writers::plugin
