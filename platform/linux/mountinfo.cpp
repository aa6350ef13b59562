#include "platform/linux/mountinfo.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>

namespace quiesce::platform {

namespace {

std::vector<std::string_view> split_fields(std::string_view line) {
  std::vector<std::string_view> fields;
  std::size_t pos = 0;
  while (pos < line.size()) {
    // The kernel separates fields with single spaces; tolerate runs of them
    // (and tabs) so hand-written samples parse the same way.
    while (pos < line.size() && (line[pos] == ' ' || line[pos] == '\t')) {
      ++pos;
    }
    if (pos >= line.size()) {
      break;
    }
    auto end = line.find_first_of(" \t", pos);
    if (end == std::string_view::npos) {
      end = line.size();
    }
    fields.push_back(line.substr(pos, end - pos));
    pos = end;
  }
  return fields;
}

std::vector<std::string> split_options(std::string_view text) {
  std::vector<std::string> options;
  std::size_t pos = 0;
  while (pos <= text.size()) {
    auto end = text.find(',', pos);
    if (end == std::string_view::npos) {
      end = text.size();
    }
    if (end > pos) {
      options.emplace_back(unescape_mount_path(text.substr(pos, end - pos)));
    }
    pos = end + 1;
  }
  return options;
}

template <typename Integer>
bool parse_integer(std::string_view text, Integer& out) {
  if (text.empty()) {
    return false;
  }
  const auto* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, out);
  return ec == std::errc{} && ptr == end;
}

bool is_octal(char c) { return c >= '0' && c <= '7'; }

}  // namespace

std::string DeviceId::to_string() const {
  return std::to_string(major) + ":" + std::to_string(minor);
}

std::optional<DeviceId> DeviceId::parse(std::string_view text) {
  auto colon = text.find(':');
  if (colon == std::string_view::npos) {
    return std::nullopt;
  }
  DeviceId id;
  if (!parse_integer(text.substr(0, colon), id.major) ||
      !parse_integer(text.substr(colon + 1), id.minor)) {
    return std::nullopt;
  }
  return id;
}

bool MountEntry::has_mount_option(std::string_view option) const {
  return std::find(mount_options.begin(), mount_options.end(), option) != mount_options.end();
}

bool MountEntry::read_only() const {
  return has_mount_option("ro") ||
         std::find(super_options.begin(), super_options.end(), "ro") != super_options.end();
}

std::optional<std::string> MountEntry::super_option(std::string_view key) const {
  for (const auto& option : super_options) {
    if (option.size() > key.size() && option.compare(0, key.size(), key) == 0 &&
        option[key.size()] == '=') {
      return option.substr(key.size() + 1);
    }
  }
  return std::nullopt;
}

bool path_is_beneath(std::string_view path, std::string_view ancestor) {
  if (ancestor == "/") {
    return !path.empty() && path.front() == '/';
  }
  if (path.size() < ancestor.size() || path.compare(0, ancestor.size(), ancestor) != 0) {
    return false;
  }
  return path.size() == ancestor.size() || path[ancestor.size()] == '/';
}

const MountEntry* MountTable::find_mount_point(std::string_view mount_point) const {
  // Later entries were mounted later; the last one at a path is the visible one.
  for (auto it = entries.rbegin(); it != entries.rend(); ++it) {
    if (it->mount_point == mount_point) {
      return &*it;
    }
  }
  return nullptr;
}

const MountEntry* MountTable::mount_containing(std::string_view path) const {
  const MountEntry* best = nullptr;
  for (auto it = entries.rbegin(); it != entries.rend(); ++it) {
    if (path_is_beneath(path, it->mount_point) &&
        (best == nullptr || it->mount_point.size() > best->mount_point.size())) {
      best = &*it;
    }
  }
  return best;
}

bool MountTable::is_overmounted(const MountEntry& entry) const {
  return std::any_of(entries.begin(), entries.end(), [&](const MountEntry& other) {
    return other.parent_id == entry.mount_id && other.mount_point == entry.mount_point &&
           other.mount_id != entry.mount_id;
  });
}

std::string unescape_mount_path(std::string_view text) {
  std::string result;
  result.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\\' && i + 3 < text.size() && is_octal(text[i + 1]) &&
        is_octal(text[i + 2]) && is_octal(text[i + 3])) {
      int value = (text[i + 1] - '0') * 64 + (text[i + 2] - '0') * 8 + (text[i + 3] - '0');
      if (value <= 0xff) {
        result.push_back(static_cast<char>(value));
        i += 3;
        continue;
      }
    }
    result.push_back(text[i]);
  }
  return result;
}

