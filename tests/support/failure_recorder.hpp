// The doctest reporter both test mains register (tests/support/doctest_main.cpp
// on Linux, tests/windows/windows_test_main.cpp under wine): a failed check
// or case marks the run failed, so temp dirs are kept for inspection, and the
// count of cases run lets a main tell a --test-case filter that matched
// nothing from a pass. Include it after <doctest/doctest.h> in the one
// translation unit that defines DOCTEST_CONFIG_IMPLEMENT.
#pragma once

#include <doctest/doctest.h>

#include "tests/support/temp_dir.hpp"

namespace quiesce::test {

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
      note_test_failed();
    }
  }
  void test_case_exception(const doctest::TestCaseException&) override { note_test_failed(); }
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData& data) override {
    if (data.m_failed) {
      note_test_failed();
    }
  }
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

}  // namespace quiesce::test
