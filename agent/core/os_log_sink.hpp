#pragma once
// The log sink of the OS's own log, per OS (os_log_sink_<os>.cpp): journald
// on Linux (native records with the session, writer and phase fields), the
// Event Log on Windows.

#include <spdlog/common.h>

#include "agent/core/config.hpp"

namespace quiesce::agent {

// The sink for config.target == platform::system_log_name(), or for
// "stderr" when stderr is that log already (a systemd service's stderr is
// the journal); nullptr when the target is plain stderr.
[[nodiscard]] spdlog::sink_ptr make_os_log_sink(const LogConfig& config);

}  // namespace quiesce::agent
