#include "agent/core/os_log_sink.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>

#include "agent/core/journald_sink.hpp"
#include "platform/linux/libsystemd_api.hpp"

namespace quiesce::agent {

spdlog::sink_ptr make_os_log_sink(const LogConfig& config) {
  // "stderr" under systemd is the journal already (JOURNAL_STREAM): native
  // records carry the session, writer and phase fields besides the text.
  if (config.target == "journald" ||
      (config.target == "stderr" && is_journal_stream(STDERR_FILENO, std::getenv("JOURNAL_STREAM")))) {
    // sd_journal_sendv is libsystemd's: loaded here, only for this sink.
    try {
      (void)platform::libsystemd();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "quiesce-agent: logging to stderr, not journald: %s\n", e.what());
      return nullptr;
    }
    return std::make_shared<JournaldSink>("quiesce-agent");
  }
  return nullptr;
}

}  // namespace quiesce::agent
