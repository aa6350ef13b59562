// The fsfreeze writer on real loop-mounted ext4, xfs and btrfs, through the
// registry and the real quiesce-freeze-holder.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <utility>

#include "platform/linux/freeze_holder_client.hpp"
#include "platform/linux/mountinfo.hpp"
#include "quiesce/writer_registry.hpp"
#include "tests/root/fsfreeze_under_test.hpp"
#include "tests/root/loop_fs.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/writer_harness.hpp"
#include "writers/fsfreeze/freeze_record.hpp"
#include "writers/fsfreeze/fsfreeze_writer.hpp"

using namespace std::chrono_literals;
using quiesce::Clock;
using quiesce::test::LoopFs;
using quiesce::test::WriterUnderTest;
using quiesce::test::WriteProbe;
using quiesce::test::message_of;
using quiesce::test::writable_within;

namespace {

// The hold's length is the one thing these tests vary: the holder thaws by
// itself at its end.
quiesce::PhaseContext context(std::chrono::milliseconds hold = 30s) {
  return quiesce::test::context("test-session", 20s, hold);
}

const quiesce::platform::MountEntry* mount_entry(const quiesce::platform::MountTable& table,
                                                 const std::string& path) {
  return table.find_mount_point(path);
}

}  // namespace

TEST_CASE("fsfreeze: freeze blocks writes on ext4, xfs and btrfs - thaw releases them") {
  quiesce::test::TempDir dir("fsfreeze-root");
  LoopFs ext4(dir.path(), "ext4", "ext4");
  LoopFs xfs(dir.path(), "xfs", "xfs");
  LoopFs btrfs(dir.path(), "btrfs", "btrfs");
  WriterUnderTest under(dir.path() / "run",
                        {{"mounts", {ext4.mount_point(), xfs.mount_point(), btrfs.mount_point()}}});
  auto& writer = *under.writer;

  quiesce::Identity identity;
  REQUIRE(writer.identify(context(), identity).is_ok());
  REQUIRE(identity.components.size() == 3);
  CHECK(identity.components[0]["kind"] == "filesystem");
  CHECK(identity.metadata["skipped"].empty());

  REQUIRE(writer.prepare(context()).is_ok());
  auto status = writer.freeze(context());
  REQUIRE_MESSAGE(status.is_ok(), message_of(status));
  // The record names what is frozen, for a restarted agent.
  auto record_path = quiesce::writers::fsfreeze::record_path(under.run_dir, "fs");
  CHECK(std::filesystem::exists(record_path));

  std::vector<std::unique_ptr<WriteProbe>> probes;
  for (const auto* fs : {&ext4, &xfs, &btrfs}) {
    probes.push_back(std::make_unique<WriteProbe>(fs->mount_point()));
  }
  for (auto& probe : probes) {
    CHECK_FALSE(probe->finished_within(300ms));
  }
  quiesce::HoldReport hold;
  status = writer.thaw(context(), hold);
  REQUIRE_MESSAGE(status.is_ok(), message_of(status));
  CHECK(hold.continuous);
  for (auto& probe : probes) {
    CHECK(probe->finished_within(5s));
  }
  CHECK_FALSE(std::filesystem::exists(record_path));
  // Thaw and abort are idempotent.
  quiesce::HoldReport again;
  CHECK(writer.thaw(context(), again).is_ok());
  CHECK(again.continuous);
  CHECK(writer.abort(context()).is_ok());

  // A second round on the same holder works as well.
  REQUIRE(writer.freeze(context()).is_ok());
  WriteProbe blocked(xfs.mount_point());
  CHECK_FALSE(blocked.finished_within(200ms));
  CHECK(writer.abort(context()).is_ok());
  CHECK(blocked.finished_within(5s));
}

