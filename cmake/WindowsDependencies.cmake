# The header-only dependencies of the Windows build (docs/windows.md), taken
# from the Debian -dev packages the Linux build uses: Boost (Asio, Beast),
# nlohmann_json, spdlog with fmt in header-only mode, doctest. Their headers
# are plain C++ and compile with the cross compiler; /usr/include itself is
# never put on the include path (glibc's headers would shadow mingw's), only
# a directory of links to these few folders.
set(QUIESCE_WIN_DEPS_INCLUDE "${PROJECT_BINARY_DIR}/win-deps/include")
file(MAKE_DIRECTORY "${QUIESCE_WIN_DEPS_INCLUDE}")
foreach(dep IN ITEMS boost nlohmann spdlog fmt doctest)
  if(NOT EXISTS "/usr/include/${dep}")
    message(FATAL_ERROR "/usr/include/${dep} is missing: run packaging/dev.sh deps")
  endif()
  file(CREATE_LINK "/usr/include/${dep}" "${QUIESCE_WIN_DEPS_INCLUDE}/${dep}" SYMBOLIC)
endforeach()

# Every Windows translation unit: the Windows 7 / Server 2008 R2 API level
# (what Asio asks for; MIB_IF_ROW2, GetSystemTimePreciseAsFileTime need
# 0x0601 or later; the agent targets Server 2012 and up), the lean
# windows.h, and no min/max macros breaking std::min.
add_compile_definitions(_WIN32_WINNT=0x0601 WIN32_LEAN_AND_MEAN NOMINMAX)

# std::counting_semaphore on winpthreads' sem_t instead of libstdc++'s atomic
# wait. Without futexes, GCC 12.2's atomic wait loses wakeups (GCC PR 106183,
# fixed in 12.3 and 13: __waiter_pool::_M_do_wait does not re-check the value
# under the pool's mutex and _M_notify does not take it). std::stop_callback's
# destructor waits on such a semaphore while request_stop() runs the callback
# in another thread, which is exactly what leaving a condition_variable_any
# wait with a stop_token does when the stop wakes it (the coordinator's
# watchdog, every writer worker): now and then that thread hung forever, and
# the engine tests stalled in one wine process after some dozens of
# coordinators (docs/windows.md). Real Windows has the same bug; the fix is
# the toolchain's, for every translation unit (it changes std::stop_callback's
# layout, so all must agree).
add_compile_definitions(_GLIBCXX_USE_POSIX_SEMAPHORE=1)

add_library(Boost::headers INTERFACE IMPORTED)
target_include_directories(Boost::headers SYSTEM INTERFACE "${QUIESCE_WIN_DEPS_INCLUDE}")
target_link_libraries(Boost::headers INTERFACE ws2_32 mswsock)

add_library(nlohmann_json::nlohmann_json INTERFACE IMPORTED)
target_include_directories(nlohmann_json::nlohmann_json SYSTEM INTERFACE "${QUIESCE_WIN_DEPS_INCLUDE}")

# Debian's spdlog is built against an external fmt (tweakme.h says so);
# with FMT_HEADER_ONLY fmt compiles inline too, so no library is linked.
add_library(spdlog::spdlog INTERFACE IMPORTED)
target_include_directories(spdlog::spdlog SYSTEM INTERFACE "${QUIESCE_WIN_DEPS_INCLUDE}")
# Log lines end in "\n" as on Linux (spdlog's Windows default is "\r\n"): one
# format for the log file, its readers and the shared tests.
target_compile_definitions(spdlog::spdlog INTERFACE FMT_HEADER_ONLY=1 [[SPDLOG_EOL="\n"]])

add_library(doctest::doctest INTERFACE IMPORTED)
target_include_directories(doctest::doctest SYSTEM INTERFACE "${QUIESCE_WIN_DEPS_INCLUDE}")
