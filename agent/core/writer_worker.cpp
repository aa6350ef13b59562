#include "agent/core/writer_worker.hpp"

#include <pthread.h>

namespace quiesce::agent {

WriterWorker::WriterWorker(std::string name)
    : name_(std::move(name)), thread_([this](const std::stop_token& stop) { loop(stop); }) {
  // Thread names show up in top/gdb; Linux allows 15 characters.
  std::string thread_name = "w:" + name_.substr(0, 13);
  ::pthread_setname_np(thread_.native_handle(), thread_name.c_str());
}

WriterWorker::~WriterWorker() {
  thread_.request_stop();
  wake_.notify_all();
  // jthread joins: queued jobs are dropped, the running one finishes.
}

void WriterWorker::post(std::function<void()> job) {
  {
    std::lock_guard lock(mutex_);
    jobs_.push_back(std::move(job));
  }
  wake_.notify_one();
}

void WriterWorker::loop(const std::stop_token& stop) {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock lock(mutex_);
      if (!wake_.wait(lock, stop, [this] { return !jobs_.empty(); })) {
        return;  // stop requested
      }
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

}  // namespace quiesce::agent
