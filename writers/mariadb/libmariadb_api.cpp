#include "writers/mariadb/libmariadb_api.hpp"

#include <stdexcept>
#include <string>

#include "platform/shared_library.hpp"

namespace quiesce::writers::mariadb {

const LibmariadbApi& libmariadb() {
  // A throwing initializer leaves the static uninitialized: the next call
  // tries again (after the package was installed, say).
  static const LibmariadbApi api = [] {
    try {
      return platform::load_function_table<LibmariadbApi>(
          kLibmariadbSoname, [](platform::FunctionResolver& resolve, LibmariadbApi& table) {
#define QUIESCE_LIBMARIADB_RESOLVE(name) resolve(table.name, #name);
            QUIESCE_LIBMARIADB_FUNCTIONS(QUIESCE_LIBMARIADB_RESOLVE)
#undef QUIESCE_LIBMARIADB_RESOLVE
          });
    } catch (const platform::SharedLibraryError& e) {
      throw std::runtime_error(std::string("mariadb writer: ") + e.what() + ": install the " +
                               kLibmariadbPackage + " package");
    }
  }();
  return api;
}

}  // namespace quiesce::writers::mariadb
