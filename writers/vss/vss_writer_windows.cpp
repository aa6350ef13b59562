// The `vss` writer on Windows: a VSS requester in qemu-guest-agent's
// sequence (qga/vss-win32/requester.cpp), mapped onto Quiesce's phases:
//
//   identify  a look-only backup: InitializeForBackup, GatherWriterMetadata,
//             GatherWriterStatus -> every VSS writer, its components, its state
//   prepare   InitializeForBackup, SetBackupState (full | copy), SetContext,
//             GatherWriterMetadata, AddComponents, StartSnapshotSet,
//             AddToSnapshotSet (each volume, Quiesce's provider),
//             PrepareForBackup, GatherWriterStatus
//   freeze    DoSnapshotSet; returns once Quiesce's provider reports (event
//             `frozen`) that VSS froze the writers and called its
//             CommitSnapshots, where it now holds them
//   thaw      sets `thaw`: the provider returns, VSS thaws the writers;
//             BackupComplete, GatherWriterStatus -> each writer's state
//   abort     releases the provider, AbortBackup
//
// Every VSS call runs on one thread of the writer's own (an MTA thread that
// lives as long as the writer): the backup components object is created
// there and never crosses threads, whichever coordinator thread calls a
// phase. vssapi.dll is loaded at run time, as qemu-ga does, so a system
// without VSS gets a clear error instead of an agent that cannot start.
#include <windows.h>

#include <objbase.h>
#include <vss.h>
#include <vswriter.h>
#include <vsbackup.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <queue>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/logger.h>

#include "platform/win/win_error.hpp"
#include "writers/vss/provider/provider_ids.hpp"
#include "writers/vss/vss_model.hpp"
#include "writers/vss/vss_writer.hpp"

namespace quiesce::writers {

namespace {

using vss::describe_hresult;
using vss::VssWriterState;

// vss_model.hpp mirrors VSS_WRITER_STATE by value; the SDK's enum decides.
static_assert(static_cast<int>(VssWriterState::stable) == VSS_WS_STABLE);
static_assert(static_cast<int>(VssWriterState::waiting_for_thaw) == VSS_WS_WAITING_FOR_THAW);
static_assert(static_cast<int>(VssWriterState::failed_at_identify) == VSS_WS_FAILED_AT_IDENTIFY);
static_assert(static_cast<int>(VssWriterState::failed_at_freeze) == VSS_WS_FAILED_AT_FREEZE);
static_assert(static_cast<int>(VssWriterState::failed_at_backup_shutdown) ==
              VSS_WS_FAILED_AT_BACKUPSHUTDOWN);

// How often DoSnapshotSet is asked for progress while waiting for the
// provider's `frozen` (VSS advances it only when QueryStatus is called).
constexpr DWORD frozen_poll_ms = 10;

std::string narrow(const wchar_t* text) {
  return text == nullptr ? std::string() : platform::win::narrow(text);
}

std::string guid_text(const GUID& guid) {
  std::array<wchar_t, 40> text{};
  ::StringFromGUID2(guid, text.data(), static_cast<int>(text.size()));
  return narrow(text.data());
}

// A failed VSS call, named, with its HRESULT.
struct VssError {
  std::string call;
  HRESULT hr;
  [[nodiscard]] std::string message() const {
    return call + " failed: " + describe_hresult(static_cast<std::uint32_t>(hr));
  }
};

template <typename T>
class ComPtr {
 public:
  ComPtr() = default;
  ~ComPtr() { reset(); }
  ComPtr(const ComPtr&) = delete;
  ComPtr& operator=(const ComPtr&) = delete;
  T* operator->() const { return ptr_; }
  T* get() const { return ptr_; }
  T** put() {
    reset();
    return &ptr_;
  }
  void reset() {
    if (ptr_ != nullptr) {
      ptr_->Release();
      ptr_ = nullptr;
    }
  }
  explicit operator bool() const { return ptr_ != nullptr; }

 private:
  T* ptr_ = nullptr;
};

class Bstr {
 public:
  ~Bstr() { ::SysFreeString(text_); }
  BSTR* put() { return &text_; }
  [[nodiscard]] std::string utf8() const { return narrow(text_); }

