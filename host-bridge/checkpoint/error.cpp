#include "host-bridge/checkpoint/error.hpp"

namespace quiesce::host {

const char* to_string(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::invalid_input: return "invalid_input";
    case ErrorKind::not_found: return "not_found";
    case ErrorKind::conflict: return "conflict";
    case ErrorKind::agent: return "agent";
    case ErrorKind::backend: return "backend";
    case ErrorKind::system: return "system";
  }
  return "system";
}

}  // namespace quiesce::host
