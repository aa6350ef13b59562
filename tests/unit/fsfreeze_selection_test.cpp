// writers/fsfreeze: which filesystems get frozen, in which order, what is
// skipped and why; the holder protocol's encoding; option validation.
#include <doctest/doctest.h>

#include <fstream>
#include <sstream>

#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include "platform/linux/freeze_holder_protocol.hpp"
#include "quiesce/json_fields.hpp"
#include "quiesce/writer_registry.hpp"
#include "tests/support/temp_dir.hpp"
#include "writers/fsfreeze/freeze_record.hpp"
#include "writers/fsfreeze/fsfreeze_writer.hpp"
#include "writers/fsfreeze/mount_selection.hpp"

using namespace quiesce::writers::fsfreeze;

namespace {

quiesce::platform::MountTable load_sample(const std::string& name) {
  std::ifstream in(std::string(QUIESCE_SOURCE_DIR) + "/tests/data/mountinfo/" + name);
  REQUIRE(in);
  std::stringstream text;
  text << in.rdbuf();
  return quiesce::platform::parse_mountinfo(text.str());
}

std::vector<std::string> mount_points(const Selection& selection) {
  std::vector<std::string> result;
  for (const auto& filesystem : selection.filesystems) {
    result.push_back(filesystem.mount.mount_point);
  }
  return result;
}

const SkippedMount* skipped(const Selection& selection, const std::string& mount_point) {
  for (const auto& mount : selection.skipped) {
    if (mount.mount_point == mount_point) {
      return &mount;
    }
  }
  return nullptr;
}

int wave_of(const Selection& selection, const std::string& mount_point) {
  for (const auto& filesystem : selection.filesystems) {
    if (filesystem.mount.mount_point == mount_point) {
      return filesystem.wave;
    }
  }
  return -1;
}

}  // namespace

TEST_CASE("fsfreeze selection: all, on a docker container, freezes only real filesystems") {
  auto selection = select_filesystems(load_sample("docker_overlay.mountinfo"), {{}, true, {}, {}});
  // The overlay root is skipped; /etc/hosts & co are bind mounts of one ext4.
  CHECK(mount_points(selection) == std::vector<std::string>{"/data", "/etc/resolv.conf"});
  REQUIRE(skipped(selection, "/"));
  CHECK(skipped(selection, "/")->reason.find("union filesystem") != std::string::npos);
  CHECK(skipped(selection, "/proc")->reason.find("pseudo") != std::string::npos);
  CHECK(skipped(selection, "/dev/shm")->reason.find("pseudo") != std::string::npos);
  REQUIRE(selection.filesystems.size() == 2);
  CHECK(selection.filesystems[1].other_mount_points ==
        std::vector<std::string>{"/etc/hostname", "/etc/hosts"});
  CHECK(selection.errors.empty());
}

TEST_CASE("fsfreeze selection: btrfs subvolumes are one filesystem - / is last") {
  auto selection = select_filesystems(load_sample("btrfs_subvolumes.mountinfo"), {{}, true, {}, {}});
  CHECK(mount_points(selection) == std::vector<std::string>{"/boot/efi", "/srv/pool", "/"});
  CHECK(wave_of(selection, "/boot/efi") == 0);
  CHECK(wave_of(selection, "/srv/pool") == 0);
  CHECK(wave_of(selection, "/") == 1);
  const auto& root = selection.filesystems.back();
  CHECK(root.other_mount_points == std::vector<std::string>{"/home", "/var/log"});
  CHECK(skipped(selection, "/mnt/nas")->reason.find("network") != std::string::npos);
  CHECK(skipped(selection, "/media/usb")->reason.find("read-only") != std::string::npos);
  CHECK(skipped(selection, "/home/alice/remote")->reason.find("FUSE") != std::string::npos);
  // A read-only snapshot subvolume of a filesystem frozen anyway.
  CHECK(skipped(selection, "/srv/pool/snap")->reason.find("frozen through '/srv/pool'") !=
        std::string::npos);
}

TEST_CASE("fsfreeze selection: nested mounts freeze deepest first") {
  auto selection = select_filesystems(load_sample("nested_bind.mountinfo"),
                                      {{}, true, {"/mnt/my*", "/mnt/empty*"}, {}});
  CHECK(wave_of(selection, "/srv/db/wal") == 0);
  CHECK(wave_of(selection, "/srv/db") == 1);
  CHECK(wave_of(selection, "/srv") == 2);
  CHECK(wave_of(selection, "/mnt/old") == 0);
  CHECK(wave_of(selection, "/") == 3);
  CHECK(selection.filesystems.back().mount.mount_point == "/");
  // The over-mounted /mnt/old (mount 36) is hidden; the visible one is 37.
  REQUIRE(skipped(selection, "/mnt/old"));
  CHECK(skipped(selection, "/mnt/old")->reason.find("hidden") != std::string::npos);
  CHECK(skipped(selection, "/mnt/ro")->reason == "read-only mount");
  CHECK(skipped(selection, "/mnt/robind")->reason == "read-only mount");
  CHECK(skipped(selection, "/mnt/my disk\ttab\\back")->reason.find("matches '/mnt/my*'") !=
        std::string::npos);
  CHECK(skipped(selection, "/tmp") != nullptr);
  // /srv/db is also bind-mounted at "/export/db copy": one freeze, via its root.
  int db_count = 0;
  for (const auto& filesystem : selection.filesystems) {
    if (filesystem.mount.device.to_string() == "8:32") {
      ++db_count;
      CHECK(filesystem.mount.mount_point == "/srv/db");
      CHECK(filesystem.other_mount_points == std::vector<std::string>{"/export/db copy"});
    }
  }
  CHECK(db_count == 1);
}

