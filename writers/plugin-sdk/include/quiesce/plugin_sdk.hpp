#pragma once
// The C++ SDK for Quiesce writer plugins: write a class, add one macro, get
// a shared object that speaks the C ABI in quiesce/plugin_abi.h.
//
//   class MyWriter {
//    public:
//     explicit MyWriter(const quiesce::plugin::InitInput& init);   // may throw
//     quiesce::plugin::Result identify(const quiesce::plugin::Context&, quiesce::plugin::Identity&);
//     quiesce::plugin::Result prepare(const quiesce::plugin::Context&);
//     quiesce::plugin::Result freeze(const quiesce::plugin::Context&);
//     quiesce::plugin::Result thaw(const quiesce::plugin::Context&, quiesce::plugin::HoldReport&);
//     quiesce::plugin::Result abort(const quiesce::plugin::Context&);
//     // optional:
//     quiesce::plugin::Result post_snapshot(const quiesce::plugin::Context&,
//                                           std::string_view snapshot_id, quiesce::plugin::Json&);
//     quiesce::plugin::Result post_restore(const quiesce::plugin::Context&,
//                                          std::string_view checkpoint_id);
//   };
//   QUIESCE_PLUGIN(MyWriter, "my-writer", quiesce::plugin::Level::application, "what it does")
//
// The macro defines every exported entry point, checks the class's
// signatures with static_assert, and catches every exception at the
// boundary: quiesce::plugin::Error carries its own error class, any other
// exception becomes a non-retryable error with its what() as the message.
//
// Depends on plugin_abi.h and the standard library only. When
// <nlohmann/json.hpp> is available (and QUIESCE_PLUGIN_SDK_NO_JSON is not
// defined) plugin::Json is nlohmann::json and InitInput::options() parses the
// options; otherwise plugin::Json is a std::string holding JSON text.
//
// Requires C++20. One QUIESCE_PLUGIN per shared object.

#include <chrono>
#include <concepts>
#include <cstdint>
#include <exception>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "quiesce/plugin_abi.h"

#if !defined(QUIESCE_PLUGIN_SDK_NO_JSON) && __has_include(<nlohmann/json.hpp>)
#include <nlohmann/json.hpp>
#define QUIESCE_PLUGIN_SDK_HAS_JSON 1
#else
#define QUIESCE_PLUGIN_SDK_HAS_JSON 0
#endif

namespace quiesce::plugin {

#if QUIESCE_PLUGIN_SDK_HAS_JSON
using Json = nlohmann::json;
inline Json empty_json_array() { return Json::array(); }
inline Json empty_json_object() { return Json::object(); }
inline std::string json_text(const Json& json) { return json.dump(); }
#else
// JSON text the plugin writes itself; the host parses and checks it.
using Json = std::string;
inline Json empty_json_array() { return "[]"; }
inline Json empty_json_object() { return "{}"; }
inline std::string json_text(const Json& json) { return json; }
#endif

enum class Level : std::int32_t {
  application = QUIESCE_PLUGIN_LEVEL_APPLICATION,
  database = QUIESCE_PLUGIN_LEVEL_DATABASE,
  filesystem = QUIESCE_PLUGIN_LEVEL_FILESYSTEM,
};

enum class Code : std::int32_t {
  ok = QUIESCE_PLUGIN_OK,
  retryable = QUIESCE_PLUGIN_ERROR_RETRYABLE,
  non_retryable = QUIESCE_PLUGIN_ERROR_NON_RETRYABLE,
  timeout = QUIESCE_PLUGIN_ERROR_TIMEOUT,
  inconsistent = QUIESCE_PLUGIN_ERROR_INCONSISTENT,
};

// What a phase method returns. Not default-constructible and [[nodiscard]]:
// success is said explicitly and a failure cannot be dropped.
class [[nodiscard]] Result {
 public:
  static Result ok() { return Result(Code::ok, {}); }
  static Result retryable(std::string message) { return Result(Code::retryable, std::move(message)); }
  static Result non_retryable(std::string message) {
    return Result(Code::non_retryable, std::move(message));
  }
  static Result timeout(std::string message) { return Result(Code::timeout, std::move(message)); }
  static Result inconsistent(std::string message) {
    return Result(Code::inconsistent, std::move(message));
  }

  [[nodiscard]] bool is_ok() const { return code_ == Code::ok; }
  [[nodiscard]] Code code() const { return code_; }
  [[nodiscard]] const std::string& message() const { return message_; }

