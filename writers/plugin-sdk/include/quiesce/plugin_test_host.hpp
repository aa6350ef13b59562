#pragma once
// A fake host for plugin authors' unit tests: it loads nothing, but calls the
// quiesce_plugin_* entry points compiled into the same test binary (link the
// plugin's sources, or an object library of them, into the test) the way the
// agent would: ABI version first, then create with an init input, phase calls
// with a call context, get_last_error after a failure, destroy at the end.
//
//   quiesce::plugin::testing::TestHost host(R"({"lock_file": "/tmp/x.lock"})");
//   REQUIRE(host.created().ok());
//   CHECK(host.freeze().ok());
//   host.request_stop();            // what the agent does on a deadline / abort
//   CHECK(host.thaw().ok());
//
// Depends on plugin_abi.h and the standard library only.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <mutex>
#include <utility>
#include <vector>

#include "quiesce/plugin_abi.h"

namespace quiesce::plugin::testing {

struct CallResult {
  std::int32_t code = QUIESCE_PLUGIN_OK;
  std::string error;  // get_last_error after a failure
  [[nodiscard]] bool ok() const { return code == QUIESCE_PLUGIN_OK; }
};

struct LogLine {
  std::int32_t level;
  std::string message;
};

class TestHost {
 public:
  explicit TestHost(std::string options_json = "{}", std::string writer_name = "test",
                    std::string run_dir = "/tmp", std::string state_dir = "/tmp")
      : options_json_(std::move(options_json)),
        writer_name_(std::move(writer_name)),
        run_dir_(std::move(run_dir)),
        state_dir_(std::move(state_dir)) {
    const quiesce_plugin_version plugin = quiesce_plugin_abi_version();
    if (plugin.major != QUIESCE_PLUGIN_ABI_MAJOR || plugin.minor > QUIESCE_PLUGIN_ABI_MINOR) {
      created_ = CallResult{QUIESCE_PLUGIN_ERROR_NON_RETRYABLE, "plugin ABI version mismatch"};
      return;
    }
    const quiesce_plugin_init_input input{
        options_json_.c_str(),
        writer_name_.c_str(),
        &TestHost::on_log,
        this,
        "test",
        quiesce_plugin_version{QUIESCE_PLUGIN_ABI_MAJOR, QUIESCE_PLUGIN_ABI_MINOR,
                               QUIESCE_PLUGIN_ABI_PATCH},
        run_dir_.c_str(),
        state_dir_.c_str(),
    };
    std::int32_t rc = QUIESCE_PLUGIN_ERROR_NON_RETRYABLE;
    handle_ = quiesce_plugin_create(&input, &rc);
    created_ = result(rc);
  }
  ~TestHost() {
    if (handle_ != nullptr) {
      quiesce_plugin_destroy(handle_);
    }
  }
  TestHost(const TestHost&) = delete;
  TestHost& operator=(const TestHost&) = delete;

  [[nodiscard]] const CallResult& created() const { return created_; }

  // Phase calls. Each runs with session_id and the remaining time set below.
  CallResult identify(std::string* identity_json = nullptr) {
    const char* out = nullptr;
    auto r = call([&](const quiesce_plugin_call_context* ctx) {
      return quiesce_plugin_identify(handle_, ctx, &out);
    });
    if (identity_json != nullptr) {
      *identity_json = out != nullptr ? out : "";
    }
    return r;
  }
  CallResult prepare() {
    return call([&](const quiesce_plugin_call_context* ctx) { return quiesce_plugin_prepare(handle_, ctx); });
  }
  CallResult freeze() {
    return call([&](const quiesce_plugin_call_context* ctx) { return quiesce_plugin_freeze(handle_, ctx); });
  }
  // `continuous` / `detail`: the hold report.
  CallResult thaw(bool* continuous = nullptr, std::string* detail = nullptr) {
    quiesce_plugin_hold_report hold{1, nullptr};
    auto r = call([&](const quiesce_plugin_call_context* ctx) {
      return quiesce_plugin_thaw(handle_, ctx, &hold);
    });
    if (continuous != nullptr) {
      *continuous = hold.continuous != 0;
    }
    if (detail != nullptr) {
      *detail = hold.detail != nullptr ? hold.detail : "";
    }
    return r;
  }
  CallResult abort() {
    return call([&](const quiesce_plugin_call_context* ctx) { return quiesce_plugin_abort(handle_, ctx); });
  }
  CallResult post_snapshot(const std::string& snapshot_id, std::string* artifacts_json = nullptr) {
    const char* out = nullptr;
    auto r = call([&](const quiesce_plugin_call_context* ctx) {
      return quiesce_plugin_post_snapshot(handle_, ctx, snapshot_id.c_str(), &out);
    });
    if (artifacts_json != nullptr) {
      *artifacts_json = out != nullptr ? out : "";
    }
    return r;
  }
  CallResult post_restore(const std::string& checkpoint_id) {
    return call([&](const quiesce_plugin_call_context* ctx) {
      return quiesce_plugin_post_restore(handle_, ctx, checkpoint_id.c_str());
    });
  }

  // What the agent does when a call's deadline passes or the session aborts.
  void request_stop() { stop_ = true; }
  void reset_stop() { stop_ = false; }
  void set_remaining(std::chrono::milliseconds remaining) { remaining_ = remaining; }
  void set_session_id(std::string session_id) { session_id_ = std::move(session_id); }

  // A copy: plugins may log from their own threads.
  [[nodiscard]] std::vector<LogLine> logs() const {
    std::lock_guard lock(logs_mutex_);
    return logs_;
  }

 private:
  static void on_log(void* opaque, std::int32_t level, const char* message) {
    auto* host = static_cast<TestHost*>(opaque);
    std::lock_guard lock(host->logs_mutex_);
    host->logs_.push_back(LogLine{level, message != nullptr ? message : ""});
  }
  static std::int32_t on_should_stop(void* opaque) {
    return static_cast<const TestHost*>(opaque)->stop_ ? 1 : 0;
  }

  template <typename Fn>
  CallResult call(Fn fn) {
    if (handle_ == nullptr || !created_.ok()) {
      return CallResult{QUIESCE_PLUGIN_ERROR_NON_RETRYABLE, "not created: " + created_.error};
    }
    const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
    const quiesce_plugin_call_context ctx{session_id_.c_str(), now + remaining_.count(),
                                          remaining_.count(), 0, &TestHost::on_should_stop, this};
    return result(fn(&ctx));
  }

  CallResult result(std::int32_t rc) {
    CallResult r{rc, {}};
    if (rc != QUIESCE_PLUGIN_OK && handle_ != nullptr) {
      const char* error = quiesce_plugin_get_last_error(handle_);
      r.error = error != nullptr ? error : "";
    }
    return r;
  }

  std::string options_json_;
  std::string writer_name_;
  std::string run_dir_;
  std::string state_dir_;
  std::string session_id_ = "test-session";
  std::chrono::milliseconds remaining_{5000};
  std::atomic<bool> stop_{false};  // read from the plugin, maybe on its threads
  mutable std::mutex logs_mutex_;
  std::vector<LogLine> logs_;
  quiesce_plugin_handle* handle_ = nullptr;
  CallResult created_;
};

}  // namespace quiesce::plugin::testing