TEST_CASE("fsfreeze selection: excluding one mount excludes its whole filesystem") {
  auto table = load_sample("nested_bind.mountinfo");
  auto selection = select_filesystems(table, {{}, true, {"/export/*"}, {}});
  CHECK(wave_of(selection, "/srv/db") == -1);
  CHECK(skipped(selection, "/srv/db")->reason ==
        "excluded: '/export/db copy' matches '/export/*'");
  CHECK(wave_of(selection, "/srv/db/wal") == 0);

  auto by_type = select_filesystems(table, {{}, true, {}, {"ext*"}});
  CHECK(mount_points(by_type) == std::vector<std::string>{"/srv"});
  CHECK(skipped(by_type, "/")->reason == "excluded: fstype 'ext4' matches 'ext*'");
}

TEST_CASE("fsfreeze selection: explicit mounts") {
  auto table = load_sample("nested_bind.mountinfo");
  auto selection = select_filesystems(table, {{"/srv/db", "/", "/export/db copy", "/mnt/ro"}, false, {}, {}});
  CHECK(mount_points(selection) == std::vector<std::string>{"/srv/db", "/"});
  CHECK(selection.filesystems[0].wave == 0);
  CHECK(selection.filesystems[1].wave == 1);
  CHECK(skipped(selection, "/mnt/ro")->reason == "read-only mount");
  CHECK(selection.errors.empty());

  auto bad = select_filesystems(table, {{"/srv/db/data", "/tmp", "/srv"}, false, {}, {}});
  REQUIRE(bad.errors.size() == 2);
  CHECK(bad.errors[0].first == 0);
  CHECK(bad.errors[0].second ==
        "'/srv/db/data' is not a mount point (it is on the filesystem mounted at '/srv/db')");
  CHECK(bad.errors[1].first == 1);
  CHECK(bad.errors[1].second.find("pseudo filesystem (tmpfs)") != std::string::npos);
}

TEST_CASE("fsfreeze selection: fstype classification") {
  CHECK_FALSE(unfreezable_reason("ext4"));
  CHECK_FALSE(unfreezable_reason("xfs"));
  CHECK_FALSE(unfreezable_reason("btrfs"));
  CHECK(unfreezable_reason("nfs4"));
  CHECK(unfreezable_reason("cifs"));
  CHECK(unfreezable_reason("fuse.sshfs"));
  CHECK(unfreezable_reason("fuseblk"));
  CHECK(unfreezable_reason("overlay"));
  CHECK(unfreezable_reason("squashfs"));
  CHECK(unfreezable_reason("cgroup2"));
  CHECK(unfreezable_reason("devtmpfs"));
}

TEST_CASE("fsfreeze holder protocol: messages round-trip, paths with any byte") {
  namespace holder = quiesce::platform::holder;
  holder::FreezeRequest request;
  request.deadline_ns = 123456789012345;
  request.freeze_deadline_ns = 123456000000000;
  request.ignore_frozen = true;
  request.mounts = {{0, 41, "/mnt/a b"}, {1, 7, "/x\ny\\z-"}, {2, 0, "/"}};
  auto text = holder::encode(holder::to_message(request));
  CHECK(text.find("FREEZE 123456789012345 1 123456000000000\n") == 0);
  auto decoded = holder::decode(text);
  REQUIRE(decoded);
  auto back = holder::freeze_request_from(*decoded);
  REQUIRE(back);
  CHECK(back->deadline_ns == request.deadline_ns);
  CHECK(back->freeze_deadline_ns == request.freeze_deadline_ns);
  CHECK(back->ignore_frozen);
  REQUIRE(back->mounts.size() == 3);
  CHECK(back->mounts[0].path == "/mnt/a b");
  CHECK(back->mounts[1].path == "/x\ny\\z-");
  CHECK(back->mounts[1].mount_id == 7);
  CHECK(back->mounts[2].wave == 2);

  holder::MountResult result{holder::MountState::busy_ignored, 9, 16, "/srv/data"};
  auto message = holder::decode(holder::encode({"THAWED", {"0", ""}, {holder::to_row(result)}}));
  REQUIRE(message);
  CHECK(message->args == std::vector<std::string>{"0", ""});
  auto results = holder::mount_results_from(*message);
  REQUIRE(results);
  REQUIRE(results->size() == 1);
  CHECK((*results)[0].state == holder::MountState::busy_ignored);
  CHECK((*results)[0].error_number == 16);
  CHECK(holder::to_string((*results)[0].state) == "busy-ignored");
  CHECK(holder::parse_mount_state("stuck") == holder::MountState::stuck);

  CHECK_FALSE(holder::decode(""));
  CHECK_FALSE(holder::freeze_request_from(*holder::decode("FREEZE x 1 0")));
  CHECK_FALSE(holder::freeze_request_from(*holder::decode("FREEZE 1 1")));  // version 1's form
  CHECK_FALSE(holder::freeze_request_from(*holder::decode("FREEZE 1 1 x")));
  CHECK_FALSE(holder::freeze_request_from(*holder::decode("FREEZE 1 1 0\n0 1 relative/path")));
  CHECK_FALSE(holder::mount_results_from(*holder::decode("FROZEN\nnonsense 1 0 /a")));
}

