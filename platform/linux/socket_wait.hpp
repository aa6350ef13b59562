#pragma once
// Waiting on a client library's socket (libpq, libmariadb in non-blocking
// mode) so that a writer call's deadline and stop token both cut the wait
// short: poll() on the socket plus an eventfd that a stop_callback signals,
// so a stop wakes the wait at once instead of at its next timeout.

#include <chrono>
#include <stop_token>
#include <string>

namespace quiesce::platform {

struct SocketWait {
  bool read = false;
  bool write = false;
  bool except = false;  // urgent data / error conditions (POLLPRI)
};

// Waits until `fd` is ready for `what`, `deadline` passes or `stop` fires.
// Returns "" when the socket is ready, otherwise why not, in words that fit
// after "could not <action>: ".
[[nodiscard]] std::string wait_socket(int fd, SocketWait what,
                                      std::chrono::steady_clock::time_point deadline,
                                      const std::stop_token& stop);

}  // namespace quiesce::platform
