#include "platform/addresses.hpp"

#include <winsock2.h>
#include <ws2tcpip.h>

namespace quiesce::platform {

// inet_pton needs no WSAStartup: it parses, it does not touch the network.
bool is_ip_address_literal(const std::string& text) {
  in6_addr scratch{};
  return ::inet_pton(AF_INET, text.c_str(), &scratch) == 1 ||
         ::inet_pton(AF_INET6, text.c_str(), &scratch) == 1;
}

}  // namespace quiesce::platform
