#include "host-bridge/checkpoint/block_jobs.hpp"

#include <algorithm>
#include <cstdio>
#include <thread>

namespace quiesce::host {

using nlohmann::json;
using namespace std::chrono_literals;

Expected<std::vector<BlockJobInfo>> list_block_jobs(QmpClient& qmp) {
  auto jobs = qmp.execute("query-jobs");
  if (!jobs) {
    return jobs.error();
  }
  std::vector<BlockJobInfo> out;
  for (const auto& j : *jobs) {
    BlockJobInfo job;
    job.id = j.value("id", std::string());
    job.type = j.value("type", std::string());
    job.status = j.value("status", std::string());
    job.current = j.value("current-progress", std::uint64_t{0});
    job.total = j.value("total-progress", std::uint64_t{0});
    job.error = j.value("error", std::string());
    out.push_back(std::move(job));
  }
  return out;
}

std::string describe(const BlockJobInfo& job) {
  char percent[32] = "";
  if (job.total > 0) {
    std::snprintf(percent, sizeof percent, ", %.1f%%", 100.0 * static_cast<double>(job.current) /
                                                           static_cast<double>(job.total));
  }
  return "job " + job.id + " (" + job.type + ", " + job.status + percent + ")";
}

Status run_block_job(QmpClient& qmp, const std::string& command, json arguments, const std::string& job_id,
                     std::chrono::milliseconds deadline, const BlockJobProgress& progress) {
  arguments["job-id"] = job_id;
  // Kept after it ends, so its error (if any) can be read, then dismissed here.
  arguments["auto-dismiss"] = false;
  if (auto started = qmp.execute(command, arguments); !started) {
    return started.error();
  }
  const auto end = std::chrono::steady_clock::now() + deadline;
  bool completing = false;
  for (;;) {
    auto jobs = list_block_jobs(qmp);
    if (!jobs) {
      return jobs.error();
    }
    const BlockJobInfo* mine = nullptr;
    for (const auto& job : *jobs) {
      if (job.id == job_id) {
        mine = &job;
      }
    }
    if (mine == nullptr) {
      return Error{ErrorKind::backend, command + " " + job_id + " vanished from query-jobs"};
    }
    if (progress) {
      progress(*mine);
    }
    if (mine->status == "concluded") {
      const std::string error = mine->error;
      (void)qmp.execute("job-dismiss", {{"id", job_id}});
      if (!error.empty()) {
        return Error{ErrorKind::backend, command + " " + job_id + " failed: " + error};
      }
      return ok_status();
    }
    if (mine->status == "ready" && !completing) {
      // An active commit mirrors new writes until told to pivot.
      if (auto done = qmp.execute("job-complete", {{"id", job_id}}); !done) {
        return done.error();
      }
      completing = true;
    }
    if (std::chrono::steady_clock::now() > end) {
      // A cancelled commit or stream leaves every image reading as before
      // (the top still holds what was not yet merged).
      (void)qmp.execute("job-cancel", {{"id", job_id}});
      for (int i = 0; i < 100; ++i) {
        auto left = list_block_jobs(qmp);
        if (!left || std::none_of(left->begin(), left->end(), [&](const BlockJobInfo& j) {
              return j.id == job_id && j.status != "concluded";
            })) {
          break;
        }
        std::this_thread::sleep_for(100ms);
      }
      (void)qmp.execute("job-dismiss", {{"id", job_id}});
      return Error{ErrorKind::backend, command + " " + job_id + " did not finish within " +
                                           std::to_string(deadline.count() / 1000) + " s (" + describe(*mine) +
                                           "); cancelled, the disk reads as before"};
    }
    std::this_thread::sleep_for(100ms);
  }
}

}  // namespace quiesce::host
