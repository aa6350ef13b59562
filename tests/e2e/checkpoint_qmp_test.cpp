// The qmp snapshot backend against a real QEMU (machine "none", no guest
// OS: the block layer is all this needs): one atomic transaction over two
// disks, a failing transaction that changes nothing, and apply bringing back
// the base content.

#include <doctest/doctest.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>

#include "host-bridge/checkpoint/qmp_backend.hpp"
#include "host-bridge/checkpoint/qmp_client.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"

using namespace quiesce;
using namespace quiesce::host;
using namespace std::chrono_literals;

namespace {

// The program's path, or "" when it is not installed (ChildProcess wants a path).
std::string find_program(const std::string& name) {
  std::string path;
  if (test::run_command({"sh", "-c", "command -v " + name}, &path) != 0) {
    return {};
  }
  while (!path.empty() && (path.back() == '\n' || path.back() == '\r')) {
    path.pop_back();
  }
  return path;
}

// The file each QEMU block device writes to now, and its backing file.
struct BlockState {
  std::string file;
  std::string backing;
};

// A fresh connection per use: QEMU serves one QMP client at a time, and the
// backend needs the socket too.
Expected<nlohmann::json> qmp_execute(const std::string& socket, const std::string& command,
                                     const nlohmann::json& arguments = nullptr) {
  auto qmp = QmpClient::connect(socket, 10s);
  if (!qmp) {
    return qmp.error();
  }
  return qmp->execute(command, arguments);
}

std::map<std::string, BlockState> query_block(const std::string& socket) {
  std::map<std::string, BlockState> out;
  auto block = qmp_execute(socket, "query-block");
  REQUIRE_MESSAGE(block.ok(), (block.ok() ? "" : block.error().message));
  for (const auto& dev : *block) {
    if (dev.contains("inserted")) {
      out[dev["device"].get<std::string>()] = {dev["inserted"].value("file", std::string()),
                                               dev["inserted"].value("backing_file", std::string())};
    }
  }
  return out;
}

// qemu-io's exit code does not reflect a pattern mismatch; its output does.
bool pattern_matches(const std::filesystem::path& image, const std::string& pattern) {
  std::string output;
  const int rc = test::run_command({"qemu-io", "-r", "-c", "read -P " + pattern + " 0 64k", image.string()}, &output);
  if (rc != 0 || output.find("Pattern verification failed") != std::string::npos) {
    MESSAGE(image.string() << " does not read " << pattern << ": " << output);
    return false;
  }
  return true;
}

}  // namespace

