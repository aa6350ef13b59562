#include "writers/redis/hiredis_api.hpp"

#include <stdexcept>
#include <string>

#include "platform/shared_library.hpp"

namespace quiesce::writers::redis {

const HiredisApi& hiredis() {
  // A throwing initializer leaves the static uninitialized: the next call
  // tries again (after the package was installed, say).
  static const HiredisApi api = [] {
    try {
      return platform::load_function_table<HiredisApi>(
          kHiredisSoname, [](platform::FunctionResolver& resolve, HiredisApi& table) {
#define QUIESCE_HIREDIS_RESOLVE(name) resolve(table.name, #name);
            QUIESCE_HIREDIS_FUNCTIONS(QUIESCE_HIREDIS_RESOLVE)
#undef QUIESCE_HIREDIS_RESOLVE
          });
    } catch (const platform::SharedLibraryError& e) {
      throw std::runtime_error(std::string("redis writer: ") + e.what() + ": install the " +
                               kHiredisPackage + " package");
    }
  }();
  return api;
}

}  // namespace quiesce::writers::redis
