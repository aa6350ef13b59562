#include "platform/shared_library.hpp"

#include <windows.h>

#include <utility>

#include "platform/win/win_error.hpp"

// Windows: LoadLibraryExW. A name with a path separator is loaded from that
// path only (LOAD_WITH_ALTERED_SEARCH_PATH, so the DLLs it depends on are
// looked for beside it, as a plugin author expects); a bare name is looked
// for as the system does for LoadLibrary.

namespace quiesce::platform {

SharedLibraryError::SharedLibraryError(const std::string& library, std::string reason)
    : std::runtime_error("cannot load " + library + " (" + reason + ")"),
      reason_(std::move(reason)) {}

SharedLibrary::SharedLibrary(std::string name) : name_(std::move(name)) {
  const bool has_path = name_.find_first_of("/\\") != std::string::npos;
  // No "cannot find the DLL" dialog box from a service: errors come back here.
  const UINT previous_mode = ::SetErrorMode(SEM_FAILCRITICALERRORS | SEM_NOOPENFILEERRORBOX);
  HMODULE module = ::LoadLibraryExW(win::widen(name_).c_str(), nullptr,
                                    has_path ? LOAD_WITH_ALTERED_SEARCH_PATH : 0);
  const DWORD error = ::GetLastError();
  ::SetErrorMode(previous_mode);
  if (module == nullptr) {
    throw SharedLibraryError(name_, win::error_text(error));
  }
  handle_ = reinterpret_cast<void*>(module);
}

SharedLibrary::~SharedLibrary() {
  if (handle_ != nullptr && !keep_loaded_) {
    ::FreeLibrary(reinterpret_cast<HMODULE>(handle_));
  }
}

SharedLibrary::SharedLibrary(SharedLibrary&& other) noexcept
    : name_(std::move(other.name_)),
      handle_(std::exchange(other.handle_, nullptr)),
      keep_loaded_(other.keep_loaded_) {}

SharedLibrary& SharedLibrary::operator=(SharedLibrary&& other) noexcept {
  if (this != &other) {
    if (handle_ != nullptr && !keep_loaded_) {
      ::FreeLibrary(reinterpret_cast<HMODULE>(handle_));
    }
    name_ = std::move(other.name_);
    handle_ = std::exchange(other.handle_, nullptr);
    keep_loaded_ = other.keep_loaded_;
  }
  return *this;
}

void* SharedLibrary::address(const char* symbol) const {
  if (handle_ == nullptr) {
    return nullptr;
  }
  // GetProcAddress returns a FARPROC; the caller converts it back to the
  // function pointer type it declared (FunctionResolver).
  return reinterpret_cast<void*>(::GetProcAddress(reinterpret_cast<HMODULE>(handle_), symbol));
}

void FunctionResolver::throw_if_missing() const {
  if (missing_.empty()) {
    return;
  }
  std::string names;
  for (const auto& name : missing_) {
    names += (names.empty() ? "" : ", ") + name;
  }
  throw SharedLibraryError(library_.name(),
                           "it lacks " + names + "; an older version than the writer needs?");
}

}  // namespace quiesce::platform
