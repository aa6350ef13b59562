// The redis writer against a real redis-server on a private socket: options,
// every phase in AOF and RDB mode, holding writes, and the failures an admin
// meets (wrong password, missing ACL permission, server down, server killed
// during the hold), each a clear error with nothing left held.
#include <doctest/doctest.h>

#include <unistd.h>

#include "quiesce/json_fields.hpp"
#include "tests/db/redis_server.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/writer_harness.hpp"
#include "writers/redis/redis_connection.hpp"
#include "writers/redis/redis_writer.hpp"

using namespace std::chrono_literals;
using quiesce::test::RedisClient;
using quiesce::test::RedisServer;
using quiesce::test::RedisServerOptions;

namespace {

const quiesce::test::WriterMaker make_writer{
    .register_type = quiesce::writers::register_redis_writer, .type = "redis", .name = "cache"};

std::string field_error(const nlohmann::json& options) {
  try {
    (void)make_writer(options);
  } catch (const quiesce::FieldError& error) {
    return error.what();
  }
  return "";
}

// 10 s for the call and for the hold, not the shared 20 s and 60 s: with
// hold_writes the hold's end is when Redis lifts CLIENT PAUSE by itself, so a
// test that stops during a hold leaves the server paused for 10 s at most.
quiesce::PhaseContext context() { return quiesce::test::context("s1", 10s, 10s); }

#define SKIP_WITHOUT_REDIS()                                         \
  if (!quiesce::test::redis_server_available()) {                    \
    MESSAGE("redis-server is not installed; skipping");              \
    return;                                                          \
  }

}  // namespace

TEST_CASE("redis writer: options are checked and errors name the field") {
  CHECK(field_error(nlohmann::json::object()).find("options.socket") != std::string::npos);
  CHECK(field_error({{"socket", "/tmp/r.sock"}, {"host", "x"}}).find("options.host") != std::string::npos);
  CHECK(field_error({{"socket", "relative.sock"}}).find("absolute") != std::string::npos);
  CHECK(field_error({{"socket", "/tmp/r.sock"}, {"port", 1}}).find("options.port") != std::string::npos);
  CHECK(field_error({{"host", "localhost"}, {"port", 0}}).find("options.port") != std::string::npos);
  CHECK(field_error({{"socket", "/tmp/r.sock"}, {"user", "q"}}).find("options.user") != std::string::npos);
  CHECK(field_error({{"socket", "/tmp/r.sock"}, {"password_file", "/nonexistent/pw"}})
            .find("options.password_file") != std::string::npos);
  CHECK(field_error({{"socket", "/tmp/r.sock"}, {"hold_writes", "yes"}}).find("options.hold_writes") !=
        std::string::npos);
  CHECK(field_error({{"socket", "/tmp/r.sock"}, {"password", "inline"}}).find("options.password") !=
        std::string::npos);
  CHECK(field_error({{"host", "localhost"}, {"port", 6380}, {"hold_writes", true},
                     {"bgsave_timeout_ms", 1000}, {"connect_timeout_ms", 500}})
            .empty());
}

TEST_CASE("redis writer: error replies are classified") {
  quiesce::writers::redis::Target target;
  target.socket = "/run/redis.sock";
  target.user = "quiesce";
  using quiesce::ErrorClass;
  auto classify = [&](std::string_view error) {
    return quiesce::writers::redis::classify_error_reply(target, "do it", error).error();
  };
  CHECK(classify("LOADING Redis is loading the dataset in memory").error_class == ErrorClass::retryable);
  CHECK(classify("BUSY Redis is busy running a script.").error_class == ErrorClass::retryable);
  CHECK(classify("NOAUTH Authentication required.").error_class == ErrorClass::non_retryable);
  CHECK(classify("WRONGPASS invalid username-password pair").error_class == ErrorClass::non_retryable);
  const auto noperm =
      classify("NOPERM this user has no permissions to run the 'config|set' command");
  CHECK(noperm.error_class == ErrorClass::non_retryable);
  CHECK(noperm.message.find("ACL SETUSER quiesce +config|set") != std::string::npos);
}

