#include "host-bridge/checkpoint/checkpoint_transfer.hpp"

#include <unistd.h>

#include <algorithm>
#include <map>
#include <set>

#include "host-bridge/checkpoint/layer_merge.hpp"
#include "host-bridge/checkpoint/process.hpp"
#include "platform/files.hpp"

namespace quiesce::host {

using nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr const char* export_format = "quiesce-checkpoint-export";
constexpr int export_version = 1;

Status run(const std::vector<std::string>& argv, const std::string& what) {
  auto result = run_command(argv, std::chrono::hours(2));
  if (result.exit_code != 0 || result.timed_out) {
    return Error{ErrorKind::backend, what + ": `" + render_argv(argv) + "` failed: " + result.output};
  }
  return ok_status();
}

Status write_json(const std::filesystem::path& path, const json& value) {
  std::string error;
  if (!platform::write_file_atomically(path.string(), value.dump(2) + "\n", &error)) {
    return Error{ErrorKind::system, error};
  }
  return ok_status();
}

// Removes a staging directory unless told the work is done.
class StagingDir {
 public:
  explicit StagingDir(std::filesystem::path path) : path_(std::move(path)) {}
  ~StagingDir() {
    if (!kept_) {
      std::error_code ec;
      std::filesystem::remove_all(path_, ec);
    }
  }
  StagingDir(const StagingDir&) = delete;
  StagingDir& operator=(const StagingDir&) = delete;
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  void keep() { kept_ = true; }

 private:
  std::filesystem::path path_;
  bool kept_ = false;
};

// A relative path that stays inside its directory.
bool contained(const std::string& relative) {
  const std::filesystem::path p(relative);
  if (relative.empty() || p.is_absolute()) {
    return false;
  }
  for (const auto& part : p.lexically_normal()) {
    if (part == "..") {
      return false;
    }
  }
  return true;
}

// The checkpoint directory's other files (a memory state file), relative.
std::vector<std::string> extra_files(const std::filesystem::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) {
      break;
    }
    const auto rel = std::filesystem::relative(it->path(), dir, ec).string();
    if (rel == "disks" || rel.rfind("disks/", 0) == 0 || rel == "manifest.json") {
      continue;
    }
    if (it->is_regular_file()) {
      out.push_back(rel);
    }
  }
  return out;
}

Status copy_files(const std::filesystem::path& from, const std::filesystem::path& to,
                  const std::vector<std::string>& files) {
  for (const auto& rel : files) {
    std::error_code ec;
    std::filesystem::create_directories((to / rel).parent_path(), ec);
    std::filesystem::copy_file(from / rel, to / rel, std::filesystem::copy_options::overwrite_existing, ec);
    if (ec) {
      return Error{ErrorKind::system, "cannot copy " + (from / rel).string() + ": " + ec.message()};
    }
  }
  return ok_status();
}

}  // namespace