std::string escape_mount_path(std::string_view text) {
  std::string result;
  result.reserve(text.size());
  for (char c : text) {
    auto byte = static_cast<unsigned char>(c);
    if (c == ' ' || c == '\t' || c == '\n' || c == '\\' || byte < 0x20 || byte == 0x7f) {
      const char digits[] = {'\\', static_cast<char>('0' + ((byte >> 6) & 7)),
                             static_cast<char>('0' + ((byte >> 3) & 7)),
                             static_cast<char>('0' + (byte & 7))};
      result.append(digits, sizeof digits);
    } else {
      result.push_back(c);
    }
  }
  return result;
}

std::optional<MountEntry> parse_mountinfo_line(std::string_view line, std::string* error) {
  auto fail = [&](const std::string& message) -> std::optional<MountEntry> {
    if (error != nullptr) {
      *error = message;
    }
    return std::nullopt;
  };
  auto fields = split_fields(line);
  // 6 fixed fields, any number of optional fields, "-", then 3 more.
  auto separator = std::find(fields.begin(), fields.end(), std::string_view("-"));
  if (separator == fields.end()) {
    return fail("no '-' separator");
  }
  auto fixed = static_cast<std::size_t>(separator - fields.begin());
  if (fixed < 6) {
    return fail("expected 6 fields before '-', got " + std::to_string(fixed));
  }
  auto after = fields.size() - fixed - 1;
  if (after < 2) {
    return fail("expected fstype, source and super options after '-'");
  }
  MountEntry entry;
  if (!parse_integer(fields[0], entry.mount_id)) {
    return fail("bad mount id '" + std::string(fields[0]) + "'");
  }
  if (!parse_integer(fields[1], entry.parent_id)) {
    return fail("bad parent id '" + std::string(fields[1]) + "'");
  }
  auto device = DeviceId::parse(fields[2]);
  if (!device) {
    return fail("bad major:minor '" + std::string(fields[2]) + "'");
  }
  entry.device = *device;
  entry.root = unescape_mount_path(fields[3]);
  entry.mount_point = unescape_mount_path(fields[4]);
  entry.mount_options = split_options(fields[5]);
  for (std::size_t i = 6; i < fixed; ++i) {
    entry.optional_fields.emplace_back(fields[i]);
  }
  entry.fstype = unescape_mount_path(fields[fixed + 1]);
  // Some filesystems report an empty source, which leaves only fstype and
  // super options after the separator.
  if (after == 2) {
    entry.source = "";
    entry.super_options = split_options(fields[fixed + 2]);
  } else {
    entry.source = unescape_mount_path(fields[fixed + 2]);
    entry.super_options = split_options(fields[fixed + 3]);
  }
  if (entry.mount_point.empty() || entry.mount_point.front() != '/') {
    return fail("mount point is not absolute");
  }
  return entry;
}

MountTable parse_mountinfo(std::string_view text) {
  MountTable table;
  std::size_t pos = 0;
  std::size_t line_number = 0;
  while (pos < text.size()) {
    auto end = text.find('\n', pos);
    if (end == std::string_view::npos) {
      end = text.size();
    }
    auto line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) {
      continue;
    }
    std::string error;
    if (auto entry = parse_mountinfo_line(line, &error)) {
      table.entries.push_back(std::move(*entry));
    } else {
      table.errors.push_back("line " + std::to_string(line_number) + ": " + error);
    }
  }
  return table;
}

MountTableResult read_mountinfo(const std::string& path) {
  // read(2), not an ifstream: the freeze holder reads it too, and streams
  // would link (and initialise) libstdc++'s locale machinery into it.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return {std::nullopt, "cannot read " + path};
  }
  std::string text;
  char buffer[16384];
  for (;;) {
    const auto got = ::read(fd, buffer, sizeof buffer);
    if (got < 0 && errno == EINTR) {
      continue;
    }
    if (got < 0) {
      ::close(fd);
      return {std::nullopt, "cannot read " + path};
    }
    if (got == 0) {
      break;
    }
    text.append(buffer, static_cast<std::size_t>(got));
  }
  ::close(fd);
  return {parse_mountinfo(text), ""};
}

}  // namespace quiesce::platform
