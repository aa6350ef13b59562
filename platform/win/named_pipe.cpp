#include "platform/win/named_pipe.hpp"

#include <windows.h>
#include <sddl.h>

#include <vector>

#include "platform/win/win_error.hpp"

namespace quiesce::platform::win {

namespace {

// Protected (P: no inherited entries), generic all to SYSTEM (SY) and the
// built-in Administrators (BA), nothing to anyone else.
constexpr const wchar_t* pipe_sddl = L"D:P(A;;GA;;;SY)(A;;GA;;;BA)";

constexpr DWORD pipe_buffer_bytes = 64 * 1024;

std::string account_of(PSID sid) {
  wchar_t name[256];
  wchar_t domain[256];
  DWORD name_size = 256;
  DWORD domain_size = 256;
  SID_NAME_USE use{};
  if (!::LookupAccountSidW(nullptr, sid, name, &name_size, domain, &domain_size, &use)) {
    wchar_t* text = nullptr;
    if (::ConvertSidToStringSidW(sid, &text)) {
      std::string out = narrow(text);
      ::LocalFree(text);
      return out;
    }
    return "unknown account";
  }
  const std::string user = narrow(std::wstring(name, name_size));
  return domain_size > 0 ? narrow(std::wstring(domain, domain_size)) + "\\" + user : user;
}

}  // namespace

void* create_pipe_instance(const std::string& name, bool first, std::string& error) {
  PSECURITY_DESCRIPTOR descriptor = nullptr;
  if (!::ConvertStringSecurityDescriptorToSecurityDescriptorW(pipe_sddl, SDDL_REVISION_1, &descriptor, nullptr)) {
    error = "cannot build the pipe's access list: " + last_error_text();
    return nullptr;
  }
  SECURITY_ATTRIBUTES attributes{sizeof(SECURITY_ATTRIBUTES), descriptor, FALSE};
  const HANDLE pipe = ::CreateNamedPipeW(
      widen(name).c_str(), PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED | (first ? FILE_FLAG_FIRST_PIPE_INSTANCE : 0),
      PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS, PIPE_UNLIMITED_INSTANCES,
      pipe_buffer_bytes, pipe_buffer_bytes, 0, &attributes);
  const DWORD code = ::GetLastError();
  ::LocalFree(descriptor);
  if (pipe == INVALID_HANDLE_VALUE) {
    error = code == ERROR_ACCESS_DENIED && first
                ? "another process already serves this pipe (" + error_text(code) + ")"
                : error_text(code);
    return nullptr;
  }
  return pipe;
}

PipeClient identify_pipe_client(void* pipe) {
  PipeClient client;
  ULONG pid = 0;
  if (::GetNamedPipeClientProcessId(pipe, &pid)) {
    client.pid = pid;
  }
  if (!::ImpersonateNamedPipeClient(pipe)) {
    client.error = "cannot impersonate the client: " + last_error_text();
    return client;
  }
  HANDLE token = nullptr;
  // OpenAsSelf: the token is read with the agent's rights, not the client's.
  const BOOL opened = ::OpenThreadToken(::GetCurrentThread(), TOKEN_QUERY, TRUE, &token);
  const DWORD open_error = ::GetLastError();
  // Back to the agent's own identity before anything else runs on this thread.
  if (!::RevertToSelf()) {
    // Running on as the client would be a privilege mix-up: stop here.
    ::FatalAppExitW(0, L"quiesce-agent: RevertToSelf failed after identifying a pipe client");
  }
  if (!opened) {
    client.error = "cannot read the client's token: " + error_text(open_error);
    return client;
  }
  DWORD size = 0;
  ::GetTokenInformation(token, TokenUser, nullptr, 0, &size);
  std::vector<unsigned char> buffer(size);
  if (size == 0 || !::GetTokenInformation(token, TokenUser, buffer.data(), size, &size)) {
    client.error = "cannot read the client's account: " + last_error_text();
    ::CloseHandle(token);
    return client;
  }
  PSID user = reinterpret_cast<TOKEN_USER*>(buffer.data())->User.Sid;
  client.account = account_of(user);
  BOOL administrator = FALSE;
  unsigned char administrators[SECURITY_MAX_SID_SIZE];
  DWORD sid_size = sizeof administrators;
  if (::CreateWellKnownSid(WinBuiltinAdministratorsSid, nullptr, administrators, &sid_size)) {
    // The token is an impersonation token (OpenThreadToken while
    // impersonating), which is what CheckTokenMembership wants.
    if (!::CheckTokenMembership(token, administrators, &administrator)) {
      administrator = FALSE;
    }
  }
  client.privileged = ::IsWellKnownSid(user, WinLocalSystemSid) || administrator != FALSE;
  ::CloseHandle(token);
  return client;
}

}  // namespace quiesce::platform::win
