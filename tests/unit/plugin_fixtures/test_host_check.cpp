// plugin_test_host.hpp driving the flock example compiled into this program,
// the way a plugin author's unit test would. Exits non-zero on the first
// failed check (no test framework: the fake host must not need one).
#include <sys/file.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "quiesce/plugin_test_host.hpp"

namespace {

void check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    std::exit(1);
  }
}

}  // namespace

int main() {
  char dir_template[] = "/tmp/quiesce-test-host-XXXXXX";
  const char* dir = ::mkdtemp(dir_template);
  check(dir != nullptr, "mkdtemp");
  const std::string lock = std::string(dir) + "/app.lock";

  {
    quiesce::plugin::testing::TestHost bad(R"({"lock_file": "relative"})");
    check(!bad.created().ok(), "relative lock_file is refused");
    check(bad.created().error.find("options.lock_file") != std::string::npos,
          "the refusal names options.lock_file");
  }

  quiesce::plugin::testing::TestHost host(R"({"lock_file": ")" + lock + R"(", "poll_ms": 1})");
  check(host.created().ok(), "created");
  std::string identity;
  check(host.identify(&identity).ok(), "identify");
  check(identity.find(lock) != std::string::npos, "identify names the lock file");
  check(host.prepare().ok(), "prepare");

  // A writer in flight holds a shared lock: freeze waits, then honours stop.
  const int app = ::open(lock.c_str(), O_RDWR);
  check(app >= 0 && ::flock(app, LOCK_SH) == 0, "app takes its shared lock");
  host.set_remaining(std::chrono::milliseconds(5000));
  host.request_stop();
  auto stopped = host.freeze();
  check(stopped.code == QUIESCE_PLUGIN_ERROR_TIMEOUT, "freeze stops when asked");
  host.reset_stop();
  ::flock(app, LOCK_UN);

  check(host.freeze().ok(), "freeze");
  check(::flock(app, LOCK_SH | LOCK_NB) != 0, "the app is kept out while frozen");
  bool continuous = false;
  check(host.thaw(&continuous).ok() && continuous, "thaw with a continuous hold");
  check(::flock(app, LOCK_SH | LOCK_NB) == 0, "the app gets its lock back after thaw");
  check(host.thaw().ok(), "thaw twice");
  std::string artifacts;
  check(host.post_snapshot("snap-1", &artifacts).ok(), "post_snapshot");
  check(artifacts.find("snap-1") != std::string::npos, "artifacts carry the snapshot id");
  check(!host.logs().empty(), "the plugin logged through the host");
  ::close(app);
  ::unlink(lock.c_str());
  ::rmdir(dir);
  std::puts("ok");
  return 0;
}
