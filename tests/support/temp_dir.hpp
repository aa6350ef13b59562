#pragma once
// A temporary directory for one test. Removed when the test passes; kept (and
// its path printed) when any test in the run failed, so it can be inspected.

#include <filesystem>
#include <string>

namespace quiesce::test {

class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "quiesce-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  [[nodiscard]] std::filesystem::path operator/(const std::string& name) const {
    return path_ / name;
  }

 private:
  std::filesystem::path path_;
};

// Set by the test main when a test failed; temp dirs are then kept.
void note_test_failed();
bool any_test_failed();

}  // namespace quiesce::test
