#include "tests/support/temp_dir.hpp"

#include <atomic>
#include <cstdlib>
#include <iostream>
#include <stdexcept>
#include <vector>

namespace quiesce::test {

namespace {
std::atomic<bool> failed{false};
}

void note_test_failed() { failed = true; }
bool any_test_failed() { return failed; }

TempDir::TempDir(const std::string& prefix) {
  auto pattern = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
  std::vector<char> buffer(pattern.begin(), pattern.end());
  buffer.push_back('\0');
  if (::mkdtemp(buffer.data()) == nullptr) {
    throw std::runtime_error("mkdtemp failed for " + pattern);
  }
  path_ = buffer.data();
}

TempDir::~TempDir() {
  if (any_test_failed() || std::getenv("QUIESCE_KEEP_TEMP") != nullptr) {
    std::cerr << "keeping temp dir " << path_ << "\n";
    return;
  }
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

}  // namespace quiesce::test
