#include "host-bridge/checkpoint/snapshot_backend.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "host-bridge/checkpoint/process.hpp"
#include "host-bridge/checkpoint/qmp_backend.hpp"

namespace quiesce::host {

using nlohmann::json;

namespace {

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  [[nodiscard]] int get() const { return fd_; }

 private:
  int fd_;
};

std::string errno_text() { return std::strerror(errno); }

// Copies [offset, offset+length) with copy_file_range (in-kernel, no bounce
// through user space), falling back to read/write where it is refused
// (different file systems on old kernels).
bool copy_range(int in, int out, off_t offset, off_t length, std::string& error) {
  off_t in_off = offset;
  off_t out_off = offset;
  off_t left = length;
  while (left > 0) {
    const ssize_t n = ::copy_file_range(in, &in_off, out, &out_off, static_cast<std::size_t>(left), 0);
    if (n > 0) {
      left -= n;
      continue;
    }
    if (n == 0) {
      break;  // the source shrank under us
    }
    if (errno == EINTR) {
      continue;
    }
    if (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP) {
      error = "copy_file_range: " + errno_text();
      return false;
    }
    std::vector<char> buffer(1 << 20);
    while (left > 0) {
      const ssize_t r = ::pread(in, buffer.data(), std::min<off_t>(left, static_cast<off_t>(buffer.size())), in_off);
      if (r < 0 && errno == EINTR) {
        continue;
      }
      if (r <= 0) {
        if (r < 0) {
          error = "read: " + errno_text();
          return false;
        }
        return true;
      }
      ssize_t written = 0;
      while (written < r) {
        const ssize_t w = ::pwrite(out, buffer.data() + written, static_cast<std::size_t>(r - written), out_off);
        if (w < 0 && errno == EINTR) {
          continue;
        }
        if (w <= 0) {
          error = "write: " + errno_text();
          return false;
        }
        written += w;
        out_off += w;
      }
      in_off += r;
      left -= r;
    }
  }
  return true;
}

}  // namespace

Expected<CopyStats> copy_image(const std::string& from, const std::string& to) {
  Fd in(::open(from.c_str(), O_RDONLY | O_CLOEXEC));
  if (in.get() < 0) {
    return Error{errno == ENOENT ? ErrorKind::not_found : ErrorKind::system,
                 "cannot open " + from + ": " + errno_text()};
  }
  struct stat st {};
  if (::fstat(in.get(), &st) != 0) {
    return Error{ErrorKind::system, "cannot stat " + from + ": " + errno_text()};
  }
  Fd out(::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (out.get() < 0) {
    return Error{ErrorKind::system, "cannot create " + to + ": " + errno_text()};
  }
  CopyStats stats;
  stats.bytes = static_cast<std::uint64_t>(st.st_size);
  if (::ioctl(out.get(), FICLONE, in.get()) == 0) {
    stats.method = "reflink";
  } else {
    // EOPNOTSUPP / EXDEV / EINVAL: this file system cannot share extents.
    stats.method = "sparse_copy";
    if (::ftruncate(out.get(), st.st_size) != 0) {
      return Error{ErrorKind::system, "cannot size " + to + ": " + errno_text()};
    }
    off_t pos = 0;
    std::string error;
    while (pos < st.st_size) {
      const off_t data = ::lseek(in.get(), pos, SEEK_DATA);
      if (data < 0) {
        if (errno == ENXIO) {
          break;  // only a hole is left
        }
        // No SEEK_DATA support: copy the rest whole.
        if (!copy_range(in.get(), out.get(), pos, st.st_size - pos, error)) {
          return Error{ErrorKind::system, "copying " + from + " to " + to + ": " + error};
        }
        break;
      }
      off_t hole = ::lseek(in.get(), data, SEEK_HOLE);
      if (hole < 0) {
        hole = st.st_size;
      }
      if (!copy_range(in.get(), out.get(), data, hole - data, error)) {
        return Error{ErrorKind::system, "copying " + from + " to " + to + ": " + error};
      }
      pos = hole;
    }
  }
  if (::fsync(out.get()) != 0) {
    return Error{ErrorKind::system, "fsync " + to + ": " + errno_text()};
  }
  struct stat out_st {};
  if (::fstat(out.get(), &out_st) == 0) {
    stats.allocated_bytes = static_cast<std::uint64_t>(out_st.st_blocks) * 512U;
  }
  return stats;
}

Expected<DiskSnapshot> FileBackend::snapshot(const DiskSpec& disk, const std::string& /*checkpoint_id*/,
                                             const std::filesystem::path& checkpoint_dir) {
  const auto start = std::chrono::steady_clock::now();
  std::error_code ec;
  std::filesystem::create_directories(checkpoint_dir / "disks", ec);
  const auto dest = (checkpoint_dir / "disks" / (disk.name + ".img")).string();
  auto copied = copy_image(disk.image, dest);
  if (!copied) {
    std::filesystem::remove(dest, ec);
    return Error{copied.error().kind == ErrorKind::not_found ? ErrorKind::not_found : ErrorKind::backend,
                 "disk '" + disk.name + "': " + copied.error().message};
  }
  DiskSnapshot snap;
  snap.name = disk.name;
  snap.image = disk.image;
  snap.snapshot = dest;
  snap.method = copied->method;
  snap.bytes = copied->bytes;
  snap.allocated_bytes = copied->allocated_bytes;
  snap.ms = ms_since(start);
  return snap;
}

Status FileBackend::verify(const DiskSnapshot& snapshot) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(snapshot.snapshot, ec);
  if (ec) {
    return Error{ErrorKind::not_found,
                 "disk '" + snapshot.name + "': snapshot file " + snapshot.snapshot + ": " + ec.message()};
  }
  if (snapshot.bytes != 0 && size != snapshot.bytes) {
    return Error{ErrorKind::invalid_input, "disk '" + snapshot.name + "': snapshot file " + snapshot.snapshot +
                                               " has " + std::to_string(size) + " bytes, the manifest says " +
                                               std::to_string(snapshot.bytes)};
  }
  return ok_status();
}

