#pragma once
// A private libvirtd (qemu driver) for the vm tests, so they drive the agent
// through the stack people run on their hosts (docs/testing-in-a-guest.md,
// "libvirt").
//
// libvirtd runs in the foreground in its own mount namespace
// (tests/vm/libvirtd-in-namespace.sh) with its config, state, sockets and
// logs in a temp dir: nothing of a system libvirtd is shared. QEMU's
// capabilities are cached between runs under
// $QUIESCE_VM_CACHE/libvirt-<key> (key: the libvirtd and QEMU versions).
// Tearing down (the destructor, also when a test failed or threw) destroys
// every domain, kills any QEMU that libvirt left (from its pid files: QEMU
// runs in its own session, outside the daemon's process group) and stops the
// daemon. When a test failed, the logs are printed and the temp dir is kept.

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"

namespace quiesce::test {

struct VirshResult {
  int exit_code = -1;  // 124: the time limit ended it
  std::string output;  // stdout and stderr together
  double seconds = 0;  // how long it took
  [[nodiscard]] bool ok() const { return exit_code == 0; }
};

class LibvirtDaemon {
 public:
  struct Options {
    std::chrono::seconds start_timeout{90};  // the first capability probe included
  };

  // Starts libvirtd and waits until `virsh version` answers; throws with the
  // daemon's log when it does not.
  explicit LibvirtDaemon(const Options& options);
  LibvirtDaemon() : LibvirtDaemon(Options{}) {}
  ~LibvirtDaemon();
  LibvirtDaemon(const LibvirtDaemon&) = delete;
  LibvirtDaemon& operator=(const LibvirtDaemon&) = delete;

  // The connection URI for virsh and libvirt clients.
  [[nodiscard]] const std::string& uri() const { return uri_; }
  // A directory for the test's own files (disks, sockets, console logs),
  // kept with the daemon's when a test failed.
  [[nodiscard]] const std::filesystem::path& dir() const { return run_dir_.path(); }
  [[nodiscard]] double start_seconds() const { return start_seconds_; }

  // Runs `virsh -c URI args...`, ended after `limit`.
  VirshResult virsh(const std::vector<std::string>& args,
                    std::chrono::seconds limit = std::chrono::seconds(120)) const;

  // Starts a transient domain from XML (`virsh create`); returns its name.
  // The domain is destroyed when the daemon is torn down.
  std::string create_domain(const std::string& xml);

  // QEMU's log for a domain (its command line, its stderr).
  [[nodiscard]] std::filesystem::path qemu_log(const std::string& domain) const;
  // The last lines of libvirtd's log and every domain's QEMU log.
  [[nodiscard]] std::string log_tail(std::size_t lines = 40) const;

 private:
  void tear_down();

  TempDir run_dir_{"quiesce-libvirt"};
  std::filesystem::path root_;  // the namespace's bind-mount sources
  std::string uri_;
  std::optional<ChildProcess> daemon_;
  std::vector<std::string> domains_;
  double start_seconds_ = 0;
};

}  // namespace quiesce::test
