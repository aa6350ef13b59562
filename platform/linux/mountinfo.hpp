#pragma once
// /proc/<pid>/mountinfo, parsed (proc(5)): one entry per mount, in the
// kernel's order (a mount appears after the mount it sits on). Paths come
// back unescaped; the kernel writes space, tab, newline and backslash in
// paths as \040, \011, \012 and \134.

#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace quiesce::platform {

// A superblock's device number as mountinfo shows it ("major:minor"). Every
// mount of one filesystem (bind mounts, btrfs subvolumes) shares it, which
// makes it the key for "one freeze per filesystem".
struct DeviceId {
  std::uint32_t major = 0;
  std::uint32_t minor = 0;
  auto operator<=>(const DeviceId&) const = default;
  [[nodiscard]] std::string to_string() const;
  [[nodiscard]] static std::optional<DeviceId> parse(std::string_view text);
};

struct MountEntry {
  std::uint64_t mount_id = 0;
  std::uint64_t parent_id = 0;
  DeviceId device;
  std::string root;         // path inside the filesystem that is mounted here
  std::string mount_point;  // where, relative to this process's root
  std::vector<std::string> mount_options;   // per mount: rw/ro, nosuid, relatime...
  std::vector<std::string> optional_fields; // shared:N, master:N, propagate_from:N, unbindable
  std::string fstype;       // "ext4", "fuse.sshfs" (type.subtype when there is one)
  std::string source;       // "/dev/vda1", "overlay", "none"
  std::vector<std::string> super_options;   // per superblock: rw/ro, errors=..., subvol=...

  // True when either the mount or its superblock is read-only.
  [[nodiscard]] bool read_only() const;
  [[nodiscard]] bool has_mount_option(std::string_view option) const;
  // The value of a "key=value" super option ("subvol" -> "/@home").
  [[nodiscard]] std::optional<std::string> super_option(std::string_view key) const;
};

struct MountTable {
  std::vector<MountEntry> entries;
  // Lines that could not be parsed, with their line number; a table with
  // errors is still usable, the bad lines are left out.
  std::vector<std::string> errors;

  // The mount visible at exactly `mount_point` (the last one mounted there,
  // which hides the others), or nullptr.
  [[nodiscard]] const MountEntry* find_mount_point(std::string_view mount_point) const;
  // The mount that holds `path` (longest mount point that is a prefix of it,
  // by path components). `path` must be absolute and normalised.
  [[nodiscard]] const MountEntry* mount_containing(std::string_view path) const;
  // True when another mount sits on exactly the same mount point on top of
  // `entry`, hiding it.
  [[nodiscard]] bool is_overmounted(const MountEntry& entry) const;
};

// Decodes the kernel's octal escapes (\040 etc.); other backslashes are kept.
[[nodiscard]] std::string unescape_mount_path(std::string_view text);
// The inverse, for protocols and records that are line/space separated.
[[nodiscard]] std::string escape_mount_path(std::string_view text);

// Parses one mountinfo line; nullopt plus a message in `error` when it is malformed.
[[nodiscard]] std::optional<MountEntry> parse_mountinfo_line(std::string_view line,
                                                             std::string* error = nullptr);
[[nodiscard]] MountTable parse_mountinfo(std::string_view text);

struct [[nodiscard]] MountTableResult {
  std::optional<MountTable> table;  // empty when the file could not be read
  std::string error;
};
// Reads and parses a mountinfo file (default: this process's own).
[[nodiscard]] MountTableResult read_mountinfo(const std::string& path = "/proc/self/mountinfo");

// True when `path` equals `ancestor` or lies beneath it, by path components
// ("/a/b" is beneath "/a", "/ab" is not; everything is beneath "/").
[[nodiscard]] bool path_is_beneath(std::string_view path, std::string_view ancestor);

}  // namespace quiesce::platform
