// The hooks writer with real hook directories and real processes: qemu-ga
// and open-vm-tools style scripts run unmodified, ordering, failures,
// timeouts, the stop token, skipped and refused files, the environment.
#include <doctest/doctest.h>
#include <spdlog/logger.h>
#include <spdlog/sinks/ostream_sink.h>

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "quiesce/json_fields.hpp"
#include "quiesce/writer_registry.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"
#include "writers/hooks/hook_directory.hpp"
#include "writers/hooks/hooks_writer.hpp"

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using quiesce::ErrorClass;
using quiesce::PhaseContext;
using quiesce::Writer;

namespace {

class HookFixture {
 public:
  HookFixture() : hooks_dir_(tmp_.path() / "hooks.d"), log_path_(tmp_.path() / "calls.log") {
    fs::create_directory(hooks_dir_);
    fs::permissions(hooks_dir_, fs::perms(0755));
    logger_ = std::make_shared<spdlog::logger>(
        "hooks-test", std::make_shared<spdlog::sinks::ostream_sink_mt>(agent_log_));
    logger_->set_level(spdlog::level::trace);
    logger_->set_pattern("%l %v");
  }

  // A script as admins write them: "$0 $1" appended to a log file.
  void add_script(const std::string& name, const std::string& body, unsigned mode = 0755) {
    auto path = hooks_dir_ / name;
    std::ofstream(path) << "#!/bin/sh\nLOG='" << log_path_.string() << "'\n" << body << "\n";
    fs::permissions(path, fs::perms(mode));
  }

  // qemu-ga fsfreeze-hook.d script: knows freeze and thaw, fails on anything else.
  void add_qemu_hook(const std::string& name, const std::string& on_freeze = "") {
    add_script(name, "case \"$1\" in\n"
                     "  freeze) echo \"$(basename \"$0\") freeze\" >> \"$LOG\"; " +
                         on_freeze + " ;;\n"
                         "  thaw) echo \"$(basename \"$0\") thaw\" >> \"$LOG\" ;;\n"
                         "  *) echo \"unexpected $1\" >&2; exit 1 ;;\n"
                         "esac\n");
  }

  // open-vm-tools backupScripts.d script: freeze, thaw, freezeFail.
  void add_vmware_hook(const std::string& name, const std::string& on_freeze = "") {
    add_script(name, "case \"$1\" in\n"
                     "  freeze) echo \"$(basename \"$0\") freeze\" >> \"$LOG\"; " +
                         on_freeze + " ;;\n"
                         "  thaw|freezeFail) echo \"$(basename \"$0\") $1\" >> \"$LOG\" ;;\n"
                         "  *) echo \"unexpected $1\" >&2; exit 1 ;;\n"
                         "esac\n");
  }

  std::unique_ptr<Writer> make(nlohmann::json options, const std::string& run_dir = "") {
    quiesce::WriterRegistry registry;
    quiesce::writers::register_hooks_writer(registry);
    const auto* type = registry.find("hooks");
    REQUIRE(type != nullptr);
    CHECK(type->default_level == quiesce::Level::application);
    if (!options.contains("directory")) {
      options["directory"] = hooks_dir_.string();
    }
    if (!options.contains("allow_non_root_owner")) {
      options["allow_non_root_owner"] = true;
    }
    quiesce::WriterSpec spec{"hooks", "app-hooks", quiesce::Level::application, options};
    return type->create(spec, quiesce::WriterEnvironment{logger_, run_dir, ""});
  }

  [[nodiscard]] PhaseContext ctx(std::stop_token stop = {}) const {
    auto now = quiesce::Clock::now();
    return PhaseContext{"session-1", now + 20s, now + 60s, std::move(stop)};
  }

  [[nodiscard]] std::vector<std::string> calls() const {
    std::vector<std::string> lines;
    std::ifstream in(log_path_);
    for (std::string line; std::getline(in, line);) {
      lines.push_back(line);
    }
    return lines;
  }
  void clear_calls() const { fs::remove(log_path_); }

  [[nodiscard]] std::string agent_log() const { return agent_log_.str(); }
  [[nodiscard]] const std::shared_ptr<spdlog::logger>& logger() const { return logger_; }
  [[nodiscard]] const fs::path& dir() const { return hooks_dir_; }
  [[nodiscard]] fs::path temp(const std::string& name) const { return tmp_ / name; }

