#include "platform/scratch_directory.hpp"

#include <windows.h>

#include <cstdio>
#include <random>
#include <stdexcept>

#include "platform/win/win_error.hpp"

namespace quiesce::platform {

// Windows has no mkdtemp: a random name is tried with CreateDirectoryW,
// which fails with ERROR_ALREADY_EXISTS rather than reuse a directory
// another process made. The directory inherits %TEMP%'s access list, which
// is the user's own (SYSTEM's for a service).
std::filesystem::path make_scratch_directory(const std::string& prefix) {
  wchar_t temp_buffer[MAX_PATH + 1];
  const DWORD length = ::GetTempPathW(MAX_PATH + 1, temp_buffer);
  if (length == 0 || length > MAX_PATH) {
    throw std::runtime_error("cannot create a scratch directory: GetTempPathW failed: " +
                             win::last_error_text());
  }
  const std::filesystem::path temp(std::wstring(temp_buffer, length));
  std::random_device random;
  for (int attempt = 0; attempt < 100; ++attempt) {
    char suffix[20];
    std::snprintf(suffix, sizeof suffix, "-%08x%08x", random(), random());
    const auto candidate = temp / win::widen(prefix + suffix);
    if (::CreateDirectoryW(candidate.c_str(), nullptr)) {
      return candidate;
    }
    const DWORD error = ::GetLastError();
    if (error != ERROR_ALREADY_EXISTS) {
      throw std::runtime_error("cannot create a scratch directory " + candidate.string() + ": " +
                               win::error_text(error));
    }
  }
  throw std::runtime_error("cannot create a scratch directory in " + temp.string() +
                           ": 100 random names were all taken");
}

}  // namespace quiesce::platform
