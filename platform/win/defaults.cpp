#include "platform/defaults.hpp"

#include <windows.h>

#include "platform/win/win_error.hpp"

namespace quiesce::platform {

namespace {

// %ProgramData% (C:\ProgramData): machine-wide data a service owns, what
// /etc and /var are to the Linux agent.
std::string program_data() {
  wchar_t buffer[MAX_PATH];
  const DWORD length = ::GetEnvironmentVariableW(L"ProgramData", buffer, MAX_PATH);
  if (length == 0 || length >= MAX_PATH) {
    return R"(C:\ProgramData)";
  }
  return win::narrow(std::wstring(buffer, length));
}

bool is_separator(char c) { return c == '\\' || c == '/'; }

}  // namespace

AgentDefaults agent_defaults() {
  const std::string base = program_data() + R"(\Quiesce)";
  return {base + R"(\agent.json)", base + R"(\state)", base + R"(\run)",
          R"(\\.\Global\org.qemu.guest_agent.0)"};
}

bool is_absolute_path(const std::string& path) {
  if (path.size() >= 3 && ((path[0] >= 'A' && path[0] <= 'Z') || (path[0] >= 'a' && path[0] <= 'z')) &&
      path[1] == ':' && is_separator(path[2])) {
    return true;
  }
  return path.size() >= 3 && is_separator(path[0]) && is_separator(path[1]) && !is_separator(path[2]);
}

}  // namespace quiesce::platform