 private:
  Result(Code code, std::string message) : code_(code), message_(std::move(message)) {}
  Code code_;
  std::string message_;
};

// An exception that carries its error class; thrown anywhere in a plugin
// (the constructor included) it becomes that code plus its message.
class Error : public std::runtime_error {
 public:
  Error(Code code, const std::string& message) : std::runtime_error(message), code_(code) {}
  [[nodiscard]] Code code() const { return code_; }

 private:
  Code code_;
};

// The host's logger. Cheap to copy; valid (from any thread) as long as the
// plugin object lives.
class Log {
 public:
  Log() = default;
  Log(quiesce_host_log_fn fn, void* opaque) : fn_(fn), opaque_(opaque) {}

  void trace(const std::string& message) const { write(QUIESCE_PLUGIN_LOG_TRACE, message); }
  void debug(const std::string& message) const { write(QUIESCE_PLUGIN_LOG_DEBUG, message); }
  void info(const std::string& message) const { write(QUIESCE_PLUGIN_LOG_INFO, message); }
  void warn(const std::string& message) const { write(QUIESCE_PLUGIN_LOG_WARN, message); }
  void error(const std::string& message) const { write(QUIESCE_PLUGIN_LOG_ERROR, message); }

 private:
  void write(std::int32_t level, const std::string& message) const {
    if (fn_ != nullptr) {
      fn_(opaque_, level, message.c_str());
    }
  }
  quiesce_host_log_fn fn_ = nullptr;
  void* opaque_ = nullptr;
};

// What the constructor gets. Everything is copied out of the C init input,
// so it may be kept.
struct InitInput {
  std::string options_text;  // the writer's options: a JSON object as text
  std::string writer_name;
  std::string agent_version;
  quiesce_plugin_version host_abi_version{};
  std::string run_dir;
  std::string state_dir;
  Log log;

#if QUIESCE_PLUGIN_SDK_HAS_JSON
  // The options parsed; throws (and so fails create) when they are not JSON.
  [[nodiscard]] Json options() const { return Json::parse(options_text); }
#endif
};

// One phase call: valid during that call only.
class Context {
 public:
  explicit Context(const quiesce_plugin_call_context& ctx)
      : ctx_(&ctx), started_(std::chrono::steady_clock::now()) {}

  [[nodiscard]] std::string_view session_id() const {
    return ctx_->session_id != nullptr ? ctx_->session_id : "";
  }
  // This call's deadline on the monotonic clock (immune to wall-clock jumps).
  [[nodiscard]] std::chrono::steady_clock::time_point deadline() const {
    return started_ + std::chrono::milliseconds(ctx_->remaining_ms);
  }
  [[nodiscard]] std::chrono::milliseconds remaining() const {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline() - std::chrono::steady_clock::now());
    return left.count() > 0 ? left : std::chrono::milliseconds(0);
  }
  [[nodiscard]] std::chrono::system_clock::time_point deadline_wall() const {
    return std::chrono::system_clock::time_point(std::chrono::milliseconds(ctx_->deadline_unix_ms));
  }
  // End of the freeze window (freeze and thaw only); epoch when it does not apply.
  [[nodiscard]] std::chrono::system_clock::time_point hold_deadline_wall() const {
    return std::chrono::system_clock::time_point(
        std::chrono::milliseconds(ctx_->hold_deadline_unix_ms));
  }
  // True once the host gave up on this call (deadline or abort): return soon,
  // with Result::timeout.
  [[nodiscard]] bool should_stop() const {
    return ctx_->should_stop != nullptr && ctx_->should_stop(ctx_->should_stop_opaque) != 0;
  }

 private:
  const quiesce_plugin_call_context* ctx_;
  std::chrono::steady_clock::time_point started_;
};

struct Identity {
  Json components = empty_json_array();  // [{"kind": ..., "name": ..., "path": ...}]
  Json metadata = empty_json_object();   // anything for the checkpoint manifest
};

struct HoldReport {
  bool continuous = true;
  std::string detail;  // why the hold broke
};

// ---- signature checks ---------------------------------------------------