 private:
  BSTR text_ = nullptr;
};

// Waits for an asynchronous VSS operation (qemu-ga's WaitForAsync).
HRESULT wait_async(IVssAsync* async) {
  HRESULT status = S_OK;
  do {
    HRESULT hr = async->Wait();
    if (FAILED(hr)) {
      return hr;
    }
    hr = async->QueryStatus(&status, nullptr);
    if (FAILED(hr)) {
      return hr;
    }
  } while (status == VSS_S_ASYNC_PENDING);
  return status;
}

// vssapi.dll's entry point, found at run time (see the top of the file).
using CreateBackupComponents = HRESULT(STDAPICALLTYPE*)(IVssBackupComponents**);

struct VssApi {
  HMODULE module = nullptr;
  CreateBackupComponents create = nullptr;
  std::string error;  // why it is not usable
};

VssApi load_vss_api() {
  VssApi api;
  api.module = ::LoadLibraryExW(L"vssapi.dll", nullptr, LOAD_LIBRARY_SEARCH_SYSTEM32);
  if (api.module == nullptr) {
    api.error = "LoadLibrary(vssapi.dll) failed: " + platform::win::last_error_text();
    return api;
  }
  // Exported by name since Vista; older systems only had the C++ name.
  auto* proc = ::GetProcAddress(api.module, "CreateVssBackupComponentsInternal");
  if (proc == nullptr) {
    proc = ::GetProcAddress(api.module,
                            "?CreateVssBackupComponents@@YAJPEAPEAVIVssBackupComponents@@@Z");
  }
  if (proc == nullptr) {
    api.error = "vssapi.dll has no CreateVssBackupComponents: " + platform::win::last_error_text();
    return api;
  }
  api.create = reinterpret_cast<CreateBackupComponents>(reinterpret_cast<void*>(proc));
  return api;
}

// Where IVssAdmin::RegisterProvider records a provider: absent means VSS
// will not load ours, and AddToSnapshotSet would fail at the first freeze.
std::string provider_registration_problem() {
  const std::wstring key = std::wstring(vss_provider::providers_key) + L"\\" +
                           vss_provider::provider_id_text;
  HKEY handle = nullptr;
  const LONG status = ::RegOpenKeyExW(HKEY_LOCAL_MACHINE, key.c_str(), 0, KEY_READ, &handle);
  if (status == ERROR_SUCCESS) {
    ::RegCloseKey(handle);
    return "";
  }
  return "Quiesce's VSS provider is not registered (HKLM\\" + platform::win::narrow(key) + ": " +
         platform::win::error_text(static_cast<unsigned long>(status)) +
         "); register it as an Administrator with `regsvr32 quiesce-vss-provider.dll` from the "
         "agent's folder, or repair the MSI install";
}

// One thread that runs every VSS call (see the top of the file).
class ComThread {
 public:
  ComThread() : thread_([this] { run(); }) {}
  ~ComThread() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_one();
    thread_.join();
  }
  ComThread(const ComThread&) = delete;
  ComThread& operator=(const ComThread&) = delete;

  template <typename F>
  auto call(F&& work) -> decltype(work()) {
    std::packaged_task<decltype(work())()> task(std::forward<F>(work));
    auto result = task.get_future();
    {
      std::lock_guard lock(mutex_);
      tasks_.emplace([&task] { task(); });
    }
    wake_.notify_one();
    return result.get();
  }

