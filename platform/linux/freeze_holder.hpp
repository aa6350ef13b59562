#pragma once
// The freeze holder: the process that makes the FIFREEZE calls and holds the
// frozen filesystems (quiesce-freeze-holder runs this; the agent starts it
// once and talks to it with freeze_holder_protocol.hpp). It exists so that a
// freeze never outlives the agent: it thaws everything it froze when
//   - its socket to the agent closes (the agent exited or was killed),
//   - its parent dies (PR_SET_PDEATHSIG, set by the client before exec,
//     checked against getppid() because the signal also fires when merely
//     the thread that forked it exits),
//   - the hold deadline (or the freeze deadline) of the current freeze passes,
//   - it receives SIGTERM, SIGINT, SIGHUP or SIGQUIT (orderly, through a
//     signalfd), or any other catchable signal that would end it (SIGABRT
//     from a service manager's watchdog, SIGSEGV of its own...: a handler
//     thaws first, then lets the signal take its course).
// None of these waits for a FIFREEZE still inside the kernel (a freeze can
// block for ever on a filesystem it is stored on that is already frozen):
// what is frozen is thawed at once, lowest filesystem first, and a stuck
// call's filesystem is thawed by its own thread when the call returns. The
// holder does not exit before that. It only ever thaws what it froze itself.

#include <signal.h>
#include <sys/types.h>

namespace quiesce::platform::holder {

// The signal the client asks the kernel to send when the holder's parent
// goes away (PR_SET_PDEATHSIG). Not a termination signal, so that a thread
// exit in the agent (which also sends it) can be told apart and ignored.
inline constexpr int parent_death_signal = SIGUSR2;

// The signals the holder handles through a signalfd. Block them (with
// pthread_sigmask) before starting any thread, then call run_holder().
[[nodiscard]] sigset_t holder_signals();

struct HolderConfig {
  int socket_fd = -1;    // the holder's end of the SOCK_SEQPACKET socketpair
  pid_t parent_pid = 0;  // the agent; when getppid() differs, it is gone
};

// Serves the protocol until the agent goes away or a termination signal
// arrives; thaws whatever is frozen before returning. Returns an exit code.
[[nodiscard]] int run_holder(const HolderConfig& config);

}  // namespace quiesce::platform::holder
