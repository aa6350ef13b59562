#include "host-bridge/checkpoint/checkpoint_edit.hpp"

#include <functional>
#include <map>

namespace quiesce::host {

Status check_label(const std::string& label) {
  std::size_t characters = 0;
  for (std::size_t i = 0; i < label.size();) {
    const auto c = static_cast<unsigned char>(label[i]);
    std::size_t length = 0;
    std::uint32_t code = 0;
    if (c < 0x80) {
      length = 1;
      code = c;
    } else if ((c & 0xE0) == 0xC0) {
      length = 2;
      code = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      length = 3;
      code = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      length = 4;
      code = c & 0x07;
    } else {
      return Error{ErrorKind::invalid_input, "label: not valid UTF-8 (byte " + std::to_string(i) + ")"};
    }
    if (i + length > label.size()) {
      return Error{ErrorKind::invalid_input, "label: not valid UTF-8 (cut short at byte " + std::to_string(i) + ")"};
    }
    for (std::size_t k = 1; k < length; ++k) {
      const auto next = static_cast<unsigned char>(label[i + k]);
      if ((next & 0xC0) != 0x80) {
        return Error{ErrorKind::invalid_input, "label: not valid UTF-8 (byte " + std::to_string(i + k) + ")"};
      }
      code = (code << 6) | (next & 0x3F);
    }
    if (code < 0x20 || code == 0x7F || (code >= 0x80 && code < 0xA0)) {
      return Error{ErrorKind::invalid_input, "label: control characters are not allowed (character " +
                                                 std::to_string(characters + 1) + ")"};
    }
    i += length;
    ++characters;
  }
  if (characters > max_label_characters) {
    return Error{ErrorKind::invalid_input, "label: " + std::to_string(characters) + " characters, at most " +
                                               std::to_string(max_label_characters) + " are allowed"};
  }
  return ok_status();
}

Expected<Manifest> rename_checkpoint(const CheckpointStore& store, const std::string& id, const std::string& label) {
  if (auto checked = check_label(label); !checked) {
    return Error{checked.error().kind, checked.error().message + "; checkpoint " + id + " unchanged"};
  }
  auto manifest = store.load(id);
  if (!manifest) {
    return manifest.error();
  }
  manifest->label = label;
  if (auto saved = store.save(*manifest); !saved) {
    return saved.error();
  }
  return *manifest;
}

Expected<std::vector<std::string>> remove_subtree(Checkpointer& checkpointer, const CheckpointStore& store,
                                                  const std::string& id) {
  if (auto root = store.load(id); !root) {
    return root.error();
  }
  auto listing = store.list();
  if (!listing.problems.empty()) {
    return Error{ErrorKind::invalid_input, "cannot tell which checkpoints descend from " + id + ": " +
                                               listing.problems.front().message + "; nothing deleted"};
  }
  std::map<std::string, std::vector<std::string>> children;
  for (const auto& m : listing.manifests) {
    if (m.parent) {
      children[*m.parent].push_back(m.id);
    }
  }
  // Children before parents: each delete then finds no child to refuse for.
  std::vector<std::string> order;
  std::function<void(const std::string&)> visit = [&](const std::string& node) {
    for (const auto& child : children[node]) {
      visit(child);
    }
    order.push_back(node);
  };
  visit(id);
  std::vector<std::string> deleted;
  for (const auto& node : order) {
    auto removed = checkpointer.remove(node, false);
    if (!removed) {
      std::string done;
      for (const auto& d : deleted) {
        done += (done.empty() ? "" : ", ") + d;
      }
      return Error{removed.error().kind, "deleting " + node + " failed: " + removed.error().message +
                                             (done.empty() ? "; nothing deleted" : "; already deleted: " + done)};
    }
    deleted.push_back(node);
  }
  return deleted;
}

}  // namespace quiesce::host