 private:
  void run() {
    const HRESULT init = ::CoInitializeEx(nullptr, COINIT_MULTITHREADED);
    // What VSS requesters must set before any call (qemu-ga does the same):
    // the VSS service calls back with identify-level impersonation.
    ::CoInitializeSecurity(nullptr, -1, nullptr, nullptr, RPC_C_AUTHN_LEVEL_PKT_PRIVACY,
                           RPC_C_IMP_LEVEL_IDENTIFY, nullptr, EOAC_NONE, nullptr);
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
        if (tasks_.empty()) {
          break;
        }
        task = std::move(tasks_.front());
        tasks_.pop();
      }
      task();
    }
    if (SUCCEEDED(init)) {
      ::CoUninitialize();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::queue<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::thread thread_;  // last: starts once the rest exists
};

struct Event {
  HANDLE handle = nullptr;
  ~Event() {
    if (handle != nullptr) {
      ::CloseHandle(handle);
    }
  }
};

// One VSS writer as GatherWriterStatus reports it.
struct WriterStatus {
  std::string name;
  std::string id;
  vss::MappedState state;
};

class VssWriter final : public Writer {
 public:
  VssWriter(WriterSpec spec, vss::VssOptions options, WriterEnvironment env)
      : spec_(std::move(spec)), options_(std::move(options)), env_(std::move(env)) {
    if (!env_.logger) {
      env_.logger = std::make_shared<spdlog::logger>("vss");
    }
    api_ = load_vss_api();
    if (options_.freeze_window_clamped) {
      log().warn("vss '{}': freeze_window_ms {} clamped to {} ms: VSS holds writes for at most {} ms",
                 spec_.name, options_.freeze_window_requested.count(),
                 options_.freeze_window.count(), vss::vss_hold_limit.count());
    }
  }

  ~VssWriter() override {
    // Never leave the provider holding: a writer that goes away mid-hold
    // releases it (abort is idempotent).
    (void)release_everything("writer shutdown");
  }

  Status identify(const PhaseContext&, Identity& out) override {
    auto& meta = out.metadata;
    meta["backup_type"] = options_.backup_type == vss::BackupType::full ? "full" : "copy";
    meta["provider_id"] = guid_text(vss_provider::provider_id);
    meta["freeze_window_ms"] = options_.freeze_window.count();
    meta["vss_hold_limit_ms"] = vss::vss_hold_limit.count();
    if (options_.freeze_window_clamped) {
      meta["freeze_window_note"] = "clamped from " +
                                   std::to_string(options_.freeze_window_requested.count()) +
                                   " ms: VSS holds writes for at most " +
                                   std::to_string(vss::vss_hold_limit.count()) + " ms";
    }
    auto volumes = nlohmann::json::array();
    for (const auto& volume : options_.volumes) {
      volumes.push_back(volume);
    }
    meta["volumes"] = options_.volumes.empty() ? nlohmann::json("every fixed volume") : volumes;
    auto listed = com_.call([&]() -> std::optional<VssError> { return list_writers(out); });
    if (listed) {
      // Describing is not failing: prepare fails with the same message,
      // before anything is held.
      meta["vss_error"] = listed->message();
    }
    return Status::ok();
  }

  Status prepare(const PhaseContext& ctx) override {
    (void)release_everything("a new session");
    auto failed = com_.call([&]() -> std::optional<VssError> { return start_backup(ctx); });
    if (failed) {
      (void)release_everything("prepare failed");
      return Status::error(error_class_of(failed->hr), "vss: prepare: " + failed->message() +
                                                           "; the backup was aborted, nothing is held");
    }
    return writer_failures("prepare");
  }

  Status freeze(const PhaseContext& ctx) override {
    if (!has_backup()) {
      return Status::non_retryable("vss: freeze without a prepared backup (prepare failed or was "
                                   "not called)");
    }
    const auto now = Clock::now();
    const bool session_has_window =
        ctx.hold_deadline > now && ctx.hold_deadline != Clock::time_point::max();
    window_ = session_has_window
                  ? vss::clamp_freeze_window(
                        std::chrono::duration_cast<std::chrono::milliseconds>(ctx.hold_deadline - now),
                        options_.freeze_window)
                  : vss::FreezeWindow{options_.freeze_window, false, ""};
    if (window_.clamped) {
      log().warn("vss '{}': {}", spec_.name, window_.note);
    }
    auto failed = com_.call([&]() -> std::optional<VssError> { return do_snapshot_set(ctx); });
    if (failed) {
      (void)release_everything("freeze failed");
      return Status::error(error_class_of(failed->hr), "vss: freeze: " + failed->message() +
                                                           "; the backup was aborted, nothing is held");
    }
    start_window_watch();
    log().info("vss '{}': the VSS writers are frozen and Quiesce's provider holds them "
               "(at most {} ms)",
               spec_.name, window_.effective.count());
    return Status::ok();
  }

