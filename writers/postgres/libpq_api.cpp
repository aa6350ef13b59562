#include "writers/postgres/libpq_api.hpp"

#include <stdexcept>
#include <string>

#include "platform/shared_library.hpp"

namespace quiesce::writers::postgres {

const LibpqApi& libpq() {
  // A throwing initializer leaves the static uninitialized: the next call
  // tries again (after the package was installed, say).
  static const LibpqApi api = [] {
    try {
      return platform::load_function_table<LibpqApi>(
          kLibpqSoname, [](platform::FunctionResolver& resolve, LibpqApi& table) {
#define QUIESCE_LIBPQ_RESOLVE(name) resolve(table.name, #name);
            QUIESCE_LIBPQ_FUNCTIONS(QUIESCE_LIBPQ_RESOLVE)
#undef QUIESCE_LIBPQ_RESOLVE
          });
    } catch (const platform::SharedLibraryError& e) {
      throw std::runtime_error(std::string("postgres writer: ") + e.what() + ": install the " +
                               kLibpqPackage + " package");
    }
  }();
  return api;
}

}  // namespace quiesce::writers::postgres
