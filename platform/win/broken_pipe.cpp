#include "platform/broken_pipe.hpp"

namespace quiesce::platform {

// Windows has no SIGPIPE: WriteFile on a pipe whose reader is gone already
// returns ERROR_NO_DATA to the writer, which is what this asks for.
void make_broken_pipe_an_error() {}

}  // namespace quiesce::platform