 private:
  quiesce::test::TempDir tmp_{"quiesce-hooks"};
  fs::path hooks_dir_;
  fs::path log_path_;
  std::ostringstream agent_log_;
  std::shared_ptr<spdlog::logger> logger_;
};

using Calls = std::vector<std::string>;

bool process_gone(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) {
    return true;
  }
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  auto paren = text.rfind(')');
  return paren == std::string::npos || paren + 2 >= text.size() || text[paren + 2] == 'Z';
}

pid_t read_pid(const fs::path& path) {
  std::ifstream in(path);
  long pid = 0;
  in >> pid;
  return static_cast<pid_t>(pid);
}

}  // namespace

TEST_CASE("hooks: a qemu-ga fsfreeze-hook.d directory runs unmodified, thaw in reverse") {
  HookFixture f;
  f.add_qemu_hook("20-mysql");
  f.add_qemu_hook("10-app");
  f.add_qemu_hook("30-cache");
  auto writer = f.make({{"style", "qemu"}});

  REQUIRE(writer->prepare(f.ctx()).is_ok());
  CHECK(f.calls().empty());  // qemu hooks know nothing of prepare
  REQUIRE(writer->freeze(f.ctx()).is_ok());
  CHECK(f.calls() == Calls{"10-app freeze", "20-mysql freeze", "30-cache freeze"});
  f.clear_calls();
  quiesce::HoldReport hold;
  REQUIRE(writer->thaw(f.ctx(), hold).is_ok());
  CHECK(hold.continuous);
  CHECK(f.calls() == Calls{"30-cache thaw", "20-mysql thaw", "10-app thaw"});
  f.clear_calls();

  // Nothing more for qemu hooks: no post-snapshot, and abort after thaw is a no-op.
  nlohmann::json artifacts;
  REQUIRE(writer->post_snapshot(f.ctx(), {"snap"}, artifacts).is_ok());
  REQUIRE(writer->abort(f.ctx()).is_ok());
  REQUIRE(writer->thaw(f.ctx(), hold).is_ok());
  CHECK(f.calls().empty());
}

TEST_CASE("hooks: qemu style, a failing freeze hook is named - earlier hooks get thaw at abort") {
  HookFixture f;
  f.add_qemu_hook("10-a");
  f.add_qemu_hook("20-b");
  f.add_qemu_hook("30-fails", "echo 'database is locked' >&2; exit 3");
  f.add_qemu_hook("40-never");
  auto writer = f.make({{"style", "qemu"}});

  auto status = writer->freeze(f.ctx());
  REQUIRE_FALSE(status.is_ok());
  const auto& message = status.error().message;
  CHECK(message.find((f.dir() / "30-fails").string()) != std::string::npos);
  CHECK(message.find("exit status 3") != std::string::npos);
  CHECK(message.find("database is locked") != std::string::npos);
  CHECK(f.calls() == Calls{"10-a freeze", "20-b freeze", "30-fails freeze"});
  f.clear_calls();

  REQUIRE(writer->abort(f.ctx()).is_ok());
  CHECK(f.calls() == Calls{"20-b thaw", "10-a thaw"});
  f.clear_calls();
  REQUIRE(writer->abort(f.ctx()).is_ok());  // idempotent
  CHECK(f.calls().empty());
}

TEST_CASE("hooks: an open-vm-tools backupScripts.d directory runs unmodified") {
  HookFixture f;
  f.add_vmware_hook("b-second");
  f.add_vmware_hook("a-first");
  auto writer = f.make({{"style", "vmware"}});

  REQUIRE(writer->prepare(f.ctx()).is_ok());
  REQUIRE(writer->freeze(f.ctx()).is_ok());
  quiesce::HoldReport hold;
  REQUIRE(writer->thaw(f.ctx(), hold).is_ok());
  REQUIRE(writer->abort(f.ctx()).is_ok());
  CHECK(f.calls() ==
        Calls{"a-first freeze", "b-second freeze", "b-second thaw", "a-first thaw"});
}

