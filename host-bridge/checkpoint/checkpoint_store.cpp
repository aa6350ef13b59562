#include "host-bridge/checkpoint/checkpoint_store.hpp"

#include <algorithm>
#include <ctime>
#include <functional>
#include <map>
#include <random>

#include "host-bridge/checkpoint/process.hpp"
#include "platform/files.hpp"

namespace quiesce::host {

using nlohmann::json;

const char* to_string(CheckpointType type) {
  return type == CheckpointType::production ? "production" : "standard";
}

const char* to_string(Consistency consistency) {
  switch (consistency) {
    case Consistency::application:
      return "application";
    case Consistency::filesystem:
      return "filesystem";
    case Consistency::crash:
      break;
  }
  return "crash";
}

bool valid_checkpoint_id(const std::string& id) {
  if (id.empty() || id.size() > 128 || id.front() == '.') {
    return false;
  }
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

namespace {

json optional_string(const std::optional<std::string>& value) {
  return value ? json(*value) : json(nullptr);
}

json error_json(const std::optional<Error>& error) {
  if (!error) {
    return nullptr;
  }
  return {{"kind", to_string(error->kind)}, {"message", error->message}};
}

// Reads fields of one JSON object, remembering the first problem with its
// field name, so a corrupt manifest is reported precisely.
class FieldReader {
 public:
  explicit FieldReader(const json& object, std::string prefix = {})
      : object_(object), prefix_(std::move(prefix)) {}

  std::string string(const char* name) {
    const json* v = find(name);
    if (v == nullptr) {
      return {};
    }
    if (!v->is_string()) {
      fail(name, "expected a string");
      return {};
    }
    return v->get<std::string>();
  }
  std::optional<std::string> nullable_string(const char* name) {
    auto it = object_.find(name);
    if (it == object_.end() || it->is_null()) {
      return std::nullopt;
    }
    if (!it->is_string()) {
      fail(name, "expected a string or null");
      return std::nullopt;
    }
    return it->get<std::string>();
  }
  double number(const char* name) {
    const json* v = find(name);
    if (v == nullptr) {
      return 0;
    }
    if (!v->is_number()) {
      fail(name, "expected a number");
      return 0;
    }
    return v->get<double>();
  }
  std::uint64_t unsigned_number(const char* name) {
    auto it = object_.find(name);
    if (it == object_.end()) {
      return 0;  // optional: older manifests may not have it
    }
    if (!it->is_number_unsigned()) {
      fail(name, "expected a non-negative integer");
      return 0;
    }
    return it->get<std::uint64_t>();
  }
  json any(const char* name, json::value_t type) {
    const json* v = find(name);
    if (v == nullptr) {
      return nullptr;
    }
    if (v->type() != type) {
      fail(name, type == json::value_t::array ? "expected an array" : "expected an object");
      return nullptr;
    }
    return *v;
  }
  std::string one_of(const char* name, std::initializer_list<const char*> allowed) {
    auto value = string(name);
    if (!problem_.empty()) {
      return value;
    }
    for (const char* a : allowed) {
      if (value == a) {
        return value;
      }
    }
    std::string list;
    for (const char* a : allowed) {
      list += list.empty() ? "" : ", ";
      list += a;
    }
    fail(name, "expected one of " + list + ", got \"" + value + "\"");
    return value;
  }
  void fail(const std::string& name, const std::string& what) {
    if (problem_.empty()) {
      problem_ = prefix_ + name + ": " + what;
    }
  }
  [[nodiscard]] const std::string& problem() const { return problem_; }

 private:
  const json* find(const char* name) {
    auto it = object_.find(name);
    if (it == object_.end()) {
      fail(name, "missing");
      return nullptr;
    }
    return &*it;
  }
  const json& object_;
  std::string prefix_;
  std::string problem_;
};

}  // namespace

json Manifest::to_json() const {
  json disks_json = json::array();
  for (const auto& d : disks) {
    disks_json.push_back({{"name", d.name},
                          {"image", d.image},
                          {"snapshot", d.snapshot},
                          {"method", d.method},
                          {"bytes", d.bytes},
                          {"allocated_bytes", d.allocated_bytes},
                          {"ms", d.ms}});
  }
  return {{"format", 1},
          {"id", id},
          {"parent", optional_string(parent)},
          {"created_at", created_at},
          {"label", label},
          {"type", to_string(type)},
          {"consistency", consistency ? json(to_string(*consistency)) : json(nullptr)},
          {"status", ok ? "ok" : "failed"},
          {"error", error_json(error)},
          {"vm_state", vm_state},
          {"backend", backend},
          {"session_id", optional_string(session_id)},
          {"fallback_reason", optional_string(fallback_reason)},
          {"verdict", verdict},
          {"agent", agent},
          {"writers", writers},
          {"artifacts", artifacts},
          {"disks", disks_json},
          {"memory", memory},
          {"timings_ms", timings_ms},
          {"warnings", warnings}};
}

Expected<Manifest> Manifest::from_json(const json& j) {
  if (!j.is_object()) {
    return Error{ErrorKind::invalid_input, "not a JSON object"};
  }
  FieldReader r(j);
  Manifest m;
  if (auto it = j.find("format"); it == j.end() || !it->is_number_integer() || *it != 1) {
    r.fail("format", "expected 1");
  }
  m.id = r.string("id");
  m.parent = r.nullable_string("parent");
  m.created_at = r.string("created_at");
  m.label = r.string("label");
  m.type = r.one_of("type", {"production", "standard"}) == "standard" ? CheckpointType::standard
                                                                      : CheckpointType::production;
  const auto status = r.one_of("status", {"ok", "failed"});
  m.ok = status == "ok";
  if (auto c = r.nullable_string("consistency")) {
    if (*c == "application") {
      m.consistency = Consistency::application;
    } else if (*c == "filesystem") {
      m.consistency = Consistency::filesystem;
    } else if (*c == "crash") {
      m.consistency = Consistency::crash;
    } else {
      r.fail("consistency",
             "expected application, filesystem, crash or null, got \"" + *c + "\"");
    }
  }
  if (m.ok && !m.consistency) {
    r.fail("consistency", "missing for a checkpoint whose status is ok");
  }
  if (auto it = j.find("error"); it != j.end() && it->is_object()) {
    m.error = Error{ErrorKind::system, it->value("message", std::string())};
  }
  m.vm_state = r.one_of("vm_state", {"running", "off"});
  m.backend = r.string("backend");
  m.session_id = r.nullable_string("session_id");
  m.fallback_reason = r.nullable_string("fallback_reason");
  m.verdict = j.value("verdict", json(nullptr));
  // Manifests from before qga checkpoints have no "agent".
  m.agent = j.value("agent", json(nullptr));
  if (!m.agent.is_null() && !m.agent.is_object()) {
    r.fail("agent", "expected an object {kind, version} or null");
  }
  // Manifests from before memory checkpoints have no "memory".
  m.memory = j.value("memory", json(nullptr));
  if (!m.memory.is_null() &&
      (!m.memory.is_object() || !m.memory.contains("file") || !m.memory["file"].is_string() ||
       !m.memory.contains("bytes") || !m.memory["bytes"].is_number_unsigned() || !m.memory.contains("sha256") ||
       !m.memory["sha256"].is_string() || !m.memory.contains("qemu_command") || !m.memory["qemu_command"].is_array())) {
    r.fail("memory", "expected null or an object {file, bytes, sha256, qemu_command, ...}");
  }
  m.writers = r.any("writers", json::value_t::array);
  m.artifacts = r.any("artifacts", json::value_t::object);
  m.timings_ms = r.any("timings_ms", json::value_t::object);
  const json disks = r.any("disks", json::value_t::array);
  if (disks.is_array()) {
    for (std::size_t i = 0; i < disks.size(); ++i) {
      const std::string prefix = "disks[" + std::to_string(i) + "].";
      if (!disks[i].is_object()) {
        r.fail("disks[" + std::to_string(i) + "]", "expected an object");
        break;
      }
      FieldReader d(disks[i], prefix);
      DiskSnapshot s;
      s.name = d.string("name");
      s.image = d.string("image");
      s.snapshot = d.string("snapshot");
      s.method = d.string("method");
      s.bytes = d.unsigned_number("bytes");
      s.allocated_bytes = d.unsigned_number("allocated_bytes");
      s.ms = d.number("ms");
      if (!d.problem().empty()) {
        r.fail(d.problem(), "");
        break;
      }
      m.disks.push_back(std::move(s));
    }
  }
  if (auto it = j.find("warnings"); it != j.end() && it->is_array()) {
    for (const auto& w : *it) {
      if (w.is_string()) {
        m.warnings.push_back(w.get<std::string>());
      }
    }
  }
  if (!r.problem().empty()) {
    auto problem = r.problem();
    if (problem.size() >= 2 && problem.substr(problem.size() - 2) == ": ") {
      problem.resize(problem.size() - 2);
    }
    return Error{ErrorKind::invalid_input, problem};
  }
  if (!valid_checkpoint_id(m.id)) {
    return Error{ErrorKind::invalid_input, "id: not a valid checkpoint id: \"" + m.id + "\""};
  }
  return m;
}

CheckpointStore::CheckpointStore(std::filesystem::path root) : root_(std::move(root)) {}

std::string CheckpointStore::new_id() const {
  std::random_device rd;
  for (;;) {
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    ::gmtime_r(&now, &tm);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
    char suffix[8];
    std::snprintf(suffix, sizeof suffix, "%04x", rd() & 0xffffU);
    std::string id = std::string("cp-") + stamp + "-" + suffix;
    std::error_code ec;
    if (!std::filesystem::exists(dir_of(id), ec)) {
      return id;
    }
  }
}

Status CheckpointStore::create_dir(const std::string& id) const {
  std::error_code ec;
  std::filesystem::create_directories(root_, ec);
  if (!std::filesystem::create_directory(dir_of(id), ec) || ec) {
    return Error{ErrorKind::system, "cannot create " + dir_of(id).string() + ": " +
                                        (ec ? ec.message() : std::string("it exists"))};
  }
  return ok_status();
}

Status CheckpointStore::save(const Manifest& manifest) const {
  std::string error;
  if (!platform::write_file_atomically(manifest_path(manifest.id).string(), manifest.to_json().dump(2) + "\n",
                             &error)) {
    return Error{ErrorKind::system, error};
  }
  return ok_status();
}

Expected<Manifest> CheckpointStore::load(const std::string& id) const {
  if (!valid_checkpoint_id(id)) {
    return Error{ErrorKind::invalid_input,
                 "\"" + id + "\" is not a checkpoint id (letters, digits, '.', '_', '-')"};
  }
  const auto path = manifest_path(id);
  std::error_code ec;
  if (!std::filesystem::exists(dir_of(id), ec)) {
    return Error{ErrorKind::not_found, "no checkpoint '" + id + "' in " + root_.string()};
  }
  std::string text;
  if (!platform::read_whole_file(path.string(), text)) {
    return Error{ErrorKind::invalid_input, path.string() + ": missing or unreadable"};
  }
  const auto parsed = json::parse(text, nullptr, false);
  if (parsed.is_discarded()) {
    return Error{ErrorKind::invalid_input, path.string() + ": not valid JSON"};
  }
  auto manifest = Manifest::from_json(parsed);
  if (!manifest) {
    return Error{ErrorKind::invalid_input, path.string() + ": " + manifest.error().message};
  }
  if (manifest->id != id) {
    return Error{ErrorKind::invalid_input,
                 path.string() + ": id: \"" + manifest->id + "\" does not match its directory"};
  }
  return manifest;
}

CheckpointStore::Listing CheckpointStore::list() const {
  Listing listing;
  std::error_code ec;
  if (!std::filesystem::is_directory(root_, ec)) {
    return listing;
  }
  for (const auto& entry : std::filesystem::directory_iterator(root_, ec)) {
    if (!entry.is_directory()) {
      continue;
    }
    const auto id = entry.path().filename().string();
    if (!valid_checkpoint_id(id)) {
      continue;
    }
    auto manifest = load(id);
    if (manifest) {
      listing.manifests.push_back(std::move(*manifest));
    } else {
      listing.problems.push_back(manifest.error());
    }
  }
  std::sort(listing.manifests.begin(), listing.manifests.end(), [](const auto& a, const auto& b) {
    return std::tie(a.created_at, a.id) < std::tie(b.created_at, b.id);
  });
  return listing;
}

Expected<std::optional<std::string>> CheckpointStore::current() const {
  const auto path = root_ / "current.json";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return std::optional<std::string>();
  }
  std::string text;
  if (!platform::read_whole_file(path.string(), text)) {
    return Error{ErrorKind::invalid_input, path.string() + ": unreadable"};
  }
  const auto parsed = json::parse(text, nullptr, false);
  if (!parsed.is_object() || !parsed.contains("current") ||
      !(parsed["current"].is_null() || parsed["current"].is_string())) {
    return Error{ErrorKind::invalid_input,
                 path.string() + ": expected {\"current\": \"<checkpoint id>\" | null}"};
  }
  if (parsed["current"].is_null()) {
    return std::optional<std::string>();
  }
  return std::optional<std::string>(parsed["current"].get<std::string>());
}

Status CheckpointStore::set_current(const std::optional<std::string>& id) const {
  std::error_code ec;
  std::filesystem::create_directories(root_, ec);
  std::string error;
  if (!platform::write_file_atomically((root_ / "current.json").string(),
                             json{{"current", optional_string(id)}}.dump() + "\n", &error)) {
    return Error{ErrorKind::system, error};
  }
  return ok_status();
}

Status CheckpointStore::erase(const std::string& id) const {
  if (!valid_checkpoint_id(id)) {
    return Error{ErrorKind::invalid_input, "\"" + id + "\" is not a checkpoint id"};
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_of(id), ec);
  if (ec) {
    return Error{ErrorKind::system, "cannot remove " + dir_of(id).string() + ": " + ec.message()};
  }
  return ok_status();
}

json checkpoint_tree(const std::vector<Manifest>& manifests, const std::optional<std::string>& current) {
  std::map<std::string, const Manifest*> by_id;
  for (const auto& m : manifests) {
    by_id[m.id] = &m;
  }
  std::function<json(const Manifest&)> node = [&](const Manifest& m) {
    json children = json::array();
    for (const auto& c : manifests) {
      if (c.parent && *c.parent == m.id) {
        children.push_back(node(c));
      }
    }
    return json{{"id", m.id},
                {"label", m.label},
                {"type", to_string(m.type)},
                {"consistency", m.consistency ? json(to_string(*m.consistency)) : json(nullptr)},
                {"status", m.ok ? "ok" : "failed"},
                {"created_at", m.created_at},
                {"current", current && *current == m.id},
                {"children", children}};
  };
  json roots = json::array();
  for (const auto& m : manifests) {
    if (!m.parent || by_id.count(*m.parent) == 0) {
      roots.push_back(node(m));
    }
  }
  return roots;
}

}  // namespace quiesce::host
