#include "platform/system_log.hpp"

namespace quiesce::platform {

// The agent's journald sink is agent/core/journald_sink.* (native records
// with the session, writer and phase fields), made by make_os_log_sink.
const char* system_log_name() { return "journald"; }

}  // namespace quiesce::platform
