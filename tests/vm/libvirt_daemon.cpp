#include "tests/vm/libvirt_daemon.hpp"

#include "tests/vm/control_channel.hpp"

#include <signal.h>

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace quiesce::test {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// "libvirtd (libvirt) 9.0.0" -> "9.0.0".
std::string last_word(const std::string& line) {
  std::istringstream words(line);
  std::string word;
  std::string last;
  while (words >> word) {
    last = word;
  }
  return last;
}

// Whether `pid` is still a QEMU process (a pid file may outlive its process,
// and the pid may have been reused).
bool is_qemu(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
  std::string argv0;
  std::getline(in, argv0, '\0');
  return argv0.find("qemu-system") != std::string::npos;
}

// Where QEMU's capabilities are cached between runs: the image cache's
// parent ($QUIESCE_VM_CACHE, as tests/vm/build-debian-image.sh), under a key
// naming the two versions the cache depends on, so an upgrade starts a new
// directory instead of relying only on libvirt's own revalidation.
std::filesystem::path capability_cache_dir() {
  const char* env = std::getenv("QUIESCE_VM_CACHE");
  const std::filesystem::path base = env != nullptr && *env != '\0' ? env : "/var/cache/quiesce-vm";
  std::string libvirt_version;
  std::string qemu_version;
  (void)run_command({"libvirtd", "--version"}, &libvirt_version);
  (void)run_command({"qemu-system-x86_64", "--version"}, &qemu_version);
  // "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)": the
  // word after "version".
  std::istringstream words(first_line(qemu_version));
  std::string word;
  std::string qemu;
  while (words >> word) {
    if (word == "version" && words >> qemu) {
      break;
    }
  }
  std::string key = "libvirt-" + last_word(first_line(libvirt_version)) + "-qemu-" + qemu;
  for (auto& c : key) {
    if (std::isalnum(static_cast<unsigned char>(c)) == 0 && c != '.' && c != '-') {
      c = '_';
    }
  }
  return base / key;
}

}  // namespace

LibvirtDaemon::LibvirtDaemon(const Options& options) {
  root_ = run_dir_ / "libvirt";
  uri_ = "qemu:///system?socket=" + (root_ / "sock" / "libvirt-sock").string();
  const std::filesystem::path script = std::filesystem::path(QUIESCE_SOURCE_DIR) / "tests/vm/libvirtd-in-namespace.sh";
  const auto started = Clock::now();
  daemon_.emplace(std::vector<std::string>{"/usr/bin/unshare", "--mount", "--propagation", "private", "--",
                                           script.string(), root_.string(), capability_cache_dir().string()},
                  run_dir_ / "libvirtd.out");
  const auto deadline = started + options.start_timeout;
  try {
    for (;;) {
      if (!daemon_->running()) {
        throw std::runtime_error("libvirtd exited during start-up");
      }
      // `virsh version` answers only once the qemu driver is up (it names
      // the hypervisor), which is what the tests need.
      const auto result = virsh({"version"}, std::chrono::seconds(30));
      if (result.ok() && result.output.find("Running hypervisor: QEMU") != std::string::npos) {
        break;
      }
      if (Clock::now() >= deadline) {
        throw std::runtime_error("libvirtd did not answer `virsh version` within " +
                                 std::to_string(options.start_timeout.count()) + " s; last answer:\n" +
                                 result.output);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  } catch (const std::exception& e) {
    const std::string message = std::string(e.what()) + "\n" + log_tail();
    note_test_failed();  // keep the run dir with the logs
    tear_down();
    throw std::runtime_error(message);
  }
  start_seconds_ = seconds_since(started);
}

LibvirtDaemon::~LibvirtDaemon() {
  if (any_test_failed()) {
    std::cerr << "libvirt logs (" << run_dir_.path().string() << "):\n" << log_tail() << std::flush;
  }
  tear_down();
}

VirshResult LibvirtDaemon::virsh(const std::vector<std::string>& args, std::chrono::seconds limit) const {
  // timeout(1): virsh has no limit of its own, and a call stuck on a
  // domain's monitor must fail the test, not hang the suite.
  std::vector<std::string> argv{"timeout", "-k", "5", std::to_string(limit.count()), "virsh", "-c", uri_};
  argv.insert(argv.end(), args.begin(), args.end());
  VirshResult result;
  const auto started = Clock::now();
  result.exit_code = run_command(argv, &result.output);
  result.seconds = seconds_since(started);
  return result;
}

std::string LibvirtDaemon::create_domain(const std::string& xml) {
  const auto path = run_dir_ / ("domain-" + std::to_string(domains_.size()) + ".xml");
  std::ofstream(path) << xml;
  const auto result = virsh({"create", path.string()});
  if (!result.ok()) {
    throw std::runtime_error("virsh create " + path.string() + " failed:\n" + result.output + "\n" + log_tail());
  }
  // "Domain 'NAME' created from FILE"
  const auto open = result.output.find('\'');
  const auto close = result.output.find('\'', open + 1);
  if (open == std::string::npos || close == std::string::npos) {
    throw std::runtime_error("virsh create: unexpected answer: " + result.output);
  }
  std::string name = result.output.substr(open + 1, close - open - 1);
  domains_.push_back(name);
  return name;
}

std::filesystem::path LibvirtDaemon::qemu_log(const std::string& domain) const {
  return root_ / "log" / "qemu" / (domain + ".log");
}

std::string LibvirtDaemon::log_tail(std::size_t lines) const {
  std::string out = "--- libvirtd log (" + (root_ / "libvirtd.log").string() + "):\n" +
                    file_tail(root_ / "libvirtd.log", lines) + "--- libvirtd stdout/stderr:\n" +
                    file_tail(run_dir_ / "libvirtd.out", lines);
  std::error_code ignored;
  for (const auto& entry : std::filesystem::directory_iterator(root_ / "log" / "qemu", ignored)) {
    if (entry.path().extension() == ".log") {
      out += "--- " + entry.path().string() + ":\n" + file_tail(entry.path(), lines);
    }
  }
  return out;
}

void LibvirtDaemon::tear_down() {
  if (daemon_ && daemon_->running()) {
    for (const auto& name : domains_) {
      (void)virsh({"destroy", name}, std::chrono::seconds(30));
    }
  }
  // Whatever QEMU is left (libvirtd died, or destroy failed): QEMU runs in
  // its own session, so killing the daemon's process group misses it.
  std::error_code ignored;
  for (const auto& entry : std::filesystem::directory_iterator(root_ / "run" / "qemu", ignored)) {
    if (entry.path().extension() != ".pid") {
      continue;
    }
    pid_t pid = 0;
    std::ifstream(entry.path()) >> pid;
    if (pid > 1 && is_qemu(pid)) {
      ::kill(pid, SIGKILL);
    }
  }
  if (daemon_) {
    daemon_->signal(SIGTERM);
    if (!daemon_->wait_for(std::chrono::seconds(15))) {
      daemon_->signal(SIGKILL);
      (void)daemon_->wait_for(std::chrono::seconds(5));
    }
    daemon_.reset();
  }
  domains_.clear();
}

}  // namespace quiesce::test
