// TempDir on Windows (tests/support/temp_dir.cpp is the Linux one, built on
// mkdtemp): a directory with a random name under %TEMP%, created with
// CreateDirectoryW so an existing one is never reused.
#include <windows.h>

#include <atomic>
#include <cstdlib>
#include <iostream>
#include <random>
#include <stdexcept>

#include "tests/support/temp_dir.hpp"

namespace quiesce::test {

namespace {
std::atomic<bool> failed{false};
}

void note_test_failed() { failed = true; }
bool any_test_failed() { return failed; }

TempDir::TempDir(const std::string& prefix) {
  std::random_device seed;
  std::mt19937_64 random(seed());
  for (int attempt = 0; attempt < 100; ++attempt) {
    auto candidate = std::filesystem::temp_directory_path() /
                     (prefix + "-" + std::to_string(random() % 1000000000ULL));
    if (::CreateDirectoryW(candidate.c_str(), nullptr)) {
      path_ = candidate;
      return;
    }
  }
  throw std::runtime_error("cannot create a temp dir under " +
                           std::filesystem::temp_directory_path().string());
}

TempDir::~TempDir() {
  if (any_test_failed() || std::getenv("QUIESCE_KEEP_TEMP") != nullptr) {
    std::cerr << "keeping temp dir " << path_.string() << "\n";
    return;
  }
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

}  // namespace quiesce::test
