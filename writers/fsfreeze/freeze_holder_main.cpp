// quiesce-freeze-holder: the helper process that makes the FIFREEZE calls
// for the fsfreeze writer and thaws everything when the agent goes away.
// Started by the agent (platform/linux/freeze_holder_client.cpp), never by
// hand: it expects its end of a SOCK_SEQPACKET socketpair on --fd.
//
//   quiesce-freeze-holder --fd 3 --parent <agent pid>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <string_view>

#include "platform/linux/freeze_holder.hpp"

namespace {

template <typename Integer>
bool parse(std::string_view text, Integer& out) {
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return !text.empty() && ec == std::errc{} && ptr == text.data() + text.size();
}

int usage() {
  std::fputs("usage: quiesce-freeze-holder --fd N --parent PID\n"
             "(started by quiesce-agent's fsfreeze writer; not meant to be run by hand)\n",
             stderr);
  return 64;
}

}  // namespace

int main(int argc, char** argv) {
  quiesce::platform::holder::HolderConfig config;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string_view flag = argv[i];
    std::string_view value = argv[i + 1];
    if (flag == "--fd" && parse(value, config.socket_fd) && config.socket_fd > 2) {
      continue;
    }
    if (flag == "--parent" && parse(value, config.parent_pid) && config.parent_pid > 0) {
      continue;
    }
    return usage();
  }
  if (argc != 5 || config.socket_fd < 0 || config.parent_pid <= 0) {
    return usage();
  }
  if (::fcntl(config.socket_fd, F_SETFD, FD_CLOEXEC) != 0) {
    std::perror("quiesce-freeze-holder: --fd");
    return 64;
  }
  // Nothing else the agent left open belongs to us; holding on to it could
  // keep a socket or a file on a filesystem busy.
  if (config.socket_fd > 3) {
    ::close_range(3, static_cast<unsigned>(config.socket_fd) - 1, 0);
  }
  ::close_range(static_cast<unsigned>(config.socket_fd) + 1, ~0U, 0);

  // Handled through a signalfd, so they must be blocked before any thread
  // exists (threads inherit the mask).
  auto signals = quiesce::platform::holder::holder_signals();
  ::pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  // The OOM killer taking the holder while it holds a freeze would leave the
  // filesystems frozen until the agent notices; it is tiny, so protect it.
  // Best effort: without CAP_SYS_RESOURCE the write fails and that is fine.
  // write(2), not an ofstream: streams would link and initialise
  // libstdc++'s locale machinery in a process that stays resident.
  if (const int oom = ::open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC); oom >= 0) {
    (void)!::write(oom, "-1000\n", 6);
    ::close(oom);
  }
  return quiesce::platform::holder::run_holder(config);
}