  Status thaw(const PhaseContext&, HoldReport& hold) override {
    if (!has_snapshot_set()) {
      return Status::ok();  // idempotent: nothing is held
    }
    stop_window_watch();
    std::string broken;
    auto failed = com_.call([&]() -> std::optional<VssError> { return end_snapshot_set(broken); });
    if (window_expired_ && broken.empty()) {
      broken = "the hold was released after the freeze window of " +
               std::to_string(window_.effective.count()) + " ms, before thaw (VSS holds writes " +
               "for at most " + std::to_string(vss::vss_hold_limit.count()) + " ms)";
    }
    if (!broken.empty()) {
      hold.continuous = false;
      hold.detail = "vss: " + broken;
    }
    auto states = writer_failures("thaw");
    (void)release_everything("thawed");
    if (failed) {
      return Status::error(error_class_of(failed->hr), "vss: thaw: " + failed->message());
    }
    return states;
  }

  Status post_snapshot(const PhaseContext&, const SnapshotInfo&, nlohmann::json& artifacts) override {
    artifacts["vss_writers"] = writers_json();
    return Status::ok();
  }

  Status abort(const PhaseContext&) override {
    return release_everything("abort");
  }

  Status post_restore(const PhaseContext&, const RestoreInfo&) override { return Status::ok(); }

 private:
  spdlog::logger& log() { return *env_.logger; }

  // backup_ and snapshot_ belong to the COM thread (identify sets backup_
  // there for a moment even outside a session): asked there too.
  bool has_backup() { return com_.call([this] { return static_cast<bool>(backup_); }); }
  bool has_snapshot_set() { return com_.call([this] { return static_cast<bool>(snapshot_); }); }

  // Each VSS writer as a Quiesce writer state (DESIGN.md), with VSS's own.
  nlohmann::json writers_json() const {
    auto writers = nlohmann::json::array();
    for (const auto& writer : last_status_) {
      nlohmann::json entry{{"name", writer.name},
                           {"id", writer.id},
                           {"state", writer.state.state},
                           {"vss_state", writer.state.vss_state}};
      if (writer.state.failed) {
        entry["error_class"] = writer.state.error_class;
        entry["failure"] = writer.state.failure;
      }
      writers.push_back(std::move(entry));
    }
    return writers;
  }

  static ErrorClass error_class_of(HRESULT hr) {
    switch (static_cast<std::uint32_t>(hr)) {
      case 0x80004001:  // E_NOTIMPL: no VSS on this system
      case 0x80070005:  // E_ACCESSDENIED
      case 0x80040154:  // REGDB_E_CLASSNOTREG
      case 0x80042304:  // VSS_E_PROVIDER_NOT_REGISTERED
      case 0x8004230E:  // VSS_E_VOLUME_NOT_SUPPORTED_BY_PROVIDER
        return ErrorClass::non_retryable;
      case 0x80042313:  // VSS_E_FLUSH_WRITES_TIMEOUT
      case 0x80042314:  // VSS_E_HOLD_WRITES_TIMEOUT
      case 0x80042319:  // VSS_E_WRITER_NOT_RESPONDING
        return ErrorClass::timeout;
      default:
        return ErrorClass::retryable;
    }
  }

  // On the COM thread. The components object of this session.
  std::optional<VssError> create_components() {
    if (api_.create == nullptr) {
      return VssError{api_.error, E_FAIL};
    }
    HRESULT hr = api_.create(backup_.put());
    if (FAILED(hr)) {
      return VssError{"CreateVssBackupComponents", hr};
    }
    hr = backup_->InitializeForBackup(nullptr);
    if (FAILED(hr)) {
      return VssError{"IVssBackupComponents::InitializeForBackup", hr};
    }
    return std::nullopt;
  }

  std::optional<VssError> gather_metadata() {
    ComPtr<IVssAsync> async;
    HRESULT hr = backup_->GatherWriterMetadata(async.put());
    if (SUCCEEDED(hr)) {
      hr = wait_async(async.get());
    }
    if (FAILED(hr)) {
      return VssError{"IVssBackupComponents::GatherWriterMetadata", hr};
    }
    return std::nullopt;
  }

