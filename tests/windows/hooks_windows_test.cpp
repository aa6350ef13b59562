// The hooks writer on Windows, with real .bat hooks run by cmd.exe under
// wine: each phase's environment, a failing hook's output in the error, a
// hook whose child never exits killed with that child at its deadline
// (the job object), and a hook that is not trusted refused.
#include <windows.h>

#include <aclapi.h>
#include <doctest/doctest.h>
#include <spdlog/logger.h>
#include <spdlog/sinks/ostream_sink.h>

#include <array>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "agent/core/startup_recovery.hpp"
#include "quiesce/writer_registry.hpp"
#include "tests/support/temp_dir.hpp"
#include "writers/hooks/hooks_writer.hpp"

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using quiesce::PhaseContext;
using quiesce::Writer;

namespace {

fs::path this_executable_directory() {
  std::array<wchar_t, MAX_PATH> buffer{};
  const DWORD n = ::GetModuleFileNameW(nullptr, buffer.data(), static_cast<DWORD>(buffer.size()));
  return fs::path(std::wstring(buffer.data(), n)).parent_path();
}

// Kills, at the end of a test whatever happened, a process a hook started
// (so a failing test leaves no sleeper behind).
class ProcessReaper {
 public:
  ~ProcessReaper() {
    for (auto pid : pids_) {
      if (HANDLE process = ::OpenProcess(PROCESS_TERMINATE, FALSE, pid)) {
        ::TerminateProcess(process, 1);
        ::CloseHandle(process);
      }
    }
  }
  void watch(DWORD pid) { pids_.push_back(pid); }

 private:
  std::vector<DWORD> pids_;
};

// True when no process with this id runs (or it has exited and only a
// handle keeps its record).
bool process_gone(DWORD pid) {
  HANDLE process = ::OpenProcess(SYNCHRONIZE, FALSE, pid);
  if (process == nullptr) {
    return true;
  }
  const bool ended = ::WaitForSingleObject(process, 0) == WAIT_OBJECT_0;
  ::CloseHandle(process);
  return ended;
}

DWORD read_pid(const fs::path& path) {
  std::ifstream in(path);
  unsigned long pid = 0;
  in >> pid;
  return static_cast<DWORD>(pid);
}

class HookFixture {
 public:
  HookFixture() : hooks_dir_(tmp_.path() / "hooks.d"), log_path_(tmp_.path() / "calls.log") {
    fs::create_directory(hooks_dir_);
    logger_ = std::make_shared<spdlog::logger>(
        "hooks-test", std::make_shared<spdlog::sinks::ostream_sink_mt>(agent_log_));
    logger_->set_level(spdlog::level::trace);
    logger_->set_pattern("%l %v");
  }

  // A batch file as admins write them; LOG names the calls log.
  fs::path add_batch(const std::string& name, const std::string& body) {
    auto path = hooks_dir_ / name;
    std::ofstream(path) << "@echo off\r\nset LOG=" << log_path_.string() << "\r\n" << body << "\r\n";
    return path;
  }

  std::unique_ptr<Writer> make(nlohmann::json options, const std::string& run_dir = "") {
    quiesce::WriterRegistry registry;
    quiesce::writers::register_hooks_writer(registry);
    const auto* type = registry.find("hooks");
    REQUIRE(type != nullptr);
    options["directory"] = hooks_dir_.string();
    if (!options.contains("allow_non_root_owner")) {
      // The wine prefix's files belong to the test's user, not SYSTEM.
      options["allow_non_root_owner"] = true;
    }
    quiesce::WriterSpec spec{"hooks", "app-hooks", quiesce::Level::application, options};
    return type->create(spec, quiesce::WriterEnvironment{logger_, run_dir, ""});
  }

  [[nodiscard]] PhaseContext ctx() const {
    auto now = quiesce::Clock::now();
    return PhaseContext{"session-7", now + 60s, now + 90s, {}};
  }

  [[nodiscard]] std::vector<std::string> calls() const {
    std::vector<std::string> lines;
    std::ifstream in(log_path_);
    for (std::string line; std::getline(in, line);) {
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) {
        line.pop_back();
      }
      lines.push_back(line);
    }
    return lines;
  }

  [[nodiscard]] std::string agent_log() const { return agent_log_.str(); }
  [[nodiscard]] const fs::path& dir() const { return hooks_dir_; }
  [[nodiscard]] fs::path temp(const std::string& name) const { return tmp_.path() / name; }

 private:
  quiesce::test::TempDir tmp_{"quiesce-hooks"};
  fs::path hooks_dir_;
  fs::path log_path_;
  std::ostringstream agent_log_;
  std::shared_ptr<spdlog::logger> logger_;
};

using Calls = std::vector<std::string>;

}  // namespace

