// guest-fsfreeze-freeze / -freeze-list / -thaw through the qga service, on a
// real Coordinator with the real fsfreeze writer over loop-mounted ext4: a
// write blocks until the thaw, and freeze-list freezes only what it names.

#include <doctest/doctest.h>

#include <spdlog/sinks/null_sink.h>

#include "agent/core/api_routes.hpp"
#include "agent/core/coordinator.hpp"
#include "agent/qga/qga_service.hpp"
#include "tests/root/fsfreeze_under_test.hpp"
#include "tests/root/loop_fs.hpp"
#include "tests/support/temp_dir.hpp"

using namespace quiesce;
using namespace std::chrono_literals;
using test::LoopFs;
using test::WriteProbe;

namespace {

struct QgaOnLoopMounts {
  test::TempDir dir{"qga-root"};
  LoopFs data{dir.path(), "data", "ext4"};
  LoopFs logs{dir.path(), "logs", "ext4"};
  std::shared_ptr<spdlog::logger> logger = test::null_logger();
  std::unique_ptr<agent::Coordinator> coordinator;
  std::unique_ptr<agent::ApiRoutes> routes;
  std::unique_ptr<agent::qga::QgaService> service;
  std::unique_ptr<agent::qga::QgaConnection> connection;

  QgaOnLoopMounts() {
    std::filesystem::create_directories(dir / "run");
    test::WriterUnderTest fsfreeze((dir / "run").string(),
                                   {{"mounts", {data.mount_point(), logs.mount_point()}}});
    std::vector<agent::ConfiguredWriter> writers;
    agent::ConfiguredWriter configured;
    configured.spec = WriterSpec{"fsfreeze", "fs", Level::filesystem, nlohmann::json::object()};
    configured.writer = std::move(fsfreeze.writer);
    writers.push_back(std::move(configured));
    coordinator = std::make_unique<agent::Coordinator>(std::move(writers), agent::SessionLimits{},
                                                       logger);
    routes = std::make_unique<agent::ApiRoutes>(*coordinator, logger);
    agent::qga::QgaOptions options;
    options.freeze_window = 30s;
    service = std::make_unique<agent::qga::QgaService>(*coordinator, *routes, options, logger);
    connection = service->connect("virtio-serial", false);
  }

  nlohmann::json run(const std::string& command, const nlohmann::json& arguments = nullptr) {
    nlohmann::json request = {{"execute", command}};
    if (!arguments.is_null()) {
      request["arguments"] = arguments;
    }
    auto output = connection->feed(request.dump());
    REQUIRE(!output.bytes.empty());
    REQUIRE(output.bytes.back() == '\n');
    return nlohmann::json::parse(output.bytes);
  }
};

}  // namespace

TEST_CASE("qga root: guest-fsfreeze-freeze really freezes ext4 until guest-fsfreeze-thaw") {
  QgaOnLoopMounts rig;
  auto frozen = rig.run("guest-fsfreeze-freeze");
  REQUIRE_MESSAGE(frozen.contains("return"), frozen.dump());
  CHECK(frozen["return"] == 2);
  CHECK(rig.run("guest-fsfreeze-status")["return"] == "frozen");

  WriteProbe data_probe(rig.data.mount_point());
  WriteProbe logs_probe(rig.logs.mount_point());
  CHECK_FALSE(data_probe.finished_within(300ms));
  CHECK_FALSE(logs_probe.finished_within(100ms));

  auto thawed = rig.run("guest-fsfreeze-thaw");
  REQUIRE_MESSAGE(thawed.contains("return"), thawed.dump());
  CHECK(thawed["return"] == 2);
  CHECK(data_probe.finished_within(5s));
  CHECK(logs_probe.finished_within(5s));
  CHECK(rig.run("guest-fsfreeze-status")["return"] == "thawed");
}

TEST_CASE("qga root: guest-fsfreeze-freeze-list freezes only the mount points it names") {
  QgaOnLoopMounts rig;
  auto frozen = rig.run("guest-fsfreeze-freeze-list", {{"mountpoints", {rig.data.mount_point()}}});
  REQUIRE_MESSAGE(frozen.contains("return"), frozen.dump());
  CHECK(frozen["return"] == 1);
  WriteProbe data_probe(rig.data.mount_point());
  CHECK_FALSE(data_probe.finished_within(300ms));
  CHECK(test::writable_within(rig.logs.mount_point(), 5s));
  CHECK(rig.run("guest-fsfreeze-thaw")["return"] == 1);
  CHECK(data_probe.finished_within(5s));

  // A mount point the writer does not freeze: an error, nothing frozen.
  auto refused = rig.run("guest-fsfreeze-freeze-list", {{"mountpoints", {"/proc"}}});
  REQUIRE(refused.contains("error"));
  CHECK(refused["error"]["desc"].get<std::string>().find("/proc") != std::string::npos);
  CHECK(test::writable_within(rig.data.mount_point(), 5s));
  CHECK(rig.run("guest-fsfreeze-status")["return"] == "thawed");
}