TEST_CASE("fsfreeze: nested mounts are frozen children first") {
  quiesce::test::TempDir dir("fsfreeze-root");
  LoopFs parent(dir.path(), "parent", "ext4");
  std::filesystem::create_directories(parent.mount_point() + "/child");
  LoopFs child(parent.mount_point(), "child", "ext4");
  WriterUnderTest under(dir.path() / "run",
                        {{"mounts", {parent.mount_point(), child.mount_point()}}});
  quiesce::Identity identity;
  REQUIRE(under.writer->identify(context(), identity).is_ok());
  REQUIRE(identity.components.size() == 2);
  CHECK(identity.components[0]["path"] == child.mount_point());
  CHECK(identity.components[0]["wave"] == 0);
  CHECK(identity.components[1]["path"] == parent.mount_point());
  CHECK(identity.components[1]["wave"] == 1);
  REQUIRE(under.writer->freeze(context()).is_ok());
  WriteProbe probe(child.mount_point());
  CHECK_FALSE(probe.finished_within(200ms));
  quiesce::HoldReport hold;
  CHECK(under.writer->thaw(context(), hold).is_ok());
  CHECK(probe.finished_within(5s));
}

namespace {

// `source` bound over `target` for the life of the object, or until the test
// unmounts it itself and calls release(): unmounted even when a check fails
// half-way.
class BindMount {
 public:
  BindMount(const std::string& source, std::string target) : target_(std::move(target)) {
    quiesce::test::must_run({"mount", "--bind", source, target_});
  }
  ~BindMount() {
    if (!target_.empty()) {
      quiesce::test::unmount(target_);
    }
  }
  BindMount(const BindMount&) = delete;
  BindMount& operator=(const BindMount&) = delete;
  void release() { target_.clear(); }

 private:
  std::string target_;
};

}  // namespace

TEST_CASE("fsfreeze: a mount made between prepare and freeze makes freeze select again") {
  // freeze reuses prepare's selection only while the mount table is
  // unchanged. Here another filesystem is bound over the selected mount
  // point after prepare: freeze must look again (and refuse, naming the
  // change), never send the holder the stale mount, which only the
  // holder's own mount-id check would then catch.
  quiesce::test::TempDir dir("fsfreeze-root");
  LoopFs selected(dir.path(), "selected", "ext4");
  LoopFs other(dir.path(), "other", "ext4");
  WriterUnderTest under(dir.path() / "run", {{"mounts", {selected.mount_point()}}});
  REQUIRE(under.writer->prepare(context()).is_ok());
  BindMount bind(other.mount_point(), selected.mount_point());
  auto status = under.writer->freeze(context());
  if (status.is_ok()) {
    quiesce::HoldReport hold;
    CHECK(under.writer->thaw(context(), hold).is_ok());
  } else {
    CHECK_MESSAGE(status.error().message.find("no longer the mount") == std::string::npos,
                  status.error().message);
    CHECK_MESSAGE(status.error().message.find("changed") != std::string::npos,
                  status.error().message);
  }
  // Unchanged table: prepare's selection is used and the freeze holds.
  quiesce::test::unmount(selected.mount_point());
  bind.release();
  REQUIRE(under.writer->prepare(context()).is_ok());
  REQUIRE(under.writer->freeze(context()).is_ok());
  WriteProbe probe(selected.mount_point());
  CHECK_FALSE(probe.finished_within(200ms));
  quiesce::HoldReport hold;
  CHECK(under.writer->thaw(context(), hold).is_ok());
  CHECK(probe.finished_within(5s));
}

TEST_CASE("fsfreeze: a mount made between the writer's creation and its first identify is seen") {
  // The first identify reuses the selection the factory made to check the
  // options only while the mount table is unchanged. Here another
  // filesystem is bound over the listed mount point after the writer was
  // created: identify must describe what is mounted there now.
  quiesce::test::TempDir dir("fsfreeze-root");
  LoopFs selected(dir.path(), "selected", "ext4");
  LoopFs other(dir.path(), "other", "ext4");
  {
    // Unchanged table: the factory's selection, the listed filesystem.
    WriterUnderTest under(dir.path() / "run", {{"mounts", {selected.mount_point()}}});
    quiesce::Identity identity;
    REQUIRE(under.writer->identify(context(), identity).is_ok());
    REQUIRE(identity.components.size() == 1);
    CHECK(identity.components[0]["source"] == selected.device());
  }
  WriterUnderTest under(dir.path() / "run", {{"mounts", {selected.mount_point()}}});
  BindMount bind(other.mount_point(), selected.mount_point());
  quiesce::Identity identity;
  REQUIRE(under.writer->identify(context(), identity).is_ok());
  REQUIRE(identity.components.size() == 1);
  CHECK(identity.components[0]["source"] == other.device());
}