Expected<ExportOutcome> export_checkpoint(const CheckpointStore& store, const std::string& id,
                                          const std::filesystem::path& dir_arg,
                                          const std::filesystem::path& qemu_command_file,
                                          const std::string& qemu_img) {
  auto manifest = store.load(id);
  if (!manifest) {
    return manifest.error();
  }
  if (!manifest->ok) {
    return Error{ErrorKind::conflict, "checkpoint " + id + " failed when it was taken; there is nothing to export"};
  }
  if (manifest->backend != "qmp") {
    return Error{ErrorKind::invalid_input, "checkpoint " + id + " was taken with the " + manifest->backend +
                                               " backend; export takes checkpoints of a qemu VM (qmp)"};
  }
  const auto dir = std::filesystem::absolute(dir_arg).lexically_normal();
  std::error_code ec;
  if (std::filesystem::exists(dir, ec) &&
      (!std::filesystem::is_directory(dir, ec) || !std::filesystem::is_empty(dir, ec))) {
    return Error{ErrorKind::conflict, dir.string() + " exists and is not an empty directory; nothing exported"};
  }
  if (!std::filesystem::is_directory(dir.parent_path(), ec)) {
    return Error{ErrorKind::not_found, dir.parent_path().string() + ": no such directory; nothing exported"};
  }
  StagingDir staging(dir.parent_path() / ("." + dir.filename().string() + ".exporting-" + std::to_string(::getpid())));
  std::filesystem::remove_all(staging.path(), ec);
  std::filesystem::create_directories(staging.path() / "disks", ec);
  if (ec) {
    return Error{ErrorKind::system, "cannot create " + staging.path().string() + ": " + ec.message()};
  }
  ExportOutcome outcome;
  json disks = json::array();
  Manifest exported = *manifest;
  for (auto& d : exported.disks) {
    auto state = qcow2_backing_file(qemu_img, d.snapshot);
    if (!state) {
      return Error{state.error().kind, "disk '" + d.name + "': " + state.error().message};
    }
    if (state->empty()) {
      return Error{ErrorKind::invalid_input, "disk '" + d.name + "': overlay " + d.snapshot + " has no base"};
    }
    const std::string rel = "disks/" + d.name + ".qcow2";
    // Flattened: the file needs nothing outside DIR. -U: a running QEMU may
    // have the chain open read-only.
    if (auto done = run({qemu_img, "convert", "-U", "-O", "qcow2", *state, (staging.path() / rel).string()},
                        "disk '" + d.name + "'");
        !done) {
      return done.error();
    }
    // The size import checks against: the flattened image's own.
    auto info = run_command({qemu_img, "info", "--output=json", (staging.path() / rel).string()}, 2min);
    const auto parsed = json::parse(info.output, nullptr, false);
    if (info.exit_code != 0 || !parsed.is_object()) {
      return Error{ErrorKind::backend, "disk '" + d.name + "': cannot read back " + rel + ": " + info.output};
    }
    d.snapshot = rel;
    disks.push_back({{"name", d.name}, {"file", rel}, {"virtual_size", parsed.value("virtual-size", std::uint64_t{0})}});
    outcome.files.push_back(rel);
  }
  auto others = extra_files(store.dir_of(id));
  if (auto copied = copy_files(store.dir_of(id), staging.path(), others); !copied) {
    return copied.error();
  }
  json qemu_command = nullptr;
  if (std::find(others.begin(), others.end(), "qemu-command.json") != others.end()) {
    qemu_command = "qemu-command.json";
  } else if (!qemu_command_file.empty() && std::filesystem::exists(qemu_command_file, ec)) {
    if (auto copied = copy_files(qemu_command_file.parent_path(), staging.path(),
                                 {qemu_command_file.filename().string()});
        !copied) {
      return copied.error();
    }
    if (qemu_command_file.filename() != "qemu-command.json") {
      std::filesystem::rename(staging.path() / qemu_command_file.filename(), staging.path() / "qemu-command.json", ec);
    }
    others.push_back("qemu-command.json");
    qemu_command = "qemu-command.json";
  }
  outcome.files.insert(outcome.files.end(), others.begin(), others.end());
  if (auto saved = write_json(staging.path() / "manifest.json", exported.to_json()); !saved) {
    return saved.error();
  }
  if (auto saved = write_json(staging.path() / "export.json",
                              {{"format", export_format},
                               {"version", export_version},
                               {"id", id},
                               {"exported_at", iso_time_now()},
                               {"disks", disks},
                               {"files", others},
                               {"qemu_command", qemu_command}});
      !saved) {
    return saved.error();
  }
  outcome.files.insert(outcome.files.begin(), {"export.json", "manifest.json"});
  std::filesystem::remove(dir, ec);  // empty, if there
  std::filesystem::rename(staging.path(), dir, ec);
  if (ec) {
    return Error{ErrorKind::system, "cannot rename " + staging.path().string() + " to " + dir.string() + ": " +
                                        ec.message()};
  }
  staging.keep();
  outcome.dir = dir;
  for (const auto& rel : outcome.files) {
    outcome.bytes += std::filesystem::file_size(dir / rel, ec);
  }
  return outcome;
}

