// guest-get-fsinfo's disk entries from fake sysfs trees laid out as the
// kernel does (virtio-blk, virtio-scsi, a partition, device-mapper on top),
// and guest-get-osinfo from a prepared os-release.

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "agent/qga/qga_guest_info.hpp"
#include "tests/support/temp_dir.hpp"

using namespace quiesce;
namespace fs = std::filesystem;

namespace {

void write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text;
}

// sysfs/dev/block/<major:minor> -> the device's directory, as a relative link.
void link_device(const fs::path& sysfs, const std::string& number, const fs::path& device) {
  fs::create_directories(sysfs / "dev" / "block");
  fs::create_directory_symlink(fs::relative(device, sysfs / "dev" / "block"),
                               sysfs / "dev" / "block" / number);
}

struct FakeSysfs {
  test::TempDir dir{"qga-sysfs"};
  fs::path sysfs = dir / "sys";
  fs::path vda = sysfs / "devices/pci0000:00/0000:00:05.0/virtio2/block/vda";
  fs::path sda = sysfs / "devices/pci0000:00/0000:00:04.0/virtio1/host2/target2:0:1/2:0:1:3/block/sda";

  FakeSysfs() {
    write(vda / "serial", "data-disk-7\n");
    write(vda / "vda1" / "partition", "1\n");
    link_device(sysfs, "254:0", vda);
    link_device(sysfs, "254:1", vda / "vda1");
    fs::create_directories(sda);
    link_device(sysfs, "8:0", sda);
    auto dm = sysfs / "devices/virtual/block/dm-0";
    fs::create_directories(dm / "slaves");
    fs::create_directory_symlink(fs::relative(vda / "vda1", dm / "slaves"), dm / "slaves" / "vda1");
    fs::create_directory_symlink(fs::relative(sda, dm / "slaves"), dm / "slaves" / "sda");
    link_device(sysfs, "253:0", dm);
  }
};

}  // namespace

TEST_CASE("qga fsinfo: a virtio-blk partition leads to its disk, PCI address and serial") {
  FakeSysfs tree;
  auto disks = agent::qga::disks_of_device(tree.sysfs.string(), 254, 1);
  REQUIRE(disks.size() == 1);
  const auto& disk = disks[0];
  CHECK(disk["pci-controller"] == nlohmann::json{{"domain", 0}, {"bus", 0}, {"slot", 5}, {"function", 0}});
  CHECK(disk["bus-type"] == "virtio");
  CHECK(disk["bus"] == 0);
  CHECK(disk["target"] == 0);
  CHECK(disk["unit"] == 0);
  CHECK(disk["serial"] == "data-disk-7");
  CHECK(disk["dev"] == "/dev/vda");
}

TEST_CASE("qga fsinfo: a virtio-scsi disk reports scsi with its channel, target and lun") {
  FakeSysfs tree;
  auto disks = agent::qga::disks_of_device(tree.sysfs.string(), 8, 0);
  REQUIRE(disks.size() == 1);
  CHECK(disks[0]["bus-type"] == "scsi");
  CHECK(disks[0]["pci-controller"]["slot"] == 4);
  CHECK(disks[0]["bus"] == 0);
  CHECK(disks[0]["target"] == 1);
  CHECK(disks[0]["unit"] == 3);
  CHECK_FALSE(disks[0].contains("serial"));
  CHECK(disks[0]["dev"] == "/dev/sda");
}

TEST_CASE("qga fsinfo: device-mapper lists every disk beneath it") {
  FakeSysfs tree;
  auto disks = agent::qga::disks_of_device(tree.sysfs.string(), 253, 0);
  REQUIRE(disks.size() == 2);
  std::set<std::string> devices;
  for (const auto& disk : disks) {
    devices.insert(disk["dev"].get<std::string>());
  }
  CHECK(devices == std::set<std::string>{"/dev/vda", "/dev/sda"});
}

TEST_CASE("qga fsinfo: an unknown device has no disks, not an error") {
  FakeSysfs tree;
  CHECK(agent::qga::disks_of_device(tree.sysfs.string(), 7, 99).empty());
}

TEST_CASE("qga osinfo: os-release values are unquoted as the shell would") {
  test::TempDir dir("qga-os");
  write(dir / "os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME='Debian GNU/Linux'\n"
        "VERSION_ID=\"12\"\nVERSION=\"12 (bookworm) \\\"quoted\\\"\"\nID=debian\n# ID=comment\n"
        "VARIANT_ID=server\nHOME_URL=\"https://www.debian.org/\"\n");
  agent::qga::GuestSources sources;
  sources.os_release = (dir / "os-release").string();
  auto info = agent::qga::guest_osinfo(sources);
  CHECK(info["pretty-name"] == "Debian GNU/Linux 12 (bookworm)");
  CHECK(info["name"] == "Debian GNU/Linux");
  CHECK(info["version-id"] == "12");
  CHECK(info["version"] == "12 (bookworm) \"quoted\"");
  CHECK(info["id"] == "debian");
  CHECK(info["variant-id"] == "server");
  CHECK_FALSE(info.contains("home-url"));
  CHECK(info["kernel-release"].is_string());
}
