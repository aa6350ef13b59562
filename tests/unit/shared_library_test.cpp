// SharedLibrary / load_function_table: the dlopen helper behind the lazily
// loaded database client libraries; and the writers that use it load their
// library when they are created, not when they are registered.
#include <dlfcn.h>
#include <string.h>
#include <unistd.h>

#include <string>

#include <doctest/doctest.h>

#include "platform/shared_library.hpp"
#include "quiesce/writer_registry.hpp"

using quiesce::platform::FunctionResolver;
using quiesce::platform::load_function_table;
using quiesce::platform::SharedLibrary;
using quiesce::platform::SharedLibraryError;

namespace {

struct LibcTable {
  decltype(&::getpid) getpid = nullptr;
  decltype(&::strlen) strlen = nullptr;
};

std::string load_error(const std::string& soname, bool with_missing_functions) {
  try {
    (void)load_function_table<LibcTable>(soname, [&](FunctionResolver& resolve, LibcTable& table) {
      resolve(table.getpid, "getpid");
      if (with_missing_functions) {
        resolve(table.strlen, "quiesce_no_such_function");
        resolve(table.strlen, "quiesce_nor_this_one");
      }
    });
  } catch (const SharedLibraryError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("a function table is typed from the declarations and callable") {
  const auto table =
      load_function_table<LibcTable>("libc.so.6", [](FunctionResolver& resolve, LibcTable& t) {
        resolve(t.getpid, "getpid");
        resolve(t.strlen, "strlen");
      });
  REQUIRE(static_cast<bool>(table.getpid));
  CHECK(table.getpid() == ::getpid());
  CHECK(table.strlen("quiesce") == 7);
}

TEST_CASE("a missing library is named with the loader's reason") {
  const auto error = load_error("libquiesce-absent.so.0", false);
  CHECK(error.rfind("cannot load libquiesce-absent.so.0 (", 0) == 0);
  CHECK(error.find("No such file") != std::string::npos);
}

TEST_CASE("every missing function is named in one error") {
  const auto error = load_error("libc.so.6", true);
  CHECK(error.rfind("cannot load libc.so.6 (", 0) == 0);
  CHECK(error.find("quiesce_no_such_function, quiesce_nor_this_one") != std::string::npos);
}

TEST_CASE("a library object closes on destruction and moves") {
  SharedLibrary library("libc.so.6");
  CHECK(library.address("getpid") != nullptr);
  CHECK(library.address("quiesce_no_such_function") == nullptr);
  SharedLibrary moved(std::move(library));
  CHECK(moved.name() == "libc.so.6");
  CHECK(moved.address("getpid") != nullptr);
}

TEST_CASE("database writers load their client library when created") {
  quiesce::WriterRegistry registry;
  quiesce::register_builtin_writers(registry);
  struct Case {
    std::string type;
    nlohmann::json options;
    std::string soname;
  };
  // Creation loads the library and resolves every function the writer
  // calls (the -dev packages the build needs pull in the runtime ones).
  for (const auto& [type, options, soname] : {
           Case{"postgres", nlohmann::json::object(), "libpq.so.5"},
           Case{"mariadb", nlohmann::json::object(), "libmariadb.so.3"},
           Case{"redis", {{"socket", "/nonexistent/redis.sock"}}, "libhiredis.so.0.14"},
       }) {
    CAPTURE(type);
    const auto* writer_type = registry.find(type);
    REQUIRE(writer_type != nullptr);
    quiesce::WriterSpec spec{type, "db", quiesce::Level::database, options};
    CHECK(writer_type->create(spec, quiesce::WriterEnvironment{}) != nullptr);
    void* handle = ::dlopen(soname.c_str(), RTLD_NOW | RTLD_NOLOAD);
    CHECK(handle != nullptr);
    if (handle != nullptr) {
      ::dlclose(handle);
    }
  }
}