  // Every VSS writer's components; with `out`, listed for identify; with
  // `select`, the selectable ones added to the backup (qemu-ga's AddComponents).
  std::optional<VssError> walk_components(Identity* out, bool select) {
    UINT writers = 0;
    HRESULT hr = backup_->GetWriterMetadataCount(&writers);
    if (FAILED(hr)) {
      return VssError{"IVssBackupComponents::GetWriterMetadataCount", hr};
    }
    for (UINT i = 0; i < writers; ++i) {
      VSS_ID instance_id{};
      ComPtr<IVssExamineWriterMetadata> metadata;
      hr = backup_->GetWriterMetadata(i, &instance_id, metadata.put());
      if (FAILED(hr)) {
        return VssError{"IVssBackupComponents::GetWriterMetadata", hr};
      }
      VSS_ID instance{};
      VSS_ID writer_id{};
      Bstr name;
      VSS_USAGE_TYPE usage{};
      VSS_SOURCE_TYPE source{};
      hr = metadata->GetIdentity(&instance, &writer_id, name.put(), &usage, &source);
      if (FAILED(hr)) {
        return VssError{"IVssExamineWriterMetadata::GetIdentity", hr};
      }
      UINT includes = 0;
      UINT excludes = 0;
      UINT components = 0;
      hr = metadata->GetFileCounts(&includes, &excludes, &components);
      if (FAILED(hr)) {
        return VssError{"IVssExamineWriterMetadata::GetFileCounts of " + name.utf8(), hr};
      }
      for (UINT c = 0; c < components; ++c) {
        ComPtr<IVssWMComponent> component;
        hr = metadata->GetComponent(c, component.put());
        if (FAILED(hr)) {
          return VssError{"IVssExamineWriterMetadata::GetComponent of " + name.utf8(), hr};
        }
        PVSSCOMPONENTINFO info = nullptr;
        hr = component->GetComponentInfo(&info);
        if (FAILED(hr)) {
          return VssError{"IVssWMComponent::GetComponentInfo of " + name.utf8(), hr};
        }
        if (out != nullptr) {
          out->components.push_back({{"kind", "vss-component"},
                                     {"writer", name.utf8()},
                                     {"writer_id", guid_text(writer_id)},
                                     {"name", narrow(info->bstrComponentName)},
                                     {"logical_path", narrow(info->bstrLogicalPath)},
                                     {"selectable", info->bSelectable != 0}});
        }
        if (select && info->bSelectable) {
          hr = backup_->AddComponent(instance, writer_id, info->type, info->bstrLogicalPath,
                                     info->bstrComponentName);
          if (FAILED(hr)) {
            component->FreeComponentInfo(info);
            return VssError{"IVssBackupComponents::AddComponent " +
                                narrow(info->bstrComponentName) + " of " + name.utf8(),
                            hr};
          }
        }
        component->FreeComponentInfo(info);
      }
      if (out != nullptr && components == 0) {
        out->components.push_back({{"kind", "vss-writer"},
                                   {"writer", name.utf8()},
                                   {"writer_id", guid_text(writer_id)}});
      }
    }
    return std::nullopt;
  }

  // GatherWriterStatus into last_status_.
  std::optional<VssError> gather_status() {
    ComPtr<IVssAsync> async;
    HRESULT hr = backup_->GatherWriterStatus(async.put());
    if (SUCCEEDED(hr)) {
      hr = wait_async(async.get());
    }
    if (FAILED(hr)) {
      return VssError{"IVssBackupComponents::GatherWriterStatus", hr};
    }
    UINT count = 0;
    hr = backup_->GetWriterStatusCount(&count);
    if (FAILED(hr)) {
      return VssError{"IVssBackupComponents::GetWriterStatusCount", hr};
    }
    last_status_.clear();
    for (UINT i = 0; i < count; ++i) {
      VSS_ID instance{};
      VSS_ID writer_id{};
      Bstr name;
      VSS_WRITER_STATE state{};
      HRESULT failure = S_OK;
      hr = backup_->GetWriterStatus(i, &instance, &writer_id, name.put(), &state, &failure);
      if (FAILED(hr)) {
        return VssError{"IVssBackupComponents::GetWriterStatus", hr};
      }
      last_status_.push_back({name.utf8(), guid_text(writer_id),
                              vss::map_writer_state(static_cast<int>(state),
                                                    static_cast<std::uint32_t>(failure))});
    }
    backup_->FreeWriterStatus();
    return std::nullopt;
  }

