#pragma once
// QEMU block jobs (block-commit, block-stream) over QMP, run to the end:
// started with auto-dismiss off so their outcome can be read back, polled
// with query-jobs for progress, completed when a mirror phase is ready
// (an active commit waits for job-complete), and dismissed once concluded.
// A deadline bounds the whole job; past it the job is cancelled and the
// caller gets the error.

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "host-bridge/checkpoint/error.hpp"
#include "host-bridge/checkpoint/qmp_client.hpp"

namespace quiesce::host {

// A job as query-jobs shows it.
struct BlockJobInfo {
  std::string id;
  std::string type;    // commit, stream, mirror, ...
  std::string status;  // running, ready, concluded, ...
  std::uint64_t current = 0;
  std::uint64_t total = 0;
  std::string error;
};

// Every job QEMU knows of (any status), or the QMP error.
[[nodiscard]] Expected<std::vector<BlockJobInfo>> list_block_jobs(QmpClient& qmp);

// "job merge-1 (commit, running, 12.5%)" for messages.
[[nodiscard]] std::string describe(const BlockJobInfo& job);

// Progress of a running job: done and total bytes as QEMU counts them.
using BlockJobProgress = std::function<void(const BlockJobInfo& job)>;

// Starts `command` ("block-commit" or "block-stream") with `arguments`
// (job-id and auto-dismiss are set here) and waits for it to conclude.
[[nodiscard]] Status run_block_job(QmpClient& qmp, const std::string& command, nlohmann::json arguments,
                                   const std::string& job_id, std::chrono::milliseconds deadline,
                                   const BlockJobProgress& progress = {});

}  // namespace quiesce::host