template <typename P>
concept ConstructibleFromInit = std::is_constructible_v<P, const InitInput&>;
template <typename P>
concept HasIdentify = requires(P& p, const Context& c, Identity& i) {
  { p.identify(c, i) } -> std::same_as<Result>;
};
template <typename P>
concept HasPrepare = requires(P& p, const Context& c) {
  { p.prepare(c) } -> std::same_as<Result>;
};
template <typename P>
concept HasFreeze = requires(P& p, const Context& c) {
  { p.freeze(c) } -> std::same_as<Result>;
};
template <typename P>
concept HasThaw = requires(P& p, const Context& c, HoldReport& h) {
  { p.thaw(c, h) } -> std::same_as<Result>;
};
template <typename P>
concept HasAbort = requires(P& p, const Context& c) {
  { p.abort(c) } -> std::same_as<Result>;
};
template <typename P>
concept NamesPostSnapshot = requires { &P::post_snapshot; };
template <typename P>
concept HasPostSnapshot = requires(P& p, const Context& c, std::string_view id, Json& a) {
  { p.post_snapshot(c, id, a) } -> std::same_as<Result>;
};
template <typename P>
concept NamesPostRestore = requires { &P::post_restore; };
template <typename P>
concept HasPostRestore = requires(P& p, const Context& c, std::string_view id) {
  { p.post_restore(c, id) } -> std::same_as<Result>;
};

template <typename P>
constexpr bool check_plugin_class() {
  static_assert(ConstructibleFromInit<P>,
                "plugin class needs a constructor taking (const quiesce::plugin::InitInput&)");
  static_assert(HasIdentify<P>, "plugin class needs: quiesce::plugin::Result identify(const "
                                "quiesce::plugin::Context&, quiesce::plugin::Identity&)");
  static_assert(HasPrepare<P>,
                "plugin class needs: quiesce::plugin::Result prepare(const quiesce::plugin::Context&)");
  static_assert(HasFreeze<P>,
                "plugin class needs: quiesce::plugin::Result freeze(const quiesce::plugin::Context&)");
  static_assert(HasThaw<P>, "plugin class needs: quiesce::plugin::Result thaw(const "
                            "quiesce::plugin::Context&, quiesce::plugin::HoldReport&)");
  static_assert(HasAbort<P>,
                "plugin class needs: quiesce::plugin::Result abort(const quiesce::plugin::Context&)");
  static_assert(!NamesPostSnapshot<P> || HasPostSnapshot<P>,
                "post_snapshot must be: quiesce::plugin::Result post_snapshot(const "
                "quiesce::plugin::Context&, std::string_view snapshot_id, quiesce::plugin::Json&)");
  static_assert(!NamesPostRestore<P> || HasPostRestore<P>,
                "post_restore must be: quiesce::plugin::Result post_restore(const "
                "quiesce::plugin::Context&, std::string_view checkpoint_id)");
  return true;
}

// ---- the boundary -------------------------------------------------------

