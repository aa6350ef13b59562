// The pure parts of the qemu VM kind (host-bridge/qemu): vm.json checks and
// the QEMU command line built from it. The boot itself is in
// tests/vm/qemu_vm_test.cpp.
#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "host-bridge/qemu/qemu_vm.hpp"
#include "tests/support/temp_dir.hpp"

namespace {

using nlohmann::json;
using quiesce::host::ErrorKind;
using quiesce::host::QemuVmConfig;

json minimal() {
  return json{{"kind", "qemu"},
              {"kernel", "boot/vmlinuz"},
              {"initrd", "/abs/initrd.img"},
              {"cmdline", "console=ttyS0 quiet"},
              {"disks", {{{"name", "data"}, {"image", "disks/data.qcow2"}}}}};
}

// The value that follows `option` in argv ("" when absent).
std::string after(const std::vector<std::string>& argv, const std::string& option) {
  const auto it = std::find(argv.begin(), argv.end(), option);
  return it == argv.end() || it + 1 == argv.end() ? std::string() : *(it + 1);
}

std::string error_of(const json& j, bool kvm = false) {
  auto config = QemuVmConfig::from_json(j, "/vms/demo", kvm);
  REQUIRE_FALSE(config.ok());
  CHECK(config.error().kind == ErrorKind::invalid_input);
  return config.error().message;
}

}  // namespace

TEST_CASE("qemu vm.json: defaults, the accelerator follows what the host can do") {
  auto without_kvm = QemuVmConfig::from_json(minimal(), "/vms/demo", false);
  REQUIRE(without_kvm.ok());
  CHECK(without_kvm->accel == "tcg");
  CHECK(without_kvm->name == "demo");
  CHECK(without_kvm->memory_mib == 512);
  CHECK(without_kvm->kernel == "/vms/demo/boot/vmlinuz");
  CHECK(without_kvm->initrd == "/abs/initrd.img");
  CHECK(without_kvm->disks.at(0).image == "/vms/demo/disks/data.qcow2");
  // The checkpointer's backend defaults to QMP over the VM's own socket, one
  // QMP device per disk, named as the command line names the drive.
  CHECK(without_kvm->backend["type"] == "qmp");
  CHECK(without_kvm->backend["socket"] == "/vms/demo/run/qmp.sock");
  CHECK(without_kvm->backend["disks"]["data"] == "disk-data");

  auto with_kvm = QemuVmConfig::from_json(minimal(), "/vms/demo", true);
  REQUIRE(with_kvm.ok());
  CHECK(with_kvm->accel == "kvm");
  auto asked_tcg = minimal();
  asked_tcg["accel"] = "tcg";
  CHECK(QemuVmConfig::from_json(asked_tcg, "/vms/demo", true)->accel == "tcg");
}

