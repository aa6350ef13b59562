#pragma once
// For tests that drive one writer directly, without the agent: creating it
// the way the agent does, the context each phase call takes, a status as
// text for failure messages, and a password file for its options.

#include <chrono>
#include <memory>
#include <stop_token>
#include <string>

#include <nlohmann/json.hpp>

#include "quiesce/writer.hpp"
#include "quiesce/writer_registry.hpp"
#include "tests/support/temp_dir.hpp"

namespace quiesce::test {

// Creates writers of one type as the agent would from its config: a registry
// holding only that type, the type looked up by name, a spec, the type's
// factory. Bad options throw the FieldError the agent would report, so tests
// of option checking call it too. Also checks that the type's default level
// is `level`, since a config that leaves out "level" gets the default (the
// database writers, most of its users, default to database).
//
//   const quiesce::test::WriterMaker make_writer{
//       .register_type = quiesce::writers::register_redis_writer, .type = "redis", .name = "cache"};
//   auto writer = make_writer({{"socket", server.socket()}});
struct WriterMaker {
  void (*register_type)(WriterRegistry&);
  std::string type;
  std::string name;
  Level level = Level::database;
  WriterEnvironment environment = {};

  [[nodiscard]] std::unique_ptr<Writer> operator()(const nlohmann::json& options) const;
};

// A phase call's context: the call's deadline and the end of the hold, both
// counted from now. The defaults leave a slow test server room; a test that
// checks what a deadline does passes its own.
PhaseContext context(std::string session = "s1",
                     Clock::duration deadline = std::chrono::seconds(20),
                     Clock::duration hold = std::chrono::seconds(60), std::stop_token stop = {});

// "ok", or the error's message: for REQUIRE_MESSAGE on a phase call.
std::string message_of(const Status& status);

// A file in `dir` holding `password` and a newline, as an admin writes one,
// and like theirs readable by its owner only (0600; the tests read it as its
// owner, so the mode is not what they test). The same password gives the
// same file. Returns its path, for a writer's "password_file" option.
std::string password_file(const TempDir& dir, const std::string& password);

}  // namespace quiesce::test
