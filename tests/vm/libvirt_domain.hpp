#pragma once
// The libvirt domain the vm tests boot the initramfs guest in
// (tests/vm/build-initramfs-guest.sh): what a libvirt user would write for a
// guest that runs a qemu-guest-agent, so the tests exercise libvirt's own
// agent code paths (docs/testing-in-a-guest.md, "libvirt").
//
// - type `qemu` (TCG: /dev/kvm does not run guests on these machines);
// - direct kernel boot: the image's kernel, its initrd with the run's
//   payload archive appended, its kernel command line;
// - the data disk: qcow2 on virtio-blk with a <serial>, so guest-get-fsinfo
//   has a serial and a PCI address libvirt maps back to the disk's target;
// - `org.qemu.guest_agent.0` as libvirt's docs write it: a unix channel with
//   no source, so libvirt makes the host socket and owns the connection;
// - `org.quiesce.test.0`: the tests' control runner, a unix channel in bind
//   mode (QEMU listens at `control_socket`, the test connects);
// - the serial console to a file.

#include <filesystem>
#include <string>

namespace quiesce::test {

struct LibvirtDomainSpec {
  std::string name;
  std::filesystem::path kernel;
  std::filesystem::path initrd;
  std::string cmdline;
  std::filesystem::path data_disk;  // qcow2
  std::string data_disk_target = "vda";
  std::string data_disk_serial = "quiesce-data";
  std::filesystem::path control_socket;
  std::filesystem::path console_log;
  int memory_mib = 512;
  int cpus = 1;
};

[[nodiscard]] std::string libvirt_domain_xml(const LibvirtDomainSpec& spec);

}  // namespace quiesce::test
