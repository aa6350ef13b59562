#pragma once
// A shared library opened at run time (dlopen): the database client
// libraries, loaded the first time a writer that uses them is created so
// that an agent without database writers never maps them (nor the TLS,
// Kerberos and LDAP libraries they pull in), and writer plugins.
//
// RTLD_NOW: an unresolved symbol fails at load, never in the middle of a
// freeze. RTLD_LOCAL: one library's symbols never satisfy another's.

#include <stdexcept>
#include <string>
#include <vector>

namespace quiesce::platform {

// Why a library could not be loaded or lacks a function:
// what() is "cannot load <library> (<reason>)".
class SharedLibraryError : public std::runtime_error {
 public:
  SharedLibraryError(const std::string& library, std::string reason);
  // dlerror's text, or which functions are missing.
  [[nodiscard]] const std::string& reason() const { return reason_; }

 private:
  std::string reason_;
};

class SharedLibrary {
 public:
  // `name` is a soname ("libpq.so.5", searched for as the dynamic linker
  // does) or a path. Throws SharedLibraryError.
  explicit SharedLibrary(std::string name);
  ~SharedLibrary();
  SharedLibrary(const SharedLibrary&) = delete;
  SharedLibrary& operator=(const SharedLibrary&) = delete;
  SharedLibrary(SharedLibrary&& other) noexcept;
  SharedLibrary& operator=(SharedLibrary&& other) noexcept;

  [[nodiscard]] const std::string& name() const { return name_; }
  // The address of `symbol`, nullptr when the library has none.
  [[nodiscard]] void* address(const char* symbol) const;

  // Leaves the library mapped until the process exits, for tables of
  // function pointers that live as long as the process: no dlclose at exit
  // while a writer thread may still be inside the library.
  void keep_loaded() { keep_loaded_ = true; }

 private:
  std::string name_;
  void* handle_ = nullptr;
  bool keep_loaded_ = false;
};

// Fills typed function pointers from one library and remembers which
// functions it lacks, so that one error names all of them.
class FunctionResolver {
 public:
  explicit FunctionResolver(const SharedLibrary& library) : library_(library) {}

  // `slot` is a function pointer, typed from the vendor's declaration
  // (decltype(&::PQconnectPoll)); it is nullptr when `symbol` is missing.
  template <typename FunctionPointer>
  void operator()(FunctionPointer& slot, const char* symbol) {
    // POSIX guarantees that dlsym's result converts to a function pointer.
    slot = reinterpret_cast<FunctionPointer>(library_.address(symbol));
    if (slot == nullptr) {
      missing_.emplace_back(symbol);
    }
  }

  [[nodiscard]] const std::vector<std::string>& missing() const { return missing_; }
  // Throws SharedLibraryError naming every missing function.
  void throw_if_missing() const;

 private:
  const SharedLibrary& library_;
  std::vector<std::string> missing_;
};

// Opens `soname`, has `resolve_all(FunctionResolver&, Table&)` fill a
// table of function pointers, and keeps the library loaded for the rest of
// the process. Throws SharedLibraryError when the library or any function
// is missing.
template <typename Table, typename ResolveAll>
[[nodiscard]] Table load_function_table(const std::string& soname, ResolveAll resolve_all) {
  SharedLibrary library(soname);
  FunctionResolver resolver(library);
  Table table{};
  resolve_all(resolver, table);
  resolver.throw_if_missing();
  library.keep_loaded();
  return table;
}

}  // namespace quiesce::platform
