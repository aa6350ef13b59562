#pragma once
// What the `vss` writer (the requester, in the agent) and Quiesce's VSS
// provider (quiesce-vss-provider.dll, loaded by the VSS service) agree on:
// the provider's identity and the named events of one hold. Windows only.
//
// The hold, as in qemu-guest-agent's design: the requester calls
// DoSnapshotSet; VSS freezes the writers and flushes and holds the
// volumes, then calls the provider's CommitSnapshots, which sets `frozen`
// and waits for `thaw` (set by the agent at thaw or abort) or its own
// timeout (then it sets `timed_out`), so nothing stays frozen if the agent
// dies. Its return lets VSS release the volumes and thaw the writers.

#include <windows.h>

namespace quiesce::vss_provider {

// The provider's id, as given to IVssAdmin::RegisterProvider and to
// AddToSnapshotSet.
// {1c61feef-84ce-4dad-8a80-a94e475a2ad8}
inline constexpr GUID provider_id = {
    0x1c61feef, 0x84ce, 0x4dad, {0x8a, 0x80, 0xa9, 0x4e, 0x47, 0x5a, 0x2a, 0xd8}};
// The COM class VSS creates (in-proc, quiesce-vss-provider.dll).
// {ed09ee25-2535-46be-9b67-65cb9dbfdaac}
inline constexpr GUID provider_clsid = {
    0xed09ee25, 0x2535, 0x46be, {0x9b, 0x67, 0x65, 0xcb, 0x9d, 0xbf, 0xda, 0xac}};
// Its version id (RegisterProvider's ProviderVersionId).
// {a23aa7c9-400e-4e8e-a05f-846e79671103}
inline constexpr GUID provider_version_id = {
    0xa23aa7c9, 0x400e, 0x4e8e, {0xa0, 0x5f, 0x84, 0x6e, 0x79, 0x67, 0x11, 0x03}};

inline constexpr const wchar_t* provider_name = L"Quiesce VSS provider";
inline constexpr const wchar_t* provider_version = L"1.0";
inline constexpr const wchar_t* provider_clsid_text = L"{ed09ee25-2535-46be-9b67-65cb9dbfdaac}";
inline constexpr const wchar_t* provider_id_text = L"{1c61feef-84ce-4dad-8a80-a94e475a2ad8}";

// Global\ so the VSS service's session and the agent's see the same ones.
inline constexpr const wchar_t* event_frozen = L"Global\\QuiesceVssFrozen";
inline constexpr const wchar_t* event_thaw = L"Global\\QuiesceVssThaw";
inline constexpr const wchar_t* event_timed_out = L"Global\\QuiesceVssTimedOut";

// The provider's own limit on a hold: VSS itself gives up at 10 s
// (VSS_E_HOLD_WRITES_TIMEOUT); the provider lets go a little before, and
// whatever happens to the agent.
inline constexpr DWORD hold_timeout_ms = 9500;

// Where VSS keeps registered providers (what IVssAdmin::RegisterProvider
// writes): the agent checks this at start.
inline constexpr const wchar_t* providers_key =
    L"SYSTEM\\CurrentControlSet\\Services\\VSS\\Providers";

}  // namespace quiesce::vss_provider
