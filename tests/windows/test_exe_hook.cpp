// An .exe hook for hooks_windows_test.cpp: appends "<name> <argv[1]>
// <QUIESCE_PHASE> <QUIESCE_SESSION_ID>" to calls.log beside the hook
// directory it was copied into (the writer gives hooks a fixed
// environment, so the log's place cannot come from there).
#include <windows.h>

#include <array>
#include <cstdlib>
#include <filesystem>
#include <fstream>

int main(int argc, char** argv) {
  std::array<wchar_t, MAX_PATH> path{};
  const DWORD n = ::GetModuleFileNameW(nullptr, path.data(), static_cast<DWORD>(path.size()));
  const std::filesystem::path self(std::wstring(path.data(), n));
  const char* phase = std::getenv("QUIESCE_PHASE");
  const char* session = std::getenv("QUIESCE_SESSION_ID");
  std::ofstream log(self.parent_path().parent_path() / "calls.log", std::ios::app);
  log << self.stem().string() << " " << (argc > 1 ? argv[1] : "") << " "
      << (phase != nullptr ? phase : "") << " " << (session != nullptr ? session : "") << "\n";
  return log ? 0 : 1;
}
