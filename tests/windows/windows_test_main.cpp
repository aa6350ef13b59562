// The doctest main of the Windows test binaries (tests/support/doctest_main.cpp
// is the Linux one: it skips root-only binaries with geteuid and ignores
// SIGPIPE, neither of which exists here). Failures keep the temp dirs.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "tests/support/failure_recorder.hpp"

DOCTEST_REGISTER_REPORTER("failure-recorder", 1, quiesce::test::FailureRecorder);

int main(int argc, char** argv) {
  doctest::Context context;
  context.applyCommandLine(argc, argv);
  context.setOption("reporters", "console,failure-recorder");
  return context.run();
}
