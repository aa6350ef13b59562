#pragma once
// The `hooks` writer: runs the executables in a directory at each phase
// (docs/writers/hooks.md). Hook directories written for qemu-guest-agent
// (fsfreeze-hook.d: `freeze` / `thaw`) and open-vm-tools (backupScripts.d:
// `freeze` / `thaw` / `freezeFail`) run unmodified with the matching style.
//
// options:
//   "directory":            "/etc/quiesce/hooks.d" (Windows: C:\ProgramData\Quiesce\hooks.d)
//   "style":                "quiesce" | "qemu" | "vmware"
//   "timeout_ms":           30000    per hook, never beyond the call's deadline
//   "allow_non_root_owner": false    tests only: accept hooks not owned by root
//                                    (Windows: by SYSTEM or the Administrators)
//   "legacy_freeze_script": "/usr/sbin/pre-freeze-script"   vmware style only
//   "legacy_thaw_script":   "/usr/sbin/post-thaw-script"    vmware style only

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include <spdlog/logger.h>

#include "quiesce/writer_registry.hpp"

namespace quiesce::platform {
class LingeringOutput;  // platform/linux/lingering_output.hpp (POSIX only)
}

namespace quiesce::writers {

void register_hooks_writer(WriterRegistry& registry);

struct StaleHooksReport {
  std::vector<std::string> records;  // the run-dir records found
  std::size_t released = 0;          // hooks run to success
  std::size_t failed = 0;            // hooks that failed or could not run
};

// For a starting agent: a dead instance's hooks writer left hooks frozen
// (its record under `run_dir` lists them, written before each freeze hook
// ran). Runs each one's release, as the style does at abort (quiesce:
// `abort`, qemu: `thaw`, vmware: `freezeFail`), in reverse freeze order,
// then removes the record. A hook helper holding a database lock (qemu's
// mysql-flush.sh) is released here instead of holding on until it gives up.
// With `helper_output`, the output pipes those hooks' helpers still hold are
// opened again (through /proc) and read there first, so a helper that writes
// as it releases does not die of SIGPIPE half-way; it must outlive them.
[[nodiscard]] StaleHooksReport recover_stale_hooks(
    const std::string& run_dir, const std::shared_ptr<spdlog::logger>& logger,
    platform::LingeringOutput* helper_output = nullptr);

}  // namespace quiesce::writers
