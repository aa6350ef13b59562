// The doctest main shared by every test binary. It records failures so temp
// dirs are kept for inspection, and lets a binary that needs root exit with
// 77 (CTest's "skipped") when not run as root.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <iostream>

#include "tests/support/temp_dir.hpp"

namespace {

struct FailureRecorder : doctest::IReporter {
  explicit FailureRecorder(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats& stats) override {
    cases_run = stats.numTestCasesPassingFilters;
  }
  static inline unsigned cases_run = 0;
  void test_case_start(const doctest::TestCaseData&) override {}
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats& stats) override {
    if (stats.failure_flags != 0) {
      quiesce::test::note_test_failed();
    }
  }
  void test_case_exception(const doctest::TestCaseException&) override {
    quiesce::test::note_test_failed();
  }
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData& data) override {
    if (data.m_failed) {
      quiesce::test::note_test_failed();
    }
  }
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

}  // namespace

DOCTEST_REGISTER_REPORTER("failure-recorder", 1, FailureRecorder);

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
  if (!listing && filtered && FailureRecorder::cases_run == 0) {
    std::cerr << "no test case matched the --test-case filter\n";
    return 1;
  }
  return result;
}
