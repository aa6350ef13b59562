#include "platform/linux/libsystemd_api.hpp"

#include <atomic>
#include <stdexcept>
#include <string>

#include "platform/shared_library.hpp"

namespace quiesce::platform {

namespace {
std::atomic<bool> loaded{false};
}  // namespace

const LibsystemdApi& libsystemd() {
  // A throwing initializer leaves the static uninitialized: the next call
  // tries again (after the package was installed, say).
  static const LibsystemdApi api = [] {
    try {
      auto table = load_function_table<LibsystemdApi>(
          kLibsystemdSoname, [](FunctionResolver& resolve, LibsystemdApi& slots) {
#define QUIESCE_LIBSYSTEMD_RESOLVE(name) resolve(slots.name, #name);
            QUIESCE_LIBSYSTEMD_FUNCTIONS(QUIESCE_LIBSYSTEMD_RESOLVE)
#undef QUIESCE_LIBSYSTEMD_RESOLVE
            resolve(slots.sd_bus_object_vtable_format, "sd_bus_object_vtable_format");
          });
      loaded.store(true, std::memory_order_release);
      return table;
    } catch (const SharedLibraryError& e) {
      throw std::runtime_error(std::string(e.what()) + ": install the " + kLibsystemdPackage +
                               " package");
    }
  }();
  return api;
}

bool libsystemd_loaded() { return loaded.load(std::memory_order_acquire); }

}  // namespace quiesce::platform
