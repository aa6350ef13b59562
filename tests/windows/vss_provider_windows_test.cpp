// quiesce-vss-provider.dll under wine, loaded and driven as the VSS
// service would (wine's COM runs an in-proc server; only VSS itself is
// missing): its class factory and interfaces, the hold in CommitSnapshots
// released by the agent's thaw event or by its own timeout, no volume
// claimed while no agent holds, and DllRegisterServer failing cleanly
// where there is no VSS to register with.
#include <windows.h>

#include <objbase.h>
#include <vss.h>
#include <vsprov.h>

#include <doctest/doctest.h>

#include <array>
#include <chrono>
#include <filesystem>
#include <future>
#include <string>

#include "writers/vss/provider/provider_ids.hpp"

using namespace std::chrono_literals;
namespace ids = quiesce::vss_provider;

namespace {

std::filesystem::path provider_path() {
  std::array<wchar_t, MAX_PATH> buffer{};
  const DWORD n = ::GetModuleFileNameW(nullptr, buffer.data(), static_cast<DWORD>(buffer.size()));
  return std::filesystem::path(std::wstring(buffer.data(), n)).parent_path() /
         "quiesce-vss-provider.dll";
}

// The DLL, loaded for one test and freed after it.
class ProviderDll {
 public:
  ProviderDll() : module_(::LoadLibraryW(provider_path().c_str())) {
    const bool loaded = module_ != nullptr;
    REQUIRE_MESSAGE(loaded, "cannot load " << provider_path().string());
  }
  ~ProviderDll() { ::FreeLibrary(module_); }
  ProviderDll(const ProviderDll&) = delete;
  ProviderDll& operator=(const ProviderDll&) = delete;

  template <typename F>
  F entry(const char* name) const {
    auto* proc = ::GetProcAddress(module_, name);
    const bool exported = proc != nullptr;  // (doctest cannot print a function pointer)
    REQUIRE_MESSAGE(exported, "no export " << name);
    return reinterpret_cast<F>(reinterpret_cast<void*>(proc));
  }

  // A new provider object through DllGetClassObject, as COM would make it.
  IVssProviderCreateSnapshotSet* create() const {
    using GetClassObject = HRESULT(STDAPICALLTYPE*)(REFCLSID, REFIID, void**);
    IClassFactory* factory = nullptr;
    REQUIRE(entry<GetClassObject>("DllGetClassObject")(ids::provider_clsid, IID_IClassFactory,
                                                       reinterpret_cast<void**>(&factory)) == S_OK);
    IVssProviderCreateSnapshotSet* provider = nullptr;
    REQUIRE(factory->CreateInstance(nullptr, __uuidof(IVssProviderCreateSnapshotSet),
                                    reinterpret_cast<void**>(&provider)) == S_OK);
    factory->Release();
    return provider;
  }

 private:
  HMODULE module_;
};

// The agent's side of one hold: the three named events the vss writer makes.
struct AgentEvents {
  HANDLE frozen = ::CreateEventW(nullptr, TRUE, FALSE, ids::event_frozen);
  HANDLE thaw = ::CreateEventW(nullptr, TRUE, FALSE, ids::event_thaw);
  HANDLE timed_out = ::CreateEventW(nullptr, TRUE, FALSE, ids::event_timed_out);
  ~AgentEvents() {
    for (HANDLE event : {frozen, thaw, timed_out}) {
      ::CloseHandle(event);
    }
  }
};

bool is_set(HANDLE event) { return ::WaitForSingleObject(event, 0) == WAIT_OBJECT_0; }

}  // namespace

