#include "writers/plugin/plugin_library.hpp"

#include <filesystem>
#include <regex>

#include "platform/trusted_file.hpp"

namespace quiesce::writers::plugin {

namespace {

// Resolves `path` and checks the file and its directory before the library
// is loaded, so its constructors never run when it may not be trusted.
std::string checked_real_path(const std::string& path, const LoadRules& rules) {
  if (path.empty() || !std::filesystem::path(path).is_absolute()) {
    throw PluginLoadError("plugin path '" + path + "' must be absolute");
  }
  auto checked = platform::check_trusted_file(
      path, "plugin", platform::TrustRules{.allow_foreign_owner = rules.allow_non_root_owner});
  if (!checked.problem.empty()) {
    throw PluginLoadError(checked.problem);
  }
  return checked.real_path;
}

}  // namespace

std::string to_string(quiesce_plugin_version version) {
  return std::to_string(version.major) + "." + std::to_string(version.minor) + "." +
         std::to_string(version.patch);
}

std::string abi_version_problem(quiesce_plugin_version plugin, quiesce_plugin_version host) {
  if (plugin.major != host.major) {
    return "built for plugin ABI " + to_string(plugin) + ", but this agent implements ABI " +
           to_string(host) + " (the major versions must be equal)";
  }
  if (plugin.minor > host.minor) {
    return "built for plugin ABI " + to_string(plugin) + ", newer than this agent's ABI " +
           to_string(host) + " (upgrade the agent, or rebuild the plugin against ABI " +
           std::to_string(host.major) + "." + std::to_string(host.minor) + ")";
  }
  return "";
}

std::shared_ptr<PluginLibrary> PluginLibrary::load(const std::string& path,
                                                   const LoadRules& rules) {
  const auto real = checked_real_path(path, rules);
  // RTLD_NOW | RTLD_LOCAL (SharedLibrary): an unresolved symbol fails here,
  // not in the middle of a freeze, and one plugin's symbols never satisfy
  // another's.
  auto opened = [&] {
    try {
      return platform::SharedLibrary(real);
    } catch (const platform::SharedLibraryError& e) {
      throw PluginLoadError("plugin " + path + ": cannot load: " + e.reason());
    }
  }();
  std::shared_ptr<PluginLibrary> library(new PluginLibrary(path, std::move(opened)));
  platform::FunctionResolver resolve(library->library_);
  auto& fns = library->functions_;

  // The version first: nothing else about a plugin of another ABI can be
  // trusted, not even the names or signatures of its other entry points.
  resolve(fns.abi_version, "quiesce_plugin_abi_version");
  if (fns.abi_version == nullptr) {
    throw PluginLoadError("plugin " + path +
                          ": not a Quiesce writer plugin (no quiesce_plugin_abi_version symbol)");
  }
  library->abi_version_ = fns.abi_version();
  if (auto problem = abi_version_problem(library->abi_version_, host_abi_version());
      !problem.empty()) {
    throw PluginLoadError("plugin " + path + " refused: " + problem);
  }

  resolve(fns.describe, "quiesce_plugin_describe");
  resolve(fns.create, "quiesce_plugin_create");
  resolve(fns.destroy, "quiesce_plugin_destroy");
  resolve(fns.identify, "quiesce_plugin_identify");
  resolve(fns.prepare, "quiesce_plugin_prepare");
  resolve(fns.freeze, "quiesce_plugin_freeze");
  resolve(fns.thaw, "quiesce_plugin_thaw");
  resolve(fns.abort, "quiesce_plugin_abort");
  resolve(fns.get_last_error, "quiesce_plugin_get_last_error");
  if (!resolve.missing().empty()) {
    std::string missing;
    for (const auto& name : resolve.missing()) {
      missing += (missing.empty() ? "" : ", ") + name;
    }
    throw PluginLoadError("plugin " + path + " refused: missing required symbol(s): " + missing);
  }
  // Optional: a missing one is a capability the plugin lacks.
  platform::FunctionResolver optional(library->library_);
  optional(fns.post_snapshot, "quiesce_plugin_post_snapshot");
  optional(fns.post_restore, "quiesce_plugin_post_restore");

  const quiesce_plugin_description* description = fns.describe();
  if (description == nullptr || description->type_name == nullptr) {
    throw PluginLoadError("plugin " + path + " refused: quiesce_plugin_describe gave no type name");
  }
  static const std::regex type_pattern("^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$");
  if (!std::regex_match(description->type_name, type_pattern)) {
    throw PluginLoadError("plugin " + path + " refused: type name '" +
                          std::string(description->type_name) +
                          "' is not 1-64 letters, digits, '_', '.', '-'");
  }
  if (description->default_level < QUIESCE_PLUGIN_LEVEL_APPLICATION ||
      description->default_level > QUIESCE_PLUGIN_LEVEL_FILESYSTEM) {
    throw PluginLoadError("plugin " + path + " refused: unknown default level " +
                          std::to_string(description->default_level));
  }
  library->description_ = PluginDescription{
      .type_name = description->type_name,
      .level = description->default_level,
      .description = description->description != nullptr ? description->description : "",
      .plugin_version = description->plugin_version != nullptr ? description->plugin_version : "",
  };
  return library;
}

std::vector<std::string> PluginLibrary::capabilities() const {
  std::vector<std::string> result;
  if (functions_.post_snapshot != nullptr) {
    result.emplace_back("post_snapshot");
  }
  if (functions_.post_restore != nullptr) {
    result.emplace_back("post_restore");
  }
  return result;
}

}  // namespace quiesce::writers::plugin