TEST_CASE("hooks: vmware style, a failing freeze hook - earlier hooks get freezeFail in reverse") {
  HookFixture f;
  f.add_vmware_hook("10-a");
  f.add_vmware_hook("20-b");
  f.add_vmware_hook("30-c", "kill -9 $$");
  auto writer = f.make({{"style", "vmware"}});

  auto status = writer->freeze(f.ctx());
  REQUIRE_FALSE(status.is_ok());
  CHECK(status.error().message.find("30-c freeze") != std::string::npos);
  CHECK(status.error().message.find("killed by signal 9") != std::string::npos);
  f.clear_calls();
  REQUIRE(writer->abort(f.ctx()).is_ok());
  CHECK(f.calls() == Calls{"20-b freezeFail", "10-a freezeFail"});
}

TEST_CASE("hooks: quiesce style gets every phase by name and the environment") {
  HookFixture f;
  f.add_script("10-env",
               "echo \"$1|$QUIESCE_PHASE|$QUIESCE_SESSION_ID|$QUIESCE_WRITER|$PATH|$HOME\" >> "
               "\"$LOG\"\necho \"said $1\"\necho \"warned $1\" >&2");
  auto writer = f.make({});
  auto ctx = f.ctx();

  REQUIRE(writer->prepare(ctx).is_ok());
  REQUIRE(writer->freeze(ctx).is_ok());
  quiesce::HoldReport hold;
  REQUIRE(writer->thaw(ctx, hold).is_ok());
  nlohmann::json artifacts;
  REQUIRE(writer->post_snapshot(ctx, {"snap-1"}, artifacts).is_ok());
  CHECK(artifacts["hooks"][0]["name"] == "10-env");
  REQUIRE(writer->abort(ctx).is_ok());
  REQUIRE(writer->post_restore(ctx, {"cp", "session-1"}).is_ok());
  const std::string tail = "|session-1|app-hooks|/usr/local/sbin:/usr/local/bin:/usr/sbin:"
                           "/usr/bin:/sbin:/bin|";
  CHECK(f.calls() == Calls{"prepare|prepare" + tail, "freeze|freeze" + tail, "thaw|thaw" + tail,
                           "post-snapshot|post-snapshot" + tail, "abort|abort" + tail,
                           "post-restore|post-restore" + tail});
  // Output lands in the agent log, prefixed with the hook's name.
  CHECK(f.agent_log().find("info hooks 'app-hooks': 10-env: said freeze") != std::string::npos);
  CHECK(f.agent_log().find("warning hooks 'app-hooks': 10-env (stderr): warned thaw") !=
        std::string::npos);
}

TEST_CASE("hooks: thaw runs every hook even when some fail, and reports each failure") {
  HookFixture f;
  f.add_script("10-a", "echo \"10-a $1\" >> \"$LOG\"");
  f.add_script("20-b", "echo \"20-b $1\" >> \"$LOG\"\n"
                       "[ \"$1\" = thaw ] && { echo 'cannot unlock' >&2; exit 4; }\nexit 0");
  f.add_script("30-c", "echo \"30-c $1\" >> \"$LOG\"\n[ \"$1\" = thaw ] && exit 5\nexit 0");
  auto writer = f.make({{"style", "qemu"}});
  REQUIRE(writer->freeze(f.ctx()).is_ok());
  f.clear_calls();

  quiesce::HoldReport hold;
  auto status = writer->thaw(f.ctx(), hold);
  REQUIRE_FALSE(status.is_ok());
  CHECK(f.calls() == Calls{"30-c thaw", "20-b thaw", "10-a thaw"});
  const auto& message = status.error().message;
  CHECK(message.find("2 hook(s) failed at thaw") != std::string::npos);
  CHECK(message.find("30-c thaw: exit status 5") != std::string::npos);
  CHECK(message.find("20-b thaw: exit status 4 (stderr: cannot unlock)") != std::string::npos);

  // They ran; a later abort does not run them again.
  f.clear_calls();
  REQUIRE(writer->abort(f.ctx()).is_ok());
  CHECK(f.calls().empty());
}

TEST_CASE("hooks: a hook past its timeout is killed with its whole process group") {
  HookFixture f;
  const auto pid_file = f.temp("child.pid");
  f.add_script("10-hangs", "sleep 1000 &\necho $! > '" + pid_file.string() + "'\necho $$ >> '" +
                               pid_file.string() + ".self'\nwait");
  auto writer = f.make({{"timeout_ms", 300}});

  auto status = writer->freeze(f.ctx());
  REQUIRE_FALSE(status.is_ok());
  CHECK(status.error().error_class == ErrorClass::timeout);
  CHECK(status.error().message.find("10-hangs freeze: timed out") != std::string::npos);
  const pid_t child = read_pid(pid_file);
  const pid_t hook = read_pid(pid_file.string() + ".self");
  REQUIRE(child > 0);
  REQUIRE(hook > 0);
  CHECK(quiesce::test::eventually(5s, [&] { return process_gone(child) && process_gone(hook); }));
}

