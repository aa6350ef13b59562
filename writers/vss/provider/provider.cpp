// quiesce-vss-provider.dll: Quiesce's VSS software provider, an in-proc
// COM server the VSS service loads (provider_ids.hpp says how it and the
// agent's `vss` writer hold a snapshot set together).
//
// It takes no snapshot: like qemu-guest-agent's provider, its only job is
// CommitSnapshots, the moment VSS has frozen the writers and holds writes
// on the volumes. It tells the agent (event `frozen`) and waits for thaw
// (event `thaw`) or its own timeout, whichever comes first, then returns so
// VSS lets everything go. The hypervisor takes the disk snapshot while it
// waits. Every other call accepts what VSS asks and reports nothing.
//
// DllRegisterServer registers the COM class (HKLM\Software\Classes) and the
// provider with VSS (IVssAdmin::RegisterProvider): `regsvr32
// quiesce-vss-provider.dll` calls it, the MSI through QuiesceMsiRegister.
#include <windows.h>

#include <objbase.h>
#include <vss.h>
#include <vsadmin.h>
#include <vsprov.h>

#include <array>
#include <atomic>
#include <new>
#include <string>

#include "writers/vss/provider/provider_ids.hpp"

namespace {

using namespace quiesce::vss_provider;

HMODULE this_module = nullptr;
std::atomic<long> live_objects{0};
std::atomic<long> server_locks{0};

// Opens an event the agent created; nullptr when the agent has none (it is
// not running, or this snapshot set is not Quiesce's).
HANDLE open_event(const wchar_t* name) {
  return ::OpenEventW(EVENT_MODIFY_STATE | SYNCHRONIZE, FALSE, name);
}

// COM interfaces have no virtual destructor by design: an object is only
// ever destroyed by its own Release, never deleted through an interface.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnon-virtual-dtor"

class Provider final : public IVssSoftwareSnapshotProvider,
                       public IVssProviderCreateSnapshotSet,
                       public IVssProviderNotifications {
 public:
  Provider() { ++live_objects; }
  Provider(const Provider&) = delete;
  Provider& operator=(const Provider&) = delete;

  // IUnknown (one identity: every interface hands back the same object).
  STDMETHODIMP QueryInterface(REFIID iid, void** object) override {
    if (object == nullptr) {
      return E_POINTER;
    }
    if (iid == IID_IUnknown || iid == __uuidof(IVssSoftwareSnapshotProvider)) {
      *object = static_cast<IVssSoftwareSnapshotProvider*>(this);
    } else if (iid == __uuidof(IVssProviderCreateSnapshotSet)) {
      *object = static_cast<IVssProviderCreateSnapshotSet*>(this);
    } else if (iid == __uuidof(IVssProviderNotifications)) {
      *object = static_cast<IVssProviderNotifications*>(this);
    } else {
      *object = nullptr;
      return E_NOINTERFACE;
    }
    AddRef();
    return S_OK;
  }
  STDMETHODIMP_(ULONG) AddRef() override { return static_cast<ULONG>(++references_); }
  STDMETHODIMP_(ULONG) Release() override {
    const long left = --references_;
    if (left == 0) {
      delete this;
    }
    return static_cast<ULONG>(left);
  }

  // IVssSoftwareSnapshotProvider: no snapshots exist to describe or delete.
  STDMETHODIMP SetContext(LONG) override { return S_OK; }
  STDMETHODIMP GetSnapshotProperties(VSS_ID, VSS_SNAPSHOT_PROP*) override {
    return VSS_E_OBJECT_NOT_FOUND;
  }
  STDMETHODIMP Query(VSS_ID, VSS_OBJECT_TYPE, VSS_OBJECT_TYPE, IVssEnumObject**) override {
    return E_NOTIMPL;
  }
  STDMETHODIMP DeleteSnapshots(VSS_ID, VSS_OBJECT_TYPE, BOOL, LONG* deleted,
                               VSS_ID* not_deleted) override {
    if (deleted != nullptr) {
      *deleted = 0;
    }
    if (not_deleted != nullptr) {
      *not_deleted = GUID_NULL;
    }
    return S_OK;
  }
  STDMETHODIMP BeginPrepareSnapshot(VSS_ID, VSS_ID, VSS_PWSZ, LONG) override { return S_OK; }
  // Any volume, but only while the agent runs a Quiesce snapshot set: VSS
  // prefers a software provider that supports a volume over its own, and
  // another requester (Windows Server Backup) must keep getting the system
  // provider's real snapshots.
  STDMETHODIMP IsVolumeSupported(VSS_PWSZ, BOOL* supported) override {
    if (supported == nullptr) {
      return E_POINTER;
    }
    HANDLE frozen = open_event(event_frozen);
    *supported = frozen != nullptr ? TRUE : FALSE;
    if (frozen != nullptr) {
      ::CloseHandle(frozen);
    }
    return S_OK;
  }
  STDMETHODIMP IsVolumeSnapshotted(VSS_PWSZ, BOOL* present, LONG* compatibility) override {
    if (present != nullptr) {
      *present = FALSE;
    }
    if (compatibility != nullptr) {
      *compatibility = 0;
    }
    return S_OK;
  }
  STDMETHODIMP SetSnapshotProperty(VSS_ID, VSS_SNAPSHOT_PROPERTY_ID, VARIANT) override {
    return E_NOTIMPL;
  }
  STDMETHODIMP RevertToSnapshot(VSS_ID) override { return E_NOTIMPL; }
  STDMETHODIMP QueryRevertStatus(VSS_PWSZ, IVssAsync**) override { return E_NOTIMPL; }

  // IVssProviderCreateSnapshotSet
  STDMETHODIMP EndPrepareSnapshots(VSS_ID) override { return S_OK; }
  STDMETHODIMP PreCommitSnapshots(VSS_ID) override { return S_OK; }

  // VSS has frozen the writers and holds writes: tell the agent, wait for
  // its thaw, never longer than hold_timeout_ms (nothing stays frozen if
  // the agent dies or hangs).
  STDMETHODIMP CommitSnapshots(VSS_ID) override {
    HANDLE frozen = open_event(event_frozen);
    HANDLE thaw = open_event(event_thaw);
    HANDLE timed_out = open_event(event_timed_out);
    HRESULT result = S_OK;
    if (frozen == nullptr || thaw == nullptr) {
      // No agent waits for this hold: nothing to hold for.
      result = VSS_E_PROVIDER_VETO;
    } else {
      ::SetEvent(frozen);
      if (::WaitForSingleObject(thaw, hold_timeout_ms) != WAIT_OBJECT_0) {
        if (timed_out != nullptr) {
          ::SetEvent(timed_out);
        }
        result = VSS_E_HOLD_WRITES_TIMEOUT;
      }
    }
    for (HANDLE event : {frozen, thaw, timed_out}) {
      if (event != nullptr) {
        ::CloseHandle(event);
      }
    }
    return result;
  }
  STDMETHODIMP PostCommitSnapshots(VSS_ID, LONG) override { return S_OK; }
  STDMETHODIMP PreFinalCommitSnapshots(VSS_ID) override { return S_OK; }
  STDMETHODIMP PostFinalCommitSnapshots(VSS_ID) override { return S_OK; }
  STDMETHODIMP AbortSnapshots(VSS_ID) override { return S_OK; }

  // IVssProviderNotifications
  STDMETHODIMP OnLoad(IUnknown*) override { return S_OK; }
  STDMETHODIMP OnUnload(BOOL) override { return S_OK; }

 private:
  ~Provider() { --live_objects; }
  std::atomic<long> references_{1};
};

class ClassFactory final : public IClassFactory {
 public:
  STDMETHODIMP QueryInterface(REFIID iid, void** object) override {
    if (object == nullptr) {
      return E_POINTER;
    }
    if (iid == IID_IUnknown || iid == IID_IClassFactory) {
      *object = static_cast<IClassFactory*>(this);
      return S_OK;
    }
    *object = nullptr;
    return E_NOINTERFACE;
  }
  // A static object: its lifetime is the DLL's.
  STDMETHODIMP_(ULONG) AddRef() override { return 2; }
  STDMETHODIMP_(ULONG) Release() override { return 1; }
  STDMETHODIMP CreateInstance(IUnknown* outer, REFIID iid, void** object) override {
    if (object == nullptr) {
      return E_POINTER;
    }
    *object = nullptr;
    if (outer != nullptr) {
      return CLASS_E_NOAGGREGATION;
    }
    auto* provider = new (std::nothrow) Provider();
    if (provider == nullptr) {
      return E_OUTOFMEMORY;
    }
    const HRESULT hr = provider->QueryInterface(iid, object);
    provider->Release();
    return hr;
  }
  STDMETHODIMP LockServer(BOOL lock) override {
    lock ? ++server_locks : --server_locks;
    return S_OK;
  }
};

#pragma GCC diagnostic pop

ClassFactory factory;

std::wstring module_path() {
  std::array<wchar_t, MAX_PATH> path{};
  const DWORD n = ::GetModuleFileNameW(this_module, path.data(), static_cast<DWORD>(path.size()));
  return std::wstring(path.data(), n < path.size() ? n : 0);
}

LONG set_value(HKEY root, const std::wstring& key, const wchar_t* name, const std::wstring& value) {
  HKEY handle = nullptr;
  LONG status = ::RegCreateKeyExW(root, key.c_str(), 0, nullptr, 0, KEY_WRITE, nullptr, &handle,
                                  nullptr);
  if (status != ERROR_SUCCESS) {
    return status;
  }
  status = ::RegSetValueExW(handle, name, 0, REG_SZ, reinterpret_cast<const BYTE*>(value.c_str()),
                            static_cast<DWORD>((value.size() + 1) * sizeof(wchar_t)));
  ::RegCloseKey(handle);
  return status;
}

const std::wstring clsid_key = std::wstring(L"Software\\Classes\\CLSID\\") + provider_clsid_text;
const std::wstring appid_key = std::wstring(L"Software\\Classes\\AppID\\") + provider_clsid_text;

HRESULT with_vss_admin(HRESULT (*action)(IVssAdmin*)) {
  const HRESULT init = ::CoInitializeEx(nullptr, COINIT_MULTITHREADED);
  IVssAdmin* admin = nullptr;
  HRESULT hr = ::CoCreateInstance(CLSID_VSSCoordinator, nullptr, CLSCTX_ALL, __uuidof(IVssAdmin),
                                  reinterpret_cast<void**>(&admin));
  if (SUCCEEDED(hr)) {
    hr = action(admin);
    admin->Release();
  }
  if (SUCCEEDED(init)) {
    ::CoUninitialize();
  }
  return hr;
}

}  // namespace

