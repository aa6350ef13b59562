#include "platform/win/acl.hpp"

#include <windows.h>
#include <aclapi.h>

#include "platform/win/win_error.hpp"

namespace quiesce::platform::win {

namespace {

bool is_broad_group(PSID sid) {
  static const WELL_KNOWN_SID_TYPE broad[] = {WinWorldSid, WinAuthenticatedUserSid,
                                              WinBuiltinUsersSid, WinBuiltinGuestsSid,
                                              WinAnonymousSid};
  for (auto type : broad) {
    if (::IsWellKnownSid(sid, type)) {
      return true;
    }
  }
  return false;
}

bool is_trusted_owner(PSID owner) {
  if (::IsWellKnownSid(owner, WinLocalSystemSid) ||
      ::IsWellKnownSid(owner, WinBuiltinAdministratorsSid)) {
    return true;
  }
  HANDLE token = nullptr;
  if (!::OpenProcessToken(::GetCurrentProcess(), TOKEN_QUERY, &token)) {
    return false;
  }
  alignas(TOKEN_USER) BYTE buffer[sizeof(TOKEN_USER) + SECURITY_MAX_SID_SIZE];
  DWORD size = 0;
  const bool ok = ::GetTokenInformation(token, TokenUser, buffer, sizeof buffer, &size) != 0;
  ::CloseHandle(token);
  return ok && ::EqualSid(owner, reinterpret_cast<TOKEN_USER*>(buffer)->User.Sid);
}

}  // namespace

FileSecurity read_file_security(const std::string& path) {
  FileSecurity out;
  PSID owner = nullptr;
  PACL dacl = nullptr;
  PSECURITY_DESCRIPTOR descriptor = nullptr;
  std::wstring wide = widen(path);
  const DWORD status = ::GetNamedSecurityInfoW(wide.data(), SE_FILE_OBJECT,
                                               OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION,
                                               &owner, nullptr, &dacl, nullptr, &descriptor);
  if (status != ERROR_SUCCESS) {
    out.error = error_text(status);
    return out;
  }
  out.trusted_owner = owner != nullptr && is_trusted_owner(owner);
  out.has_access_list = dacl != nullptr;
  for (DWORD i = 0; dacl != nullptr && i < dacl->AceCount; ++i) {
    void* ace = nullptr;
    if (!::GetAce(dacl, i, &ace) || static_cast<ACE_HEADER*>(ace)->AceType != ACCESS_ALLOWED_ACE_TYPE) {
      continue;
    }
    auto* allowed = static_cast<ACCESS_ALLOWED_ACE*>(ace);
    if (is_broad_group(reinterpret_cast<PSID>(&allowed->SidStart))) {
      out.broad_read |= allowed->Mask;
    }
  }
  ::LocalFree(descriptor);
  return out;
}

bool grants_change(unsigned long rights) {
  return (rights & (GENERIC_WRITE | GENERIC_ALL | FILE_WRITE_DATA | FILE_APPEND_DATA | DELETE |
                    WRITE_DAC | WRITE_OWNER | FILE_ADD_FILE | FILE_ADD_SUBDIRECTORY |
                    FILE_DELETE_CHILD)) != 0;
}

}  // namespace quiesce::platform::win