TEST_CASE("fsfreeze: SIGKILL of the agent thaws everything within a second") {
  quiesce::test::TempDir dir("fsfreeze-root");
  LoopFs ext4(dir.path(), "ext4", "ext4");
  LoopFs xfs(dir.path(), "xfs", "xfs");
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  pid_t agent = ::fork();
  REQUIRE(agent >= 0);
  if (agent == 0) {
    // Plays the agent: creates the writer, freezes, reports, and waits.
    ::close(ready[0]);
    char byte = 'E';
    try {
      // Kept alive until the SIGKILL: its destructor would thaw.
      WriterUnderTest under(dir.path() / "run",
                            {{"mounts", {ext4.mount_point(), xfs.mount_point()}}});
      if (under.writer->freeze(context(60s)).is_ok()) {
        byte = 'F';
      }
      [[maybe_unused]] auto n = ::write(ready[1], &byte, 1);
      for (;;) {
        ::pause();
      }
    } catch (...) {
    }
    [[maybe_unused]] auto n = ::write(ready[1], &byte, 1);
    ::_exit(1);
  }
  ::close(ready[1]);
  char byte = 0;
  REQUIRE(::read(ready[0], &byte, 1) == 1);
  ::close(ready[0]);
  CHECK(byte == 'F');
  WriteProbe ext4_probe(ext4.mount_point());
  WriteProbe xfs_probe(xfs.mount_point());
  CHECK_FALSE(ext4_probe.finished_within(200ms));
  const auto killed = Clock::now();
  ::kill(agent, SIGKILL);
  int status = 0;
  ::waitpid(agent, &status, 0);
  CHECK(ext4_probe.finished_within(1s));
  CHECK(xfs_probe.finished_within(1s));
  const auto took =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - killed).count();
  MESSAGE("writable again " << took << " ms after SIGKILL of the agent");
  CHECK(took < 1000);
}

TEST_CASE("fsfreeze: the hold deadline thaws on its own and thaw reports a broken hold") {
  quiesce::test::TempDir dir("fsfreeze-root");
  LoopFs ext4(dir.path(), "ext4", "ext4");
  WriterUnderTest under(dir.path() / "run", {{"mounts", {ext4.mount_point()}}});
  auto ctx = context(600ms);
  REQUIRE(under.writer->freeze(ctx).is_ok());
  WriteProbe probe(ext4.mount_point());
  CHECK_FALSE(probe.finished_within(300ms));
  CHECK(probe.finished_within(std::chrono::duration_cast<std::chrono::milliseconds>(
                                  ctx.hold_deadline - Clock::now()) +
                              500ms));
  const auto late =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - ctx.hold_deadline);
  MESSAGE("writable " << late.count() << " ms after the hold deadline");
  quiesce::HoldReport hold;
  CHECK(under.writer->thaw(context(), hold).is_ok());
  CHECK_FALSE(hold.continuous);
  CHECK(hold.detail.find("deadline") != std::string::npos);
}

TEST_CASE("fsfreeze: a holder killed or signalled while frozen breaks the hold, never the thaw") {
  quiesce::test::TempDir dir("fsfreeze-root");
  LoopFs ext4(dir.path(), "ext4", "ext4");
  WriterUnderTest under(dir.path() / "run", {{"mounts", {ext4.mount_point()}}});
  auto holder_pid = [&] {
    std::string error;
    auto record = quiesce::writers::fsfreeze::read_record(
        quiesce::writers::fsfreeze::record_path(under.run_dir, "fs"), error);
    REQUIRE(record);
    return static_cast<pid_t>(record->holder_pid);
  };

  SUBCASE("SIGTERM: the holder thaws and says why") {
    REQUIRE(under.writer->freeze(context()).is_ok());
    ::kill(holder_pid(), SIGTERM);
    CHECK(writable_within(ext4.mount_point(), 2s));
    quiesce::HoldReport hold;
    CHECK(under.writer->thaw(context(), hold).is_ok());
    CHECK_FALSE(hold.continuous);
    CHECK_MESSAGE(hold.detail.find("SIGTERM") != std::string::npos, hold.detail);
  }
  SUBCASE("SIGKILL: the writer's watch on the holder thaws from its record at once") {
    REQUIRE(under.writer->freeze(context()).is_ok());
    ::kill(holder_pid(), SIGKILL);
    // Long before the writer's own thaw (the window is 30 s).
    CHECK(writable_within(ext4.mount_point(), 1s));
    quiesce::HoldReport hold;
    CHECK(under.writer->thaw(context(), hold).is_ok());
    CHECK_FALSE(hold.continuous);
    CHECK_MESSAGE(hold.detail.find("died") != std::string::npos, hold.detail);
  }
  // Either way a new holder is started for the next freeze.
  REQUIRE(under.writer->freeze(context()).is_ok());
  quiesce::HoldReport hold;
  CHECK(under.writer->thaw(context(), hold).is_ok());
  CHECK(hold.continuous);
}

