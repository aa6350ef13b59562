#pragma once
// Operations on the checkpoint tree beside create/apply/delete, for every
// VM kind: rename (Hyper-V's Rename-VMCheckpoint) and delete of a subtree
// (Hyper-V's "Delete Checkpoint Subtree").

#include <string>
#include <vector>

#include "host-bridge/checkpoint/checkpoint_store.hpp"
#include "host-bridge/checkpoint/checkpointer.hpp"

namespace quiesce::host {

// At most this many characters (Unicode code points) in a label.
inline constexpr std::size_t max_label_characters = 100;

// A label: valid UTF-8, at most max_label_characters, no control
// characters (a newline would break `checkpoint list`). The error says which.
[[nodiscard]] Status check_label(const std::string& label);

// Gives checkpoint `id` a new label; a bad label or id changes nothing.
[[nodiscard]] Expected<Manifest> rename_checkpoint(const CheckpointStore& store, const std::string& id,
                                                   const std::string& label);

// Deletes `id` and every checkpoint descending from it, children before
// their parent (each delete merges its disks into what still depends on
// them). Returns the ids deleted, in that order. Refused, changing nothing,
// while a manifest of the store cannot be read (the tree is not known). A
// failure part way names what was deleted before it.
[[nodiscard]] Expected<std::vector<std::string>> remove_subtree(Checkpointer& checkpointer,
                                                                const CheckpointStore& store, const std::string& id);

}  // namespace quiesce::host
