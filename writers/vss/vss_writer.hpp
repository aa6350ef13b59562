#pragma once
// The `vss` writer (Windows; docs/windows.md): a VSS requester that brings
// every VSS writer (SQL Server, Exchange, the registry, ...) and the NTFS
// volumes to a consistent state and holds them through Quiesce's own VSS
// provider until thaw, reporting each VSS writer's state. Options:
// vss_model.hpp.

#include "quiesce/writer_registry.hpp"

namespace quiesce::writers {

void register_vss_writer(WriterRegistry& registry);

}  // namespace quiesce::writers