TEST_CASE("hooks: the call's deadline cuts a hook's timeout short") {
  HookFixture f;
  f.add_script("10-slow", "sleep 1000");
  auto writer = f.make({{"timeout_ms", 30000}});
  auto ctx = f.ctx();
  ctx.deadline = quiesce::Clock::now() + 400ms;
  auto status = writer->freeze(ctx);
  REQUIRE_FALSE(status.is_ok());
  CHECK(status.error().error_class == ErrorClass::timeout);
  CHECK(status.error().message.find("10-slow freeze: timed out") != std::string::npos);
  // Killed (SIGTERM, then SIGKILL at the latest) by the call's deadline.
  CHECK(quiesce::Clock::now() < ctx.deadline + 5s);
}

TEST_CASE("hooks: the stop token kills a running hook") {
  HookFixture f;
  const auto pid_file = f.temp("hook.pid");
  f.add_script("10-slow", "echo $$ > '" + pid_file.string() + "'\nsleep 1000");
  auto writer = f.make({});
  std::stop_source stop;
  std::thread stopper([&] {
    quiesce::test::eventually(10s, [&] { return fs::exists(pid_file); });
    std::this_thread::sleep_for(100ms);
    stop.request_stop();
  });
  auto status = writer->freeze(f.ctx(stop.get_token()));
  stopper.join();
  REQUIRE_FALSE(status.is_ok());
  CHECK(status.error().message.find("10-slow freeze: stopped") != std::string::npos);
  const pid_t hook = read_pid(pid_file);
  REQUIRE(hook > 0);
  CHECK(quiesce::test::eventually(5s, [&] { return process_gone(hook); }));
}

TEST_CASE("hooks: identify lists the hooks and what it skipped, with the reason") {
  HookFixture f;
  f.add_script("10-runs", "exit 0");
  f.add_script("20-old.dpkg-old", "exit 1");
  f.add_script("21-new.dpkg-dist", "exit 1");
  f.add_script("30-x.rpmnew", "exit 1");
  f.add_script("31-x.rpmsave", "exit 1");
  f.add_script("40-example.sample", "exit 1");
  f.add_script("50-edited~", "exit 1");
  f.add_script(".hidden", "exit 1");
  f.add_script("60-readme", "exit 1", 0644);
  fs::create_directory(f.dir() / "70-subdir");
  auto writer = f.make({});

  quiesce::Identity identity;
  REQUIRE(writer->identify(f.ctx(), identity).is_ok());
  const auto& meta = identity.metadata;
  CHECK(meta["hooks"] == nlohmann::json::array({"10-runs"}));
  CHECK(meta["directory_exists"] == true);
  CHECK(meta["style"] == "quiesce");
  std::map<std::string, std::string> skipped;
  for (const auto& entry : meta["skipped"]) {
    skipped[entry["name"]] = entry["reason"];
  }
  CHECK(skipped.size() == 9);
  CHECK(skipped[".hidden"] == "hidden file");
  CHECK(skipped["20-old.dpkg-old"].find("dpkg") != std::string::npos);
  CHECK(skipped["21-new.dpkg-dist"].find("dpkg") != std::string::npos);
  CHECK(skipped["30-x.rpmnew"].find("rpm") != std::string::npos);
  CHECK(skipped["31-x.rpmsave"].find("rpm") != std::string::npos);
  CHECK(skipped["40-example.sample"].find("sample") != std::string::npos);
  CHECK(skipped["50-edited~"].find("backup") != std::string::npos);
  CHECK(skipped["60-readme"] == "not executable");
  CHECK(skipped["70-subdir"] == "directory");
  CHECK(meta["refused"].empty());
}

