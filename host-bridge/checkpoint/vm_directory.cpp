#include "host-bridge/checkpoint/vm_directory.hpp"

#include <string>

#include "platform/files.hpp"

namespace quiesce::host {

Expected<VmJson> read_vm_json(const std::filesystem::path& dir_in) {
  std::error_code ec;
  VmJson out;
  out.dir = std::filesystem::absolute(dir_in, ec);
  out.path = out.dir / "vm.json";
  std::string text;
  if (!platform::read_whole_file(out.path.string(), text)) {
    return Error{ErrorKind::not_found, out.path.string() + ": no such file (is " + out.dir.string() + " a VM directory?)"};
  }
  out.json = nlohmann::json::parse(text, nullptr, false);
  return out;
}

}  // namespace quiesce::host
