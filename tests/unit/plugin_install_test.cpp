// Packaging for plugin authors: `cmake --install` of the SDK component to a
// temporary prefix, then both example plugins configured and built out of
// tree with find_package(Quiesce) against it, and the result loaded.
#include <doctest/doctest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"
#include "writers/plugin/plugin_library.hpp"

namespace fs = std::filesystem;

namespace {

// Runs a command; on failure its output is in the test report.
void run_ok(const std::vector<std::string>& argv) {
  std::string output;
  const int code = quiesce::test::run_command(argv, &output);
  INFO("command: " << argv.at(0) << " " << (argv.size() > 1 ? argv.at(1) : "") << " ...\n"
                   << output);
  REQUIRE(code == 0);
}

std::string cmake() { return QUIESCE_CMAKE_COMMAND; }

}  // namespace

TEST_CASE("plugin: the installed SDK builds both examples out of tree with find_package") {
  quiesce::test::TempDir tmp("quiesce-plugin-install");
  const auto prefix = tmp / "prefix";
  run_ok({cmake(), "--install", QUIESCE_BUILD_DIR, "--component", "quiesce_plugin_sdk", "--prefix",
          prefix.string()});
  CHECK(fs::exists(prefix / "include/quiesce/plugin_abi.h"));
  CHECK(fs::exists(prefix / "include/quiesce/plugin_sdk.hpp"));
  CHECK(fs::exists(prefix / "include/quiesce/plugin_test_host.hpp"));
  CHECK(fs::exists(prefix / "include/quiesce/dbus_writer.hpp"));
  bool found_config = false;
  for (const auto& entry : fs::recursive_directory_iterator(prefix)) {
    found_config = found_config || entry.path().filename() == "QuiesceConfigVersion.cmake";
  }
  CHECK(found_config);

  const fs::path examples = fs::path(QUIESCE_SOURCE_DIR) / "writers/examples";
  for (const auto& [example, output] :
       std::vector<std::pair<std::string, std::string>>{{"plugin-cpp", "flock.so"},
                                                        {"plugin-c", "touch-file.so"}}) {
    CAPTURE(example);
    const auto build = tmp / ("build-" + example);
    run_ok({cmake(), "-S", (examples / example).string(), "-B", build.string(),
            "-DCMAKE_PREFIX_PATH=" + prefix.string(), "-DCMAKE_BUILD_TYPE=Release"});
    run_ok({cmake(), "--build", build.string(), "-j2"});
    REQUIRE(fs::exists(build / output));

    // What it built is a loadable plugin of this agent's ABI.
    const auto plugins = tmp / ("plugins-" + example);
    fs::create_directory(plugins);
    fs::permissions(plugins, fs::perms(0755));
    fs::copy_file(build / output, plugins / output);
    fs::permissions(plugins / output, fs::perms(0755));
    auto library = quiesce::writers::plugin::PluginLibrary::load(
        (plugins / output).string(), quiesce::writers::plugin::LoadRules{true});
    CHECK(library->abi_version().major == QUIESCE_PLUGIN_ABI_MAJOR);
  }
}
