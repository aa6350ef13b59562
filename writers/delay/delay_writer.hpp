#pragma once
// The `delay` writer: a real writer whose per-phase delays and failures come
// from its options. For trials, benchmarks and fault-injection tests.
//
// options:
//   "delays_ms":  {"prepare": 0, "freeze": 10, "thaw": 0, ...}  per-phase sleep
//   "fail":       {"freeze": "retryable"}   phase -> error class to report
//   "throw":      ["thaw"]                  phases that throw an exception
//   "lose_hold":  false                     report a broken hold at thaw
// A delay is cut short when the call's stop token fires (timeout or abort),
// so a long delay doubles as a hang that the coordinator can time out.

#include "quiesce/writer_registry.hpp"

namespace quiesce::writers {

void register_delay_writer(WriterRegistry& registry);

}  // namespace quiesce::writers
