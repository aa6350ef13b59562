// The writers compiled into the Windows agent (docs/windows.md): the ones
// whose code is portable or has a Windows platform underneath. The Linux
// list is builtin_writers.cpp; CMake picks one.

#include "quiesce/writer_registry.hpp"
#include "writers/delay/delay_writer.hpp"
#include "writers/hooks/hooks_writer.hpp"
#include "writers/plugin/plugin_writer.hpp"
#include "writers/vss/vss_writer.hpp"

namespace quiesce {

void register_builtin_writers(WriterRegistry& registry) {
  writers::register_delay_writer(registry);
  writers::register_hooks_writer(registry);
  writers::register_plugin_writer(registry);
  writers::register_vss_writer(registry);
}

}  // namespace quiesce
