#pragma once
// A blocking hiredis connection with deadlines and classified errors: every
// failure comes back as a Status whose class says whether a retry can help
// and whose message says what to fix ("redis <endpoint>: could not <action>:
// ..."). Used only by the redis writer, on its worker thread.

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "quiesce/status.hpp"
#include "quiesce/writer.hpp"

struct redisContext;

namespace quiesce::writers::redis {

// Where the server is and who we are. Exactly one of socket / host is set.
struct Target {
  std::string socket;
  std::string host;
  int port = 6379;
  std::string user;           // ACL user; "" for the default user
  std::string password_file;  // "" for no AUTH
  std::chrono::milliseconds connect_timeout{2000};

  [[nodiscard]] std::string endpoint() const;
};

// A reply, copied out of hiredis so that no C object outlives its call.
struct Reply {
  enum class Kind { string, status, integer, nil, array, error };
  Kind kind = Kind::nil;
  std::string text;  // string, status and error replies
  long long integer = 0;
  std::vector<Reply> elements;
};

// "key:value" lines of an INFO section.
using InfoFields = std::map<std::string, std::string, std::less<>>;
[[nodiscard]] InfoFields parse_info(std::string_view text);

// The class and advice for an error reply ("NOPERM ...", "LOADING ...").
[[nodiscard]] Status classify_error_reply(const Target& target, std::string_view action,
                                          std::string_view error);

class Connection {
 public:
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Connects and authenticates. Retryable when the server is not there
  // (it may be restarting); non_retryable for credentials.
  [[nodiscard]] static Status open(const Target& target, Clock::time_point deadline,
                                   std::unique_ptr<Connection>& out);

  // One command; an error reply becomes a classified Status.
  [[nodiscard]] Status run(std::string_view action, const std::vector<std::string>& argv,
                           Clock::time_point deadline, Reply& out);
  // Several commands in one round trip, answered in order; Redis runs them
  // back to back with nothing of its own (no cron, no fork) in between.
  // Error replies are returned as replies, not as a failed Status.
  [[nodiscard]] Status pipeline(std::string_view action,
                                const std::vector<std::vector<std::string>>& commands,
                                Clock::time_point deadline, std::vector<Reply>& out);

  // Shortcuts.
  [[nodiscard]] Status info(std::string_view section, Clock::time_point deadline,
                            InfoFields& out);
  // CONFIG GET of one parameter; nullopt when the server does not know it.
  [[nodiscard]] Status config_get(std::string_view parameter, Clock::time_point deadline,
                                  std::optional<std::string>& out);

  // False once an I/O error was seen: the connection is unusable.
  [[nodiscard]] bool usable() const { return usable_; }
  [[nodiscard]] const Target& target() const { return target_; }

 private:
  Connection(Target target, redisContext* context) : target_(std::move(target)), context_(context) {}
  Status io_error(std::string_view action);
  Status set_deadline(std::string_view action, Clock::time_point deadline);

  Target target_;
  redisContext* context_ = nullptr;
  bool usable_ = true;
};

}  // namespace quiesce::writers::redis
