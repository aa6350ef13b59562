// platform/linux/subprocess: real processes, no shell between us and them
// except where a test needs one (/bin/sh given explicitly in argv).
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "platform/linux/subprocess.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"

using namespace std::chrono_literals;
using quiesce::platform::Outcome;
using quiesce::platform::OutputStream;
using quiesce::platform::run_subprocess;
using quiesce::platform::SubprocessSpec;

namespace {

SubprocessSpec shell(const std::string& script) {
  SubprocessSpec spec;
  spec.argv = {"/bin/sh", "-c", script};
  spec.env = {"PATH=/usr/bin:/bin"};
  spec.deadline = std::chrono::steady_clock::now() + 20s;
  return spec;
}

// Gone, or a zombie nobody has reaped yet (reparented to init): either way
// no longer running.
bool process_gone(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) {
    return true;
  }
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  auto paren = text.rfind(')');
  return paren == std::string::npos || paren + 2 >= text.size() || text[paren + 2] == 'Z';
}

pid_t first_line_pid(const std::string& text) {
  std::istringstream in(text);
  long pid = 0;
  in >> pid;
  return static_cast<pid_t>(pid);
}

}  // namespace

TEST_CASE("subprocess: stdout and stderr are captured line by line, exit status reported") {
  auto spec = shell("echo one; echo two >&2; printf 'three'; exit 3");
  std::vector<std::string> out_lines;
  std::vector<std::string> err_lines;
  spec.on_line = [&](OutputStream stream, std::string_view line) {
    (stream == OutputStream::out ? out_lines : err_lines).emplace_back(line);
  };
  auto result = run_subprocess(spec);
  CHECK(result.outcome == Outcome::exited);
  CHECK(result.exit_code == 3);
  CHECK_FALSE(result.success());
  CHECK(result.describe() == "exit status 3");
  CHECK(out_lines == std::vector<std::string>{"one", "three"});
  CHECK(err_lines == std::vector<std::string>{"two"});
  CHECK(result.last_stderr_line == "two");
  CHECK(result.stdout_text == "one\nthree\n");
}

TEST_CASE("subprocess: argv goes to execve untouched, no shell") {
  SubprocessSpec spec;
  spec.argv = {"/bin/echo", "a; touch /tmp/should-not-exist-quiesce", "$HOME", "*"};
  auto result = run_subprocess(spec);
  REQUIRE(result.success());
  CHECK(result.stdout_text == "a; touch /tmp/should-not-exist-quiesce $HOME *\n");
}

TEST_CASE("subprocess: the environment is exactly the one given, stdin is /dev/null") {
  SubprocessSpec spec;
  spec.argv = {"/usr/bin/env"};
  spec.env = {"A=1", "PATH=/bin"};
  auto result = run_subprocess(spec);
  REQUIRE(result.success());
  CHECK(result.stdout_text == "A=1\nPATH=/bin\n");

  // cat on /dev/null ends at once; on an inherited terminal or pipe it would wait.
  auto cat = shell("cat; echo done");
  cat.deadline = std::chrono::steady_clock::now() + 10s;
  auto cat_result = run_subprocess(cat);
  REQUIRE(cat_result.success());
  CHECK(cat_result.stdout_text == "done\n");
}

TEST_CASE("subprocess: descriptors other than stdio are closed, ignored signals reset") {
  int leaked = ::open("/dev/null", O_RDONLY);  // deliberately without O_CLOEXEC
  REQUIRE(leaked > 2);
  auto previous = ::signal(SIGUSR1, SIG_IGN);
  auto result = run_subprocess(
      shell("if [ -e /proc/self/fd/" + std::to_string(leaked) +
            " ]; then echo open; else echo closed; fi; grep SigIgn /proc/self/status"));
  ::signal(SIGUSR1, previous);
  ::close(leaked);
  REQUIRE(result.success());
  CHECK(result.stdout_text.find("closed\n") == 0);
  // The test binary ignores SIGPIPE (and now SIGUSR1); the child must not.
  CHECK(result.stdout_text.find("SigIgn:\t0000000000000000") != std::string::npos);
}

TEST_CASE("subprocess: a timeout kills the whole process group") {
  auto spec = shell("sleep 1000 & echo $!; wait");
  spec.deadline = std::chrono::steady_clock::now() + 500ms;
  spec.kill_grace = 2s;
  auto result = run_subprocess(spec);
  CHECK(result.outcome == Outcome::timed_out);
  CHECK(result.signal == SIGTERM);
  CHECK(result.describe().find("timed out") != std::string::npos);
  pid_t sleeper = first_line_pid(result.stdout_text);
  REQUIRE(sleeper > 0);
  CHECK(quiesce::test::eventually(5s, [&] { return process_gone(sleeper); }));
}

