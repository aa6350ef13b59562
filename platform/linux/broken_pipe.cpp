#include "platform/broken_pipe.hpp"

#include <signal.h>

namespace quiesce::platform {

void make_broken_pipe_an_error() { ::signal(SIGPIPE, SIG_IGN); }

}  // namespace quiesce::platform
