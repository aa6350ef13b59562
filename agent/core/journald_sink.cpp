#include "agent/core/journald_sink.hpp"

#include <sys/stat.h>
#include <sys/uio.h>
#include <syslog.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>

#include "platform/linux/libsystemd_api.hpp"

namespace quiesce::agent {

namespace {

int syslog_priority(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
    case spdlog::level::debug:
      return LOG_DEBUG;
    case spdlog::level::info:
      return LOG_INFO;
    case spdlog::level::warn:
      return LOG_WARNING;
    case spdlog::level::err:
      return LOG_ERR;
    case spdlog::level::critical:
      return LOG_CRIT;
    default:
      return LOG_INFO;
  }
}

int send_to_journal(const std::vector<std::string>& record) {
  std::vector<iovec> entries;
  entries.reserve(record.size());
  for (const auto& entry : record) {
    entries.push_back({const_cast<char*>(entry.data()), entry.size()});
  }
  // Loaded by make_os_log_sink before this sink was made.
  return platform::libsystemd().sd_journal_sendv(entries.data(), static_cast<int>(entries.size()));
}

}  // namespace

std::vector<std::string> journal_record(const spdlog::details::log_msg& msg, const LogFields& fields,
                                        std::string_view identifier) {
  std::vector<std::string> record;
  record.push_back("MESSAGE=" + std::string(msg.payload.data(), msg.payload.size()));
  record.push_back("PRIORITY=" + std::to_string(syslog_priority(msg.level)));
  record.push_back("SYSLOG_IDENTIFIER=" + std::string(identifier));
  record.push_back("TID=" + std::to_string(msg.thread_id));
  if (!fields.session.empty()) {
    record.push_back("QUIESCE_SESSION=" + fields.session);
  }
  if (!fields.writer.empty()) {
    record.push_back("QUIESCE_WRITER=" + fields.writer);
  }
  if (!fields.phase.empty()) {
    record.push_back("QUIESCE_PHASE=" + fields.phase);
  }
  return record;
}

bool is_journal_stream(int fd, const char* journal_stream) {
  if (journal_stream == nullptr) {
    return false;
  }
  const std::string_view text(journal_stream);
  const auto colon = text.find(':');
  if (colon == std::string_view::npos) {
    return false;
  }
  unsigned long long device = 0;
  unsigned long long inode = 0;
  const auto* begin = text.data();
  const auto* end = text.data() + text.size();
  auto parsed = std::from_chars(begin, begin + colon, device);
  if (parsed.ec != std::errc{} || parsed.ptr != begin + colon) {
    return false;
  }
  parsed = std::from_chars(begin + colon + 1, end, inode);
  if (parsed.ec != std::errc{} || parsed.ptr != end) {
    return false;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return false;
  }
  return static_cast<unsigned long long>(st.st_dev) == device &&
         static_cast<unsigned long long>(st.st_ino) == inode;
}

JournaldSink::JournaldSink(std::string identifier, Send send)
    : identifier_(std::move(identifier)), send_(send ? std::move(send) : Send(send_to_journal)) {}

void JournaldSink::sink_it_(const spdlog::details::log_msg& msg) {
  if (send_(journal_record(msg, current_log_fields(), identifier_)) < 0) {
    // journald is gone (stopped, restarting): the line still goes somewhere
    // a person may look, rather than nowhere.
    std::fprintf(stderr, "%.*s\n", static_cast<int>(msg.payload.size()), msg.payload.data());
  }
}

}  // namespace quiesce::agent
