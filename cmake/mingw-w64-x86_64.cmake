# Cross-compiling the Windows agent on Debian with mingw-w64 (docs/windows.md).
#
#   cmake -S . -B build-win -DCMAKE_TOOLCHAIN_FILE=cmake/mingw-w64-x86_64.cmake
#
# The posix threads variant of g++ (g++-mingw-w64-x86-64-posix): the win32
# variant has no std::thread / std::mutex, which the coordinator needs. The
# runtime (libgcc, libstdc++, winpthread) is linked statically so the .exe and
# .dll files need no mingw DLL next to them, under wine or on a real guest.
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)

set(QUIESCE_MINGW_TRIPLE x86_64-w64-mingw32)
set(CMAKE_C_COMPILER ${QUIESCE_MINGW_TRIPLE}-gcc-posix)
set(CMAKE_CXX_COMPILER ${QUIESCE_MINGW_TRIPLE}-g++-posix)
set(CMAKE_RC_COMPILER ${QUIESCE_MINGW_TRIPLE}-windres)

# Only the cross toolchain's own sysroot is searched for libraries and
# headers: nothing from the Linux /usr/lib may leak into a Windows binary.
# (The header-only dependencies come from a directory of links the build
# makes, cmake/WindowsDependencies.cmake.)
set(CMAKE_FIND_ROOT_PATH /usr/${QUIESCE_MINGW_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

set(CMAKE_EXE_LINKER_FLAGS_INIT "-static -static-libgcc -static-libstdc++")
set(CMAKE_SHARED_LINKER_FLAGS_INIT "-static -static-libgcc -static-libstdc++")
set(CMAKE_MODULE_LINKER_FLAGS_INIT "-static -static-libgcc -static-libstdc++")

# Tests and generated tools run under wine. WINEPREFIX is set per build
# tree by the build (one prefix, created once, under the build directory).
find_program(QUIESCE_WINE NAMES wine wine64 REQUIRED)
set(CMAKE_CROSSCOMPILING_EMULATOR ${QUIESCE_WINE})
