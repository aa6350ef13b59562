#pragma once
// The checkpoint store: a directory with one subdirectory per checkpoint,
// each holding manifest.json (written atomically) and whatever the snapshot
// backend keeps there (the `file` backend's disk copies). `current.json`
// names the checkpoint the VM's present state descends from (Hyper-V's
// "Now"), which becomes the parent of the next checkpoint.
//
//   <root>/current.json
//   <root>/<id>/manifest.json
//   <root>/<id>/disks/<disk>.img

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "host-bridge/checkpoint/error.hpp"

namespace quiesce::host {

enum class CheckpointType { production, standard };
// filesystem: only the filesystems were frozen, continuously, through the
// snapshot (a stock qemu-guest-agent answered: no application was asked).
enum class Consistency { application, filesystem, crash };

[[nodiscard]] const char* to_string(CheckpointType type);
[[nodiscard]] const char* to_string(Consistency consistency);

// One disk as captured in a checkpoint.
struct DiskSnapshot {
  std::string name;      // the VM's name for the disk ("data")
  std::string image;     // the image file it was taken from
  std::string snapshot;  // where the backend keeps it (a file, or the command's reference)
  std::string method;    // reflink, sparse_copy, command
  std::uint64_t bytes = 0;            // logical size
  std::uint64_t allocated_bytes = 0;  // what the copy occupies (sparse-aware)
  double ms = 0;
};

struct Manifest {
  std::string id;
  std::optional<std::string> parent;
  std::string created_at;
  std::string label;
  CheckpointType type = CheckpointType::production;
  std::optional<Consistency> consistency;  // unset when failed
  bool ok = false;
  std::optional<Error> error;
  std::string vm_state = "running";  // running | off, when the disks were captured
  std::string backend;
  std::optional<std::string> session_id;
  std::optional<std::string> fallback_reason;  // production that fell back to standard
  nlohmann::json verdict;                       // the agent's thaw verdict, or null
  // Which agent quiesced: {"kind": "quiesce" | "qemu-guest-agent", "version"}
  // (null for a standard checkpoint, which asks no agent).
  nlohmann::json agent;
  nlohmann::json writers = nlohmann::json::array();    // name, type, level, state, identity
  nlohmann::json artifacts = nlohmann::json::object(); // post-snapshot artifacts per writer
  std::vector<DiskSnapshot> disks;
  // The VM's device and RAM state when a standard checkpoint captured it
  // (a running qemu VM), else null: {"file": name in the checkpoint
  // directory, "bytes", "sha256", "pause_ms", "qemu_command": the argv the
  // state must be loaded into}. See host-bridge/qemu/memory_state.hpp.
  nlohmann::json memory;
  nlohmann::json timings_ms = nlohmann::json::object();
  std::vector<std::string> warnings;

  [[nodiscard]] nlohmann::json to_json() const;
  // Strict: every required field with the right type, or an error naming it.
  [[nodiscard]] static Expected<Manifest> from_json(const nlohmann::json& json);
};

// Checkpoint ids become directory names: letters, digits, '.', '_', '-'
// only, not starting with '.'.
[[nodiscard]] bool valid_checkpoint_id(const std::string& id);

class CheckpointStore {
 public:
  explicit CheckpointStore(std::filesystem::path root);

  [[nodiscard]] const std::filesystem::path& root() const { return root_; }
  [[nodiscard]] std::filesystem::path dir_of(const std::string& id) const { return root_ / id; }
  [[nodiscard]] std::filesystem::path manifest_path(const std::string& id) const {
    return root_ / id / "manifest.json";
  }

  // A fresh id ("cp-20261124-202953-3fa2") whose directory does not exist yet.
  [[nodiscard]] std::string new_id() const;
  // Creates <root>/<id>/ for a new checkpoint.
  [[nodiscard]] Status create_dir(const std::string& id) const;
  [[nodiscard]] Status save(const Manifest& manifest) const;
  // not_found when there is no such checkpoint; invalid_input naming the
  // file when its manifest cannot be read.
  [[nodiscard]] Expected<Manifest> load(const std::string& id) const;

  struct Listing {
    std::vector<Manifest> manifests;  // oldest first
    std::vector<Error> problems;      // unreadable manifests, each naming its file
  };
  [[nodiscard]] Listing list() const;

  [[nodiscard]] Expected<std::optional<std::string>> current() const;
  [[nodiscard]] Status set_current(const std::optional<std::string>& id) const;

  // Removes a checkpoint's directory (the caller has dealt with children
  // and backend data).
  [[nodiscard]] Status erase(const std::string& id) const;

 private:
  std::filesystem::path root_;
};

// The tree of parents: roots (no parent, or a parent that is gone) with
// their children, oldest first. {"id", "label", "type", "consistency",
// "status", "current", "children": [...]}.
[[nodiscard]] nlohmann::json checkpoint_tree(const std::vector<Manifest>& manifests,
                                             const std::optional<std::string>& current);

}  // namespace quiesce::host
