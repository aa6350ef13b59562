#pragma once
// The real fsfreeze writer, created through the registry as the agent does,
// using the quiesce-freeze-holder of this build and a null logger; for the
// root tests that drive it directly.

#include <memory>
#include <string>

#include <nlohmann/json.hpp>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include "quiesce/writer_registry.hpp"
#include "tests/support/processes.hpp"
#include "writers/fsfreeze/fsfreeze_writer.hpp"

namespace quiesce::test {

inline std::shared_ptr<spdlog::logger> null_logger() {
  return std::make_shared<spdlog::logger>("fsfreeze-test",
                                          std::make_shared<spdlog::sinks::null_sink_mt>());
}

struct WriterUnderTest {
  WriterRegistry registry;
  std::unique_ptr<Writer> writer;
  std::string run_dir;

  WriterUnderTest(const std::string& run_directory, nlohmann::json options)
      : run_dir(run_directory) {
    writers::register_fsfreeze_writer(registry);
    options["holder_path"] = built_binary("quiesce-freeze-holder").string();
    WriterSpec spec{"fsfreeze", "fs", Level::filesystem, options};
    writer = registry.find("fsfreeze")->create(spec, {null_logger(), run_dir, run_dir});
  }
};

}  // namespace quiesce::test
