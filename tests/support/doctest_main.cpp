// The doctest main shared by every test binary. It records failures so temp
// dirs are kept for inspection, and lets a binary that needs root exit with
// 77 (CTest's "skipped") when not run as root.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <iostream>

#include "tests/support/failure_recorder.hpp"

DOCTEST_REGISTER_REPORTER("failure-recorder", 1, quiesce::test::FailureRecorder);

// Defined by test binaries whose cases need root; weak so others need not.
extern "C" __attribute__((weak)) int quiesce_tests_need_root() { return 0; }

int main(int argc, char** argv) {
  // A dying child must not kill the test binary through SIGPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  doctest::Context context;
  context.applyCommandLine(argc, argv);
  context.setOption("reporters", "console,failure-recorder");
  bool listing = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.find("list-test") != std::string::npos || arg.find("-ltc") != std::string::npos) {
      listing = true;
    }
  }
  if (!listing && quiesce_tests_need_root() != 0 && ::geteuid() != 0) {
    std::cerr << "these tests need root (loop devices, FIFREEZE); skipping\n";
    return 77;
  }
  const int result = context.run();
  // CTest runs one case per process by name. A name that matches nothing
  // (a renamed case, a ';' that CMake split) would "pass" without running:
  // make that a failure instead.
  bool filtered = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]).rfind("--test-case=", 0) == 0) {
      filtered = true;
    }
  }
  if (!listing && filtered && quiesce::test::FailureRecorder::cases_run == 0) {
    std::cerr << "no test case matched the --test-case filter\n";
    return 1;
  }
  return result;
}