  std::optional<VssError> list_writers(Identity& out) {
    if (backup_) {
      // A session holds the components object: what it last gathered.
      out.metadata["note"] = "a backup is in progress; VSS writers as last gathered";
      out.metadata["vss_writers"] = writers_json();
      return std::nullopt;
    }
    auto failed = create_components();
    if (!failed) {
      failed = gather_metadata();
    }
    if (!failed) {
      failed = walk_components(&out, false);
    }
    if (!failed) {
      failed = gather_status();
    }
    if (!failed) {
      out.metadata["vss_writers"] = writers_json();
    }
    backup_.reset();  // a look only: no backup was started, nothing to abort
    return failed;
  }

  std::optional<VssError> start_backup(const PhaseContext&) {
    if (auto failed = create_components()) {
      return failed;
    }
    HRESULT hr = backup_->SetBackupState(
        true, true, options_.backup_type == vss::BackupType::full ? VSS_BT_FULL : VSS_BT_COPY,
        false);
    if (FAILED(hr)) {
      return VssError{"IVssBackupComponents::SetBackupState", hr};
    }
    // As qemu-ga: no writable snapshots, so the final commit (which writes
    // to the snapshot) is skipped; client Windows has no TRANSPORTABLE.
    // (Two enums of the SDK combined: as LONGs, as SetContext takes them.)
    const auto transportable = static_cast<LONG>(VSS_VOLSNAP_ATTR_TRANSPORTABLE);
    LONG context = static_cast<LONG>(VSS_CTX_APP_ROLLBACK) | transportable |
                   static_cast<LONG>(VSS_VOLSNAP_ATTR_NO_AUTORECOVERY) |
                   static_cast<LONG>(VSS_VOLSNAP_ATTR_TXF_RECOVERY);
    hr = backup_->SetContext(context);
    if (hr == VSS_E_UNSUPPORTED_CONTEXT) {
      context &= ~transportable;
      hr = backup_->SetContext(context);
    }
    if (FAILED(hr)) {
      return VssError{"IVssBackupComponents::SetContext", hr};
    }
    if (auto failed = gather_metadata()) {
      return failed;
    }
    if (auto failed = walk_components(nullptr, true)) {
      return failed;
    }
    VSS_ID set_id{};
    hr = backup_->StartSnapshotSet(&set_id);
    if (FAILED(hr)) {
      return VssError{"IVssBackupComponents::StartSnapshotSet", hr};
    }
    auto volumes = options_.volumes.empty() ? fixed_volumes() : options_.volumes;
    if (volumes.empty()) {
      return VssError{"finding the fixed volumes (FindFirstVolumeW): none", E_FAIL};
    }
    for (const auto& volume : volumes) {
      auto wide = platform::win::widen(volume);
      VSS_ID snapshot_id{};
      hr = backup_->AddToSnapshotSet(wide.data(), vss_provider::provider_id, &snapshot_id);
      if (FAILED(hr)) {
        return VssError{"IVssBackupComponents::AddToSnapshotSet " + volume, hr};
      }
    }
    ComPtr<IVssAsync> async;
    hr = backup_->PrepareForBackup(async.put());
    if (SUCCEEDED(hr)) {
      hr = wait_async(async.get());
    }
    if (FAILED(hr)) {
      return VssError{"IVssBackupComponents::PrepareForBackup", hr};
    }
    return gather_status();
  }

  static std::vector<std::string> fixed_volumes() {
    std::vector<std::string> volumes;
    std::array<wchar_t, MAX_PATH> name{};
    HANDLE search = ::FindFirstVolumeW(name.data(), static_cast<DWORD>(name.size()));
    if (search == INVALID_HANDLE_VALUE) {
      return volumes;
    }
    do {
      if (::GetDriveTypeW(name.data()) == DRIVE_FIXED) {
        volumes.push_back(narrow(name.data()));
      }
    } while (::FindNextVolumeW(search, name.data(), static_cast<DWORD>(name.size())));
    ::FindVolumeClose(search);
    return volumes;
  }