Status FileBackend::restore(const DiskSnapshot& snapshot, const DiskSpec& disk,
                            const std::string& /*checkpoint_id*/) {
  const std::filesystem::path image(disk.image);
  const auto tmp = (image.parent_path() / ("." + image.filename().string() + ".restoring")).string();
  auto copied = copy_image(snapshot.snapshot, tmp);
  std::error_code ec;
  if (!copied) {
    std::filesystem::remove(tmp, ec);
    return Error{ErrorKind::backend, "disk '" + disk.name + "': " + copied.error().message};
  }
  if (::rename(tmp.c_str(), disk.image.c_str()) != 0) {
    const auto error = errno_text();
    std::filesystem::remove(tmp, ec);
    return Error{ErrorKind::system, "disk '" + disk.name + "': cannot replace " + disk.image + ": " + error};
  }
  return ok_status();
}

Status FileBackend::remove(const DiskSnapshot& snapshot, const std::string& /*checkpoint_id*/) {
  std::error_code ec;
  std::filesystem::remove(snapshot.snapshot, ec);
  if (ec) {
    return Error{ErrorKind::system, "cannot remove " + snapshot.snapshot + ": " + ec.message()};
  }
  return ok_status();
}

// --- command backend ---------------------------------------------------------

std::vector<std::string> expand_command(const std::vector<std::string>& argv,
                                        const std::map<std::string, std::string>& vars) {
  std::vector<std::string> out;
  for (const auto& arg : argv) {
    std::string result;
    std::size_t i = 0;
    while (i < arg.size()) {
      if (arg[i] == '{') {
        const auto close = arg.find('}', i);
        if (close != std::string::npos) {
          auto it = vars.find(arg.substr(i + 1, close - i - 1));
          if (it != vars.end()) {
            result += it->second;
            i = close + 1;
            continue;
          }
        }
      }
      result += arg[i++];
    }
    out.push_back(std::move(result));
  }
  return out;
}

Expected<CommandBackendOptions> CommandBackendOptions::from_json(const json& j, const std::string& where) {
  CommandBackendOptions options;
  auto argv_field = [&](const char* name, std::vector<std::string>& into, bool required) -> std::string {
    auto it = j.find(name);
    if (it == j.end()) {
      return required ? where + "." + name + ": missing (an argv array of strings)" : std::string();
    }
    if (!it->is_array() || it->empty()) {
      return where + "." + name + ": expected a non-empty array of strings";
    }
    for (const auto& a : *it) {
      if (!a.is_string()) {
        return where + "." + name + ": expected a non-empty array of strings";
      }
      into.push_back(a.get<std::string>());
    }
    return {};
  };
  for (const auto& [key, value] : j.items()) {
    if (key != "type" && key != "snapshot" && key != "restore" && key != "delete" && key != "verify" &&
        key != "snapshot_ref" && key != "timeout_ms") {
      return Error{ErrorKind::invalid_input, where + "." + key + ": unknown field"};
    }
  }
  for (auto [name, into, required] : {std::tuple{"snapshot", &options.snapshot, true},
                                      std::tuple{"restore", &options.restore, true},
                                      std::tuple{"delete", &options.remove, false},
                                      std::tuple{"verify", &options.verify, false}}) {
    if (auto problem = argv_field(name, *into, required); !problem.empty()) {
      return Error{ErrorKind::invalid_input, problem};
    }
  }
  if (auto it = j.find("snapshot_ref"); it != j.end()) {
    if (*it == "stdout") {
      options.snapshot_ref_from_stdout = true;
    } else if (*it != "dest") {
      return Error{ErrorKind::invalid_input, where + ".snapshot_ref: expected \"dest\" or \"stdout\""};
    }
  }
  if (auto it = j.find("timeout_ms"); it != j.end()) {
    if (!it->is_number_unsigned() || it->get<std::uint64_t>() == 0) {
      return Error{ErrorKind::invalid_input, where + ".timeout_ms: expected a positive integer"};
    }
    options.timeout = std::chrono::milliseconds(it->get<std::uint64_t>());
  }
  return options;
}

