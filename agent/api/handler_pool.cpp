#include "agent/api/handler_pool.hpp"

#include <algorithm>

namespace quiesce::api::detail {

HandlerPool::HandlerPool(std::size_t max_threads)
    : max_threads_(std::max<std::size_t>(1, max_threads)) {}

HandlerPool::~HandlerPool() { join(); }

void HandlerPool::enqueue(std::function<void()> work) {
  std::lock_guard lock(mutex_);
  if (stopping_) {
    return;
  }
  queue_.push_back(std::move(work));
  // An idle thread takes it; else a new one, up to the limit; else it waits
  // for the first thread to finish its handler.
  if (idle_ >= queue_.size()) {
    wake_.notify_one();
  } else if (threads_.size() < max_threads_) {
    threads_.emplace_back([this] { run(); });
  }
}

void HandlerPool::run() {
  std::unique_lock lock(mutex_);
  for (;;) {
    ++idle_;
    wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    --idle_;
    if (queue_.empty()) {
      return;  // stopping, and nothing left to run
    }
    auto work = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    work();
    work = nullptr;  // what the handler captured goes before the next wait
    lock.lock();
  }
}

void HandlerPool::join() {
  std::vector<std::thread> threads;
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    threads.swap(threads_);
  }
  wake_.notify_all();
  for (auto& thread : threads) {
    if (thread.joinable()) {
      thread.join();
    }
  }
}

std::size_t HandlerPool::started_threads() const {
  std::lock_guard lock(mutex_);
  return threads_.size();
}

std::size_t HandlerPool::idle_threads() const {
  std::lock_guard lock(mutex_);
  return idle_;
}

}  // namespace quiesce::api::detail
