#pragma once
// What a tool does about writing to a pipe whose reader is gone.

namespace quiesce::platform {

// After this, a write to a pipe with no reader fails with an error the
// writer sees, instead of ending the process. Linux: SIGPIPE ignored.
// Windows has no such signal (the write fails with ERROR_NO_DATA), so
// there is nothing to change there.
void make_broken_pipe_an_error();

}  // namespace quiesce::platform
