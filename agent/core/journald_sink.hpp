#pragma once
// Native journald records (sd_journal_sendv) carrying the agent's structured
// fields (log_fields.hpp) next to MESSAGE and PRIORITY, so that
// `journalctl QUIESCE_SESSION=<id>` finds every line about one session.
// Used with log.target "journald", and with "stderr" when stderr is the
// journal (a systemd service's default): the lines land in the journal
// either way, and native records keep the fields a text stream would lose.

#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <spdlog/details/log_msg.h>
#include <spdlog/sinks/base_sink.h>

#include "agent/core/log_fields.hpp"

namespace quiesce::agent {

// One record's "FIELD=value" entries: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER,
// TID, and QUIESCE_SESSION / QUIESCE_WRITER / QUIESCE_PHASE where set.
[[nodiscard]] std::vector<std::string> journal_record(const spdlog::details::log_msg& msg,
                                                      const LogFields& fields,
                                                      std::string_view identifier);

// Whether `fd` is the stream systemd connected to journald for this service:
// systemd sets JOURNAL_STREAM to "<device>:<inode>" of it (systemd.exec(5)).
// `journal_stream` is that variable's value (nullptr when unset). False for
// anything else, e.g. stderr redirected to a file by whoever started us.
[[nodiscard]] bool is_journal_stream(int fd, const char* journal_stream);

class JournaldSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  // Sends one record; returns 0 or a negative errno (sd_journal_sendv's
  // contract). Replaceable so unit tests can see the records.
  using Send = std::function<int(const std::vector<std::string>& record)>;

  explicit JournaldSink(std::string identifier, Send send = {});

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override;
  void flush_() override {}

 private:
  std::string identifier_;
  Send send_;
};

}  // namespace quiesce::agent
