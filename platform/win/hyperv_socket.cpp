#include "platform/win/hyperv_socket.hpp"

// winsock2 before windows.h (hvsocket.h needs ws2def.h's ADDRESS_FAMILY).
#include <winsock2.h>
#include <windows.h>
#include <hvsocket.h>

#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "platform/win/win_error.hpp"

// Debian 12's mingw-w64 has hvsocket.h (HV_PROTOCOL_RAW, SOCKADDR_HV, the
// HV_GUID_* ids) but its ws2def.h stops at AF_MAX 33 and lacks AF_HYPERV,
// which the Windows SDK's ws2def.h defines as 34 (Microsoft's "Make your own
// integration services" page uses it with SOCKADDR_HV).
#ifndef AF_HYPERV
#define AF_HYPERV 34
#endif

namespace quiesce::platform::win {

static_assert(sizeof(SOCKADDR_HV) == hyperv_address_size);

int hyperv_address_family() { return AF_HYPERV; }
int hyperv_protocol() { return HV_PROTOCOL_RAW; }

namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

// "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" into a GUID: Data1..Data3 are
// numbers (stored little-endian), the last 8 bytes are in text order.
GUID parse_guid(const std::string& text) {
  if (text.size() != 36 || text[8] != '-' || text[13] != '-' || text[18] != '-' || text[23] != '-') {
    throw std::invalid_argument("not a GUID: '" + text + "'");
  }
  unsigned char bytes[16];
  std::size_t at = 0;
  for (unsigned char& byte : bytes) {
    if (text[at] == '-') {
      ++at;
    }
    const int high = hex_value(text[at]);
    const int low = hex_value(text[at + 1]);
    if (high < 0 || low < 0) {
      throw std::invalid_argument("not a GUID: '" + text + "'");
    }
    byte = static_cast<unsigned char>(high * 16 + low);
    at += 2;
  }
  GUID guid{};
  guid.Data1 = (static_cast<unsigned long>(bytes[0]) << 24) | (static_cast<unsigned long>(bytes[1]) << 16) |
               (static_cast<unsigned long>(bytes[2]) << 8) | bytes[3];
  guid.Data2 = static_cast<unsigned short>((bytes[4] << 8) | bytes[5]);
  guid.Data3 = static_cast<unsigned short>((bytes[6] << 8) | bytes[7]);
  std::memcpy(guid.Data4, bytes + 8, 8);
  return guid;
}

std::string guid_text(const GUID& guid) {
  char text[40];
  std::snprintf(text, sizeof text, "%08lx-%04x-%04x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                static_cast<unsigned long>(guid.Data1), guid.Data2, guid.Data3, guid.Data4[0], guid.Data4[1],
                guid.Data4[2], guid.Data4[3], guid.Data4[4], guid.Data4[5], guid.Data4[6], guid.Data4[7]);
  return text;
}

}  // namespace

std::array<unsigned char, hyperv_address_size> hyperv_listen_address(const std::string& service_id) {
  SOCKADDR_HV address{};
  address.Family = AF_HYPERV;
  address.VmId = HV_GUID_WILDCARD;
  address.ServiceId = parse_guid(service_id);
  std::array<unsigned char, hyperv_address_size> bytes{};
  std::memcpy(bytes.data(), &address, sizeof address);
  return bytes;
}

std::string describe_hyperv_peer(const void* address, std::size_t size) {
  if (address == nullptr || size < sizeof(SOCKADDR_HV)) {
    return "hyperv (unknown address)";
  }
  SOCKADDR_HV peer{};
  std::memcpy(&peer, address, sizeof peer);
  if (peer.Family != AF_HYPERV) {
    return "hyperv (unknown address)";
  }
  return "hyperv vm " + guid_text(peer.VmId);
}

namespace {

// The WSAE names of the errors socket/bind/listen give for a missing or
// busy Hyper-V socket: what a reader searches for, and what wine's
// FormatMessage, which has no text for WSA codes, cannot tell.
const char* wsa_error_name(int wsa_error) {
  switch (wsa_error) {
    case WSAEAFNOSUPPORT:
      return "WSAEAFNOSUPPORT";
    case WSAEPROTONOSUPPORT:
      return "WSAEPROTONOSUPPORT";
    case WSAESOCKTNOSUPPORT:
      return "WSAESOCKTNOSUPPORT";
    case WSAEPROTOTYPE:
      return "WSAEPROTOTYPE";
    case WSAEINVAL:
      return "WSAEINVAL";
    case WSAEACCES:
      return "WSAEACCES";
    case WSAEADDRINUSE:
      return "WSAEADDRINUSE";
    case WSAEADDRNOTAVAIL:
      return "WSAEADDRNOTAVAIL";
    case WSANOTINITIALISED:
      return "WSANOTINITIALISED";
    default:
      return "WSA error";
  }
}

}  // namespace

std::string hyperv_socket_error(const std::string& call, int wsa_error) {
  return call + " failed with WSA error " + std::to_string(wsa_error) + " " + wsa_error_name(wsa_error) + ": " +
         error_text(static_cast<unsigned long>(wsa_error)) +
         " (Hyper-V sockets need Windows 10 or Windows Server 2016 or later running as a Hyper-V guest)";
}

}  // namespace quiesce::platform::win