  std::optional<VssError> create_events() {
    for (auto [event, name] : {std::pair{&frozen_, vss_provider::event_frozen},
                               std::pair{&thaw_, vss_provider::event_thaw},
                               std::pair{&timed_out_, vss_provider::event_timed_out}}) {
      if (event->handle == nullptr) {
        event->handle = ::CreateEventW(nullptr, TRUE, FALSE, name);
        if (event->handle == nullptr) {
          return VssError{"CreateEventW " + narrow(name), HRESULT_FROM_WIN32(::GetLastError())};
        }
      }
      ::ResetEvent(event->handle);
    }
    return std::nullopt;
  }

  std::optional<VssError> do_snapshot_set(const PhaseContext& ctx) {
    if (auto failed = create_events()) {
      return failed;
    }
    HRESULT hr = backup_->DoSnapshotSet(snapshot_.put());
    if (FAILED(hr)) {
      return VssError{"IVssBackupComponents::DoSnapshotSet", hr};
    }
    // VSS freezes the writers and the volumes, then calls the provider's
    // CommitSnapshots, which sets `frozen`. A freeze that takes longer
    // than the window could hold is not worth having.
    const auto give_up = std::min(Clock::now() + vss::vss_hold_limit, ctx.deadline);
    while (Clock::now() < give_up && !ctx.stop.stop_requested()) {
      HRESULT status = S_OK;
      hr = snapshot_->QueryStatus(&status, nullptr);
      if (FAILED(hr)) {
        return VssError{"IVssAsync::QueryStatus of DoSnapshotSet", hr};
      }
      if (status != VSS_S_ASYNC_PENDING) {
        return VssError{"DoSnapshotSet (ended before Quiesce's provider held the writers)",
                        FAILED(status) ? status : E_FAIL};
      }
      if (::WaitForSingleObject(frozen_.handle, frozen_poll_ms) == WAIT_OBJECT_0) {
        return std::nullopt;
      }
    }
    return VssError{"waiting for Quiesce's provider to report the writers frozen (event " +
                        narrow(vss_provider::event_frozen) + ")",
                    static_cast<HRESULT>(0x80042313)};  // VSS_E_FLUSH_WRITES_TIMEOUT
  }

  std::optional<VssError> end_snapshot_set(std::string& broken) {
    ::SetEvent(thaw_.handle);
    const HRESULT hr = wait_async(snapshot_.get());
    const bool provider_gave_up = ::WaitForSingleObject(timed_out_.handle, 0) == WAIT_OBJECT_0;
    if (provider_gave_up || hr == VSS_E_HOLD_WRITES_TIMEOUT) {
      broken = "the hold ended before thaw: Quiesce's provider or VSS let go after at most " +
               std::to_string(vss::vss_hold_limit.count()) + " ms";
    }
    if (hr == VSS_S_ASYNC_FINISHED) {
      ComPtr<IVssAsync> async;
      HRESULT done = backup_->BackupComplete(async.put());
      if (SUCCEEDED(done)) {
        done = wait_async(async.get());
      }
      if (FAILED(done)) {
        return VssError{"IVssBackupComponents::BackupComplete", done};
      }
      return gather_status();
    }
    if (hr == VSS_E_OBJECT_NOT_FOUND) {
      // qemu-ga: systems without NO_AUTORECOVERY fail the final commit this
      // way after the hold itself was fine.
      return gather_status();
    }
    return VssError{"DoSnapshotSet", hr};
  }

  static ErrorClass error_class_named(const std::string& name) {
    if (name == "non_retryable") {
      return ErrorClass::non_retryable;
    }
    if (name == "inconsistent") {
      return ErrorClass::inconsistent;
    }
    return name == "timeout" ? ErrorClass::timeout : ErrorClass::retryable;
  }

  // The most serious class among failures: an admin must act > the data
  // would be inconsistent > too slow > a retry may help.
  static int rank(ErrorClass c) {
    switch (c) {
      case ErrorClass::non_retryable: return 3;
      case ErrorClass::inconsistent: return 2;
      case ErrorClass::timeout: return 1;
      case ErrorClass::retryable: return 0;
    }
    return 0;
  }