namespace detail {

// What a handle points to: the plugin object plus the strings the ABI lets
// the plugin own until the next call.
template <typename P>
struct Handle {
  std::unique_ptr<P> plugin;
  std::string last_error;
  std::string output;  // identify / post_snapshot JSON
  std::string hold_detail;
};

template <typename P>
quiesce_plugin_handle* to_c(Handle<P>* handle) {
  return reinterpret_cast<quiesce_plugin_handle*>(handle);
}
template <typename P>
Handle<P>* from_c(quiesce_plugin_handle* handle) {
  return reinterpret_cast<Handle<P>*>(handle);
}

// Runs `body` (which returns a Result) and turns its result or any exception
// into a code, keeping the message in `last_error`. Nothing escapes.
template <typename Body>
std::int32_t guarded(std::string& last_error, Body&& body) noexcept {
  try {
    try {
      last_error.clear();
      Result result = std::forward<Body>(body)();
      if (!result.is_ok()) {
        last_error = result.message();
      }
      return static_cast<std::int32_t>(result.code());
    } catch (const Error& e) {
      last_error = e.what();
      return static_cast<std::int32_t>(e.code() == Code::ok ? Code::non_retryable : e.code());
    } catch (const std::exception& e) {
      last_error = std::string("uncaught exception: ") + e.what();
    } catch (...) {
      last_error = "uncaught exception of unknown type";
    }
  } catch (...) {
    // Storing the message itself failed (out of memory): still no throw.
  }
  return QUIESCE_PLUGIN_ERROR_NON_RETRYABLE;
}

inline std::string copy_string(const char* text) { return text != nullptr ? text : ""; }

template <typename P>
quiesce_plugin_handle* create(const quiesce_plugin_init_input* input, std::int32_t* rc) noexcept {
  Handle<P>* handle = new (std::nothrow) Handle<P>();
  if (handle == nullptr) {
    *rc = QUIESCE_PLUGIN_ERROR_RETRYABLE;
    return nullptr;
  }
  *rc = guarded(handle->last_error, [&] {
    InitInput init;
    init.options_text = input->options_json != nullptr ? input->options_json : "{}";
    init.writer_name = copy_string(input->writer_name);
    init.agent_version = copy_string(input->agent_version);
    init.host_abi_version = input->host_abi_version;
    init.run_dir = copy_string(input->run_dir);
    init.state_dir = copy_string(input->state_dir);
    init.log = Log(input->log, input->log_opaque);
    handle->plugin = std::make_unique<P>(std::as_const(init));
    return Result::ok();
  });
  return to_c(handle);
}

template <typename P>
void destroy(quiesce_plugin_handle* handle) noexcept {
  // A destructor that throws would terminate; that is the author's bug, and
  // the same as in any C++ program.
  delete from_c<P>(handle);
}

template <typename P>
std::int32_t identify(quiesce_plugin_handle* c_handle, const quiesce_plugin_call_context* ctx,
                      const char** identity_json) noexcept {
  auto* handle = from_c<P>(c_handle);
  *identity_json = nullptr;
  return guarded(handle->last_error, [&] {
    Identity identity;
    Result result = handle->plugin->identify(Context(*ctx), identity);
    if (result.is_ok()) {
      handle->output = "{\"components\":" + json_text(identity.components) +
                       ",\"metadata\":" + json_text(identity.metadata) + "}";
      *identity_json = handle->output.c_str();
    }
    return result;
  });
}

// prepare, freeze, abort: `call(plugin, context)` returns the Result.
template <typename P, typename Call>
std::int32_t simple_phase(quiesce_plugin_handle* c_handle, const quiesce_plugin_call_context* ctx,
                          Call call) noexcept {
  auto* handle = from_c<P>(c_handle);
  return guarded(handle->last_error, [&] { return call(*handle->plugin, Context(*ctx)); });
}

template <typename P>
std::int32_t thaw(quiesce_plugin_handle* c_handle, const quiesce_plugin_call_context* ctx,
                  quiesce_plugin_hold_report* hold) noexcept {
  auto* handle = from_c<P>(c_handle);
  HoldReport report;
  const std::int32_t rc = guarded(handle->last_error, [&] {
    return handle->plugin->thaw(Context(*ctx), report);
  });
  // A broken hold counts even when thaw failed or threw after saying so.
  handle->hold_detail.swap(report.detail);
  hold->continuous = report.continuous ? 1 : 0;
  hold->detail = handle->hold_detail.empty() ? nullptr : handle->hold_detail.c_str();
  return rc;
}

template <typename P>
std::int32_t post_snapshot(quiesce_plugin_handle* c_handle, const quiesce_plugin_call_context* ctx,
                           const char* snapshot_id, const char** artifacts_json) noexcept {
  auto* handle = from_c<P>(c_handle);
  *artifacts_json = nullptr;
  if constexpr (HasPostSnapshot<P>) {
    return guarded(handle->last_error, [&] {
      Json artifacts = empty_json_object();
      Result result =
          handle->plugin->post_snapshot(Context(*ctx), copy_string(snapshot_id), artifacts);
      if (result.is_ok()) {
        handle->output = json_text(artifacts);
        *artifacts_json = handle->output.c_str();
      }
      return result;
    });
  } else {
    (void)ctx;
    (void)snapshot_id;
    return QUIESCE_PLUGIN_OK;
  }
}

template <typename P>
std::int32_t post_restore(quiesce_plugin_handle* c_handle, const quiesce_plugin_call_context* ctx,
                          const char* checkpoint_id) noexcept {
  if constexpr (HasPostRestore<P>) {
    auto* handle = from_c<P>(c_handle);
    return guarded(handle->last_error, [&] {
      return handle->plugin->post_restore(Context(*ctx), copy_string(checkpoint_id));
    });
  } else {
    (void)c_handle;
    (void)ctx;
    (void)checkpoint_id;
    return QUIESCE_PLUGIN_OK;
  }
}

template <typename P>
const char* get_last_error(quiesce_plugin_handle* c_handle) noexcept {
  auto* handle = from_c<P>(c_handle);
  return handle->last_error.empty() ? nullptr : handle->last_error.c_str();
}

}  // namespace detail
}  // namespace quiesce::plugin