TEST_CASE("qmp backend: one transaction over all disks, atomic failure, apply discards the overlays") {
  const auto qemu_binary = find_program("qemu-system-x86_64");
  if (qemu_binary.empty() || find_program("qemu-img").empty() || find_program("qemu-io").empty()) {
    MESSAGE("qemu-system-x86_64 / qemu-img / qemu-io not installed (packaging/dev.sh installs them); skipped");
    return;
  }
  test::TempDir tmp("quiesce-qmp");
  const auto disk0 = tmp / "disk0.qcow2";
  const auto disk1 = tmp / "disk1.qcow2";
  const auto store = tmp / "store";
  for (const auto& [disk, pattern] : {std::pair{disk0, "0xaa"}, std::pair{disk1, "0xbb"}}) {
    REQUIRE(test::run_command({"qemu-img", "create", "-q", "-f", "qcow2", disk.string(), "4M"}) == 0);
    REQUIRE(test::run_command({"qemu-io", "-c", std::string("write -P ") + pattern + " 0 64k", disk.string()}) == 0);
  }
  const auto socket = (tmp / "qmp.sock").string();
  test::ChildProcess qemu({qemu_binary, "-machine", "none", "-nodefaults", "-display", "none",
                           "-qmp", "unix:" + socket + ",server=on,wait=off",
                           "-drive", "file=" + disk0.string() + ",if=none,id=disk0,format=qcow2",
                           "-drive", "file=" + disk1.string() + ",if=none,id=disk1,format=qcow2"},
                          tmp / "qemu.log");
  REQUIRE_MESSAGE(test::eventually(20s, [&] { return QmpClient::connect(socket, 5s).ok(); }),
                  "QEMU's QMP socket never answered; see " << (tmp / "qemu.log").string());

  const std::vector<DiskSpec> disks{{"data", disk0.string()}, {"logs", disk1.string()}};

  SUBCASE("a disk QEMU does not know fails the whole transaction and changes nothing") {
    QmpBackendOptions options;
    options.socket = socket;
    options.disks = {{"data", {"disk0", ""}}, {"ghost", {"nosuch", ""}}};
    options.timeout = 10s;
    QmpBackend backend(options);
    auto snap = backend.snapshot(disks[0], "cp-bad", store / "cp-bad");
    REQUIRE_FALSE(snap.ok());
    CHECK(snap.error().kind == ErrorKind::backend);
    CHECK_MESSAGE(snap.error().message.find("disk 'ghost'") != std::string::npos, snap.error().message);
    CHECK(backend.transactions_sent() == 1);
    const auto state = query_block(socket);
    CHECK(state.at("disk0").file == disk0.string());
    CHECK(state.at("disk0").backing.empty());
    CHECK(state.at("disk1").file == disk1.string());
    CHECK_FALSE(std::filesystem::exists(store / "cp-bad" / "disks" / "data.qcow2"));
  }

  SUBCASE("snapshot, apply after power off") {
    auto parsed = QmpBackendOptions::from_json(
        {{"type", "qmp"}, {"socket", socket}, {"disks", {{"data", "disk0"}, {"logs", "disk1"}}}}, "backend");
    REQUIRE_MESSAGE(parsed.ok(), (parsed.ok() ? "" : parsed.error().message));
    QmpBackend backend(*parsed);
    std::vector<DiskSnapshot> snaps;
    for (const auto& disk : disks) {
      auto snap = backend.snapshot(disk, "cp-1", store / "cp-1");
      REQUIRE_MESSAGE(snap.ok(), (snap.ok() ? "" : snap.error().message));
      CHECK(snap->method == "qmp");
      snaps.push_back(*snap);
    }
    // Both disks switched in the one transaction the first call sent.
    CHECK(backend.transactions_sent() == 1);
    REQUIRE(backend.last_transaction().has_value());
    CHECK(backend.last_transaction()->disks.size() == 2);
    const auto overlay0 = (store / "cp-1" / "disks" / "data.qcow2").string();
    const auto overlay1 = (store / "cp-1" / "disks" / "logs.qcow2").string();
    CHECK(snaps[0].snapshot == overlay0);
    CHECK(snaps[1].snapshot == overlay1);
    for (const auto& record : backend.last_transaction()->disks) {
      CHECK(record.base == (record.disk == "data" ? disk0.string() : disk1.string()));
    }
    const auto state = query_block(socket);
    CHECK(state.at("disk0").file == overlay0);
    CHECK(state.at("disk0").backing == disk0.string());
    CHECK(state.at("disk1").file == overlay1);
    CHECK(state.at("disk1").backing == disk1.string());

    std::string chain;
    REQUIRE(test::run_command({"qemu-img", "info", "--force-share", "--backing-chain", overlay0}, &chain) == 0);
    CHECK_MESSAGE(chain.find("backing file: " + disk0.string()) != std::string::npos, chain);
    auto backing = backend.backing_of(overlay1);
    REQUIRE(backing.ok());
    CHECK(*backing == disk1.string());

    // The VM writes after the checkpoint: they land in the overlay only.
    auto wrote = qmp_execute(socket, "human-monitor-command", {{"command-line", "qemu-io disk0 \"write -P 0x55 0 64k\""}});
    REQUIRE_MESSAGE(wrote.ok(), (wrote.ok() ? "" : wrote.error().message));

    // (Deleting it now would merge it into the base while QEMU runs: see
    // qemu_checkpoint_tree_test.cpp.)

    // Power off.
    REQUIRE(qmp_execute(socket, "quit").ok());
    REQUIRE(qemu.wait_for(20s).has_value());
    CHECK(pattern_matches(overlay0, "0x55"));
    CHECK(pattern_matches(disk0, "0xaa"));

    for (std::size_t i = 0; i < snaps.size(); ++i) {
      auto verified = backend.verify(snaps[i]);
      REQUIRE_MESSAGE(verified.ok(), (verified.ok() ? "" : verified.error().message));
      auto restored = backend.restore(snaps[i], disks[i], "cp-1");
      REQUIRE_MESSAGE(restored.ok(), (restored.ok() ? "" : restored.error().message));
    }
    CHECK(pattern_matches(disk0, "0xaa"));
    CHECK(pattern_matches(disk1, "0xbb"));
    std::string info;
    REQUIRE(test::run_command({"qemu-img", "info", disk0.string()}, &info) == 0);
    CHECK_MESSAGE(info.find("backing file") == std::string::npos, info);

    // QEMU is gone and nothing builds on the overlays: delete frees them.
    for (const auto& snap : snaps) {
      auto removed = backend.remove(snap, "cp-1");
      REQUIRE_MESSAGE(removed.ok(), (removed.ok() ? "" : removed.error().message));
    }
    CHECK_FALSE(std::filesystem::exists(overlay0));
    CHECK_FALSE(std::filesystem::exists(overlay1));
  }
}

TEST_CASE("qmp backend: config errors name the field") {
  auto made = make_backend({{"type", "qmp"}, {"socket", "/x.sock"}}, "backend");
  REQUIRE_FALSE(made.ok());
  CHECK(made.error().message.find("backend.disks") != std::string::npos);
  auto bad = make_backend({{"type", "qmp"}, {"socket", "/x.sock"}, {"disks", {{"data", 3}}}}, "backend");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message.find("backend.disks.data") != std::string::npos);
  auto good = make_backend({{"type", "qmp"}, {"socket", "/x.sock"}, {"disks", {{"data", "disk0"}}}}, "backend");
  REQUIRE(good.ok());
  CHECK((*good)->name() == "qmp");
}