  // Each VSS writer that failed, by name and state: one error naming all
  // (qemu-ga reports only the first).
  Status writer_failures(const std::string& phase) {
    std::string text;
    std::optional<ErrorClass> worst;
    for (const auto& writer : last_status_) {
      if (!writer.state.failed) {
        continue;
      }
      text += (text.empty() ? "" : "; ") + writer.name + " " + writer.state.state + " (" +
              writer.state.vss_state + ", " + writer.state.failure + ")";
      const auto c = error_class_named(writer.state.error_class);
      worst = worst && rank(*worst) >= rank(c) ? *worst : c;
    }
    if (!worst) {
      return Status::ok();
    }
    return Status::error(*worst, "vss: at " + phase + ", VSS writer(s) failed: " + text);
  }

  // Ends the hold when the (clamped) window has passed and thaw has not
  // come: the provider returns, VSS thaws, nothing waits on VSS's own
  // timeout. Thaw then reports the hold as broken.
  void start_window_watch() {
    window_expired_ = false;
    const auto until = Clock::now() + window_.effective;
    window_watch_ = std::jthread([this, until](std::stop_token stop) {
      std::mutex mutex;
      std::condition_variable_any wake;
      std::unique_lock lock(mutex);
      if (!wake.wait_until(lock, stop, until, [] { return false; }) && !stop.stop_requested()) {
        window_expired_ = true;
        ::SetEvent(thaw_.handle);  // a kernel event: safe from any thread
        log().warn("vss '{}': the freeze window of {} ms passed before thaw; the VSS writers "
                   "are released",
                   spec_.name, window_.effective.count());
      }
    });
  }

  void stop_window_watch() {
    if (window_watch_.joinable()) {
      window_watch_.request_stop();
      window_watch_.join();
    }
  }

  // Lets the provider go (if it holds), aborts the backup, drops every
  // object: whatever state the session is in. Idempotent.
  Status release_everything(const std::string& why) {
    stop_window_watch();
    if (!has_backup() && !has_snapshot_set()) {
      return Status::ok();
    }
    auto failed = com_.call([&]() -> std::optional<VssError> {
      if (thaw_.handle != nullptr) {
        ::SetEvent(thaw_.handle);  // the provider returns from CommitSnapshots
      }
      std::optional<VssError> error;
      if (snapshot_) {
        (void)snapshot_->Cancel();
        (void)wait_async(snapshot_.get());
      }
      if (backup_) {
        const HRESULT hr = backup_->AbortBackup();
        // VSS_E_BAD_STATE: nothing was started yet, or it already completed.
        if (FAILED(hr) && hr != VSS_E_BAD_STATE) {
          error = VssError{"IVssBackupComponents::AbortBackup", hr};
        }
      }
      snapshot_.reset();
      backup_.reset();
      return error;
    });
    if (failed) {
      log().warn("vss '{}': {} ({}): {}", spec_.name, why, "AbortBackup", failed->message());
      return Status::retryable("vss: " + failed->message());
    }
    log().info("vss '{}': backup released ({})", spec_.name, why);
    return Status::ok();
  }

  WriterSpec spec_;
  vss::VssOptions options_;
  WriterEnvironment env_;
  VssApi api_;
  // Touched only on com_'s thread (the calls above wait for it).
  ComPtr<IVssBackupComponents> backup_;
  ComPtr<IVssAsync> snapshot_;
  Event frozen_;
  Event thaw_;
  Event timed_out_;
  std::vector<WriterStatus> last_status_;
  vss::FreezeWindow window_{vss::default_freeze_window, false, ""};
  std::atomic<bool> window_expired_{false};
  std::jthread window_watch_;  // between freeze and thaw/abort
  ComThread com_;  // last: the first to go, after its last call returned
};

}  // namespace

void register_vss_writer(WriterRegistry& registry) {
  registry.add(WriterType{
      .type = "vss",
      .default_level = Level::filesystem,
      .description = "a VSS requester: freezes every VSS writer and the volumes, held by "
                     "Quiesce's VSS provider until thaw (Windows)",
      .create = [](const WriterSpec& spec,
                   const WriterEnvironment& env) -> std::unique_ptr<Writer> {
        auto options = vss::parse_vss_options(spec.options);
        if (options.require_provider) {
          if (auto problem = provider_registration_problem(); !problem.empty()) {
            throw std::runtime_error(problem);
          }
        }
        return std::make_unique<VssWriter>(spec, std::move(options), env);
      },
  });
}

}  // namespace quiesce::writers
