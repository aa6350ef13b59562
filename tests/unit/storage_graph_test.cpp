// writers/fsfreeze: the storage graph and the waves it gives, on a fake
// sysfs tree (built in a temp dir) and a recorded mountinfo holding every
// stack at once: loop on loop two deep, dm over loop, a partition of a loop
// device, btrfs subvolumes, an overlay's upper directory, FUSE, a swap file,
// a cycle and a deleted image file.
#include <doctest/doctest.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>

#include "tests/support/temp_dir.hpp"
#include "writers/fsfreeze/mount_selection.hpp"
#include "writers/fsfreeze/storage_graph.hpp"

using namespace quiesce::writers::fsfreeze;
using quiesce::platform::DeviceId;
namespace fs = std::filesystem;

namespace {

quiesce::platform::MountTable stacks() {
  std::ifstream in(std::string(QUIESCE_SOURCE_DIR) +
                   "/tests/data/mountinfo/storage_stacks.mountinfo");
  REQUIRE(in);
  std::stringstream text;
  text << in.rdbuf();
  auto table = quiesce::platform::parse_mountinfo(text.str());
  REQUIRE(table.errors.empty());
  return table;
}

void write_file(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text << "\n";
}

// A sysfs tree as the kernel lays it out, for the devices the graph reads.
class FakeSysfs {
 public:
  explicit FakeSysfs(fs::path root) : root_(std::move(root)) {
    fs::create_directories(root_ / "dev" / "block");
    fs::create_directories(root_ / "block");
  }

  // devices/virtual/block/<name> (or beneath `parent`), linked from
  // dev/block/M:m and block/<name> by relative links, as sysfs does.
  fs::path add_block(const std::string& name, DeviceId device, const fs::path& parent = {}) {
    auto dir = (parent.empty() ? root_ / "devices" / "virtual" / "block" : parent) / name;
    write_file(dir / "dev", device.to_string());
    fs::create_directory_symlink(fs::relative(dir, root_ / "dev" / "block"),
                                 root_ / "dev" / "block" / device.to_string());
    if (parent.empty()) {
      fs::create_directory_symlink(fs::relative(dir, root_ / "block"), root_ / "block" / name);
    }
    return dir;
  }
  fs::path add_loop(const std::string& name, DeviceId device, const std::string& backing) {
    auto dir = add_block(name, device);
    write_file(dir / "loop" / "backing_file", backing);
    return dir;
  }
  void add_partition(const fs::path& disk, const std::string& name, DeviceId device) {
    auto dir = add_block(name, device, disk);
    write_file(dir / "partition", "1");
  }
  void add_dm(const std::string& name, DeviceId device, const std::string& dm_name,
              const std::vector<std::string>& slaves) {
    auto dir = add_block(name, device);
    write_file(dir / "dm" / "name", dm_name);
    fs::create_directories(dir / "slaves");
    for (const auto& slave : slaves) {
      fs::create_directory_symlink(fs::path("..") / ".." / slave, dir / "slaves" / slave);
    }
  }
  void add_btrfs(const std::string& fsid, const std::vector<std::string>& members) {
    auto devices = root_ / "fs" / "btrfs" / fsid / "devices";
    fs::create_directories(devices);
    for (const auto& member : members) {
      auto target = fs::canonical(root_ / "block" / member);
      fs::create_directory_symlink(fs::relative(target, devices), devices / member);
    }
  }

 private:
  fs::path root_;
};

// The system calls, answered from maps.
class FakeProbe : public StorageProbe {
 public:
  using StorageProbe::StorageProbe;
  std::map<std::string, DeviceId> loop_devices;  // loop name -> lo_device
  std::map<std::string, DeviceId> path_devices;  // path -> st_dev
  std::string swap_text = "Filename\tType\tSize\tUsed\tPriority\n";