TEST_CASE("fsfreeze writer: options are validated at creation") {
  quiesce::WriterRegistry registry;
  quiesce::writers::register_fsfreeze_writer(registry);
  const auto* type = registry.find("fsfreeze");
  REQUIRE(type);
  CHECK(type->default_level == quiesce::Level::filesystem);
  quiesce::WriterEnvironment env{std::make_shared<spdlog::logger>(
                                     "test", std::make_shared<spdlog::sinks::null_sink_mt>()),
                                 "/tmp", "/tmp"};
  auto create_error = [&](nlohmann::json options) -> std::string {
    quiesce::WriterSpec spec{"fsfreeze", "fs", quiesce::Level::filesystem, std::move(options)};
    try {
      auto writer = type->create(spec, env);
      return "";
    } catch (const quiesce::FieldError& error) {
      return error.what();
    }
  };
  CHECK(create_error({{"mounts", {"/nonexistent-quiesce"}}}).starts_with("options.mounts[0]: "));
  CHECK(create_error({{"mounts", {"/nonexistent-quiesce"}}}).find("does not exist") !=
        std::string::npos);
  CHECK(create_error({{"mounts", {"/etc"}}}).find("options.mounts[0]: '/etc' is not a mount point") !=
        std::string::npos);
  CHECK(create_error({{"mounts", {"/proc"}}}).find("pseudo filesystem") != std::string::npos);
  CHECK(create_error({{"mounts", {"relative"}}}).find("not an absolute path") != std::string::npos);
  CHECK(create_error({{"mounts", {"/"}}, {"all", true}}).starts_with("options.mounts: "));
  CHECK(create_error(nlohmann::json::object()).starts_with("options.mounts: "));
  CHECK(create_error({{"mounts", {"/"}}, {"exclude", {"/x"}}}).starts_with("options.exclude: "));
  CHECK(create_error({{"all", true}, {"colour", "blue"}}).find("colour") != std::string::npos);
  CHECK(create_error({{"all", true}, {"ignore_frozen", "yes"}}).starts_with("options.ignore_frozen"));
  CHECK(create_error({{"all", true}, {"holder_path", "/nonexistent"}})
            .starts_with("options.holder_path: "));
  // Valid: creates without touching anything (no holder is started yet).
  CHECK(create_error({{"mounts", {"/"}}}) == "");
  CHECK(create_error({{"all", true}, {"exclude", {"/boot*"}}, {"exclude_fstypes", {"vfat"}}}) == "");
}

TEST_CASE("fsfreeze record: written, read back, recovered when nothing is frozen") {
  quiesce::test::TempDir dir("fsfreeze-record");
  FreezeRecord record{"fs", "s1", 42, 43, "2024-01-01T00:00:00Z",
                      {{"/nonexistent-quiesce", "8:1", 99, "ext4", 0}}};
  auto path = record_path(dir.path().string(), "my writer");
  CHECK(path == (dir.path() / "fsfreeze-frozen-my_writer.json").string());
  REQUIRE(write_record(path, record) == "");
  std::string error;
  auto back = read_record(path, error);
  REQUIRE(back);
  CHECK(back->session_id == "s1");
  REQUIRE(back->mounts.size() == 1);
  CHECK(back->mounts[0].device == "8:1");
  CHECK(back->mounts[0].mount_id == 99);

  auto logger = std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
  auto report = quiesce::writers::recover_stale_fsfreeze(dir.path().string(), *logger);
  CHECK(report.records.size() == 1);
  CHECK(report.thawed.empty());
  REQUIRE(report.skipped.size() == 1);
  CHECK(report.skipped[0].find("no longer mounted") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(path));
  // A nonexistent run dir is not an error: nothing to recover.
  auto none = quiesce::writers::recover_stale_fsfreeze("/nonexistent-quiesce-run", *logger);
  CHECK(none.records.empty());
}