namespace {
Status run_user_command(const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
                        const std::string& what, std::string* output = nullptr) {
  auto result = run_command(argv, timeout);
  if (output != nullptr) {
    *output = result.output;
  }
  if (result.timed_out) {
    return Error{ErrorKind::backend, what + ": `" + render_argv(argv) + "` timed out after " +
                                         std::to_string(timeout.count()) + " ms"};
  }
  if (result.exit_code != 0) {
    auto tail = result.output.size() > 2000 ? result.output.substr(result.output.size() - 2000) : result.output;
    return Error{ErrorKind::backend, what + ": `" + render_argv(argv) + "` exited with " +
                                         std::to_string(result.exit_code) + (tail.empty() ? "" : ": " + tail)};
  }
  return ok_status();
}
}  // namespace

Expected<DiskSnapshot> CommandBackend::snapshot(const DiskSpec& disk, const std::string& checkpoint_id,
                                                const std::filesystem::path& checkpoint_dir) {
  const auto start = std::chrono::steady_clock::now();
  std::error_code ec;
  std::filesystem::create_directories(checkpoint_dir / "disks", ec);
  const auto dest = (checkpoint_dir / "disks" / disk.name).string();
  const auto argv = expand_command(
      options_.snapshot, {{"disk", disk.name}, {"image", disk.image}, {"checkpoint", checkpoint_id}, {"dest", dest}});
  std::string output;
  if (auto status = run_user_command(argv, options_.timeout, "disk '" + disk.name + "': snapshot", &output); !status) {
    return status.error();
  }
  DiskSnapshot snap;
  snap.name = disk.name;
  snap.image = disk.image;
  snap.snapshot = dest;
  if (options_.snapshot_ref_from_stdout) {
    const auto line_start = output.rfind('\n');
    snap.snapshot = line_start == std::string::npos ? output : output.substr(line_start + 1);
    if (snap.snapshot.empty()) {
      return Error{ErrorKind::backend, "disk '" + disk.name + "': snapshot printed no reference"};
    }
  }
  snap.method = "command";
  snap.ms = ms_since(start);
  return snap;
}

Status CommandBackend::verify(const DiskSnapshot& snapshot) {
  if (options_.verify.empty()) {
    return ok_status();
  }
  const auto argv = expand_command(options_.verify, {{"disk", snapshot.name}, {"image", snapshot.image},
                                                     {"snapshot", snapshot.snapshot}, {"dest", snapshot.snapshot}});
  return run_user_command(argv, options_.timeout, "disk '" + snapshot.name + "': verify");
}

Status CommandBackend::restore(const DiskSnapshot& snapshot, const DiskSpec& disk, const std::string& checkpoint_id) {
  const auto argv = expand_command(options_.restore, {{"disk", disk.name}, {"image", disk.image},
                                                      {"checkpoint", checkpoint_id},
                                                      {"snapshot", snapshot.snapshot}, {"dest", snapshot.snapshot}});
  return run_user_command(argv, options_.timeout, "disk '" + disk.name + "': restore");
}

Status CommandBackend::remove(const DiskSnapshot& snapshot, const std::string& checkpoint_id) {
  if (options_.remove.empty()) {
    return ok_status();
  }
  const auto argv = expand_command(options_.remove, {{"disk", snapshot.name}, {"image", snapshot.image},
                                                     {"checkpoint", checkpoint_id},
                                                     {"snapshot", snapshot.snapshot}, {"dest", snapshot.snapshot}});
  return run_user_command(argv, options_.timeout, "disk '" + snapshot.name + "': delete");
}

Expected<std::unique_ptr<SnapshotBackend>> make_backend(const json& j, const std::string& where) {
  if (j.is_null()) {
    return std::unique_ptr<SnapshotBackend>(std::make_unique<FileBackend>());
  }
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) {
    return Error{ErrorKind::invalid_input, where + ".type: expected \"file\", \"command\" or \"qmp\""};
  }
  const auto type = j["type"].get<std::string>();
  if (type == "file") {
    if (j.size() != 1) {
      return Error{ErrorKind::invalid_input, where + ": the file backend takes no options"};
    }
    return std::unique_ptr<SnapshotBackend>(std::make_unique<FileBackend>());
  }
  if (type == "command") {
    auto options = CommandBackendOptions::from_json(j, where);
    if (!options) {
      return options.error();
    }
    return std::unique_ptr<SnapshotBackend>(std::make_unique<CommandBackend>(std::move(*options)));
  }
  if (type == "qmp") {
    auto options = QmpBackendOptions::from_json(j, where);
    if (!options) {
      return options.error();
    }
    return std::unique_ptr<SnapshotBackend>(std::make_unique<QmpBackend>(std::move(*options)));
  }
  return Error{ErrorKind::invalid_input, where + ".type: expected \"file\", \"command\" or \"qmp\", got \"" + type + "\""};
}

}  // namespace quiesce::host