TEST_CASE("redis writer: AOF mode switches appendfsync to always for the hold and back") {
  SKIP_WITHOUT_REDIS();
  quiesce::test::TempDir dir("redis-aof");
  RedisServerOptions options;
  options.aof = true;
  options.appendfsync = "everysec";
  RedisServer server(dir.path(), dir / "data", options);
  RedisClient client(server.socket());
  auto writer = make_writer({{"socket", server.socket()}});
  auto ctx = context();

  quiesce::Identity identity;
  REQUIRE(writer->identify(ctx, identity).is_ok());
  CAPTURE(identity.components.dump());
  CHECK(identity.metadata["persistence"] == "aof");
  CHECK(identity.components[1]["kind"] == "aof");
  CHECK(identity.components[1]["path"] == (dir / "data" / "appendonlydir").string());
  CHECK(identity.components[1]["active"] == true);
  CHECK(identity.components[0]["path"] == (dir / "data" / "dump.rdb").string());

  REQUIRE(writer->prepare(ctx).is_ok());
  CHECK(client.command({"SET", "a", "1"}) == "OK");
  REQUIRE(writer->freeze(ctx).is_ok());
  CHECK(client.command({"CONFIG", "GET", "appendfsync"}) == "appendfsync\nalways");
  // Writes go on (hold_writes is off), and are fsynced before they are acknowledged.
  CHECK(client.command({"SET", "b", "2"}) == "OK");
  quiesce::HoldReport hold;
  REQUIRE(writer->thaw(ctx, hold).is_ok());
  CHECK(hold.continuous);
  CHECK(client.command({"CONFIG", "GET", "appendfsync"}) == "appendfsync\neverysec");
  // Idempotent.
  REQUIRE(writer->thaw(ctx, hold).is_ok());
  REQUIRE(writer->abort(ctx).is_ok());
  nlohmann::json artifacts;
  REQUIRE(writer->post_snapshot(ctx, {"snap-1"}, artifacts).is_ok());
  CAPTURE(artifacts.dump());
  CHECK(artifacts["persistence"] == "aof");
  CHECK(artifacts["appendfsync"] == "everysec");
  CHECK(artifacts["files_synced"]["ok"] == true);
  CHECK(artifacts["snapshot_id"] == "snap-1");
}

TEST_CASE("redis writer: RDB mode saves at freeze - hold_writes pauses writes until thaw") {
  SKIP_WITHOUT_REDIS();
  quiesce::test::TempDir dir("redis-rdb");
  RedisServer server(dir.path(), dir / "data");
  RedisClient client(server.socket());
  auto writer = make_writer({{"socket", server.socket()}, {"hold_writes", true}});
  auto ctx = context();
  for (int i = 0; i < 100; ++i) {
    REQUIRE(client.command({"SET", "k" + std::to_string(i), "v"}) == "OK");
  }
  const auto saves_before = quiesce::test::info_field(client, "persistence", "rdb_saves");
  REQUIRE(writer->prepare(ctx).is_ok());
  {
    auto status = writer->freeze(ctx);
    REQUIRE_MESSAGE(status.is_ok(), (status.is_ok() ? "" : status.error().message));
  }
  CHECK(quiesce::test::info_field(client, "persistence", "rdb_saves") != saves_before);
  CHECK(quiesce::test::info_field(client, "persistence", "rdb_changes_since_last_save") == "0");
  CHECK(std::filesystem::exists(dir / "data" / "dump.rdb"));
  {
    // A write blocks while held: this client gives up after 300 ms.
    RedisClient writer_client(server.socket(), 300ms);
    CHECK(writer_client.command({"SET", "during", "hold"}) == "<io error>");
    CHECK(client.command({"GET", "k1"}) == "v");  // reads go on
  }
  quiesce::HoldReport hold;
  REQUIRE(writer->thaw(ctx, hold).is_ok());
  CHECK(hold.continuous);
  CHECK(client.command({"SET", "after", "thaw"}) == "OK");
  nlohmann::json artifacts;
  REQUIRE(writer->post_snapshot(ctx, {"snap-2"}, artifacts).is_ok());
  CAPTURE(artifacts.dump());
  CHECK(artifacts["persistence"] == "rdb");
  CHECK(artifacts["rdb_path"] == (dir / "data" / "dump.rdb").string());
  CHECK(artifacts["last_save_time"].is_number());
  CHECK(artifacts["bgsave_ms"].is_number());
}

