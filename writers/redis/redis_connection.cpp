#include "writers/redis/redis_connection.hpp"

#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "writers/redis/hiredis_api.hpp"

namespace quiesce::writers::redis {

namespace {

using std::chrono::milliseconds;

struct ReplyDeleter {
  void operator()(redisReply* reply) const { hiredis().freeReplyObject(reply); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

Reply copy_reply(const redisReply& reply) {
  Reply out;
  switch (reply.type) {
    case REDIS_REPLY_STRING:
      out.kind = Reply::Kind::string;
      out.text.assign(reply.str, reply.len);
      break;
    case REDIS_REPLY_STATUS:
      out.kind = Reply::Kind::status;
      out.text.assign(reply.str, reply.len);
      break;
    case REDIS_REPLY_ERROR:
      out.kind = Reply::Kind::error;
      out.text.assign(reply.str, reply.len);
      break;
    case REDIS_REPLY_INTEGER:
      out.kind = Reply::Kind::integer;
      out.integer = reply.integer;
      break;
    case REDIS_REPLY_ARRAY:
      out.kind = Reply::Kind::array;
      for (std::size_t i = 0; i < reply.elements; ++i) {
        out.elements.push_back(copy_reply(*reply.element[i]));
      }
      break;
    default:
      out.kind = Reply::Kind::nil;
      break;
  }
  return out;
}

timeval to_timeval(milliseconds ms) {
  ms = std::max(ms, milliseconds(1));
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(ms.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms.count() % 1000) * 1000);
  return tv;
}

std::string first_word(std::string_view text) {
  return std::string(text.substr(0, text.find(' ')));
}

// What a NOPERM error names ("... to run the 'config|set' command"), or "".
std::string denied_command(std::string_view error) {
  const auto open = error.find('\'');
  if (open == std::string_view::npos) {
    return "";
  }
  const auto close = error.find('\'', open + 1);
  if (close == std::string_view::npos) {
    return "";
  }
  return std::string(error.substr(open + 1, close - open - 1));
}

Status read_password(const Target& target, std::string& password) {
  std::ifstream in(target.password_file);
  if (!in) {
    return Status::non_retryable("redis " + target.endpoint() + ": could not read the password file '" +
                                 target.password_file + "' (" + std::strerror(errno) +
                                 "); fix options.password_file or its permissions");
  }
  std::getline(in, password);
  // Files written by `echo` end with a newline that is not part of the password.
  while (!password.empty() && (password.back() == '\r' || password.back() == '\n')) {
    password.pop_back();
  }
  return Status::ok();
}

}  // namespace

std::string Target::endpoint() const {
  return socket.empty() ? host + ":" + std::to_string(port) : socket;
}

InfoFields parse_info(std::string_view text) {
  InfoFields fields;
  std::istringstream in{std::string(text)};
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') {
      line.pop_back();
    }
    if (line.empty() || line.front() == '#') {
      continue;
    }
    const auto colon = line.find(':');
    if (colon != std::string::npos) {
      fields[line.substr(0, colon)] = line.substr(colon + 1);
    }
  }
  return fields;
}

Status classify_error_reply(const Target& target, std::string_view action, std::string_view error) {
  const std::string prefix = "redis " + target.endpoint() + ": could not " + std::string(action) + ": ";
  const std::string code = first_word(error);
  const std::string quoted = std::string(error);
  const std::string user = target.user.empty() ? "default" : target.user;
  if (code == "LOADING" || code == "BUSY" || code == "TRYAGAIN" || code == "MASTERDOWN" ||
      code == "BUSYKEY") {
    return Status::retryable(prefix + "the server is busy (" + quoted + "); retry once it is done");
  }
  if (code == "NOAUTH") {
    return Status::non_retryable(prefix + "the server requires a password (" + quoted +
                                 "); set options.password_file (and options.user for an ACL user)");
  }
  if (code == "WRONGPASS" || (code == "ERR" && quoted.find("invalid password") != std::string::npos)) {
    return Status::non_retryable(prefix + "authentication as user '" + user + "' failed (" + quoted +
                                 "); fix options.user or the password in options.password_file");
  }
  if (code == "NOPERM") {
    auto command = denied_command(error);
    std::string advice = command.empty()
                             ? "grant the ACL user the commands listed in docs/writers/redis.md"
                             : "grant it with: ACL SETUSER " + user + " +" + command;
    return Status::non_retryable(prefix + "ACL user '" + user + "' lacks a permission (" + quoted +
                                 "); " + advice);
  }
  if (code == "MISCONF") {
    return Status::non_retryable(prefix + "the server cannot persist to disk (" + quoted +
                                 "); fix its disk (full? read-only?) and check its log");
  }
  if (code == "ERR" && quoted.find("unknown command") != std::string::npos) {
    return Status::non_retryable(prefix + quoted +
                                 "; the command is missing or renamed (rename-command): the writer "
                                 "needs it under its own name");
  }
  return Status::non_retryable(prefix + quoted);
}

Connection::~Connection() {
  if (context_ != nullptr) {
    hiredis().redisFree(context_);
  }
}