  std::optional<DeviceId> loop_backing_device(const std::string& name) const override {
    auto it = loop_devices.find(name);
    return it == loop_devices.end() ? std::nullopt : std::optional(it->second);
  }
  std::optional<DeviceId> device_of_path(const std::string& path) const override {
    auto it = path_devices.find(path);
    return it == path_devices.end() ? std::nullopt : std::optional(it->second);
  }
  std::optional<DeviceId> device_node(const std::string&) const override { return std::nullopt; }
  std::string swaps() const override { return swap_text; }
};

// Every stack of storage_stacks.mountinfo, in sysfs.
struct Fixture {
  quiesce::test::TempDir dir{"storage-graph"};
  FakeSysfs sysfs{dir.path()};
  FakeProbe probe{dir.path()};
  quiesce::platform::MountTable table = stacks();

  Fixture() {
    sysfs.add_block("vda", {254, 0});
    sysfs.add_block("vdb", {254, 16});
    sysfs.add_block("vdc", {254, 32});
    sysfs.add_loop("loop0", {7, 0}, "/srv/lower/mid.img");
    sysfs.add_loop("loop1", {7, 1}, "/srv/mid/upper.img");
    sysfs.add_loop("loop2", {7, 2}, "/srv/lower/dm.img");
    sysfs.add_dm("dm-0", {253, 0}, "vg-data", {"loop2"});
    auto disk = sysfs.add_loop("loop3", {7, 3}, "/srv/lower/disk.img");
    sysfs.add_partition(disk, "loop3p1", {259, 0});
    sysfs.add_loop("loop4", {7, 4}, "/srv/lower/pool.img");
    sysfs.add_btrfs("5f1d0d8e-2b1c-4d4e-9d59-0e0f6c1c2a11", {"loop4"});
    sysfs.add_loop("loop5", {7, 5}, "/srv/home/onpool.img");
    sysfs.add_loop("loop6", {7, 6}, "/srv/merged/onoverlay.img");
    sysfs.add_loop("loop7", {7, 7}, "/srv/fuse/onfuse.img");
    sysfs.add_loop("loop8", {7, 8}, "/srv/cyc-b/a.img");
    sysfs.add_loop("loop9", {7, 9}, "/srv/cyc-a/b.img");
    sysfs.add_loop("loop10", {7, 10}, "/srv/lower/gone.img (deleted)");
    // LOOP_GET_STATUS64 knows each image's filesystem; a btrfs subvolume
    // shows stat a device of its own, unknown to mountinfo.
    probe.loop_devices = {{"loop0", {254, 16}}, {"loop1", {7, 0}},    {"loop2", {254, 16}},
                          {"loop3", {254, 16}}, {"loop4", {254, 16}}, {"loop5", {0, 51}},
                          {"loop6", {0, 60}},   {"loop7", {0, 70}},   {"loop8", {7, 9}},
                          {"loop9", {7, 8}},    {"loop10", {254, 16}}};
    probe.path_devices = {{"/srv/lower/upper", {254, 16}}};
  }