// Defines every entry point of the C ABI for `Class`. Use once, at namespace
// scope, in one .cpp of the plugin. An SDK plugin always exports
// post_snapshot and post_restore; when the class has no such method they
// answer OK with nothing to add.
#define QUIESCE_PLUGIN(Class, type_name_literal, level, description_literal)                    \
  static_assert(::quiesce::plugin::check_plugin_class<Class>());                               \
  static_assert(sizeof(type_name_literal) > 1, "the plugin type name may not be empty");        \
  extern "C" {                                                                                  \
  QUIESCE_PLUGIN_EXPORT quiesce_plugin_version quiesce_plugin_abi_version(void) {               \
    return quiesce_plugin_version{QUIESCE_PLUGIN_ABI_MAJOR, QUIESCE_PLUGIN_ABI_MINOR,           \
                                  QUIESCE_PLUGIN_ABI_PATCH};                                    \
  }                                                                                             \
  QUIESCE_PLUGIN_EXPORT const quiesce_plugin_description* quiesce_plugin_describe(void) {       \
    static const quiesce_plugin_description description{                                        \
        type_name_literal, static_cast<int32_t>(level), description_literal, nullptr};          \
    return &description;                                                                        \
  }                                                                                             \
  QUIESCE_PLUGIN_EXPORT quiesce_plugin_handle* quiesce_plugin_create(                           \
      const quiesce_plugin_init_input* input, int32_t* rc) {                                    \
    return ::quiesce::plugin::detail::create<Class>(input, rc);                                 \
  }                                                                                             \
  QUIESCE_PLUGIN_EXPORT void quiesce_plugin_destroy(quiesce_plugin_handle* handle) {            \
    ::quiesce::plugin::detail::destroy<Class>(handle);                                          \
  }                                                                                             \
  QUIESCE_PLUGIN_EXPORT int32_t quiesce_plugin_identify(                                        \
      quiesce_plugin_handle* handle, const quiesce_plugin_call_context* ctx, const char** out) { \
    return ::quiesce::plugin::detail::identify<Class>(handle, ctx, out);                        \
  }                                                                                             \
  QUIESCE_PLUGIN_EXPORT int32_t quiesce_plugin_prepare(quiesce_plugin_handle* handle,           \
                                                       const quiesce_plugin_call_context* ctx) { \
    return ::quiesce::plugin::detail::simple_phase<Class>(                         \
        handle, ctx, [](Class& p, const ::quiesce::plugin::Context& c) { return p.prepare(c); }); \
  }                                                                                             \
  QUIESCE_PLUGIN_EXPORT int32_t quiesce_plugin_freeze(quiesce_plugin_handle* handle,            \
                                                      const quiesce_plugin_call_context* ctx) { \
    return ::quiesce::plugin::detail::simple_phase<Class>(                         \
        handle, ctx, [](Class& p, const ::quiesce::plugin::Context& c) { return p.freeze(c); }); \
  }                                                                                             \
  QUIESCE_PLUGIN_EXPORT int32_t quiesce_plugin_thaw(quiesce_plugin_handle* handle,              \
                                                    const quiesce_plugin_call_context* ctx,     \
                                                    quiesce_plugin_hold_report* hold) {         \
    return ::quiesce::plugin::detail::thaw<Class>(handle, ctx, hold);                           \
  }                                                                                             \
  QUIESCE_PLUGIN_EXPORT int32_t quiesce_plugin_abort(quiesce_plugin_handle* handle,             \
                                                     const quiesce_plugin_call_context* ctx) {  \
    return ::quiesce::plugin::detail::simple_phase<Class>(                         \
        handle, ctx, [](Class& p, const ::quiesce::plugin::Context& c) { return p.abort(c); }); \
  }                                                                                             \
  QUIESCE_PLUGIN_EXPORT const char* quiesce_plugin_get_last_error(                              \
      quiesce_plugin_handle* handle) {                                                          \
    return ::quiesce::plugin::detail::get_last_error<Class>(handle);                            \
  }                                                                                             \
  QUIESCE_PLUGIN_EXPORT int32_t quiesce_plugin_post_snapshot(                                   \
      quiesce_plugin_handle* handle, const quiesce_plugin_call_context* ctx,                    \
      const char* snapshot_id, const char** artifacts_json) {                                   \
    return ::quiesce::plugin::detail::post_snapshot<Class>(handle, ctx, snapshot_id,            \
                                                           artifacts_json);                     \
  }                                                                                             \
  QUIESCE_PLUGIN_EXPORT int32_t quiesce_plugin_post_restore(quiesce_plugin_handle* handle,      \
                                                            const quiesce_plugin_call_context* ctx, \
                                                            const char* checkpoint_id) {        \
    return ::quiesce::plugin::detail::post_restore<Class>(handle, ctx, checkpoint_id);          \
  }                                                                                             \
  }
