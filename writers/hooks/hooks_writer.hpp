#pragma once
// The `hooks` writer: runs the executables in a directory at each phase
// (docs/writers/hooks.md). Hook directories written for qemu-guest-agent
// (fsfreeze-hook.d: `freeze` / `thaw`) and open-vm-tools (backupScripts.d:
// `freeze` / `thaw` / `freezeFail`) run unmodified with the matching style.
//
// options:
//   "directory":            "/etc/quiesce/hooks.d"
//   "style":                "quiesce" | "qemu" | "vmware"
//   "timeout_ms":           30000    per hook, never beyond the call's deadline
//   "allow_non_root_owner": false    tests only: accept hooks not owned by root

#include "quiesce/writer_registry.hpp"

namespace quiesce::writers {

void register_hooks_writer(WriterRegistry& registry);

}  // namespace quiesce::writers