TEST_CASE("vss provider: one object answers for its three interfaces; other classes are refused") {
  ProviderDll dll;
  auto* provider = dll.create();
  IVssSoftwareSnapshotProvider* software = nullptr;
  CHECK(provider->QueryInterface(__uuidof(IVssSoftwareSnapshotProvider),
                                 reinterpret_cast<void**>(&software)) == S_OK);
  IVssProviderNotifications* notifications = nullptr;
  CHECK(provider->QueryInterface(__uuidof(IVssProviderNotifications),
                                 reinterpret_cast<void**>(&notifications)) == S_OK);
  IClassFactory* not_mine = nullptr;
  CHECK(provider->QueryInterface(IID_IClassFactory, reinterpret_cast<void**>(&not_mine)) ==
        E_NOINTERFACE);
  CHECK(notifications->OnLoad(nullptr) == S_OK);

  // No agent holds: the provider claims no volume, so VSS keeps using
  // the system provider for every other requester.
  BOOL supported = TRUE;
  std::wstring volume = L"C:\\";
  CHECK(software->IsVolumeSupported(volume.data(), &supported) == S_OK);
  CHECK_FALSE(supported);
  {
    AgentEvents agent;
    CHECK(software->IsVolumeSupported(volume.data(), &supported) == S_OK);
    CHECK(supported);
  }
  software->Release();
  notifications->Release();
  provider->Release();

  using GetClassObject = HRESULT(STDAPICALLTYPE*)(REFCLSID, REFIID, void**);
  void* object = nullptr;
  CHECK(dll.entry<GetClassObject>("DllGetClassObject")(ids::provider_id, IID_IClassFactory,
                                                       &object) == CLASS_E_CLASSNOTAVAILABLE);
  using CanUnloadNow = HRESULT(STDAPICALLTYPE*)();
  CHECK(dll.entry<CanUnloadNow>("DllCanUnloadNow")() == S_OK);  // every object released
}

TEST_CASE("vss provider: CommitSnapshots holds until the agent's thaw, then returns S_OK") {
  ProviderDll dll;
  auto* provider = dll.create();
  AgentEvents agent;
  auto commit = std::async(std::launch::async, [provider] { return provider->CommitSnapshots(GUID_NULL); });
  REQUIRE(::WaitForSingleObject(agent.frozen, 5000) == WAIT_OBJECT_0);  // it told the agent
  CHECK(commit.wait_for(500ms) == std::future_status::timeout);         // and holds
  ::SetEvent(agent.thaw);
  REQUIRE(commit.wait_for(5s) == std::future_status::ready);
  CHECK(commit.get() == S_OK);
  CHECK_FALSE(is_set(agent.timed_out));
  provider->Release();
}

TEST_CASE("vss provider: with no thaw it lets go at its own limit and says so") {
  ProviderDll dll;
  auto* provider = dll.create();
  AgentEvents agent;
  const auto started = std::chrono::steady_clock::now();
  const HRESULT hr = provider->CommitSnapshots(GUID_NULL);  // nobody thaws: ~9.5 s
  const auto held = std::chrono::steady_clock::now() - started;
  CHECK(hr == VSS_E_HOLD_WRITES_TIMEOUT);
  CHECK(is_set(agent.frozen));
  CHECK(is_set(agent.timed_out));
  CHECK(held >= std::chrono::milliseconds(ids::hold_timeout_ms - 100));
  CHECK(held < std::chrono::milliseconds(ids::hold_timeout_ms + 5000));
  provider->Release();
}

TEST_CASE("vss provider: CommitSnapshots with no agent waiting vetoes at once") {
  ProviderDll dll;
  auto* provider = dll.create();
  CHECK(provider->CommitSnapshots(GUID_NULL) == VSS_E_PROVIDER_VETO);
  provider->Release();
}

TEST_CASE("vss provider: DllRegisterServer under wine fails (no VSS) and leaves no COM class behind") {
  ProviderDll dll;
  using Register = HRESULT(STDAPICALLTYPE*)();
  const HRESULT hr = dll.entry<Register>("DllRegisterServer")();
  CHECK(FAILED(hr));  // CoCreateInstance(CLSID_VSSCoordinator): class not registered
  const std::wstring key = std::wstring(L"Software\\Classes\\CLSID\\") + ids::provider_clsid_text;
  HKEY handle = nullptr;
  CHECK(::RegOpenKeyExW(HKEY_LOCAL_MACHINE, key.c_str(), 0, KEY_READ, &handle) ==
        ERROR_FILE_NOT_FOUND);
  using MsiEntry = UINT(__stdcall*)(unsigned long);
  CHECK(dll.entry<MsiEntry>("QuiesceMsiRegister")(0) == ERROR_INSTALL_FAILURE);
}
