// platform/linux/mountinfo: parsing recorded /proc/self/mountinfo samples.
#include <doctest/doctest.h>

#include <fstream>
#include <sstream>

#include "platform/linux/mountinfo.hpp"

using quiesce::platform::DeviceId;
using quiesce::platform::MountTable;

namespace {

MountTable load_sample(const std::string& name) {
  std::ifstream in(std::string(QUIESCE_SOURCE_DIR) + "/tests/data/mountinfo/" + name);
  REQUIRE(in);
  std::stringstream text;
  text << in.rdbuf();
  return quiesce::platform::parse_mountinfo(text.str());
}

}  // namespace

TEST_CASE("mountinfo: a kernel line with optional fields") {
  auto entry = quiesce::platform::parse_mountinfo_line(
      "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue");
  REQUIRE(entry);
  CHECK(entry->mount_id == 36);
  CHECK(entry->parent_id == 35);
  CHECK(entry->device == DeviceId{98, 0});
  CHECK(entry->device.to_string() == "98:0");
  CHECK(entry->root == "/mnt1");
  CHECK(entry->mount_point == "/mnt2");
  CHECK(entry->mount_options == std::vector<std::string>{"rw", "noatime"});
  CHECK(entry->optional_fields == std::vector<std::string>{"master:1", "shared:7"});
  CHECK(entry->fstype == "ext3");
  CHECK(entry->source == "/dev/root");
  CHECK(entry->super_options == std::vector<std::string>{"rw", "errors=continue"});
  CHECK_FALSE(entry->read_only());
  CHECK(entry->super_option("errors") == "continue");
  CHECK_FALSE(entry->super_option("subvol"));
}

TEST_CASE("mountinfo: malformed lines are reported, not parsed") {
  std::string error;
  CHECK_FALSE(quiesce::platform::parse_mountinfo_line("36 35 98:0 / /x rw ext4 /dev/a rw", &error));
  CHECK(error.find("separator") != std::string::npos);
  CHECK_FALSE(quiesce::platform::parse_mountinfo_line("36 35 98 / /x rw - ext4 /dev/a rw", &error));
  CHECK(error.find("major:minor") != std::string::npos);
  CHECK_FALSE(quiesce::platform::parse_mountinfo_line("x 35 98:0 / /x rw - ext4 /dev/a rw", &error));
  CHECK_FALSE(quiesce::platform::parse_mountinfo_line("36 35 98:0 / /x - ext4 /dev/a rw", &error));
  auto table = quiesce::platform::parse_mountinfo(
      "1 0 8:1 / / rw - ext4 /dev/sda1 rw\ngarbage\n\n2 1 8:2 / /b rw - ext4 /dev/sda2 rw\n");
  CHECK(table.entries.size() == 2);
  REQUIRE(table.errors.size() == 1);
  CHECK(table.errors.front().starts_with("line 2:"));
}

TEST_CASE("mountinfo: escapes are decoded and round-trip") {
  using quiesce::platform::escape_mount_path;
  using quiesce::platform::unescape_mount_path;
  CHECK(unescape_mount_path("/mnt/my\\040disk") == "/mnt/my disk");
  CHECK(unescape_mount_path("a\\011b\\012c\\134d") == "a\tb\nc\\d");
  CHECK(unescape_mount_path("keep\\x and \\9") == "keep\\x and \\9");
  CHECK(unescape_mount_path("trailing\\04") == "trailing\\04");
  const std::string odd = "/mnt/a b\tc\nd\\e";
  CHECK(escape_mount_path(odd) == "/mnt/a\\040b\\011c\\012d\\134e");
  CHECK(unescape_mount_path(escape_mount_path(odd)) == odd);
}