extern "C" {

BOOL WINAPI DllMain(HINSTANCE instance, DWORD reason, LPVOID) {
  if (reason == DLL_PROCESS_ATTACH) {
    this_module = instance;
    ::DisableThreadLibraryCalls(instance);
  }
  return TRUE;
}

STDAPI DllGetClassObject(REFCLSID clsid, REFIID iid, void** object) {
  if (object == nullptr) {
    return E_POINTER;
  }
  *object = nullptr;
  if (clsid != provider_clsid) {
    return CLASS_E_CLASSNOTAVAILABLE;
  }
  return factory.QueryInterface(iid, object);
}

STDAPI DllCanUnloadNow() { return live_objects == 0 && server_locks == 0 ? S_OK : S_FALSE; }

// The COM class, hosted in process or by dllhost.exe (DllSurrogate, for a
// caller that activates it out of process), then the provider with VSS.
// Any failure undoes what was written and is returned to regsvr32/the MSI.
STDAPI DllRegisterServer() {
  const auto path = module_path();
  if (path.empty()) {
    return HRESULT_FROM_WIN32(::GetLastError());
  }
  for (LONG status :
       {set_value(HKEY_LOCAL_MACHINE, clsid_key, nullptr, provider_name),
        set_value(HKEY_LOCAL_MACHINE, clsid_key, L"AppID", provider_clsid_text),
        set_value(HKEY_LOCAL_MACHINE, clsid_key + L"\\InprocServer32", nullptr, path),
        set_value(HKEY_LOCAL_MACHINE, clsid_key + L"\\InprocServer32", L"ThreadingModel", L"Both"),
        set_value(HKEY_LOCAL_MACHINE, appid_key, nullptr, provider_name),
        set_value(HKEY_LOCAL_MACHINE, appid_key, L"DllSurrogate", L"")}) {
    if (status != ERROR_SUCCESS) {
      ::RegDeleteTreeW(HKEY_LOCAL_MACHINE, clsid_key.c_str());
      ::RegDeleteTreeW(HKEY_LOCAL_MACHINE, appid_key.c_str());
      return HRESULT_FROM_WIN32(static_cast<DWORD>(status));
    }
  }
  const HRESULT hr = with_vss_admin([](IVssAdmin* admin) {
    const HRESULT registered = admin->RegisterProvider(
        provider_id, provider_clsid, const_cast<VSS_PWSZ>(provider_name), VSS_PROV_SOFTWARE,
        const_cast<VSS_PWSZ>(provider_version), provider_version_id);
    return registered == VSS_E_PROVIDER_ALREADY_REGISTERED ? S_OK : registered;
  });
  if (FAILED(hr)) {
    ::RegDeleteTreeW(HKEY_LOCAL_MACHINE, clsid_key.c_str());
    ::RegDeleteTreeW(HKEY_LOCAL_MACHINE, appid_key.c_str());
  }
  return hr;
}

// The same for the MSI (packaging/windows): a deferred custom action calls
// a function of an installed DLL as UINT __stdcall f(MSIHANDLE) and wants a
// Windows error code back, not an HRESULT. MSIHANDLE is an unsigned long
// (msi.h); the handle is not used.
UINT __stdcall QuiesceMsiRegister(unsigned long) {
  return SUCCEEDED(DllRegisterServer()) ? ERROR_SUCCESS : ERROR_INSTALL_FAILURE;
}

STDAPI DllUnregisterServer() {
  const HRESULT hr = with_vss_admin([](IVssAdmin* admin) {
    const HRESULT removed = admin->UnregisterProvider(provider_id);
    return removed == VSS_E_PROVIDER_NOT_REGISTERED ? S_OK : removed;
  });
  ::RegDeleteTreeW(HKEY_LOCAL_MACHINE, clsid_key.c_str());
  ::RegDeleteTreeW(HKEY_LOCAL_MACHINE, appid_key.c_str());
  return hr;
}

UINT __stdcall QuiesceMsiUnregister(unsigned long) {
  return SUCCEEDED(DllUnregisterServer()) ? ERROR_SUCCESS : ERROR_INSTALL_FAILURE;
}

}  // extern "C"
