#pragma once
// One thread per configured writer. Calls on a writer run there one after
// another, which gives the writer contract its "calls never overlap" rule,
// lets writers of one level work in parallel, and keeps writer code off the
// I/O thread. A call that hangs only ever blocks its own writer's queue.

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace quiesce::agent {

class WriterWorker {
 public:
  explicit WriterWorker(std::string name);
  ~WriterWorker();
  WriterWorker(const WriterWorker&) = delete;
  WriterWorker& operator=(const WriterWorker&) = delete;

  void post(std::function<void()> job);

 private:
  void loop(const std::stop_token& stop);

  std::string name_;
  std::mutex mutex_;
  std::condition_variable_any wake_;
  std::deque<std::function<void()>> jobs_;
  std::jthread thread_;  // last: starts after the members it uses exist
};

}  // namespace quiesce::agent
