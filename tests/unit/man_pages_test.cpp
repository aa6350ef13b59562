// Issue #14, item 2: the man pages (packaging/man/, hand-written roff, the
// one source both packages install) render with man -l, with no warning
// from groff, and each names its program in NAME and carries the sections
// a reader looks for.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <string>
#include <vector>

#include "tests/support/processes.hpp"

namespace fs = std::filesystem;

namespace {

struct Page {
  std::string file;
  std::string name;
};

const std::vector<Page>& pages() {
  static const std::vector<Page> list = {
      {"quiesce-agent.8", "quiesce-agent"},
      {"quiesce-freeze-holder.8", "quiesce-freeze-holder"},
      {"quiescectl.1", "quiescectl"},
      {"quiesce-host.1", "quiesce-host"},
      {"quiesce-writer-check.1", "quiesce-writer-check"},
      {"quiesce-agent.json.5", "quiesce-agent.json"},
  };
  return list;
}

}  // namespace

TEST_CASE("man pages: each renders with man -l without a groff warning") {
  const fs::path dir = fs::path(QUIESCE_SOURCE_DIR) / "packaging/man";
  for (const auto& page : pages()) {
    CAPTURE(page.file);
    const auto path = dir / page.file;
    REQUIRE(fs::exists(path));
    // --warnings turns groff's warnings on; they go to stderr, which
    // run_command captures with stdout, so the rendered text is checked
    // for them below.
    std::string output;
    const int code = quiesce::test::run_command(
        {"env", "MANWIDTH=80", "LC_ALL=C.UTF-8", "man", "--warnings", "-l", path.string()}, &output);
    INFO(output);
    REQUIRE(code == 0);
    CHECK(output.find(": warning:") == std::string::npos);  // troff's "<file>:<line>: warning: ..."
    CHECK(output.find("NAME") != std::string::npos);
    // "name - what it is"; man justifies the line, so the spaces vary.
    CHECK(std::regex_search(output, std::regex("\n +" + page.name + " +- ")));
    CHECK(output.find("SEE ALSO") != std::string::npos);
  }
}

TEST_CASE("man pages: every page in packaging/man is in the list and installed by CMake") {
  const fs::path dir = fs::path(QUIESCE_SOURCE_DIR) / "packaging/man";
  std::ifstream in(fs::path(QUIESCE_SOURCE_DIR) / "packaging/CMakeLists.txt");
  REQUIRE(in);
  const std::string cmake_lists((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::size_t found = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const auto file = entry.path().filename().string();
    CAPTURE(file);
    bool listed = false;
    for (const auto& page : pages()) {
      listed = listed || page.file == file;
    }
    CHECK_MESSAGE(listed, "a page no test renders");
    CHECK_MESSAGE(cmake_lists.find("man/" + file) != std::string::npos, "a page CMake does not install");
    ++found;
  }
  CHECK(found == pages().size());
}