TEST_CASE("hooks: group- or other-writable hooks and directories are refused, named") {
  HookFixture f;
  f.add_script("10-fine", "echo \"10-fine $1\" >> \"$LOG\"");
  f.add_script("20-open", "exit 0", 0775);
  auto writer = f.make({});

  auto prepare = writer->prepare(f.ctx());
  REQUIRE_FALSE(prepare.is_ok());
  CHECK(prepare.error().error_class == ErrorClass::non_retryable);
  CHECK(prepare.error().message.find((f.dir() / "20-open").string() + ": writable by its group") !=
        std::string::npos);
  auto freeze = writer->freeze(f.ctx());
  REQUIRE_FALSE(freeze.is_ok());
  CHECK(freeze.error().message.find("20-open") != std::string::npos);
  CHECK(f.calls().empty());  // nothing ran, not even the fine one

  quiesce::Identity identity;
  REQUIRE(writer->identify(f.ctx(), identity).is_ok());
  REQUIRE(identity.metadata["refused"].size() == 1);
  CHECK(identity.metadata["refused"][0]["name"] == "20-open");

  fs::permissions(f.dir() / "20-open", fs::perms(0755));
  fs::permissions(f.dir(), fs::perms(0757));
  auto dir_open = writer->freeze(f.ctx());
  REQUIRE_FALSE(dir_open.is_ok());
  CHECK(dir_open.error().message.find("hook directory " + f.dir().string() +
                                      ": writable by others") != std::string::npos);
  fs::permissions(f.dir(), fs::perms(0755));
}

TEST_CASE("hooks: files not owned by root are refused unless allow_non_root_owner") {
  HookFixture f;
  f.add_script("10-mine", "exit 0");
  if (::geteuid() == 0) {
    REQUIRE(::chown((f.dir() / "10-mine").c_str(), 65534, 65534) == 0);
  }
  auto strict = f.make({{"allow_non_root_owner", false}});
  auto status = strict->freeze(f.ctx());
  REQUIRE_FALSE(status.is_ok());
  // As root the hook is the offender; otherwise the test's own directory already is.
  const auto offender = ::geteuid() == 0 ? (f.dir() / "10-mine").string() : f.dir().string();
  CHECK(status.error().message.find(offender) != std::string::npos);
  CHECK(status.error().message.find("not root") != std::string::npos);

  auto relaxed = f.make({});
  CHECK(relaxed->freeze(f.ctx()).is_ok());
}

TEST_CASE("hooks: options are validated and unknown ones rejected") {
  HookFixture f;
  auto expect_field_error = [&](nlohmann::json options, const std::string& path,
                                const std::string& text) {
    try {
      (void)f.make(std::move(options));
      FAIL("expected a FieldError for " << path);
    } catch (const quiesce::FieldError& error) {
      CHECK(error.path() == path);
      CHECK(std::string(error.what()).find(text) != std::string::npos);
    }
  };
  expect_field_error({{"directory", (f.dir() / "missing").string()}}, "options.directory",
                     "does not exist");
  expect_field_error({{"directory", "relative/hooks.d"}}, "options.directory", "absolute");
  expect_field_error({{"style", "hyperv"}}, "options.style", "quiesce, qemu or vmware");
  expect_field_error({{"timeout_ms", 0}}, "options.timeout_ms", "");
  expect_field_error({{"timeoutms", 10}}, "options.timeoutms", "");
}

TEST_CASE("hooks: a directory that disappears means nothing to run, reported by identify") {
  HookFixture f;
  auto writer = f.make({});
  fs::remove(f.dir());
  quiesce::Identity identity;
  REQUIRE(writer->identify(f.ctx(), identity).is_ok());
  CHECK(identity.metadata["directory_exists"] == false);
  CHECK(identity.metadata["hooks"].empty());
  CHECK(writer->prepare(f.ctx()).is_ok());
  CHECK(writer->freeze(f.ctx()).is_ok());
  quiesce::HoldReport hold;
  CHECK(writer->thaw(f.ctx(), hold).is_ok());
}

TEST_CASE("hooks: quiesce style, a failed prepare hook and the frozen ones get abort in reverse") {
  HookFixture f;
  f.add_script("10-a", "echo \"10-a $1\" >> \"$LOG\"");
  f.add_script("20-b", "echo \"20-b $1\" >> \"$LOG\"\n[ \"$1\" = freeze ] && exit 2\nexit 0");
  f.add_script("30-c", "echo \"30-c $1\" >> \"$LOG\"");
  auto writer = f.make({});
  REQUIRE(writer->prepare(f.ctx()).is_ok());
  auto status = writer->freeze(f.ctx());
  REQUIRE_FALSE(status.is_ok());
  CHECK(status.error().error_class == ErrorClass::retryable);
  f.clear_calls();
  REQUIRE(writer->abort(f.ctx()).is_ok());
  // Every hook told about this session hears abort, 30-c too (it prepared).
  CHECK(f.calls() == Calls{"30-c abort", "20-b abort", "10-a abort"});
  f.clear_calls();
  REQUIRE(writer->abort(f.ctx()).is_ok());
  CHECK(f.calls().empty());
}

