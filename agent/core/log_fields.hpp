#pragma once
// The structured fields of the agent's log records: which session, writer
// and protocol phase a line is about. The journald sink sends them as
// QUIESCE_SESSION, QUIESCE_WRITER and QUIESCE_PHASE, so
// `journalctl QUIESCE_SESSION=s-...` shows one session's story (docs/config.md).
//
// They are a per-thread context, set by scopes where the work happens (the
// coordinator around each operation, the writer worker around each writer
// call), the way systemd's own LOG_CONTEXT_PUSH does: a writer's own log
// calls then carry them without a logger of their own per session. The
// spdlog logger is synchronous, so a sink sees the context of the thread
// that logged; HoldAwareSink keeps a copy with each line it holds.

#include <string>

namespace quiesce::agent {

struct LogFields {
  std::string session;
  std::string writer;
  std::string phase;  // a protocol phase: identify, prepare, freeze, thaw, ...

  bool operator==(const LogFields&) const = default;
};

// The calling thread's fields (empty strings where none is set).
[[nodiscard]] const LogFields& current_log_fields();

// Sets fields on this thread until the scope ends, then restores what was
// there. The non-empty fields of `add` replace the current ones; the others
// are kept (a writer call inside a session keeps the session).
class ScopedLogFields {
 public:
  explicit ScopedLogFields(const LogFields& add);
  // Every field exactly as given, empty ones included: for replaying a held
  // line with the context it was logged in.
  struct Exactly {};
  ScopedLogFields(const LogFields& fields, Exactly);
  ~ScopedLogFields();
  ScopedLogFields(const ScopedLogFields&) = delete;
  ScopedLogFields& operator=(const ScopedLogFields&) = delete;

 private:
  LogFields saved_;
};

}  // namespace quiesce::agent
