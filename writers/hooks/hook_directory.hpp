#pragma once
// Reading a hook directory: which files are hooks, which are skipped (and
// why), and which are refused because someone other than root could have
// changed them. Kept apart from the writer so the rules can be tested alone.

#include <filesystem>
#include <string>
#include <vector>

namespace quiesce::writers::hooks {

struct Hook {
  std::string name;  // file name, the ordering key
  std::string path;  // what is executed
};

struct SkippedFile {
  std::string name;
  std::string reason;  // "backup or package-manager file (*.dpkg-*)", "not executable", ...
};

struct HookScan {
  std::string directory;
  bool exists = false;
  // Set when the directory itself may not be used (not a directory, unsafe
  // ownership or mode, unreadable); no hooks are listed then.
  std::string directory_error;
  std::vector<Hook> hooks;  // in byte order of their names
  std::vector<SkippedFile> skipped;
  std::vector<SkippedFile> refused;  // would run, but fail the ownership/mode rules

  // True when hooks may run: the directory is absent (nothing to do) or usable
  // and no hook in it was refused.
  [[nodiscard]] bool usable() const { return directory_error.empty() && refused.empty(); }
  // A one-line account of why it is not usable, naming each offending file.
  [[nodiscard]] std::string problem() const;
};

struct ScanRules {
  // Only for tests and unprivileged trials: accept files and the directory
  // owned by anyone. Group- or other-writable ones are refused regardless.
  bool allow_non_root_owner = false;
};

// Why a file name alone rules a file out ("" when it does not).
[[nodiscard]] std::string skip_reason_for_name(const std::string& name);

// One script named by a full path (open-vm-tools' legacy
// /usr/sbin/pre-freeze-script): whether it is there to run, and why it may
// not run when it is. The same rules as for a hook in a directory.
struct SingleScript {
  bool present = false;  // a regular file (after symlinks): open-vm-tools runs nothing else
  std::string problem;   // present but refused: "not executable", "owned by uid 1000, not root"
};
[[nodiscard]] SingleScript check_single_script(const std::string& path, const ScanRules& rules);

[[nodiscard]] HookScan scan_hook_directory(const std::filesystem::path& directory,
                                           const ScanRules& rules);

}  // namespace quiesce::writers::hooks