TEST_CASE("subprocess: SIGKILL follows when SIGTERM is ignored") {
  auto spec = shell("trap '' TERM; sleep 1000 & echo $!; wait; wait");
  spec.deadline = std::chrono::steady_clock::now() + 300ms;
  spec.kill_grace = 200ms;
  auto result = run_subprocess(spec);
  CHECK(result.outcome == Outcome::timed_out);
  CHECK(result.signal == SIGKILL);
  pid_t sleeper = first_line_pid(result.stdout_text);
  REQUIRE(sleeper > 0);
  CHECK(quiesce::test::eventually(5s, [&] { return process_gone(sleeper); }));
}

TEST_CASE("subprocess: the stop token kills the process group") {
  std::stop_source stop;
  auto spec = shell("sleep 1000 & echo $!; wait");
  spec.stop = stop.get_token();
  std::thread stopper([&] {
    std::this_thread::sleep_for(300ms);
    stop.request_stop();
  });
  auto result = run_subprocess(spec);
  stopper.join();
  CHECK(result.outcome == Outcome::stopped);
  pid_t sleeper = first_line_pid(result.stdout_text);
  REQUIRE(sleeper > 0);
  CHECK(quiesce::test::eventually(5s, [&] { return process_gone(sleeper); }));

  // Already stopped: nothing is started.
  auto again = run_subprocess(spec);
  CHECK(again.outcome == Outcome::stopped);
  CHECK(again.pid == -1);
}

TEST_CASE("subprocess: programs that cannot start are reported, not run") {
  SubprocessSpec missing;
  missing.argv = {"/nonexistent/quiesce-hook", "freeze"};
  auto result = run_subprocess(missing);
  CHECK(result.outcome == Outcome::spawn_failed);
  CHECK(result.error.find("/nonexistent/quiesce-hook") != std::string::npos);
  CHECK(result.error.find("No such file") != std::string::npos);

  quiesce::test::TempDir dir("quiesce-subprocess");
  auto script = dir / "not-executable";
  std::ofstream(script) << "#!/bin/sh\necho hi\n";
  std::filesystem::permissions(script, std::filesystem::perms::owner_read |
                                           std::filesystem::perms::owner_write);
  SubprocessSpec plain;
  plain.argv = {script.string()};
  auto denied = run_subprocess(plain);
  CHECK(denied.outcome == Outcome::spawn_failed);
  // Root may lack the execute bit and still get EACCES from execve.
  CHECK(denied.error.find("Permission denied") != std::string::npos);

  SubprocessSpec bad_dir;
  bad_dir.argv = {"/bin/true"};
  bad_dir.working_dir = "/nonexistent-dir";
  auto no_dir = run_subprocess(bad_dir);
  CHECK(no_dir.outcome == Outcome::spawn_failed);
  CHECK(no_dir.error.find("/nonexistent-dir") != std::string::npos);
}

TEST_CASE("subprocess: output beyond the bound is read and dropped, long lines are cut") {
  auto spec = shell("head -c 200000 /dev/zero | tr '\\0' x; echo; echo last >&2");
  spec.max_output_bytes = 1000;
  spec.max_line_bytes = 100;
  std::size_t lines = 0;
  spec.on_line = [&](OutputStream, std::string_view line) {
    CHECK(line.size() <= 100);
    ++lines;
  };
  auto result = run_subprocess(spec);
  REQUIRE(result.success());
  CHECK(result.stdout_text.size() <= 1000);
  CHECK(result.dropped_bytes > 190000);
  CHECK(lines <= 11);
  CHECK(result.last_stderr_line == "last");
}

TEST_CASE("subprocess: a helper left running after a normal exit does not hold the caller") {
  // Like qemu's mysql-flush.sh: the freeze script leaves a lock holder behind.
  auto spec = shell("sleep 1000 & echo $!");
  auto result = run_subprocess(spec);
  REQUIRE(result.success());
  pid_t sleeper = first_line_pid(result.stdout_text);
  REQUIRE(sleeper > 0);
  CHECK_FALSE(process_gone(sleeper));
  ::kill(sleeper, SIGKILL);
}
