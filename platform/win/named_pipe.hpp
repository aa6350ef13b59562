#pragma once
// The server side of a local named pipe, the Windows counterpart of the
// agent's Unix socket: instances only SYSTEM and the Administrators may
// open (the socket's mode and group), remote clients refused, and who is
// calling (the socket's peer credentials). The I/O itself is the caller's
// (overlapped: Asio in agent/api, a thread in agent/qga).

#include <cstdint>
#include <string>

namespace quiesce::platform::win {

// One pipe instance, overlapped, byte mode, with a DACL granting SYSTEM and
// the Administrators only, refusing remote clients. `first`: the first
// instance of this name in this process (FILE_FLAG_FIRST_PIPE_INSTANCE),
// which fails when another process already serves the name, so nobody can
// squat on it first. Returns the HANDLE (as void*), or nullptr with `error`.
[[nodiscard]] void* create_pipe_instance(const std::string& name, bool first, std::string& error);

struct [[nodiscard]] PipeClient {
  std::string error;  // "" when the client was identified
  std::uint32_t pid = 0;
  std::string account;     // "NT AUTHORITY\SYSTEM", "MACHINE\alice"
  bool privileged = false;  // LocalSystem or a member of the Administrators
};

// Who is at the other end of a connected instance: the client's token (by
// impersonating it for the duration of the call) and process id.
PipeClient identify_pipe_client(void* pipe);

}  // namespace quiesce::platform::win
