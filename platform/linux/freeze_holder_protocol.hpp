#pragma once
// The freeze holder's protocol: the agent (client) and quiesce-freeze-holder
// talk over an AF_UNIX SOCK_SEQPACKET socketpair, so every message is one
// datagram and needs no framing. A message is ASCII text: a first line
// "VERB arg...", then zero or more row lines of space-separated fields.
// Fields are escaped like mountinfo paths (\040 for space, \012 for newline,
// \134 for backslash); an empty field is written "-".
//
//   holder -> agent  READY <version> <pid>                  once, at start
//   agent -> holder  FREEZE <deadline_ns> <ignore_frozen> <freeze_deadline_ns>
//                                                           rows: <wave> <mount_id> <path>
//   holder -> agent  FROZEN                                 rows: result rows
//                    FAILED <message>                       rows: result rows (all rolled back)
//   agent -> holder  THAW
//   holder -> agent  THAWED <continuous 0|1> <detail> <stuck 0|1>   rows: result rows
//   agent -> holder  PING
//   holder -> agent  PONG <idle|freezing|frozen>
//   holder -> agent  AUTO-THAW <reason>                     rows: result rows (unsolicited)
//   holder -> agent  ERROR <message>                        a request it could not take
//
// result row: <state> <mount_id> <errno> <path>
//
// Deadlines are CLOCK_MONOTONIC (std::chrono::steady_clock) in nanoseconds,
// 0 for none: deadline_ns ends the hold (the holder thaws by itself then),
// freeze_deadline_ns ends the freeze (FAILED, naming what did not freeze in
// time). Waves are frozen in increasing order, the mounts of one wave in
// parallel; thaw goes in decreasing order. Every request gets exactly one
// reply, in order; AUTO-THAW may come at any time (the hold deadline passed,
// or the holder got a termination signal and exits after it). When the
// socket closes (the agent died), the holder thaws everything and exits.
//
// A freeze can get stuck inside the kernel (FIFREEZE of a filesystem stored
// on one that is already frozen waits for it for ever). The holder never
// waits for it: a THAW, a deadline or a signal thaws everything that is
// frozen at once, lower filesystems first (which lets the stuck call
// finish), and the stuck call's thread thaws its filesystem the moment the
// call returns. Such a filesystem is reported `stuck`, and THAWED says
// stuck=1: that holder refuses new freezes until the call has returned, so
// the agent starts a fresh holder for the next session.

#include <cstdint>
#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace quiesce::platform::holder {

inline constexpr int protocol_version = 2;
// Large enough for thousands of mounts: the most either end accepts.
inline constexpr std::size_t max_message_size = 1 << 20;

// Receives one datagram into `buffer`, sized to that datagram (peeked
// first), so a ~1 KiB message never costs a 1 MiB zero-filled buffer: that
// was 1 MiB of RSS in the holder and two 1 MiB allocations (page faults)
// per request inside the hold window in the agent. Returns the size, 0 at
// EOF, or -1 with errno set (EMSGSIZE for a datagram over the maximum,
// which is consumed).
ssize_t receive_datagram(int fd, std::string& buffer, int flags = 0);

struct Message {
  std::string verb;
  std::vector<std::string> args;
  std::vector<std::vector<std::string>> rows;
};

[[nodiscard]] std::string encode(const Message& message);
// nullopt when the text is not a message (empty, or bad escapes are kept as-is).
[[nodiscard]] std::optional<Message> decode(std::string_view text);

enum class MountState {
  pending,       // not attempted (yet)
  frozen,        // frozen by the holder, held
  unsupported,   // the filesystem cannot be frozen (EOPNOTSUPP); skipped
  busy_ignored,  // already frozen by someone else; skipped and never thawed (ignore_frozen)
  busy,          // already frozen by someone else; the freeze failed
  failed,        // open or freeze failed
  thawed,        // frozen by the holder, then thawed by it
  was_thawed,    // frozen by the holder, but found thawed (someone else thawed it)
  thaw_failed,   // FITHAW failed; may still be frozen
  stuck,         // FIFREEZE had not returned when the hold was released; thawed when it does
};
[[nodiscard]] std::string_view to_string(MountState state);
[[nodiscard]] std::optional<MountState> parse_mount_state(std::string_view text);

struct MountRequest {
  int wave = 0;
  std::uint64_t mount_id = 0;  // 0: do not check which mount the path opens
  std::string path;
};

struct MountResult {
  MountState state = MountState::pending;
  std::uint64_t mount_id = 0;
  int error_number = 0;
  std::string path;
};

struct FreezeRequest {
  std::int64_t deadline_ns = 0;         // end of the hold
  std::int64_t freeze_deadline_ns = 0;  // end of the freeze itself
  bool ignore_frozen = false;
  std::vector<MountRequest> mounts;
};

[[nodiscard]] Message to_message(const FreezeRequest& request);
[[nodiscard]] std::optional<FreezeRequest> freeze_request_from(const Message& message);
[[nodiscard]] std::vector<std::string> to_row(const MountResult& result);
[[nodiscard]] std::optional<MountResult> mount_result_from(const std::vector<std::string>& row);
// All rows of a reply as results; nullopt if any row is malformed.
[[nodiscard]] std::optional<std::vector<MountResult>> mount_results_from(const Message& message);

}  // namespace quiesce::platform::holder
