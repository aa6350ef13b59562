#include "tests/db/redis_server.hpp"

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <csignal>
#include <fstream>
#include <sstream>

#include <doctest/doctest.h>

namespace quiesce::test {

namespace {

std::string reply_text(const redisReply* reply) {
  if (reply == nullptr) {
    return "<io error>";
  }
  switch (reply->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
      return {reply->str, reply->len};
    case REDIS_REPLY_INTEGER:
      return std::to_string(reply->integer);
    case REDIS_REPLY_ARRAY: {
      std::string out;
      for (std::size_t i = 0; i < reply->elements; ++i) {
        out += (i == 0 ? "" : "\n") + reply_text(reply->element[i]);
      }
      return out;
    }
    default:
      return "";
  }
}

}  // namespace

bool redis_server_available() {
  std::string ignored;
  return run_command({"redis-server", "--version"}, &ignored) == 0;
}

RedisServer::RedisServer(const std::filesystem::path& work_dir,
                         const std::filesystem::path& data_dir, RedisServerOptions options) {
  std::filesystem::create_directories(work_dir);
  std::filesystem::create_directories(data_dir);
  socket_ = (work_dir / "redis.sock").string();
  log_ = work_dir / "redis.log";
  const auto config = work_dir / "redis.conf";
  std::error_code ec;
  std::filesystem::remove(socket_, ec);
  {
    std::ofstream out(config);
    out << "port 0\n"
        << "unixsocket " << socket_ << "\n"
        << "unixsocketperm 700\n"
        << "dir " << data_dir.string() << "\n"
        << "daemonize no\n"
        << "save \"" << options.save << "\"\n"
        << "appendonly " << (options.aof ? "yes" : "no") << "\n"
        << "appendfsync " << options.appendfsync << "\n";
    if (!options.requirepass.empty()) {
      out << "requirepass " << options.requirepass << "\n";
    }
    for (const auto& line : options.extra_lines) {
      out << line << "\n";
    }
  }
  process_ = std::make_unique<ChildProcess>(
      std::vector<std::string>{"/usr/bin/redis-server", config.string()}, log_);
  // Ready once it answers on its socket (and has loaded its data).
  const bool ready = eventually(std::chrono::seconds(10), [&] {
    if (!std::filesystem::exists(socket_)) {
      return false;
    }
    RedisClient client(socket_, std::chrono::milliseconds(500));
    const auto reply = client.command({"PING"});
    return reply == "PONG" || reply.rfind("NOAUTH", 0) == 0;
  });
  if (!ready) {
    std::ifstream in(log_);
    const std::string text{std::istreambuf_iterator<char>(in), {}};
    FAIL("redis-server did not start; its log:\n" << text);
  }
}

void RedisServer::kill() {
  if (process_) {
    process_->signal(SIGKILL);
    (void)process_->wait_for(std::chrono::seconds(5));
  }
}

RedisClient::RedisClient(const std::string& socket, std::chrono::milliseconds timeout) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  context_ = redisConnectUnixWithTimeout(socket.c_str(), tv);
  if (context_ != nullptr && context_->err == 0) {
    redisSetTimeout(context_, tv);
  }
}

RedisClient::~RedisClient() {
  if (context_ != nullptr) {
    redisFree(context_);
  }
}

bool RedisClient::connected() const { return context_ != nullptr && context_->err == 0; }

std::string RedisClient::command(const std::vector<std::string>& argv) {
  auto replies = pipeline({argv});
  return replies.front();
}

std::vector<std::string> RedisClient::pipeline(const std::vector<std::vector<std::string>>& commands) {
  std::vector<std::string> out;
  if (!connected()) {
    out.assign(commands.size(), "<io error>");
    return out;
  }
  for (const auto& argv : commands) {
    std::vector<const char*> args;
    std::vector<std::size_t> lengths;
    for (const auto& arg : argv) {
      args.push_back(arg.data());
      lengths.push_back(arg.size());
    }
    redisAppendCommandArgv(context_, static_cast<int>(args.size()), args.data(), lengths.data());
  }
  for (std::size_t i = 0; i < commands.size(); ++i) {
    void* raw = nullptr;
    if (context_->err != 0 || redisGetReply(context_, &raw) != REDIS_OK) {
      out.emplace_back("<io error>");
      continue;
    }
    auto* reply = static_cast<redisReply*>(raw);
    out.push_back(reply_text(reply));
    freeReplyObject(reply);
  }
  return out;
}

std::string info_field(RedisClient& client, const std::string& section, const std::string& key) {
  std::istringstream in(client.command({"INFO", section}));
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') {
      line.pop_back();
    }
    if (line.rfind(key + ":", 0) == 0) {
      return line.substr(key.size() + 1);
    }
  }
  return "";
}

}  // namespace quiesce::test