TEST_CASE("windows hooks: a .bat hook runs at each phase with that phase's environment") {
  HookFixture f;
  f.add_batch("10-app.bat",
              "echo %~n0 %1 %QUIESCE_PHASE% %QUIESCE_SESSION_ID% %QUIESCE_WRITER% "
              "%QUIESCE_HOOK_STYLE%>> \"%LOG%\"");
  f.add_batch("20-db.cmd", "echo %~n0 %1 %QUIESCE_PHASE%>> \"%LOG%\"");
  f.add_batch("README.txt", "not a hook");  // skipped: no runnable extension
  auto writer = f.make({});

  quiesce::Identity identity;
  REQUIRE(writer->identify(f.ctx(), identity).is_ok());
  CHECK(identity.metadata["hooks"] == nlohmann::json::array({"10-app.bat", "20-db.cmd"}));
  CHECK(identity.metadata["skipped"][0]["name"] == "README.txt");

  REQUIRE(writer->prepare(f.ctx()).is_ok());
  REQUIRE(writer->freeze(f.ctx()).is_ok());
  quiesce::HoldReport hold;
  REQUIRE(writer->thaw(f.ctx(), hold).is_ok());
  nlohmann::json artifacts;
  REQUIRE(writer->post_snapshot(f.ctx(), {"snap-1"}, artifacts).is_ok());
  CHECK(f.calls() == Calls{
                         "10-app prepare prepare session-7 app-hooks quiesce",
                         "20-db prepare prepare",
                         "10-app freeze freeze session-7 app-hooks quiesce",
                         "20-db freeze freeze",
                         "20-db thaw thaw",  // reverse order
                         "10-app thaw thaw session-7 app-hooks quiesce",
                         "10-app post-snapshot post-snapshot session-7 app-hooks quiesce",
                         "20-db post-snapshot post-snapshot",
                     });
}

TEST_CASE("windows hooks: a non-zero exit fails the phase with the hook's output in the error") {
  HookFixture f;
  f.add_batch("10-fails.bat", "echo flushing\r\necho database is locked>&2\r\nexit /b 3");
  auto writer = f.make({});

  auto status = writer->prepare(f.ctx());
  REQUIRE_FALSE(status.is_ok());
  const auto& message = status.error().message;
  INFO(message);
  CHECK(message.find("10-fails.bat prepare: exit status 3") != std::string::npos);
  CHECK(message.find("(stderr: database is locked)") != std::string::npos);
  CHECK(status.error().error_class == quiesce::ErrorClass::retryable);
  CHECK(f.agent_log().find("10-fails.bat: flushing") != std::string::npos);
}

TEST_CASE("windows hooks: a hook whose child never exits is killed with the child at its deadline") {
  HookFixture f;
  const auto sleeper = (this_executable_directory() / "quiesce_windows_test_sleeper.exe").string();
  REQUIRE(fs::exists(sleeper));
  const auto background_pid = f.temp("background.pid");
  const auto foreground_pid = f.temp("foreground.pid");
  // One child started in the background (start /b: cmd does not wait for
  // it), then one the batch waits for: neither ever exits.
  f.add_batch("10-hangs.bat", "if not \"%1\"==\"freeze\" exit /b 0\r\n"
                              "start \"\" /b \"" + sleeper + "\" \"" + background_pid.string() +
                                  "\"\r\n\"" + sleeper + "\" \"" + foreground_pid.string() + "\"");
  auto writer = f.make({{"timeout_ms", 4000}});
  ProcessReaper reaper;

  const auto started = std::chrono::steady_clock::now();
  auto status = writer->freeze(f.ctx());
  const auto took = std::chrono::steady_clock::now() - started;
  REQUIRE_FALSE(status.is_ok());
  INFO(status.error().message);
  CHECK(status.error().error_class == quiesce::ErrorClass::timeout);
  CHECK(status.error().message.find("timed out after") != std::string::npos);
  CHECK(took < 20s);

  const DWORD background = read_pid(background_pid);
  const DWORD foreground = read_pid(foreground_pid);
  reaper.watch(background);
  reaper.watch(foreground);
  REQUIRE(background != 0);  // both children had started before the deadline
  REQUIRE(foreground != 0);
  CHECK(process_gone(background));
  CHECK(process_gone(foreground));

  // The hook was cut short, so it counts as frozen: abort releases it.
  REQUIRE(writer->abort(f.ctx()).is_ok());
}

