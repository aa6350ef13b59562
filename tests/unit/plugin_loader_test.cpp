// The `plugin` writer with real .so files built by the test build: the C and
// C++ examples through a whole session, the version and symbol checks, the
// ownership checks, and exceptions in an SDK plugin coming back as codes.
#include <doctest/doctest.h>
#include <spdlog/logger.h>
#include <spdlog/sinks/ostream_sink.h>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <stop_token>
#include <string>

#include "quiesce/json_fields.hpp"
#include "quiesce/writer_registry.hpp"
#include "tests/support/temp_dir.hpp"
#include "writers/plugin/plugin_library.hpp"
#include "writers/plugin/plugin_writer.hpp"

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using quiesce::ErrorClass;
using quiesce::PhaseContext;
using quiesce::Writer;

namespace {

std::string read_file(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

class PluginFixture {
 public:
  PluginFixture() : plugins_(tmp_.path() / "plugins") {
    fs::create_directory(plugins_);
    fs::permissions(plugins_, fs::perms(0755));
    logger_ = std::make_shared<spdlog::logger>(
        "plugin-test", std::make_shared<spdlog::sinks::ostream_sink_mt>(log_));
    logger_->set_level(spdlog::level::trace);
    logger_->set_pattern("%l %v");
    quiesce::writers::register_plugin_writer(registry_);
  }

  // A copy of a built plugin in a directory the test controls, so its mode
  // can be set (the build tree's own modes depend on the umask).
  fs::path install(const std::string& built, const std::string& name, unsigned mode = 0755) {
    auto target = plugins_ / name;
    fs::copy_file(built, target, fs::copy_options::overwrite_existing);
    fs::permissions(target, fs::perms(mode));
    return target;
  }

  std::unique_ptr<Writer> create(const nlohmann::json& options, const std::string& name = "w") {
    quiesce::WriterSpec spec{.type = "plugin", .name = name, .options = options};
    quiesce::WriterEnvironment env{.logger = logger_,
                                   .run_dir = (tmp_ / "run").string(),
                                   .state_dir = (tmp_ / "state").string()};
    return registry_.find("plugin")->create(spec, env);
  }

  // The message of the FieldError creating the writer throws ("" if none).
  std::string refusal(const nlohmann::json& options, std::string* field = nullptr) {
    try {
      auto writer = create(options);
    } catch (const quiesce::FieldError& e) {
      if (field != nullptr) {
        *field = e.path();
      }
      return e.what();
    }
    return "";
  }

  PhaseContext ctx(std::chrono::milliseconds timeout = 5s) {
    return PhaseContext{.session_id = "s-1",
                        .deadline = quiesce::Clock::now() + timeout,
                        .hold_deadline = quiesce::Clock::now() + 10s,
                        .stop = stop_.get_token()};
  }

  [[nodiscard]] std::string log() const { return log_.str(); }
  [[nodiscard]] const quiesce::test::TempDir& tmp() const { return tmp_; }
  [[nodiscard]] const fs::path& plugins() const { return plugins_; }
  std::stop_source stop_;

 private:
  quiesce::test::TempDir tmp_{"quiesce-plugin"};
  fs::path plugins_;
  std::ostringstream log_;
  std::shared_ptr<spdlog::logger> logger_;
  quiesce::WriterRegistry registry_;
};

}  // namespace

TEST_CASE("plugin: the C example runs a whole session through the adapter") {
  PluginFixture f;
  const auto so = f.install(QUIESCE_TOUCH_FILE_PLUGIN, "touch-file.so");
  const auto marker = f.tmp() / "marker";
  auto writer = f.create({{"path", so.string()},
                          {"allow_non_root_owner", true},
                          {"options", {{"path", marker.string()}}}});

  quiesce::Identity identity;
  REQUIRE(writer->identify(f.ctx(), identity).is_ok());
  CHECK(identity.components.at(0).at("path") == marker.string());
  CHECK(identity.metadata.at("plugin").at("type") == "touch-file");
  CHECK(identity.metadata.at("plugin").at("abi_version") == "1.0.0");
  // Capabilities come from the optional symbols the .so exports.
  CHECK(identity.metadata.at("plugin").at("capabilities") == nlohmann::json{"post_snapshot"});

  REQUIRE(writer->prepare(f.ctx()).is_ok());
  REQUIRE(writer->freeze(f.ctx()).is_ok());
  CHECK(read_file(marker) == "frozen s-1\n");
  quiesce::HoldReport hold;
  REQUIRE(writer->thaw(f.ctx(), hold).is_ok());
  CHECK(hold.continuous);
  CHECK(read_file(marker) == "thawed s-1\n");
  quiesce::HoldReport again;
  CHECK(writer->thaw(f.ctx(), again).is_ok());  // idempotent
  nlohmann::json artifacts = nlohmann::json::object();
  REQUIRE(writer->post_snapshot(f.ctx(), {"snap-9"}, artifacts).is_ok());
  CHECK(artifacts.at("marker") == marker.string());
  // No post_restore symbol: nothing to do, not an error.
  CHECK(writer->post_restore(f.ctx(), {"cp-1", "s-1"}).is_ok());
  CHECK(writer->abort(f.ctx()).is_ok());
  // The plugin's log callback lands in the writer's logger.
  CHECK(f.log().find("info plugin 'w': marker " + marker.string() + ": frozen (session s-1)") !=
        std::string::npos);
}

TEST_CASE("plugin: the C example refuses bad options with its own message") {
  PluginFixture f;
  const auto so = f.install(QUIESCE_TOUCH_FILE_PLUGIN, "touch-file.so");
  std::string field;
  auto message = f.refusal({{"path", so.string()}, {"allow_non_root_owner", true},
                            {"options", {{"path", "relative"}}}},
                           &field);
  CHECK(field == "options.options");
  CHECK(message.find("options.path: must be an absolute path") != std::string::npos);
  CHECK(message.find(so.string()) != std::string::npos);
}

TEST_CASE("plugin: the C++ example holds its flock from freeze to thaw and honours stop") {
  PluginFixture f;
  const auto so = f.install(QUIESCE_FLOCK_PLUGIN, "flock.so");
  const auto lock = f.tmp() / "app.lock";
  auto writer = f.create({{"path", so.string()},
                          {"allow_non_root_owner", true},
                          {"options", {{"lock_file", lock.string()}, {"poll_ms", 2}}}});
  quiesce::Identity identity;
  REQUIRE(writer->identify(f.ctx(), identity).is_ok());
  CHECK(identity.metadata.at("plugin").at("type") == "flock");
  REQUIRE(writer->prepare(f.ctx()).is_ok());

  // An application write in flight: freeze waits for it, up to its deadline.
  const int app = ::open(lock.c_str(), O_RDWR);
  REQUIRE(app >= 0);
  REQUIRE(::flock(app, LOCK_SH) == 0);
  auto timed_out = writer->freeze(f.ctx(50ms));
  REQUIRE_FALSE(timed_out.is_ok());
  CHECK(timed_out.error().error_class == ErrorClass::timeout);
  CHECK(timed_out.error().message.find("still hold") != std::string::npos);

  // The stop token (abort, or the coordinator's timeout) cuts it short too.
  f.stop_.request_stop();
  const auto started = std::chrono::steady_clock::now();
  auto stopped = writer->freeze(f.ctx(30s));
  CHECK(std::chrono::steady_clock::now() - started < 5s);
  REQUIRE_FALSE(stopped.is_ok());
  CHECK(stopped.error().error_class == ErrorClass::timeout);
  f.stop_ = std::stop_source{};

  REQUIRE(::flock(app, LOCK_UN) == 0);
  REQUIRE(writer->freeze(f.ctx()).is_ok());
  CHECK(::flock(app, LOCK_SH | LOCK_NB) != 0);  // new writes are kept out
  quiesce::HoldReport hold;
  REQUIRE(writer->thaw(f.ctx(), hold).is_ok());
  CHECK(hold.continuous);
  CHECK(::flock(app, LOCK_SH | LOCK_NB) == 0);
  ::close(app);
  nlohmann::json artifacts = nlohmann::json::object();
  REQUIRE(writer->post_snapshot(f.ctx(), {"snap-2"}, artifacts).is_ok());
  CHECK(artifacts.at("snapshot_id") == "snap-2");
}

TEST_CASE("plugin: a wrong ABI major is refused naming the file and both versions") {
  PluginFixture f;
  const auto so = f.install(QUIESCE_TEST_PLUGIN_WRONG_MAJOR, "wrong_major.so");
  std::string field;
  auto message = f.refusal({{"path", so.string()}, {"allow_non_root_owner", true}}, &field);
  CHECK(field == "options.path");
  CHECK(message.find(so.string()) != std::string::npos);
  CHECK(message.find("built for plugin ABI 2.0.0") != std::string::npos);
  CHECK(message.find("implements ABI 1.0.0") != std::string::npos);
  CHECK(message.find("major") != std::string::npos);
  // Refused on the version alone, before its (absent) other symbols were looked at.
  CHECK(message.find("missing") == std::string::npos);
}

TEST_CASE("plugin: a newer ABI minor is refused, an older or equal one is accepted") {
  PluginFixture f;
  const auto so = f.install(QUIESCE_TEST_PLUGIN_NEWER_MINOR, "newer_minor.so");
  auto message = f.refusal({{"path", so.string()}, {"allow_non_root_owner", true}});
  CHECK(message.find("built for plugin ABI 1.1.0, newer than this agent's ABI 1.0.0") !=
        std::string::npos);

  using quiesce::writers::plugin::abi_version_problem;
  CHECK(abi_version_problem({1, 0, 0}, {1, 2, 0}).empty());
  CHECK(abi_version_problem({1, 2, 7}, {1, 2, 0}).empty());  // patch does not matter
  CHECK_FALSE(abi_version_problem({1, 3, 0}, {1, 2, 0}).empty());
  CHECK_FALSE(abi_version_problem({0, 9, 0}, {1, 2, 0}).empty());
}

TEST_CASE("plugin: a missing required symbol is refused naming the symbol") {
  PluginFixture f;
  const auto so = f.install(QUIESCE_TEST_PLUGIN_MISSING_THAW, "missing_thaw.so");
  auto message = f.refusal({{"path", so.string()}, {"allow_non_root_owner", true}});
  CHECK(message.find(so.string()) != std::string::npos);
  CHECK(message.find("missing required symbol(s): quiesce_plugin_thaw") != std::string::npos);
}

TEST_CASE("plugin: a library that is not a plugin, or not there, is refused clearly") {
  PluginFixture f;
  const auto so = f.install(QUIESCE_TEST_PLUGIN_NOT_A_PLUGIN, "other.so");
  CHECK(f.refusal({{"path", so.string()}, {"allow_non_root_owner", true}})
            .find("not a Quiesce writer plugin (no quiesce_plugin_abi_version symbol)") !=
        std::string::npos);
  CHECK(f.refusal({{"path", (f.plugins() / "absent.so").string()}, {"allow_non_root_owner", true}})
            .find("No such file or directory") != std::string::npos);
  CHECK(f.refusal({{"path", "relative.so"}}).find("must be absolute") != std::string::npos);
  CHECK(f.refusal({{"path", so.string()}, {"allow_non_root_owner", true}, {"typo", 1}})
            .find("typo") != std::string::npos);
}

TEST_CASE("plugin: ownership and mode checks refuse writable or foreign plugins") {
  PluginFixture f;
  const auto group_writable = f.install(QUIESCE_TOUCH_FILE_PLUGIN, "group.so", 0775);
  auto message = f.refusal({{"path", group_writable.string()}, {"allow_non_root_owner", true},
                            {"options", {{"path", "/tmp/x"}}}});
  CHECK(message.find(group_writable.string() + " refused: writable by its group") !=
        std::string::npos);

  const auto world_writable = f.install(QUIESCE_TOUCH_FILE_PLUGIN, "world.so", 0757);
  CHECK(f.refusal({{"path", world_writable.string()}, {"allow_non_root_owner", true}})
            .find("writable by others") != std::string::npos);

  const auto fine = f.install(QUIESCE_TOUCH_FILE_PLUGIN, "fine.so");
  fs::permissions(f.plugins(), fs::perms(0775));
  CHECK(f.refusal({{"path", fine.string()}, {"allow_non_root_owner", true}})
            .find("its directory " + f.plugins().string() + " is writable by its group") !=
        std::string::npos);
  fs::permissions(f.plugins(), fs::perms(0755));

  if (::geteuid() != 0) {
    CHECK(f.refusal({{"path", fine.string()}}).find("not root") != std::string::npos);
  }
}

TEST_CASE("plugin: exceptions in an SDK plugin come back as codes and messages") {
  PluginFixture f;
  const auto so = f.install(QUIESCE_TEST_PLUGIN_THROWING, "throwing.so");
  auto message = f.refusal({{"path", so.string()}, {"allow_non_root_owner", true},
                            {"options", {{"throw_in_create", true}}}});
  CHECK(message.find("uncaught exception: options.throw_in_create: asked to fail") !=
        std::string::npos);

  auto writer = f.create({{"path", so.string()}, {"allow_non_root_owner", true}});
  auto prepare = writer->prepare(f.ctx());
  REQUIRE_FALSE(prepare.is_ok());
  CHECK(prepare.error().error_class == ErrorClass::retryable);
  CHECK(prepare.error().message.find("prepare: busy, try later") != std::string::npos);

  auto freeze = writer->freeze(f.ctx());
  REQUIRE_FALSE(freeze.is_ok());
  CHECK(freeze.error().error_class == ErrorClass::non_retryable);
  CHECK(freeze.error().message.find("uncaught exception: boom in freeze") != std::string::npos);

  quiesce::HoldReport hold;
  auto thaw = writer->thaw(f.ctx(), hold);
  REQUIRE_FALSE(thaw.is_ok());
  CHECK(thaw.error().message.find("unknown type") != std::string::npos);
  CHECK_FALSE(hold.continuous);  // what it reported before throwing still counts

  auto abort = writer->abort(f.ctx());
  REQUIRE_FALSE(abort.is_ok());
  CHECK(abort.error().error_class == ErrorClass::inconsistent);

  // Level from describe differs from the configured one: logged, not fatal.
  CHECK(f.log().find("describes itself as a database writer") != std::string::npos);
}

TEST_CASE("plugin: two writers from one .so have separate handles") {
  PluginFixture f;
  const auto so = f.install(QUIESCE_TOUCH_FILE_PLUGIN, "touch-file.so");
  auto a = f.create({{"path", so.string()}, {"allow_non_root_owner", true},
                     {"options", {{"path", (f.tmp() / "a").string()}}}},
                    "a");
  auto b = f.create({{"path", so.string()}, {"allow_non_root_owner", true},
                     {"options", {{"path", (f.tmp() / "b").string()}}}},
                    "b");
  REQUIRE(a->freeze(f.ctx()).is_ok());
  CHECK(fs::exists(f.tmp() / "a"));
  CHECK_FALSE(fs::exists(f.tmp() / "b"));
  b.reset();  // destroying one leaves the other (and the library) usable
  quiesce::HoldReport hold;
  CHECK(a->thaw(f.ctx(), hold).is_ok());
  CHECK(read_file(f.tmp() / "a") == "thawed s-1\n");
}