Expected<Manifest> import_checkpoint(const CheckpointStore& store, const std::filesystem::path& dir_arg,
                                     const std::vector<std::pair<std::string, std::string>>& vm_disks,
                                     const std::string& qemu_img) {
  const auto dir = std::filesystem::absolute(dir_arg).lexically_normal();
  auto refuse = [&](ErrorKind kind, const std::string& what) -> Error {
    return Error{kind, dir.string() + ": " + what + "; nothing imported"};
  };
  std::string text;
  if (!platform::read_whole_file((dir / "export.json").string(), text)) {
    return refuse(ErrorKind::not_found, "no export.json (not a directory written by checkpoint export)");
  }
  const auto info = json::parse(text, nullptr, false);
  if (!info.is_object() || info.value("format", std::string()) != export_format) {
    return refuse(ErrorKind::invalid_input, "export.json: format: expected \"" + std::string(export_format) + "\"");
  }
  if (!info.contains("version") || !info["version"].is_number_integer() || info["version"].get<int>() != export_version) {
    return refuse(ErrorKind::invalid_input, "export.json: version: expected " + std::to_string(export_version));
  }
  if (!info.contains("disks") || !info["disks"].is_array() || !info.contains("files") || !info["files"].is_array()) {
    return refuse(ErrorKind::invalid_input, "export.json: disks and files: expected arrays");
  }
  if (!platform::read_whole_file((dir / "manifest.json").string(), text)) {
    return refuse(ErrorKind::not_found, "manifest.json: missing or unreadable");
  }
  const auto manifest_json = json::parse(text, nullptr, false);
  if (manifest_json.is_discarded()) {
    return refuse(ErrorKind::invalid_input, "manifest.json: not JSON");
  }
  auto parsed = Manifest::from_json(manifest_json);
  if (!parsed) {
    return refuse(ErrorKind::invalid_input, "manifest.json: " + parsed.error().message);
  }
  Manifest m = std::move(*parsed);
  if (!m.ok) {
    return refuse(ErrorKind::invalid_input, "manifest.json: the checkpoint is marked failed");
  }
  std::map<std::string, std::string> vm;
  for (const auto& [name, image] : vm_disks) {
    vm[name] = image;
  }
  std::set<std::string> seen;
  std::map<std::string, std::string> file_of;
  std::map<std::string, std::uint64_t> size_of;
  for (const auto& d : info["disks"]) {
    if (!d.is_object() || !d.contains("name") || !d["name"].is_string() || !d.contains("file") ||
        !d["file"].is_string() || !d.contains("virtual_size") || !d["virtual_size"].is_number_unsigned()) {
      return refuse(ErrorKind::invalid_input, "export.json: disks: expected {\"name\", \"file\", \"virtual_size\"}");
    }
    const auto name = d["name"].get<std::string>();
    const auto rel = d["file"].get<std::string>();
    if (!contained(rel)) {
      return refuse(ErrorKind::invalid_input, "export.json: disk '" + name + "': file \"" + rel +
                                                  "\" is not a path inside the directory");
    }
    if (vm.count(name) == 0) {
      return refuse(ErrorKind::invalid_input, "the checkpoint has disk '" + name + "', which this VM does not have");
    }
    seen.insert(name);
    const auto path = (dir / rel).string();
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) {
      return refuse(ErrorKind::not_found, "disk '" + name + "': " + rel + " is missing");
    }
    const std::vector<std::string> argv{qemu_img, "info", "--output=json", path};
    auto result = run_command(argv, 2min);
    const auto image = json::parse(result.output, nullptr, false);
    if (result.exit_code != 0 || !image.is_object()) {
      return refuse(ErrorKind::invalid_input, "disk '" + name + "': " + rel + " is not a readable image: " + result.output);
    }
    if (image.value("format", std::string()) != "qcow2" || image.contains("backing-filename")) {
      return refuse(ErrorKind::invalid_input, "disk '" + name + "': " + rel +
                                                  " is not a standalone qcow2 (format " +
                                                  image.value("format", std::string("?")) +
                                                  (image.contains("backing-filename") ? ", with a backing file" : "") + ")");
    }
    if (image.value("virtual-size", std::uint64_t{0}) != d["virtual_size"].get<std::uint64_t>()) {
      return refuse(ErrorKind::invalid_input, "disk '" + name + "': " + rel + " is " +
                                                  std::to_string(image.value("virtual-size", std::uint64_t{0})) +
                                                  " bytes, export.json says " + d["virtual_size"].dump());
    }
    if (auto check = run_command({qemu_img, "check", "-q", path}, std::chrono::hours(1)); check.exit_code != 0) {
      return refuse(ErrorKind::invalid_input, "disk '" + name + "': `qemu-img check " + rel + "` finds it damaged: " +
                                                  check.output);
    }
    file_of[name] = rel;
    size_of[name] = d["virtual_size"].get<std::uint64_t>();
  }
  for (const auto& [name, image] : vm) {
    if (seen.count(name) == 0) {
      return refuse(ErrorKind::invalid_input, "this VM's disk '" + name + "' is not in the checkpoint");
    }
  }
  std::vector<std::string> others;
  for (const auto& f : info["files"]) {
    if (!f.is_string() || !contained(f.get<std::string>()) ||
        !std::filesystem::is_regular_file(dir / f.get<std::string>())) {
      return refuse(ErrorKind::invalid_input, "export.json: files: " + f.dump() + " is not a file inside the directory");
    }
    others.push_back(f.get<std::string>());
  }

  // Checked: now the store.
  const auto original_id = m.id;
  std::error_code ec;
  if (!valid_checkpoint_id(m.id) || std::filesystem::exists(store.dir_of(m.id), ec)) {
    m.id = store.new_id();
  }
  std::filesystem::create_directories(store.root(), ec);
  StagingDir staging(store.root() / ("." + m.id + ".importing"));
  std::filesystem::remove_all(staging.path(), ec);
  std::filesystem::create_directories(staging.path() / "disks", ec);
  if (ec) {
    return Error{ErrorKind::system, "cannot create " + staging.path().string() + ": " + ec.message()};
  }
  if (auto copied = copy_files(dir, staging.path(), others); !copied) {
    return copied.error();
  }
  const auto final_dir = store.dir_of(m.id);
  for (auto& d : m.disks) {
    if (file_of.count(d.name) == 0) {
      return refuse(ErrorKind::invalid_input, "manifest.json: disk '" + d.name + "' is not in export.json");
    }
    const auto base = "disks/" + d.name + ".base.qcow2";
    const auto overlay = "disks/" + d.name + ".qcow2";
    if (auto copied = copy_files(dir, staging.path(), {file_of[d.name]}); !copied) {
      return copied.error();
    }
    std::filesystem::rename(staging.path() / file_of[d.name], staging.path() / base, ec);
    // The overlay points at where the base will be once the directory is in place.
    if (auto made = run({qemu_img, "create", "-q", "-f", "qcow2", "-u", "-F", "qcow2", "-b", (final_dir / base).string(),
                         (staging.path() / overlay).string(), std::to_string(size_of[d.name])},
                        "disk '" + d.name + "'");
        !made) {
      return made.error();
    }
    d.snapshot = (final_dir / overlay).string();
    d.image = vm[d.name];
  }
  m.parent.reset();
  m.warnings.push_back("imported from " + dir.string() + " (checkpoint " + original_id + " of another VM)");
  if (auto saved = write_json(staging.path() / "manifest.json", m.to_json()); !saved) {
    return saved.error();
  }
  std::filesystem::rename(staging.path(), final_dir, ec);
  if (ec) {
    return Error{ErrorKind::system, "cannot rename " + staging.path().string() + " to " + final_dir.string() + ": " +
                                        ec.message()};
  }
  staging.keep();
  return m;
}

}  // namespace quiesce::host