TEST_CASE("mountinfo: docker overlay sample") {
  auto table = load_sample("docker_overlay.mountinfo");
  CHECK(table.errors.empty());
  REQUIRE(table.entries.size() == 13);
  const auto* root = table.find_mount_point("/");
  REQUIRE(root);
  CHECK(root->fstype == "overlay");
  CHECK(root->device == DeviceId{0, 52});
  CHECK(root->super_option("upperdir") == "/var/lib/docker/overlay2/1f2e/diff");
  const auto* sys = table.find_mount_point("/sys");
  REQUIRE(sys);
  CHECK(sys->read_only());
  const auto* data = table.find_mount_point("/data");
  REQUIRE(data);
  CHECK(data->root == "/srv/app data");
  CHECK(data->optional_fields.size() == 2);
  CHECK(data->fstype == "xfs");
  const auto* hosts = table.find_mount_point("/etc/hosts");
  REQUIRE(hosts);
  CHECK(hosts->device == DeviceId{254, 1});
  CHECK(table.mount_containing("/data/x/y") == data);
  CHECK(table.mount_containing("/database") == root);
  CHECK(table.mount_containing("/proc/bus/pci")->mount_point == "/proc/bus");
}

TEST_CASE("mountinfo: btrfs subvolumes share one device") {
  auto table = load_sample("btrfs_subvolumes.mountinfo");
  CHECK(table.errors.empty());
  const auto* root = table.find_mount_point("/");
  const auto* home = table.find_mount_point("/home");
  const auto* log = table.find_mount_point("/var/log");
  REQUIRE(root);
  REQUIRE(home);
  REQUIRE(log);
  CHECK(root->device == home->device);
  CHECK(home->device == log->device);
  CHECK(home->root == "/@home");
  CHECK(home->super_option("subvol") == "/@home");
  CHECK(home->super_option("subvolid") == "257");
  const auto* snap = table.find_mount_point("/srv/pool/snap");
  REQUIRE(snap);
  CHECK(snap->read_only());
  CHECK(snap->device == table.find_mount_point("/srv/pool")->device);
  CHECK(table.find_mount_point("/home/alice/remote")->fstype == "fuse.sshfs");
}

TEST_CASE("mountinfo: nested, bind, over-mounted and escaped mounts") {
  auto table = load_sample("nested_bind.mountinfo");
  CHECK(table.errors.empty());
  REQUIRE(table.entries.size() == 12);
  const auto* copy = table.find_mount_point("/export/db copy");
  REQUIRE(copy);
  CHECK(copy->root == "/exports");
  CHECK(copy->device == table.find_mount_point("/srv/db")->device);
  const auto* odd = table.find_mount_point("/mnt/my disk\ttab\\back");
  REQUIRE(odd);
  CHECK(odd->source == "/dev/disk/by-label/My Disk");
  // Two mounts on /mnt/old: the later one is visible, the first is hidden.
  const auto* old = table.find_mount_point("/mnt/old");
  REQUIRE(old);
  CHECK(old->mount_id == 37);
  CHECK(table.is_overmounted(table.entries[7]));
  CHECK_FALSE(table.is_overmounted(*old));
  CHECK(table.find_mount_point("/mnt/ro")->read_only());      // superblock ro
  CHECK(table.find_mount_point("/mnt/robind")->read_only());  // mount ro
  const auto* empty = table.find_mount_point("/mnt/empty-source");
  REQUIRE(empty);
  CHECK(empty->source.empty());
  CHECK(empty->super_options == std::vector<std::string>{"rw"});
  CHECK(table.mount_containing("/srv/db/wal/x")->mount_point == "/srv/db/wal");
  CHECK(table.mount_containing("/srv/dbx")->mount_point == "/srv");
}

TEST_CASE("mountinfo: path_is_beneath works on path components") {
  using quiesce::platform::path_is_beneath;
  CHECK(path_is_beneath("/a/b", "/a"));
  CHECK(path_is_beneath("/a", "/a"));
  CHECK_FALSE(path_is_beneath("/ab", "/a"));
  CHECK(path_is_beneath("/anything", "/"));
  CHECK_FALSE(path_is_beneath("/a", "/a/b"));
}

TEST_CASE("mountinfo: this process's own table parses") {
  auto result = quiesce::platform::read_mountinfo();
  REQUIRE(result.table);
  CHECK(result.table->errors.empty());
  CHECK(result.table->find_mount_point("/") != nullptr);
  CHECK_FALSE(quiesce::platform::read_mountinfo("/nonexistent/mountinfo").table);
}
