// The doctest main of the Windows test binaries (tests/support/doctest_main.cpp
// is the Linux one: it skips root-only binaries with geteuid and ignores
// SIGPIPE, neither of which exists here). Failures keep the temp dirs.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "tests/support/temp_dir.hpp"

namespace {

struct FailureRecorder : doctest::IReporter {
  explicit FailureRecorder(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {}
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

int main(int argc, char** argv) {
  doctest::Context context;
  context.applyCommandLine(argc, argv);
  context.setOption("reporters", "console,failure-recorder");
  return context.run();
}