TEST_CASE("qemu vm.json: each mistake is refused naming its field") {
  auto with = [](const std::string& key, const json& value) {
    auto j = minimal();
    j[key] = value;
    return j;
  };
  auto without = [](const std::string& key) {
    auto j = minimal();
    j.erase(key);
    return j;
  };
  CHECK(error_of(with("kind", "sim")).find("kind: expected \"qemu\"") != std::string::npos);
  CHECK(error_of(with("memory", 256)).find("memory: unknown field") != std::string::npos);
  CHECK(error_of(with("memory_mib", 16)).find("memory_mib: expected an integer from 64") != std::string::npos);
  CHECK(error_of(with("vcpus", 0)).find("vcpus:") != std::string::npos);
  CHECK(error_of(with("accel", "hvf")).find("accel: expected kvm or tcg") != std::string::npos);
  CHECK(error_of(with("accel", "kvm"), false).find("kvm is not usable") != std::string::npos);
  CHECK(error_of(with("disks", json::array())).find("disks: expected a non-empty array") != std::string::npos);
  CHECK(error_of(with("disks", {{{"name", "a,b"}, {"image", "x.qcow2"}}})).find("disks[0].name") !=
        std::string::npos);
  CHECK(error_of(with("disks", {{{"name", "d"}, {"image", "x"}}, {{"name", "d"}, {"image", "y"}}}))
            .find("disks[1].name: \"d\" appears twice") != std::string::npos);
  CHECK(error_of(with("disks", {{{"name", "d"}}})).find("disks[0].image") != std::string::npos);
  CHECK(error_of(with("boot_disk", "data")).find("either kernel") != std::string::npos);
  CHECK(error_of(without("kernel")).find("give either kernel") != std::string::npos);
  auto initrd_without_kernel = without("kernel");
  initrd_without_kernel["boot_disk"] = "data";
  CHECK(error_of(initrd_without_kernel).find("initrd: only with kernel") != std::string::npos);
  auto boot_disk = without("kernel");
  boot_disk.erase("initrd");
  boot_disk.erase("cmdline");
  boot_disk["boot_disk"] = "root";
  CHECK(error_of(boot_disk).find("boot_disk: no disk named \"root\"") != std::string::npos);
  CHECK(error_of(with("agent", {{"channel", "vsock"}})).find("agent: expected") != std::string::npos);
  CHECK(error_of(with("channels", {{{"name", "org.qemu.guest_agent.0"}, {"socket", "run/x.sock"}}}))
            .find("is already a port of this VM") != std::string::npos);
  CHECK(error_of(with("shutdown_timeout_s", 0)).find("shutdown_timeout_s") != std::string::npos);
  CHECK(error_of(with("checkpoint_type", "vss")).find("checkpoint_type: expected production") !=
        std::string::npos);
  CHECK(QemuVmConfig::from_json(with("checkpoint_type", "standard"), "/vms/demo", false)->checkpoint_type ==
        "standard");
  CHECK(error_of(json::array()).find("not a JSON object") != std::string::npos);
}

TEST_CASE("qemu command line: the machine vm.json describes, the same every time") {
  auto j = minimal();
  j["memory_mib"] = 256;
  j["vcpus"] = 2;
  j["channels"] = {{{"name", "org.quiesce.test.0"}, {"socket", "run/control.sock"}}};
  j["disks"].push_back({{"name", "logs"}, {"image", "/data/with,comma.qcow2"}});
  auto config = QemuVmConfig::from_json(j, "/vms/demo", false);
  INFO((config.ok() ? std::string() : config.error().message));
  REQUIRE(config.ok());
  const auto argv = quiesce::host::qemu_command_line(*config, {"-incoming", "defer"});
  CHECK(argv == quiesce::host::qemu_command_line(*config, {"-incoming", "defer"}));
  CHECK(argv.front() == "/usr/bin/qemu-system-x86_64");
  CHECK(after(argv, "-accel") == "tcg");
  CHECK(after(argv, "-m") == "256");
  CHECK(after(argv, "-smp") == "2");
  CHECK(after(argv, "-qmp") == "unix:/vms/demo/run/qmp.sock,server=on,wait=off");
  CHECK(after(argv, "-kernel") == "/vms/demo/boot/vmlinuz");
  CHECK(after(argv, "-append") == "console=ttyS0 quiet");
  CHECK(after(argv, "-pidfile") == "/vms/demo/run/qemu.pid");
  CHECK(std::count(argv.begin(), argv.end(), "-drive") == 2);
  // A comma in a path would start another option: QEMU takes it doubled.
  CHECK(std::find(argv.begin(), argv.end(),
                  "file=/data/with,,comma.qcow2,id=disk-logs,if=none,format=qcow2,cache=writeback") != argv.end());
  CHECK(std::find(argv.begin(), argv.end(), "virtserialport,chardev=qga,name=org.qemu.guest_agent.0") !=
        argv.end());
  CHECK(std::find(argv.begin(), argv.end(), "virtserialport,chardev=channel0,name=org.quiesce.test.0") !=
        argv.end());
  CHECK(argv[argv.size() - 2] == "-incoming");
  CHECK(argv.back() == "defer");
}

