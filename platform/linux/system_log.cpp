#include "platform/system_log.hpp"

#include <sys/uio.h>
#include <syslog.h>

#include <mutex>
#include <string>

#include <spdlog/sinks/base_sink.h>

#include "platform/linux/libsystemd_api.hpp"

namespace quiesce::platform {

namespace {

// spdlog's systemd_sink, less the link to libsystemd: sd_journal_sendv comes
// from the table loaded on demand (libsystemd_api.hpp).
class JournalSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit JournalSink(std::string ident) : ident_("SYSLOG_IDENTIFIER=" + std::move(ident)) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    const std::string message = "MESSAGE=" + std::string(msg.payload.data(), msg.payload.size());
    const std::string priority = "PRIORITY=" + std::to_string(syslog_priority(msg.level));
    iovec entries[] = {{const_cast<char*>(message.data()), message.size()},
                       {const_cast<char*>(priority.data()), priority.size()},
                       {const_cast<char*>(ident_.data()), ident_.size()}};
    (void)libsystemd().sd_journal_sendv(entries, 3);
  }
  void flush_() override {}

 private:
  static int syslog_priority(spdlog::level::level_enum level) {
    switch (level) {
      case spdlog::level::trace:
      case spdlog::level::debug:
        return LOG_DEBUG;
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

  std::string ident_;
};

}  // namespace

const char* system_log_name() { return "journald"; }

std::shared_ptr<spdlog::sinks::sink> make_system_log_sink(const std::string& ident) {
  (void)libsystemd();  // throws here, not at the first line logged, when it is missing
  return std::make_shared<JournalSink>(ident);
}

}  // namespace quiesce::platform