TEST_CASE("fsfreeze: a filesystem frozen by someone else (EBUSY)") {
  quiesce::test::TempDir dir("fsfreeze-root");
  LoopFs mine(dir.path(), "mine", "ext4");
  LoopFs theirs(dir.path(), "theirs", "ext4");
  quiesce::test::must_run({"fsfreeze", "-f", theirs.mount_point()});

  SUBCASE("is an error by default, and nothing stays frozen by us") {
    WriterUnderTest under(dir.path() / "run",
                          {{"mounts", {mine.mount_point(), theirs.mount_point()}}});
    auto status = under.writer->freeze(context());
    REQUIRE_FALSE(status.is_ok());
    CHECK(status.error().error_class == quiesce::ErrorClass::retryable);
    CHECK(status.error().message.find(theirs.mount_point() + " is already frozen") !=
          std::string::npos);
    CHECK(writable_within(mine.mount_point(), 2s));
    CHECK(under.writer->abort(context()).is_ok());
  }
  SUBCASE("is skipped with ignore_frozen, and never thawed by us") {
    WriterUnderTest under(dir.path() / "run", {{"mounts", {mine.mount_point(), theirs.mount_point()}},
                                                {"ignore_frozen", true}});
    auto status = under.writer->freeze(context());
    REQUIRE_MESSAGE(status.is_ok(), message_of(status));
    quiesce::HoldReport hold;
    CHECK(under.writer->thaw(context(), hold).is_ok());
    CHECK(hold.continuous);
    CHECK(writable_within(mine.mount_point(), 2s));
  }
  WriteProbe probe(theirs.mount_point());
  CHECK_FALSE(probe.finished_within(200ms));  // still frozen by "them"
  quiesce::test::must_run({"fsfreeze", "-u", theirs.mount_point()});
  CHECK(probe.finished_within(2s));
}

TEST_CASE("fsfreeze: bind mounts and btrfs subvolumes are frozen once") {
  quiesce::test::TempDir dir("fsfreeze-root");
  LoopFs btrfs(dir.path(), "btrfs", "btrfs");
  quiesce::test::must_run({"btrfs", "-q", "subvolume", "create", btrfs.mount_point() + "/sub"});
  const auto subvol = (dir.path() / "subvol").string();
  const auto bind = (dir.path() / "bind").string();
  std::filesystem::create_directories(subvol);
  std::filesystem::create_directories(bind);
  quiesce::test::must_run({"mount", "-o", "subvol=sub", btrfs.device(), subvol});
  btrfs.add_extra_mount(subvol);
  quiesce::test::must_run({"mount", "--bind", btrfs.mount_point(), bind});
  btrfs.add_extra_mount(bind);

  WriterUnderTest under(dir.path() / "run", {{"mounts", {subvol, btrfs.mount_point(), bind}}});
  quiesce::Identity identity;
  REQUIRE(under.writer->identify(context(), identity).is_ok());
  REQUIRE(identity.components.size() == 1);
  CHECK(identity.components[0]["also_mounted_at"].size() == 2);
  auto status = under.writer->freeze(context());
  REQUIRE_MESSAGE(status.is_ok(), message_of(status));
  WriteProbe probe(subvol);
  CHECK_FALSE(probe.finished_within(200ms));
  quiesce::HoldReport hold;
  CHECK(under.writer->thaw(context(), hold).is_ok());
  CHECK(hold.continuous);
  CHECK(probe.finished_within(2s));
}

