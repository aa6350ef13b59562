// platform/win/subprocess.cpp directly: the same bounds on output as on
// Linux, a program that cannot start, a stop request, an environment
// entry that is not NAME=value.
#include <windows.h>

#include <doctest/doctest.h>

#include <array>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <stop_token>
#include <string>
#include <thread>

#include "platform/subprocess.hpp"
#include "tests/support/temp_dir.hpp"

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using quiesce::platform::Outcome;
using quiesce::platform::OutputStream;
using quiesce::platform::SubprocessSpec;

namespace {

std::string system_root() {
  std::array<wchar_t, MAX_PATH> buffer{};
  const UINT n = ::GetSystemWindowsDirectoryW(buffer.data(), static_cast<UINT>(buffer.size()));
  return fs::path(std::wstring(buffer.data(), n)).string();
}

SubprocessSpec batch(const fs::path& file, const std::string& body) {
  std::ofstream(file) << "@echo off\r\n" << body << "\r\n";
  SubprocessSpec spec;
  spec.argv = {file.string(), "arg"};
  spec.env = {"SystemRoot=" + system_root(), "PATH=" + system_root() + "\\system32"};
  spec.deadline = std::chrono::steady_clock::now() + 30s;
  return spec;
}

}  // namespace

TEST_CASE("windows subprocess: output is bounded per stream and long lines are cut, as on Linux") {
  quiesce::test::TempDir dir("quiesce-subprocess");
  // 300 lines of 20 bytes on stdout, one 50-byte line on stderr.
  auto spec = batch(dir.path() / "noisy.bat",
                    "for /L %%i in (1,1,300) do echo line-%%i-xxxxxxxxxx\r\n"
                    "echo 12345678901234567890123456789012345678901234567890>&2");
  spec.max_output_bytes = 1000;
  spec.max_line_bytes = 16;
  std::size_t lines = 0;
  spec.on_line = [&](OutputStream, std::string_view line) {
    CHECK(line.size() <= 16);
    ++lines;
  };
  auto result = quiesce::platform::run_subprocess(spec);
  INFO(result.describe());
  REQUIRE(result.outcome == Outcome::exited);
  CHECK(result.exit_code == 0);
  CHECK(result.stdout_text.size() <= 1000);
  CHECK(result.stdout_text.rfind("line-1-xxxxxxxxx", 0) == 0);  // cut at 16 bytes
  CHECK(result.dropped_bytes > 0);
  CHECK(result.stderr_text.rfind("1234567890123456\n", 0) == 0);
  CHECK(result.last_stderr_line == "90");  // the last 16-byte piece of the cut line
  CHECK(lines > 0);
  CHECK(result.pid > 0);
}

TEST_CASE("windows subprocess: what cannot start says why, and bad input changes nothing") {
  quiesce::test::TempDir dir("quiesce-subprocess");
  SubprocessSpec missing;
  missing.argv = {(dir.path() / "no-such.exe").string()};
  auto result = quiesce::platform::run_subprocess(missing);
  CHECK(result.outcome == Outcome::spawn_failed);
  CHECK(result.describe().find("could not start: CreateProcessW ") == 0);
  CHECK(result.describe().find("no-such.exe") != std::string::npos);

  auto bad_env = batch(dir.path() / "env.bat", "echo ran> \"%~dp0ran.txt\"");
  bad_env.env.push_back("NOEQUALS");
  result = quiesce::platform::run_subprocess(bad_env);
  CHECK(result.outcome == Outcome::spawn_failed);
  CHECK(result.error == "environment entry 'NOEQUALS' is not NAME=value");
  CHECK_FALSE(fs::exists(dir.path() / "ran.txt"));

  auto bad_argument = batch(dir.path() / "arg.bat", "echo ran> \"%~dp0ran.txt\"");
  bad_argument.argv.back() = "a&calc";
  result = quiesce::platform::run_subprocess(bad_argument);
  CHECK(result.outcome == Outcome::spawn_failed);
  CHECK(result.error.find("argument 'a&calc' has a character cmd.exe would interpret") == 0);
  CHECK_FALSE(fs::exists(dir.path() / "ran.txt"));
}

TEST_CASE("windows subprocess: a stop request terminates the program's job") {
  quiesce::test::TempDir dir("quiesce-subprocess");
  // A batch file that loops on a wait that never ends by itself.
  auto spec = batch(dir.path() / "loop.bat", ":again\r\nping -n 2 127.0.0.1 >nul\r\ngoto again");
  std::stop_source stop;
  spec.stop = stop.get_token();
  std::jthread stopper([&] {
    std::this_thread::sleep_for(1500ms);
    stop.request_stop();
  });
  const auto started = std::chrono::steady_clock::now();
  auto result = quiesce::platform::run_subprocess(spec);
  CHECK(result.outcome == Outcome::stopped);
  CHECK(result.describe().find("its job object (the program and everything it started) was terminated") !=
        std::string::npos);
  CHECK(std::chrono::steady_clock::now() - started < 15s);
}
