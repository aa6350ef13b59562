#pragma once
// Network address checks the config needs without pulling in Asio.

#include <string>

namespace quiesce::platform {

// True when `text` is a literal IPv4 or IPv6 address (no name resolution).
[[nodiscard]] bool is_ip_address_literal(const std::string& text);

}  // namespace quiesce::platform
