#pragma once
// The `exec` writer: an out-of-process writer in any language. A long-lived
// child per writer speaks the JSON-lines protocol of
// docs/exec-writer-protocol.md on its stdin/stdout; its stderr goes to the
// agent log line by line. A child that dies, writes garbage or misses a
// deadline fails the call (non_retryable, non_retryable, timeout) and is
// started afresh, with a new hello, for the next call.
//
// options:
//   "command":            ["/usr/lib/quiesce/my-writer", "--flag"]   argv, absolute path first
//   "env":                {"NAME": "value"}   added to the child's minimal environment
//   "restart_backoff_ms": 500     no restart sooner than this after the child ended
//   "hello_timeout_ms":   10000   how long a new child may take to say hello

#include "quiesce/writer_registry.hpp"

namespace quiesce::writers {

// The protocol major version this agent speaks (the hello's "quiesce_exec").
inline constexpr int exec_protocol_major = 1;

void register_exec_writer(WriterRegistry& registry);

}  // namespace quiesce::writers
