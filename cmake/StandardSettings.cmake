# Interface targets every Quiesce target links: one place for the language
# level, warnings and sanitizers (the ccache habit), instead of flags
# scattered over folders.
set(CMAKE_CXX_STANDARD 20)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(CMAKE_CXX_EXTENSIONS OFF)
set(CMAKE_POSITION_INDEPENDENT_CODE ON)
set(CMAKE_EXPORT_COMPILE_COMMANDS ON)
if(NOT CMAKE_BUILD_TYPE AND NOT CMAKE_CONFIGURATION_TYPES)
  set(CMAKE_BUILD_TYPE RelWithDebInfo CACHE STRING "Build type" FORCE)
endif()

find_program(CCACHE_PROGRAM ccache)
if(CCACHE_PROGRAM)
  set(CMAKE_C_COMPILER_LAUNCHER "${CCACHE_PROGRAM}")
  set(CMAKE_CXX_COMPILER_LAUNCHER "${CCACHE_PROGRAM}")
endif()

add_library(quiesce_standard_settings INTERFACE)
add_library(quiesce_standard_warnings INTERFACE)

target_compile_options(quiesce_standard_warnings INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wold-style-cast
  -Wcast-align -Woverloaded-virtual -Wformat=2
  # -Wnull-dereference is left out: with GCC 12 at -O2 it fires inside
  # libstdc++ stream code that tests use, and cannot be fixed from here.
  $<$<BOOL:${QUIESCE_WERROR}>:-Werror>)

if(QUIESCE_SANITIZE)
  target_compile_options(quiesce_standard_settings INTERFACE
    -fsanitize=${QUIESCE_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  target_link_options(quiesce_standard_settings INTERFACE -fsanitize=${QUIESCE_SANITIZE})
endif()

# A section per function and per datum, so that a link with --gc-sections
# (the agent's) drops what nothing calls rather than whole object files'
# text (docs/performance.md, third round).
if(NOT WIN32)
  target_compile_options(quiesce_standard_settings INTERFACE -ffunction-sections -fdata-sections)
endif()

# Asio and Beast are compiled once, in platform/asio (separate compilation),
# so the translation units that include them stay cheap to rebuild.
target_compile_definitions(quiesce_standard_settings INTERFACE
  BOOST_ASIO_NO_DEPRECATED BOOST_ASIO_DISABLE_BOOST_ARRAY
  QUIESCE_VERSION="${PROJECT_VERSION}")
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY "${PROJECT_BINARY_DIR}/bin")