Status Connection::open(const Target& target, Clock::time_point deadline,
                        std::unique_ptr<Connection>& out) {
  const auto now = Clock::now();
  if (now >= deadline) {
    return Status::timeout("redis " + target.endpoint() + ": the deadline passed before connecting");
  }
  const auto remaining = std::chrono::duration_cast<milliseconds>(deadline - now);
  const auto tv = to_timeval(std::min(remaining, target.connect_timeout));
  const HiredisApi& api = hiredis();
  redisContext* context = target.socket.empty()
                              ? api.redisConnectWithTimeout(target.host.c_str(), target.port, tv)
                              : api.redisConnectUnixWithTimeout(target.socket.c_str(), tv);
  if (context == nullptr) {
    return Status::retryable("redis " + target.endpoint() + ": could not connect: out of memory");
  }
  if (context->err != 0) {
    std::string reason = context->errstr;
    api.redisFree(context);
    return Status::retryable("redis " + target.endpoint() + ": could not connect (" + reason +
                             "); is the server running and is options." +
                             (target.socket.empty() ? "host/port" : "socket") + " right?");
  }
  std::unique_ptr<Connection> connection(new Connection(target, context));
  if (!target.password_file.empty()) {
    std::string password;
    if (auto status = read_password(target, password); !status.is_ok()) {
      return status;
    }
    std::vector<std::string> argv{"AUTH"};
    if (!target.user.empty()) {
      argv.push_back(target.user);
    }
    argv.push_back(std::move(password));
    Reply reply;
    if (auto status = connection->run("authenticate", argv, deadline, reply); !status.is_ok()) {
      return status;
    }
  }
  out = std::move(connection);
  return Status::ok();
}

Status Connection::set_deadline(std::string_view action, Clock::time_point deadline) {
  if (!usable_) {
    return Status::retryable("redis " + target_.endpoint() + ": could not " + std::string(action) +
                             ": the connection was lost earlier");
  }
  const auto now = Clock::now();
  if (now >= deadline) {
    return Status::timeout("redis " + target_.endpoint() + ": could not " + std::string(action) +
                           ": the phase deadline passed");
  }
  const auto remaining = std::chrono::duration_cast<milliseconds>(deadline - now);
  // hiredis has no per-call timeout: the socket's SO_RCVTIMEO/SO_SNDTIMEO
  // bound each call instead.
  if (hiredis().redisSetTimeout(context_, to_timeval(remaining)) != REDIS_OK) {
    return io_error(action);
  }
  return Status::ok();
}

Status Connection::io_error(std::string_view action) {
  usable_ = false;
  const std::string prefix = "redis " + target_.endpoint() + ": could not " + std::string(action);
  const int err = context_->err;
  const std::string reason = context_->errstr;
  if (err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK ||
                              reason.find("temporarily unavailable") != std::string::npos)) {
    return Status::timeout(prefix + ": no answer before the phase deadline");
  }
  return Status::retryable(prefix + ": the connection failed (" +
                           (reason.empty() ? std::string("closed by the server") : reason) + ")");
}

Status Connection::run(std::string_view action, const std::vector<std::string>& argv,
                       Clock::time_point deadline, Reply& out) {
  std::vector<Reply> replies;
  if (auto status = pipeline(action, {argv}, deadline, replies); !status.is_ok()) {
    return status;
  }
  out = std::move(replies.front());
  if (out.kind == Reply::Kind::error) {
    return classify_error_reply(target_, action, out.text);
  }
  return Status::ok();
}

Status Connection::pipeline(std::string_view action,
                            const std::vector<std::vector<std::string>>& commands,
                            Clock::time_point deadline, std::vector<Reply>& out) {
  if (auto status = set_deadline(action, deadline); !status.is_ok()) {
    return status;
  }
  for (const auto& argv : commands) {
    std::vector<const char*> args;
    std::vector<std::size_t> lengths;
    for (const auto& arg : argv) {
      args.push_back(arg.data());
      lengths.push_back(arg.size());
    }
    if (hiredis().redisAppendCommandArgv(context_, static_cast<int>(args.size()), args.data(),
                                         lengths.data()) != REDIS_OK) {
      return io_error(action);
    }
  }
  out.clear();
  for (std::size_t i = 0; i < commands.size(); ++i) {
    void* raw = nullptr;
    if (hiredis().redisGetReply(context_, &raw) != REDIS_OK || raw == nullptr) {
      return io_error(action);
    }
    ReplyPtr reply(static_cast<redisReply*>(raw));
    out.push_back(copy_reply(*reply));
  }
  return Status::ok();
}

Status Connection::info(std::string_view section, Clock::time_point deadline, InfoFields& out) {
  Reply reply;
  if (auto status = run("read INFO " + std::string(section), {"INFO", std::string(section)},
                        deadline, reply);
      !status.is_ok()) {
    return status;
  }
  out = parse_info(reply.text);
  return Status::ok();
}

Status Connection::config_get(std::string_view parameter, Clock::time_point deadline,
                              std::optional<std::string>& out) {
  Reply reply;
  if (auto status = run("read its configuration (CONFIG GET " + std::string(parameter) + ")",
                        {"CONFIG", "GET", std::string(parameter)}, deadline, reply);
      !status.is_ok()) {
    return status;
  }
  out.reset();
  // A flat [name, value] array; empty for a parameter this version lacks.
  if (reply.kind == Reply::Kind::array && reply.elements.size() >= 2) {
    out = reply.elements[1].text;
  }
  return Status::ok();
}

}  // namespace quiesce::writers::redis