TEST_CASE("hooks: scan rules on names") {
  using quiesce::writers::hooks::skip_reason_for_name;
  CHECK(skip_reason_for_name("10-mysql").empty());
  CHECK(skip_reason_for_name("mysql-flush.sh").empty());
  CHECK_FALSE(skip_reason_for_name("x.dpkg-new").empty());
  CHECK_FALSE(skip_reason_for_name("x.rpmorig").empty());
  CHECK_FALSE(skip_reason_for_name("x.bak").empty());
  CHECK_FALSE(skip_reason_for_name(".x").empty());
}

// Issue #15 item 8: qemu's mysql-flush.sh leaves a subshell that writes to
// the hook's stderr after the hook exited; a pipe closed then killed it with
// SIGPIPE before it could run its unlock.
TEST_CASE("hooks: a background child that writes after its hook exited survives, and is logged") {
  HookFixture f;
  const auto fifo = f.temp("release.fifo");
  const auto alive = f.temp("child-finished");
  // The child outlives the hook, waits for thaw, then writes to the
  // stdout and stderr it inherited and reports it got past those writes.
  f.add_script("10-holder", "case \"$1\" in\n"
                            "  freeze) mkfifo '" + fifo.string() + "' || exit 1\n"
                            "    ( read x < '" + fifo.string() + "'; echo 'child unlocking';\n"
                            "      echo 'child stderr after exit' >&2; rm -f '" + fifo.string() +
                            "'; touch '" + alive.string() + "' ) &\n"
                            "    echo 'freeze done' ;;\n"
                            "  thaw) echo > '" + fifo.string() + "' ;;\n"
                            "esac\n");
  auto writer = f.make({{"style", "qemu"}});
  for (int round = 0; round < 2; ++round) {
    CAPTURE(round);
    fs::remove(alive);
    REQUIRE(writer->freeze(f.ctx()).is_ok());
    // Well past the 200 ms the hook's own output is drained for.
    std::this_thread::sleep_for(400ms);
    quiesce::HoldReport hold;
    REQUIRE(writer->thaw(f.ctx(), hold).is_ok());
    bool finished = false;
    for (int i = 0; i < 200 && !finished; ++i) {
      finished = fs::exists(alive);
      std::this_thread::sleep_for(10ms);
    }
    CHECK_MESSAGE(finished, "the background child died before its unlock: " << f.agent_log());
    // A second round needs the FIFO gone, as mysql-flush.sh does (mkfifo fails otherwise).
    CHECK_FALSE(fs::exists(fifo));
  }
  std::string log;
  for (int i = 0; i < 200; ++i) {
    log = f.agent_log();
    if (log.find("child stderr after exit") != std::string::npos) {
      break;
    }
    std::this_thread::sleep_for(10ms);
  }
  CHECK_MESSAGE(log.find("10-holder (background): child unlocking") != std::string::npos, log);
  CHECK_MESSAGE(log.find("10-holder (background, stderr): child stderr after exit") !=
                    std::string::npos,
                log);
}

