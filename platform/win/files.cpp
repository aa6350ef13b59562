#include "platform/files.hpp"

#include <windows.h>

#include <filesystem>

#include "platform/win/win_error.hpp"

// Windows: the same guarantee as platform/linux/files.cpp with the calls
// NTFS offers for it: a temp file beside the target, FlushFileBuffers, then
// MoveFileExW(REPLACE_EXISTING | WRITE_THROUGH), which replaces the target
// in one step and returns only once the rename is on disk. `mode` has no
// meaning here: a new file inherits its directory's ACL, which for the
// agent's state directory (under ProgramData, set by the installer) admits
// only SYSTEM and Administrators.

namespace quiesce::platform {

namespace {

class Handle {
 public:
  explicit Handle(HANDLE handle) : handle_(handle) {}
  ~Handle() {
    if (valid()) {
      ::CloseHandle(handle_);
    }
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  [[nodiscard]] bool valid() const { return handle_ != INVALID_HANDLE_VALUE; }
  [[nodiscard]] HANDLE get() const { return handle_; }
  void close() {
    if (valid()) {
      ::CloseHandle(handle_);
      handle_ = INVALID_HANDLE_VALUE;
    }
  }

 private:
  HANDLE handle_;
};

bool write_all(HANDLE handle, const std::string& content) {
  std::size_t done = 0;
  while (done < content.size()) {
    const auto chunk = static_cast<DWORD>(std::min<std::size_t>(content.size() - done, 1U << 30));
    DWORD written = 0;
    if (!::WriteFile(handle, content.data() + done, chunk, &written, nullptr) || written == 0) {
      return false;
    }
    done += written;
  }
  return true;
}

}  // namespace

bool write_file_atomically(const std::string& path, const std::string& content, std::string* error,
                           unsigned /*mode*/) {
  const std::filesystem::path target(win::widen(path));
  const auto tmp = target.parent_path() / (L"." + target.filename().wstring() + L".tmp");
  auto fail = [&](const std::string& what) {
    if (error != nullptr) {
      *error = what + ": " + win::last_error_text();
    }
    ::DeleteFileW(tmp.c_str());
    return false;
  };
  Handle file(::CreateFileW(tmp.c_str(), GENERIC_WRITE, 0, nullptr, CREATE_ALWAYS,
                            FILE_ATTRIBUTE_NORMAL, nullptr));
  if (!file.valid()) {
    return fail("cannot write " + win::narrow(tmp.wstring()));
  }
  if (!write_all(file.get(), content) || !::FlushFileBuffers(file.get())) {
    const DWORD saved = ::GetLastError();
    file.close();
    ::SetLastError(saved);
    return fail("cannot write " + win::narrow(tmp.wstring()));
  }
  file.close();
  if (!::MoveFileExW(tmp.c_str(), target.c_str(), MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH)) {
    return fail("cannot replace " + path);
  }
  return true;
}

bool read_whole_file(const std::string& path, std::string& content) {
  Handle file(::CreateFileW(win::widen(path).c_str(), GENERIC_READ,
                            FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, nullptr,
                            OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, nullptr));
  if (!file.valid()) {
    return false;
  }
  std::string out;
  char buffer[65536];
  for (;;) {
    DWORD got = 0;
    if (!::ReadFile(file.get(), buffer, sizeof buffer, &got, nullptr)) {
      return false;
    }
    if (got == 0) {
      break;
    }
    out.append(buffer, got);
  }
  content = std::move(out);
  return true;
}

}  // namespace quiesce::platform