  Selection select(const std::vector<std::string>& mounts) {
    auto selection = select_filesystems(table, {mounts, false, {}, {}}, &probe);
    REQUIRE(selection.errors.empty());
    return selection;
  }
};

const SelectedFilesystem& find(const Selection& selection, const std::string& mount_point) {
  auto it = std::find_if(selection.filesystems.begin(), selection.filesystems.end(),
                         [&](const auto& f) { return f.mount.mount_point == mount_point; });
  REQUIRE(it != selection.filesystems.end());
  return *it;
}

bool has_note(const SelectedFilesystem& filesystem, const std::string& part) {
  return std::any_of(filesystem.notes.begin(), filesystem.notes.end(),
                     [&](const auto& note) { return note.find(part) != std::string::npos; });
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("storage graph: loop on loop two deep freezes top down, lower last") {
  Fixture f;
  auto selection = f.select({"/srv/lower", "/srv/mid", "/srv/upper"});
  const auto& upper = find(selection, "/srv/upper");
  const auto& mid = find(selection, "/srv/mid");
  const auto& lower = find(selection, "/srv/lower");
  CHECK(upper.wave == 0);
  CHECK(mid.wave == 1);
  CHECK(lower.wave == 2);
  CHECK(upper.stored_on == std::vector<std::string>{"/srv/mid"});
  CHECK(mid.stored_on == std::vector<std::string>{"/srv/lower"});
  CHECK(lower.stored_on.empty());
  CHECK(upper.wave_reason == "first; on loop1, image /srv/mid/upper.img on /srv/mid");
  CHECK(mid.wave_reason ==
        "after /srv/upper (stored on it); on loop0, image /srv/lower/mid.img on /srv/lower");
  CHECK(lower.wave_reason == "after /srv/mid (stored on it)");
  // The bind of /srv/lower mounted beneath /srv/upper would put the lower
  // one first by mount paths; storage wins, and it is said.
  CHECK(lower.other_mount_points == std::vector<std::string>{"/srv/upper/lower-bind"});
  CHECK(has_note(lower, "mounted beneath /srv/upper, but /srv/upper is stored on it"));

  // Mount paths alone (no probe) see three independent filesystems, and
  // the bind mount puts the lowest one first: the deadlock this prevents.
  auto blind =
      select_filesystems(f.table, {{"/srv/lower", "/srv/mid", "/srv/upper"}, false, {}, {}});
  CHECK(find(blind, "/srv/lower").wave == 0);
  CHECK(find(blind, "/srv/upper").wave == 1);
}

TEST_CASE("storage graph: through a filesystem that is not selected, the chain goes on") {
  Fixture f;
  auto selection = f.select({"/srv/lower", "/srv/upper"});
  const auto& upper = find(selection, "/srv/upper");
  CHECK(upper.wave == 0);
  CHECK(find(selection, "/srv/lower").wave == 1);
  CHECK(upper.stored_on == std::vector<std::string>{"/srv/lower"});
  CHECK(contains(upper.wave_reason,
                 "on loop1, image /srv/mid/upper.img on /srv/mid (not frozen), on loop0, image "
                 "/srv/lower/mid.img on /srv/lower"));
}

TEST_CASE("storage graph: device-mapper over a loop device, and a partition of one") {
  Fixture f;
  auto selection = f.select({"/srv/lower", "/srv/dm", "/srv/part", "/srv/b"});
  CHECK(find(selection, "/srv/dm").wave == 0);
  CHECK(find(selection, "/srv/part").wave == 0);
  CHECK(find(selection, "/srv/b").wave == 0);  // independent: in parallel with the first wave
  CHECK(find(selection, "/srv/lower").wave == 1);
  CHECK(contains(find(selection, "/srv/dm").wave_reason,
                 "on dm-0 (vg-data), over loop2, image /srv/lower/dm.img on /srv/lower"));
  CHECK(contains(find(selection, "/srv/part").wave_reason,
                 "on loop3p1, partition of loop3, image /srv/lower/disk.img on /srv/lower"));
  CHECK(find(selection, "/srv/b").wave_reason ==
        "first: nothing is stored on it or mounted beneath it");
}

TEST_CASE("storage graph: btrfs subvolumes are one filesystem, found through /sys/fs/btrfs") {
  Fixture f;
  auto selection = f.select({"/srv/pool", "/srv/home", "/srv/onpool", "/srv/lower"});
  REQUIRE(selection.filesystems.size() == 3);  // one freeze for both subvolumes
  const auto& pool = find(selection, "/srv/pool");
  CHECK(pool.other_mount_points == std::vector<std::string>{"/srv/home"});
  CHECK(find(selection, "/srv/onpool").wave == 0);
  CHECK(pool.wave == 1);
  CHECK(find(selection, "/srv/lower").wave == 2);
  // The image sits in the /home subvolume: stat's device is unknown to
  // mountinfo, the path finds the filesystem.
  CHECK(find(selection, "/srv/onpool").stored_on == std::vector<std::string>{"/srv/pool"});
  CHECK(contains(pool.wave_reason, "on loop4, image /srv/lower/pool.img on /srv/lower"));
}

TEST_CASE("storage graph: an overlay's upper directory on a selected filesystem") {
  Fixture f;
  SUBCASE("the overlay is noted on the filesystem that holds its upper directory") {
    auto selection = f.select({"/srv/lower", "/srv/onoverlay"});
    const auto& lower = find(selection, "/srv/lower");
    CHECK(has_note(lower,
                   "holds the upper directory /srv/lower/upper of the overlay at /srv/merged"));
    // An image written through the overlay lands in the upper directory.
    const auto& on_overlay = find(selection, "/srv/onoverlay");
    CHECK(on_overlay.wave == 0);
    CHECK(lower.wave == 1);
    CHECK(contains(on_overlay.wave_reason,
                   "overlay /srv/merged with its upper directory "
                   "/srv/lower/upper on /srv/lower"));
  }
  SUBCASE("listing the overlay selects the filesystem holding its upper directory") {
    auto selection = f.select({"/srv/merged"});
    REQUIRE(selection.filesystems.size() == 1);
    CHECK(selection.filesystems[0].mount.mount_point == "/srv/lower");
    CHECK(has_note(selection.filesystems[0], "selected for the overlay /srv/merged"));
  }
}

TEST_CASE("storage graph: a filesystem resting on FUSE freezes in the earliest wave") {
  Fixture f;
  auto selection = f.select({"/srv/onfuse", "/srv/lower", "/srv/b", "/"});
  const auto& on_fuse = find(selection, "/srv/onfuse");
  CHECK(on_fuse.wave == 0);
  CHECK(has_note(on_fuse, "rests on the FUSE filesystem /srv/fuse"));
  CHECK(on_fuse.stored_on.empty());
  // Its daemon could store it anywhere: everything else goes after it.
  CHECK(find(selection, "/srv/lower").wave == 1);
  CHECK(find(selection, "/srv/b").wave == 1);
  CHECK(find(selection, "/").wave == 2);
  CHECK(find(selection, "/").wave_reason == "root filesystem: last");
  CHECK(contains(find(selection, "/srv/b").wave_reason, "after /srv/onfuse (it rests on FUSE"));
}

TEST_CASE("storage graph: a swap file on a selected filesystem is noted") {
  Fixture f;
  f.probe.swap_text +=
      "/srv/lower/swap\\040file\tfile\t1048572\t0\t-2\n/dev/vda2\tpartition\t1\t0\t-3\n";
  auto selection = f.select({"/srv/lower", "/srv/b"});
  CHECK(has_note(find(selection, "/srv/lower"), "swap file /srv/lower/swap file is on it"));
  CHECK(find(selection, "/srv/b").notes.empty());
}

TEST_CASE("storage graph: a cycle is cut, said, and each filesystem frozen once") {
  Fixture f;
  auto selection = f.select({"/srv/cyc-a", "/srv/cyc-b"});
  REQUIRE(selection.filesystems.size() == 2);
  const auto& a = find(selection, "/srv/cyc-a");
  const auto& b = find(selection, "/srv/cyc-b");
  CHECK(a.wave != b.wave);
  CHECK((has_note(a, "ordering cycle") || has_note(b, "ordering cycle")));
}

TEST_CASE("storage graph: a deleted image file still orders by its loop device's lo_device") {
  Fixture f;
  auto selection = f.select({"/srv/deleted", "/srv/lower"});
  const auto& deleted = find(selection, "/srv/deleted");
  CHECK(deleted.wave == 0);
  CHECK(find(selection, "/srv/lower").wave == 1);
  CHECK(has_note(deleted, "the image of loop10 (/srv/lower/gone.img) was deleted"));
  CHECK(contains(deleted.wave_reason, "image /srv/lower/gone.img (deleted) on /srv/lower"));
  CHECK(strip_deleted("/a/b (deleted)") == "/a/b");
}

TEST_CASE("storage graph: missing sysfs entries leave the mount order and say nothing wrong") {
  Fixture f;
  FakeProbe empty(f.dir.path() / "no-such-sysfs");
  auto selection =
      select_filesystems(f.table, {{"/srv/lower", "/srv/pool"}, false, {}, {}}, &empty);
  REQUIRE(selection.errors.empty());
  CHECK(find(selection, "/srv/lower").wave == 0);
  CHECK(find(selection, "/srv/pool").wave == 0);
  CHECK(has_note(find(selection, "/srv/pool"), "were not found under /sys/fs/btrfs"));
}