// Issue #15 item 10: open-vm-tools' legacy scripts (scriptOps.c): the freeze
// script before backupScripts.d, the thaw script after it, for thaw and freezeFail.
TEST_CASE("hooks: vmware style runs the legacy pre-freeze and post-thaw scripts around the directory") {
  HookFixture f;
  f.add_vmware_hook("10-a");
  f.add_vmware_hook("20-b");
  const auto pre = f.temp("pre-freeze-script");
  const auto post = f.temp("post-thaw-script");
  auto legacy = [&](const fs::path& path) {
    std::ofstream(path) << "#!/bin/sh\necho \"$(basename \"$0\") $1\" >> '"
                        << f.temp("calls.log").string() << "'\n";
    fs::permissions(path, fs::perms(0755));
  };
  nlohmann::json options{{"style", "vmware"},
                         {"legacy_freeze_script", pre.string()},
                         {"legacy_thaw_script", post.string()}};

  SUBCASE("both present: freeze first, thaw last") {
    legacy(pre);
    legacy(post);
    auto writer = f.make(options);
    REQUIRE(writer->freeze(f.ctx()).is_ok());
    quiesce::HoldReport hold;
    REQUIRE(writer->thaw(f.ctx(), hold).is_ok());
    CHECK(f.calls() == Calls{"pre-freeze-script freeze", "10-a freeze", "20-b freeze",
                             "20-b thaw", "10-a thaw", "post-thaw-script thaw"});
  }
  SUBCASE("a failing directory script: freezeFail goes to the legacy thaw script last") {
    legacy(pre);
    legacy(post);
    f.add_vmware_hook("30-fails", "exit 4");
    auto writer = f.make(options);
    REQUIRE_FALSE(writer->freeze(f.ctx()).is_ok());
    f.clear_calls();
    REQUIRE(writer->abort(f.ctx()).is_ok());
    CHECK(f.calls() == Calls{"20-b freezeFail", "10-a freezeFail", "post-thaw-script freezeFail"});
  }
  SUBCASE("only the thaw script: it still runs after the directory, as open-vm-tools does") {
    legacy(post);
    auto writer = f.make(options);
    REQUIRE(writer->freeze(f.ctx()).is_ok());
    quiesce::HoldReport hold;
    REQUIRE(writer->thaw(f.ctx(), hold).is_ok());
    CHECK(f.calls() ==
          Calls{"10-a freeze", "20-b freeze", "20-b thaw", "10-a thaw", "post-thaw-script thaw"});
  }
  SUBCASE("a group-writable legacy script is refused before anything runs") {
    legacy(pre);
    legacy(post);
    fs::permissions(post, fs::perms(0775));
    auto writer = f.make(options);
    auto status = writer->freeze(f.ctx());
    REQUIRE_FALSE(status.is_ok());
    CHECK(status.error().message.find(post.string()) != std::string::npos);
    CHECK(status.error().message.find("writable by its group") != std::string::npos);
    CHECK(f.calls().empty());
  }
  SUBCASE("the legacy options belong to the vmware style and take absolute paths") {
    CHECK_THROWS_WITH_AS(f.make({{"style", "qemu"}, {"legacy_thaw_script", post.string()}}),
                         doctest::Contains("options.legacy_thaw_script"), quiesce::FieldError);
    CHECK_THROWS_WITH_AS(f.make({{"style", "vmware"}, {"legacy_freeze_script", "pre"}}),
                         doctest::Contains("not an absolute path"), quiesce::FieldError);
  }
}

// Issue #15 item 9: hooks that froze are in the run-dir record; a restarted
// agent releases them. (The real agent killed with SIGKILL: tests/root.)
TEST_CASE("hooks: frozen hooks are recorded in the run dir and released by recovery") {
  HookFixture f;
  f.add_qemu_hook("10-a");
  f.add_qemu_hook("20-b");
  const auto run_dir = f.temp("run");
  fs::create_directory(run_dir);
  fs::permissions(run_dir, fs::perms(0755));
  const auto record = run_dir / "hooks-frozen-app-hooks.json";
  {
    auto writer = f.make({{"style", "qemu"}}, run_dir.string());
    REQUIRE(writer->freeze(f.ctx()).is_ok());
    REQUIRE(fs::exists(record));
    quiesce::HoldReport hold;
    REQUIRE(writer->thaw(f.ctx(), hold).is_ok());
    CHECK_FALSE(fs::exists(record));  // nothing held, nothing to recover
    REQUIRE(writer->freeze(f.ctx()).is_ok());
    // The writer is dropped while frozen, as a killed agent would leave it.
  }
  f.clear_calls();
  REQUIRE(fs::exists(record));
  auto report = quiesce::writers::recover_stale_hooks(run_dir.string(), f.logger());
  CHECK(report.records.size() == 1);
  CHECK(report.released == 2);
  CHECK(report.failed == 0);
  CHECK(f.calls() == Calls{"20-b thaw", "10-a thaw"});
  CHECK_FALSE(fs::exists(record));
  f.clear_calls();
  // Run again: nothing left, nothing run.
  report = quiesce::writers::recover_stale_hooks(run_dir.string(), f.logger());
  CHECK(report.records.empty());
  CHECK(f.calls().empty());
}
