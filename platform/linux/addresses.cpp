#include "platform/addresses.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

namespace quiesce::platform {

bool is_ip_address_literal(const std::string& text) {
  in6_addr scratch{};
  return ::inet_pton(AF_INET, text.c_str(), &scratch) == 1 ||
         ::inet_pton(AF_INET6, text.c_str(), &scratch) == 1;
}

}  // namespace quiesce::platform