TEST_CASE("windows hooks: a hook others may write is refused before anything runs") {
  HookFixture f;
  f.add_batch("10-first.bat", "echo %~n0 %1>> \"%LOG%\"");
  const auto open_hook = f.add_batch("20-open.bat", "echo %~n0 %1>> \"%LOG%\"");

  // Everyone may change 20-open.bat: anyone could make it run as SYSTEM.
  EXPLICIT_ACCESSW grant{};
  grant.grfAccessPermissions = GENERIC_ALL;
  grant.grfAccessMode = GRANT_ACCESS;
  grant.grfInheritance = NO_INHERITANCE;
  SID_IDENTIFIER_AUTHORITY world = SECURITY_WORLD_SID_AUTHORITY;
  PSID everyone = nullptr;
  REQUIRE(::AllocateAndInitializeSid(&world, 1, SECURITY_WORLD_RID, 0, 0, 0, 0, 0, 0, 0, &everyone));
  grant.Trustee.TrusteeForm = TRUSTEE_IS_SID;
  grant.Trustee.TrusteeType = TRUSTEE_IS_WELL_KNOWN_GROUP;
  grant.Trustee.ptstrName = static_cast<LPWSTR>(everyone);
  PACL acl = nullptr;
  REQUIRE(::SetEntriesInAclW(1, &grant, nullptr, &acl) == ERROR_SUCCESS);
  std::wstring path = open_hook.wstring();
  const DWORD set = ::SetNamedSecurityInfoW(path.data(), SE_FILE_OBJECT, DACL_SECURITY_INFORMATION,
                                            nullptr, nullptr, acl, nullptr);
  ::LocalFree(acl);
  ::FreeSid(everyone);
  REQUIRE(set == ERROR_SUCCESS);

  auto writer = f.make({});
  auto status = writer->prepare(f.ctx());
  REQUIRE_FALSE(status.is_ok());
  INFO(status.error().message);
  CHECK(status.error().error_class == quiesce::ErrorClass::non_retryable);
  CHECK(status.error().message.find("refusing hook " + open_hook.string() +
                                    ": writable by Everyone, Users or Authenticated Users") !=
        std::string::npos);
  CHECK(f.calls().empty());  // not even the trusted 10-first ran
}

TEST_CASE("windows hooks: a batch file whose name cmd.exe would expand is refused before any hook runs") {
  HookFixture f;
  f.add_batch("10-first.bat", "echo %~n0 %1>> \"%LOG%\"");
  f.add_batch("20-100%.bat", "echo %~n0 %1>> \"%LOG%\"");
  auto writer = f.make({});

  auto status = writer->freeze(f.ctx());
  REQUIRE_FALSE(status.is_ok());
  INFO(status.error().message);
  CHECK(status.error().error_class == quiesce::ErrorClass::non_retryable);
  CHECK(status.error().message.find("20-100%.bat: its path has a character cmd.exe would interpret") !=
        std::string::npos);
  CHECK(f.calls().empty());
}

TEST_CASE("windows hooks: an .exe hook runs directly, with the phase's argument and environment") {
  HookFixture f;
  const auto program = this_executable_directory() / "quiesce_windows_test_exe_hook.exe";
  REQUIRE(fs::exists(program));
  fs::copy_file(program, f.dir() / "30-native.exe");
  auto writer = f.make({});

  REQUIRE(writer->prepare(f.ctx()).is_ok());
  REQUIRE(writer->freeze(f.ctx()).is_ok());
  CHECK(f.calls() == Calls{"30-native prepare prepare session-7", "30-native freeze freeze session-7"});
  REQUIRE(writer->abort(f.ctx()).is_ok());
}

// The first promise on Windows: hooks that froze are in the run-dir record,
// and the next agent's start-up recovery (agent/core/startup_recovery_windows.cpp)
// runs them with their release argument (abort, in the quiesce style), in
// reverse order.
TEST_CASE("windows hooks: hooks a dead agent left frozen are thawed by the next agent's start-up recovery") {
  HookFixture f;
  f.add_batch("10-app.bat", "echo %~n0 %1>> \"%LOG%\"");
  f.add_batch("20-db.cmd", "echo %~n0 %1>> \"%LOG%\"");
  const auto run_dir = f.temp("run");
  fs::create_directory(run_dir);
  const auto record = run_dir / "hooks-frozen-app-hooks.json";
  {
    auto writer = f.make({}, run_dir.string());
    REQUIRE(writer->prepare(f.ctx()).is_ok());
    REQUIRE(writer->freeze(f.ctx()).is_ok());
    REQUIRE(fs::exists(record));
    // The writer is dropped while frozen, as a killed agent leaves it.
  }
  const auto before_recovery = f.calls();
  REQUIRE(before_recovery.size() == 4);
  CHECK(before_recovery.back() == "20-db freeze");

  const quiesce::agent::StartupRecovery recovery(run_dir.string());
  std::ostringstream replayed;
  spdlog::logger agent_log("agent", std::make_shared<spdlog::sinks::ostream_sink_mt>(replayed));
  recovery.replay_to(agent_log);
  INFO("recovery logged:\n" << replayed.str());
  auto calls = f.calls();
  calls.erase(calls.begin(), calls.begin() + 4);
  CHECK(calls == Calls{"20-db abort", "10-app abort"});  // the quiesce style releases with abort
  CHECK_FALSE(fs::exists(record));
  CHECK(replayed.str().find("left 2 hook(s) frozen") != std::string::npos);

  // A second start finds nothing left and runs nothing.
  const quiesce::agent::StartupRecovery again(run_dir.string());
  CHECK(f.calls().size() == 6);
}
