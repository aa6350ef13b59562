#pragma once
// A VM directory's vm.json, read the same way for every VM kind (and by the
// CLI, which picks the kind from it).

#include <filesystem>

#include <nlohmann/json.hpp>

#include "host-bridge/checkpoint/error.hpp"

namespace quiesce::host {

struct VmJson {
  std::filesystem::path dir;  // absolute
  std::filesystem::path path;  // <dir>/vm.json
  nlohmann::json json;         // discarded (is_discarded()) when it is not JSON
};

// not_found when there is no readable vm.json; malformed JSON is left to
// the kind's checks, which name the file.
[[nodiscard]] Expected<VmJson> read_vm_json(const std::filesystem::path& dir);

}  // namespace quiesce::host
