#pragma once
// Pieces of quiesce_bench that know nothing of what is being compared:
// child processes, the loop-mounted filesystems, the raw FIFREEZE/FITHAW
// contenders, a qemu-guest-agent client, /proc readings and statistics.

#include <sys/types.h>

#include <barrier>
#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

namespace quiesce::bench {

using Clock = std::chrono::steady_clock;

[[nodiscard]] double ms_since(Clock::time_point start, Clock::time_point end = Clock::now());

// Set by SIGINT/SIGTERM: loops stop early and everything is cleaned up.
[[nodiscard]] bool interrupted();
void install_interrupt_handler();

// Runs a command to completion, output discarded; returns the exit code.
int run(const std::vector<std::string>& argv, std::string* output = nullptr);

// A child started with its output in `log_path`; SIGTERM, then SIGKILL
// after a grace period, when the object goes away.
class Child {
 public:
  Child(const std::vector<std::string>& argv, const std::filesystem::path& log_path);
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] bool running();
  void stop();

 private:
  pid_t pid_ = -1;
};

// N ext4 filesystems on loop devices over sparse images in `dir`, mounted
// at dir/fs<i>. Only these mounts are ever frozen by the bench.
class LoopSet {
 public:
  LoopSet(const std::filesystem::path& dir, int count, int size_mb);
  ~LoopSet();
  LoopSet(const LoopSet&) = delete;
  LoopSet& operator=(const LoopSet&) = delete;

  [[nodiscard]] std::vector<std::string> mounts(int n) const;
  // Writes `kib` KiB of fresh data to a new file on each of the first n
  // filesystems, without syncing: dirty page cache the freeze must flush.
  void dirty(int n, int kib) const;
  // syncfs on each of the first n: nothing left for a freeze to flush.
  void clean(int n) const;

 private:
  void tear_down();
  std::vector<std::string> mount_points_;
  std::vector<std::string> devices_;
  std::vector<std::string> images_;
};

// FIFREEZE then FITHAW on fds opened once. Sequential: one after another on
// the calling thread. Parallel: one long-lived thread per filesystem,
// started together through a barrier so thread creation stays out of it.
class RawFreezer {
 public:
  explicit RawFreezer(const std::vector<std::string>& mounts);
  ~RawFreezer();
  RawFreezer(const RawFreezer&) = delete;
  RawFreezer& operator=(const RawFreezer&) = delete;
  // Each returns the hold window (first FIFREEZE issued to last FITHAW
  // returned) in ms; throws if a call failed (after thawing what it froze).
  double sequential();
  double parallel();

 private:
  enum class Op { freeze, thaw, quit };
  void worker(std::size_t index);
  void run_all(Op op);
  void check(const char* what);

  std::vector<int> fds_;
  std::vector<int> errors_;
  Op op_ = Op::freeze;
  std::barrier<> start_;
  std::barrier<> done_;
  std::vector<std::thread> threads_;
};

// qemu-guest-agent's QMP-style JSON over its unix-listen socket, one line
// per command and per answer.
class QgaClient {
 public:
  explicit QgaClient(const std::string& socket_path);
  ~QgaClient();
  QgaClient(const QgaClient&) = delete;
  QgaClient& operator=(const QgaClient&) = delete;
  // Sends one command and returns its "return" member; throws on "error".
  nlohmann::json execute(const std::string& command,
                         const nlohmann::json& arguments = nlohmann::json::object());
  // guest-sync with a fresh id: flushes anything stale on the channel.
  void sync();

 private:
  std::string read_line();
  int fd_ = -1;
  std::string pending_;
  long sync_id_ = 1000;
};

// True when something accepts connections on the unix socket `path`.
[[nodiscard]] bool can_connect(const std::string& path);

struct ProcessUsage {
  double rss_kib = 0;       // the process and its children listed in `pids`
  double pss_kib = 0;       // the same, shared pages divided among their users (smaps_rollup)
  double anon_kib = 0;      // the same, anonymous memory only (heap, stacks)
  double cpu_ms = 0;        // utime + stime
  long context_switches = 0;  // every thread, voluntary + involuntary: wakeups
};
[[nodiscard]] ProcessUsage usage_of(const std::vector<pid_t>& pids);
// Direct children of `pid` (the fsfreeze holder of an agent).
[[nodiscard]] std::vector<pid_t> children_of(pid_t pid);

struct Summary {
  double median = 0;
  double p90 = 0;
  std::size_t count = 0;
};
[[nodiscard]] Summary summarise(std::vector<double> samples);

}  // namespace quiesce::bench
