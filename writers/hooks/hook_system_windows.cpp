// The hooks writer on Windows (hook_system.hpp): hooks under %ProgramData%,
// an environment with what cmd.exe and PowerShell need, and no pipes to
// keep reading: Windows has no SIGPIPE (a helper that writes to a pipe
// nobody reads gets ERROR_NO_DATA and lives on), so run_subprocess never
// hands one over (platform/win/subprocess.cpp).
#include <windows.h>

#include <array>

#include "platform/trusted_file.hpp"
#include "platform/win/win_error.hpp"
#include "writers/hooks/hook_system.hpp"

namespace quiesce::writers::hooks {

namespace {

std::string windows_directory() {
  std::array<wchar_t, MAX_PATH> buffer{};
  const UINT n = ::GetSystemWindowsDirectoryW(buffer.data(), static_cast<UINT>(buffer.size()));
  if (n == 0 || n >= buffer.size()) {
    return "C:\\Windows";
  }
  return platform::win::narrow(std::wstring(buffer.data(), n));
}

std::string system_directory() {
  std::array<wchar_t, MAX_PATH> buffer{};
  const UINT n = ::GetSystemDirectoryW(buffer.data(), static_cast<UINT>(buffer.size()));
  if (n == 0 || n >= buffer.size()) {
    return windows_directory() + "\\System32";
  }
  return platform::win::narrow(std::wstring(buffer.data(), n));
}

// A system-wide variable of the agent's environment (set by Windows for
// every process, SYSTEM's included), or `fallback`.
std::string system_variable(const wchar_t* name, const std::string& fallback) {
  std::array<wchar_t, 32768> buffer{};
  const DWORD n = ::GetEnvironmentVariableW(name, buffer.data(), static_cast<DWORD>(buffer.size()));
  if (n == 0 || n >= buffer.size()) {
    return fallback;
  }
  return platform::win::narrow(std::wstring(buffer.data(), n));
}

std::string system_drive() { return windows_directory().substr(0, 2); }

std::string program_data() {
  return system_variable(L"ProgramData", system_drive() + "\\ProgramData");
}

}  // namespace

std::string default_hook_directory() { return program_data() + "\\Quiesce\\hooks.d"; }
// Where open-vm-tools for Windows looks for its legacy scripts.
std::string default_legacy_freeze_script() { return windows_directory() + "\\pre-freeze-script.bat"; }
std::string default_legacy_thaw_script() { return windows_directory() + "\\post-thaw-script.bat"; }

std::vector<std::string> hook_base_environment() {
  const auto windows = windows_directory();
  const auto system = system_directory();
  std::array<wchar_t, MAX_PATH + 1> temp{};
  const DWORD temp_length = ::GetTempPathW(static_cast<DWORD>(temp.size()), temp.data());
  std::string temp_dir = temp_length > 0 && temp_length < temp.size()
                             ? platform::win::narrow(std::wstring(temp.data(), temp_length))
                             : windows + "\\Temp";
  while (temp_dir.size() > 3 && temp_dir.back() == '\\') {
    temp_dir.pop_back();
  }
  // cmd.exe needs SystemRoot and COMSPEC; PowerShell modules need
  // PSModulePath's default, which it derives from SystemRoot.
  return {
      "PATH=" + system + ";" + windows + ";" + system + "\\Wbem;" + system +
          "\\WindowsPowerShell\\v1.0",
      "SystemRoot=" + windows,
      "windir=" + windows,
      "SystemDrive=" + system_drive(),
      "COMSPEC=" + system + "\\cmd.exe",
      "PATHEXT=.COM;.EXE;.BAT;.CMD;.VBS;.VBE;.JS;.JSE;.WSF;.WSH;.MSC",
      "ProgramData=" + program_data(),
      "TEMP=" + temp_dir,
      "TMP=" + temp_dir,
  };
}

std::string record_problem(const std::string& path) {
  auto trusted = platform::check_trusted_file(path, "record", platform::TrustRules{});
  return trusted.problem.empty() ? "" : "is not trusted (" + trusted.problem + ")";
}

struct HelperOutput::State {};

HelperOutput::HelperOutput() : state_(std::make_unique<State>()) {}
HelperOutput::~HelperOutput() = default;

std::function<void(platform::OutputStream, int)> HelperOutput::hand_over(
    std::shared_ptr<spdlog::logger>, std::string, std::string, std::string) {
  return {};
}

std::vector<std::uint64_t> HelperOutput::pipe_ids() const { return {}; }
void HelperOutput::forget_pipe_ids() {}

std::size_t reattach_helper_pipes(const nlohmann::json&, platform::LingeringOutput&,
                                  const std::shared_ptr<spdlog::logger>&, const std::string&) {
  return 0;  // no pipe is ever handed over on Windows, so a record lists none
}

}  // namespace quiesce::writers::hooks
