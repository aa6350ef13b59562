#pragma once
// Windows error codes as text: the one place platform/win turns a
// GetLastError() value into the message its errors carry.

#include <string>

namespace quiesce::platform::win {

// "Access is denied. (error 5)": FormatMessage's text, trimmed, with the
// code, so a message is useful even where the system has no text for it.
[[nodiscard]] std::string error_text(unsigned long code);
// error_text(GetLastError()).
[[nodiscard]] std::string last_error_text();

// UTF-8 <-> UTF-16 for the W functions: paths and names cross the wire and
// the config as UTF-8.
[[nodiscard]] std::wstring widen(const std::string& utf8);
[[nodiscard]] std::string narrow(const std::wstring& utf16);

}  // namespace quiesce::platform::win
