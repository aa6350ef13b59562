#pragma once
// Hyper-V sockets (AF_HYPERV): the host of a Hyper-V VM reaches a service
// in the guest by the VM's id and a service GUID, as vsock's CID and port.
// What the agent needs of them: the socket() arguments, the address it
// listens on, a peer's description, and an error that says what failed.
// mingw-w64 ships hvsocket.h (HV_PROTOCOL_RAW, SOCKADDR_HV, the HV_GUID_*
// ids) but not AF_HYPERV, which hyperv_socket.cpp defines (34, the SDK's
// value); nothing else of Hyper-V sockets is declared by this project.

#include <array>
#include <cstddef>
#include <string>

namespace quiesce::platform::win {

// socket(hyperv_address_family(), SOCK_STREAM, hyperv_protocol()).
[[nodiscard]] int hyperv_address_family();  // AF_HYPERV (34)
[[nodiscard]] int hyperv_protocol();        // HV_PROTOCOL_RAW (1)

// sizeof(SOCKADDR_HV): family, reserved, VmId, ServiceId.
inline constexpr std::size_t hyperv_address_size = 36;

// The SOCKADDR_HV a guest listens on for `service_id` (8-4-4-4-12 hex, as
// the config checked it): ServiceId that GUID, VmId HV_GUID_WILDCARD, the
// listener's address Microsoft documents for accepting from any partition.
// Inside a VM the only partition that can reach it is its parent, the
// host: Hyper-V sockets do not connect one guest to another.
// Throws std::invalid_argument when service_id is not such a GUID.
[[nodiscard]] std::array<unsigned char, hyperv_address_size> hyperv_listen_address(
    const std::string& service_id);

// "hyperv vm a42e7cda-d03f-480c-9cc2-a4de20abb878" for an accepted peer's
// SOCKADDR_HV, or "hyperv (unknown address)".
[[nodiscard]] std::string describe_hyperv_peer(const void* address, std::size_t size);

// Why a Hyper-V socket call failed, for the start error: the call, the
// WSA error by number and text, and what Hyper-V sockets need.
[[nodiscard]] std::string hyperv_socket_error(const std::string& call, int wsa_error);

}  // namespace quiesce::platform::win