TEST_CASE("qemu vm: opening a directory reads and checks its vm.json") {
  quiesce::test::TempDir dir("quiesce-qemu-vm");
  auto missing = quiesce::host::QemuVm::open(dir.path());
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().kind == ErrorKind::not_found);
}

TEST_CASE("qemu memory state: the saved machine loads with each disk's present file, once -incoming") {
  auto j = minimal();
  j["memory_mib"] = 256;
  j["disks"].push_back({{"name", "logs"}, {"image", "/data/with,comma.qcow2"}});
  auto saved_config = QemuVmConfig::from_json(j, "/vms/demo", false);
  REQUIRE(saved_config.ok());
  // The state was itself loaded from a state: its -S and -incoming are not
  // part of the machine.
  const auto saved = quiesce::host::qemu_command_line(*saved_config, {"-S", "-incoming", "defer"});
  // Since then the disks moved to top layers and vm.json asks for more memory.
  j["disks"][0]["image"] = "disks/data.top-1.qcow2";
  j["disks"][1]["image"] = "/data/with,comma.top-2.qcow2";
  j["memory_mib"] = 512;
  auto now = QemuVmConfig::from_json(j, "/vms/demo", false);
  REQUIRE(now.ok());
  const auto argv = quiesce::host::incoming_command_line(saved, quiesce::host::qemu_command_line(*now));
  CHECK(after(argv, "-m") == "256");  // the machine that saved the state
  CHECK(std::count(argv.begin(), argv.end(), "-incoming") == 0);
  CHECK(std::count(argv.begin(), argv.end(), "-S") == 0);
  CHECK(std::find(argv.begin(), argv.end(),
                  "file=/vms/demo/disks/data.top-1.qcow2,id=disk-data,if=none,format=qcow2,cache=writeback") !=
        argv.end());
  CHECK(std::find(argv.begin(), argv.end(),
                  "file=/data/with,,comma.top-2.qcow2,id=disk-logs,if=none,format=qcow2,cache=writeback") !=
        argv.end());
  CHECK(argv.size() == saved.size() - 3);
}

TEST_CASE("qemu vm: a state imported from another VM loads with this VM's QMP socket, pid file and log") {
  // The machine's own files (kernel) are the checkpoint's; only where the
  // host keeps the VM's backends changes.
  auto j = minimal();
  j["kernel"] = "/abs/vmlinuz";
  auto saved_config = QemuVmConfig::from_json(j, "/vms/exported", false);
  REQUIRE(saved_config.ok());
  j["name"] = "importer";
  auto now = QemuVmConfig::from_json(j, "/vms/importer", false);
  REQUIRE(now.ok());
  const auto current = quiesce::host::qemu_command_line(*now);
  const auto argv =
      quiesce::host::incoming_command_line(quiesce::host::qemu_command_line(*saved_config), current);
  for (const auto* option : {"-name", "-qmp", "-serial", "-pidfile"}) {
    INFO(option);
    CHECK(after(argv, option) == after(current, option));
  }
  for (const auto& arg : argv) {
    CHECK(arg.find("/vms/exported") == std::string::npos);
  }
}

TEST_CASE("qemu vm.json: memory_save_bandwidth_mib_s limits the state's save, unlimited by default") {
  CHECK(QemuVmConfig::from_json(minimal(), "/vms/demo", false)->memory_save_bandwidth_mib_s == 0);
  auto j = minimal();
  j["memory_save_bandwidth_mib_s"] = 64;
  CHECK(QemuVmConfig::from_json(j, "/vms/demo", false)->memory_save_bandwidth_mib_s == 64);
  j["memory_save_bandwidth_mib_s"] = 0;
  CHECK(error_of(j).find("memory_save_bandwidth_mib_s: expected an integer from 1") != std::string::npos);
}