TEST_CASE("redis writer: a wrong or missing password is non_retryable and says what to fix") {
  SKIP_WITHOUT_REDIS();
  quiesce::test::TempDir dir("redis-auth");
  RedisServerOptions options;
  options.requirepass = "s3cret";
  RedisServer server(dir.path(), dir / "data", options);
  auto ctx = context();

  auto wrong = make_writer(
      {{"socket", server.socket()}, {"password_file", quiesce::test::password_file(dir, "nope")}});
  auto status = wrong->prepare(ctx);
  REQUIRE_FALSE(status.is_ok());
  CHECK(status.error().error_class == quiesce::ErrorClass::non_retryable);
  CHECK(status.error().message.find("password_file") != std::string::npos);

  auto none = make_writer({{"socket", server.socket()}});
  status = none->freeze(ctx);
  REQUIRE_FALSE(status.is_ok());
  CHECK(status.error().error_class == quiesce::ErrorClass::non_retryable);
  CHECK(status.error().message.find("options.password_file") != std::string::npos);

  auto right = make_writer(
      {{"socket", server.socket()}, {"password_file", quiesce::test::password_file(dir, "s3cret")}});
  REQUIRE(right->freeze(ctx).is_ok());
  quiesce::HoldReport hold;
  REQUIRE(right->thaw(ctx, hold).is_ok());
  CHECK(hold.continuous);
}

TEST_CASE("redis writer: an ACL user without CONFIG is told which permission to grant") {
  SKIP_WITHOUT_REDIS();
  quiesce::test::TempDir dir("redis-acl");
  RedisServerOptions options;
  options.extra_lines = {"user limited on >pw ~* +@all -config"};
  RedisServer server(dir.path(), dir / "data", options);
  auto writer = make_writer({{"socket", server.socket()}, {"user", "limited"},
                             {"password_file", quiesce::test::password_file(dir, "pw")}});
  auto ctx = context();
  auto status = writer->freeze(ctx);
  REQUIRE_FALSE(status.is_ok());
  CAPTURE(status.error().message);
  CHECK(status.error().error_class == quiesce::ErrorClass::non_retryable);
  CHECK(status.error().message.find("ACL SETUSER limited +config|get") != std::string::npos);
}

TEST_CASE("redis writer: a server that is not there is retryable") {
  quiesce::test::TempDir dir("redis-down");
  auto writer = make_writer({{"socket", (dir / "nothing.sock").string()}, {"connect_timeout_ms", 200}});
  auto ctx = context();
  auto status = writer->prepare(ctx);
  REQUIRE_FALSE(status.is_ok());
  CHECK(status.error().error_class == quiesce::ErrorClass::retryable);
  CHECK(status.error().message.find("could not connect") != std::string::npos);
  quiesce::Identity identity;
  CHECK(writer->identify(ctx, identity).error().error_class == quiesce::ErrorClass::retryable);
  quiesce::HoldReport hold;
  CHECK(writer->thaw(ctx, hold).is_ok());
  CHECK(writer->abort(ctx).is_ok());
}

TEST_CASE("redis writer: a server killed during the hold breaks continuity") {
  SKIP_WITHOUT_REDIS();
  quiesce::test::TempDir dir("redis-killed");
  auto ctx = context();
  RedisServerOptions options;
  options.aof = true;
  {
    RedisServer server(dir / "a", dir / "a" / "data", options);
    auto writer = make_writer({{"socket", server.socket()}, {"hold_writes", true},
                               {"connect_timeout_ms", 200}});
    REQUIRE(writer->freeze(ctx).is_ok());
    server.kill();
    quiesce::HoldReport hold;
    REQUIRE(writer->thaw(ctx, hold).is_ok());
    CHECK_FALSE(hold.continuous);
    CHECK(hold.detail.find("connection") != std::string::npos);
  }
  {
    // Killed and restarted before thaw: a new server, so the hold is broken
    // even though the writer can reconnect; nothing stays paused.
    auto server = std::make_unique<RedisServer>(dir / "b", dir / "b" / "data", options);
    auto writer = make_writer({{"socket", server->socket()}, {"hold_writes", true}});
    REQUIRE(writer->freeze(ctx).is_ok());
    server->kill();
    server.reset();
    server = std::make_unique<RedisServer>(dir / "b", dir / "b" / "data", options);
    quiesce::HoldReport hold;
    REQUIRE(writer->thaw(ctx, hold).is_ok());
    CHECK_FALSE(hold.continuous);
    RedisClient client(server->socket(), 1s);
    CHECK(client.command({"SET", "x", "1"}) == "OK");
  }
}