TEST_CASE("fsfreeze: recover_stale_fsfreeze thaws what a record lists, and only that") {
  quiesce::test::TempDir dir("fsfreeze-root");
  LoopFs listed(dir.path(), "listed", "ext4");
  LoopFs other(dir.path(), "other", "ext4");
  quiesce::test::must_run({"fsfreeze", "-f", listed.mount_point()});
  quiesce::test::must_run({"fsfreeze", "-f", other.mount_point()});
  auto table = quiesce::platform::read_mountinfo();
  REQUIRE(table.table);
  const auto* entry = mount_entry(*table.table, listed.mount_point());
  REQUIRE(entry);
  const auto* other_entry = mount_entry(*table.table, other.mount_point());
  REQUIRE(other_entry);
  const auto run_dir = (dir.path() / "run").string();
  quiesce::writers::fsfreeze::FreezeRecord record{
      "fs", "old-session", 1, 2, "2024-01-01T00:00:00Z",
      {{listed.mount_point(), entry->device.to_string(), entry->mount_id, "ext4", 0},
       // Listed, but the filesystem there now is another one: left alone.
       {other.mount_point(), "1:1", other_entry->mount_id, "ext4", 0}}};
  auto path = quiesce::writers::fsfreeze::record_path(run_dir, "fs");
  REQUIRE(quiesce::writers::fsfreeze::write_record(path, record) == "");

  auto report = quiesce::writers::recover_stale_fsfreeze(run_dir, *quiesce::test::null_logger());
  CHECK(report.thawed == std::vector<std::string>{listed.mount_point()});
  CHECK(report.skipped.size() == 1);
  CHECK(report.failed.empty());
  CHECK(writable_within(listed.mount_point(), 2s));
  CHECK_FALSE(std::filesystem::exists(path));
  WriteProbe probe(other.mount_point());
  CHECK_FALSE(probe.finished_within(200ms));
  quiesce::test::must_run({"fsfreeze", "-u", other.mount_point()});
  CHECK(probe.finished_within(2s));

  // Run again on a record whose filesystem is not frozen: nothing to do.
  REQUIRE(quiesce::writers::fsfreeze::write_record(path, record) == "");
  report = quiesce::writers::recover_stale_fsfreeze(run_dir, *quiesce::test::null_logger());
  CHECK(report.thawed.empty());
  CHECK(report.not_frozen == std::vector<std::string>{listed.mount_point()});
}

// Not run by default (speed is measured, never asserted): freezing 16 ext4
// filesystems with fresh dirty data in one wave (parallel) vs one per wave.
//   quiesce_root_tests -tc="*benchmark*" --no-skip
TEST_CASE("fsfreeze benchmark: 16 filesystems, parallel vs sequential" * doctest::skip()) {
  quiesce::test::TempDir dir("fsfreeze-bench");
  std::vector<std::unique_ptr<LoopFs>> filesystems;
  for (int i = 0; i < 16; ++i) {
    filesystems.push_back(std::make_unique<LoopFs>(dir.path(), "fs" + std::to_string(i), "ext4"));
  }
  std::string error;
  auto holder = quiesce::platform::holder::HolderClient::start(
      quiesce::test::built_binary("quiesce-freeze-holder").string(), error);
  REQUIRE_MESSAGE(holder, error);
  auto dirty = [&] {
    for (auto& fs : filesystems) {
      std::ofstream out(fs->mount_point() + "/data.bin", std::ios::binary | std::ios::trunc);
      std::string block(1 << 20, 'x');
      for (int i = 0; i < 16; ++i) {
        out.write(block.data(), static_cast<std::streamsize>(block.size()));
      }
    }
  };
  auto run = [&](bool parallel) {
    dirty();
    quiesce::platform::holder::FreezeRequest request;
    int wave = 0;
    for (auto& fs : filesystems) {
      request.mounts.push_back({parallel ? 0 : wave++, 0, fs->mount_point()});
    }
    const auto start = Clock::now();
    auto reply = holder->request(to_message(request), Clock::now() + 60s, {});
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    REQUIRE(reply.ok());
    REQUIRE(reply.message.verb == "FROZEN");
    auto thawed = holder->request({"THAW", {}, {}}, Clock::now() + 60s, {});
    REQUIRE(thawed.ok());
    return took.count();
  };
  for (int round = 0; round < 3; ++round) {
    auto sequential = run(false);
    auto parallel = run(true);
    std::cout << "16 x ext4 with 16 MiB dirty each: sequential " << sequential
              << " ms, parallel " << parallel << " ms\n";
  }
}
