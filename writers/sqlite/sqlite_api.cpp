#include "writers/sqlite/sqlite_api.hpp"

#include <stdexcept>
#include <string>

#include "platform/shared_library.hpp"

namespace quiesce::writers::sqlite {

const SqliteApi& sqlite_api() {
  // A throwing initializer leaves the static uninitialized: the next call
  // tries again (after the package was installed, say).
  static const SqliteApi api = [] {
    try {
      return platform::load_function_table<SqliteApi>(
          kSqliteSoname, [](platform::FunctionResolver& resolve, SqliteApi& table) {
#define QUIESCE_SQLITE_RESOLVE(name) resolve(table.name, #name);
            QUIESCE_SQLITE_FUNCTIONS(QUIESCE_SQLITE_RESOLVE)
#undef QUIESCE_SQLITE_RESOLVE
          });
    } catch (const platform::SharedLibraryError& e) {
      throw std::runtime_error(std::string("sqlite writer: ") + e.what() + ": install the " +
                               kSqlitePackage + " package");
    }
  }();
  return api;
}

}  // namespace quiesce::writers::sqlite
