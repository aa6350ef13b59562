#include "agent/core/config.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "platform/addresses.hpp"
#include "platform/defaults.hpp"
#include "platform/secret_file.hpp"
#include "platform/system_log.hpp"
#include "quiesce/json_nesting.hpp"

namespace quiesce::agent {

namespace {

constexpr std::array<Phase, 7> kPhases{Phase::identify, Phase::prepare, Phase::freeze,
                                        Phase::thaw, Phase::post_snapshot, Phase::abort,
                                        Phase::post_restore};

void read_timeouts(JsonFields& fields, std::map<Phase, Millis>& out) {
  for (auto phase : kPhases) {
    const std::string key(to_string(phase));
    if (fields.has(key)) {
      auto value = fields.millis(key, std::nullopt, std::chrono::hours(24));
      if (value.count() == 0) {
        throw FieldError(fields.path_of(key), "must be at least 1 ms");
      }
      out[phase] = value;
    }
  }
  fields.reject_unknown();
}

unsigned parse_mode(JsonFields& fields, const std::string& key, unsigned fallback) {
  auto text = fields.optional_string(key);
  if (!text) {
    return fallback;
  }
  static const std::regex octal("^0?[0-7]{3}$");
  if (!std::regex_match(*text, octal)) {
    throw FieldError(fields.path_of(key), "expected an octal mode such as \"0660\"");
  }
  return static_cast<unsigned>(std::stoul(*text, nullptr, 8));
}

std::vector<std::uint32_t> parse_cids(JsonFields& fields, const std::string& key,
                                      std::vector<std::uint32_t> fallback) {
  const auto* cids = fields.raw(key);
  if (cids == nullptr) {
    return fallback;
  }
  if (!cids->is_array() || cids->empty()) {
    throw FieldError(fields.path_of(key), "expected a non-empty array of CIDs (2 is the host)");
  }
  std::vector<std::uint32_t> out;
  for (std::size_t i = 0; i < cids->size(); ++i) {
    const auto& cid = (*cids)[i];
    if (!cid.is_number_unsigned() || cid.get<std::uint64_t>() > 0xffffffffULL) {
      throw FieldError(fields.path_of(key) + "[" + std::to_string(i) + "]",
                       "expected a CID (an unsigned 32-bit integer)");
    }
    // 0 is the hypervisor itself and 0xffffffff means "any": neither names a
    // peer, and "any" would open the agent to every VM on the host.
    if (cid.get<std::uint64_t>() == 0 || cid.get<std::uint64_t>() == 0xffffffffULL) {
      throw FieldError(fields.path_of(key) + "[" + std::to_string(i) + "]",
                       "CID " + std::to_string(cid.get<std::uint64_t>()) +
                           " cannot be a peer (2 is the host; 0 and 4294967295 are reserved)");
    }
    out.push_back(cid.get<std::uint32_t>());
  }
  return out;
}

// A named pipe's "name": a local pipe, \\.\pipe\NAME (Windows' limit is 256
// characters; NAME holds no backslash). Parsed on every OS, so a Linux
// config naming a pipe gets the "Windows transport" error, not this one.
std::string parse_pipe_name(JsonFields& fields, std::optional<std::string> fallback) {
  std::string name = fields.string("name", std::move(fallback));
  constexpr std::string_view prefix = R"(\\.\pipe\)";
  if (name.rfind(prefix, 0) != 0 || name.size() == prefix.size() || name.size() > 256 ||
      name.find('\\', prefix.size()) != std::string::npos) {
    throw FieldError(fields.path_of("name"),
                     "expected a local pipe name \\\\.\\pipe\\NAME (no further backslash, at most 256 "
                     "characters), got '" + name + "'");
  }
  return name;
}

// A Hyper-V socket's "service_id": a GUID written 8-4-4-4-12 in hex
// ("f58797f6-c9a4-4b5d-a2c6-6b3a8b8f1a2e", braces not taken), returned in
// lowercase. Strict: a GUID that is almost right names another service.
// Parsed on every OS, so a Linux config gets the "Windows transport" error.
std::string parse_hyperv_service_id(JsonFields& fields) {
  std::string id = fields.string("service_id");
  bool valid = id.size() == 36;
  for (std::size_t i = 0; valid && i < id.size(); ++i) {
    const bool dash_position = i == 8 || i == 13 || i == 18 || i == 23;
    const char c = id[i];
    valid = dash_position ? c == '-' : std::isxdigit(static_cast<unsigned char>(c)) != 0;
  }
  if (!valid) {
    throw FieldError(fields.path_of("service_id"),
                     "expected a GUID xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (hex, no braces), got '" + id + "'");
  }
  std::transform(id.begin(), id.end(), id.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (id == "00000000-0000-0000-0000-000000000000") {
    throw FieldError(fields.path_of("service_id"), "the zero GUID names no service");
  }
  return id;
}

void parse_listen(JsonFields listen, api::ServerConfig& server) {
  // unix: on by default (Linux); false turns it off.
  if (const auto* unix_value = listen.raw("unix"); unix_value != nullptr && unix_value->is_boolean()) {
    if (unix_value->get<bool>()) {
      server.unix_socket = api::UnixListener{};
    } else {
      server.unix_socket.reset();
    }
  } else if (unix_value != nullptr || server.unix_socket) {
    auto unix_fields = listen.object("unix");
    api::UnixListener unix_listener;
    unix_listener.path = unix_fields.string("path", unix_listener.path);
    if (unix_listener.path.empty() || unix_listener.path.front() != '/') {
      throw FieldError(unix_fields.path_of("path"), "must be an absolute path");
    }
    if (unix_listener.path.size() >= 108) {
      throw FieldError(unix_fields.path_of("path"), "too long for a Unix socket (max 107 bytes)");
    }
    unix_listener.mode = parse_mode(unix_fields, "mode", unix_listener.mode);
    // null is the documented default (no chgrp).
    if (const auto* group = unix_fields.raw("group"); group != nullptr && !group->is_null()) {
      if (!group->is_string() || group->get<std::string>().empty()) {
        throw FieldError(unix_fields.path_of("group"), "expected a group name or null, got " +
                                                           describe_json(*group));
      }
      unix_listener.group = group->get<std::string>();
    }
    unix_fields.reject_unknown();
    server.unix_socket = unix_listener;
  }

  // vsock: on by default (Linux) when the kernel has it; false turns it off.
  if (const auto* vsock_value = listen.raw("vsock");
      vsock_value != nullptr && vsock_value->is_boolean()) {
    if (vsock_value->get<bool>()) {
      server.vsock = api::VsockListener{};
    } else {
      server.vsock.reset();
    }
  } else if (vsock_value != nullptr || server.vsock) {
    auto vsock_fields = listen.object("vsock");
    api::VsockListener vsock;
    vsock.port = static_cast<std::uint32_t>(
        vsock_fields.integer("port", vsock.port, 1, 0xfffffffeLL));
    vsock.allowed_cids = parse_cids(vsock_fields, "allowed_cids", vsock.allowed_cids);
    vsock.required = vsock_fields.boolean("required", false);
    vsock_fields.reject_unknown();
    server.vsock = vsock;
  }

  // tcp: off unless configured, and then only with a token.
  // null is the documented default (off).
  if (const auto* tcp_value = listen.raw("tcp"); tcp_value != nullptr && !tcp_value->is_null()) {
    auto tcp_fields = listen.object("tcp", true);
    api::TcpListener tcp;
    tcp.address = tcp_fields.string("address", tcp.address);
    if (!platform::is_ip_address_literal(tcp.address)) {
      throw FieldError(tcp_fields.path_of("address"),
                       "'" + tcp.address + "' is not an IPv4 or IPv6 address (host names are not resolved)");
    }
    // Port 0 would bind a random port no host could be told about.
    tcp.port = static_cast<std::uint16_t>(tcp_fields.integer("port", std::nullopt, 1, 65535));
    const auto token_file = tcp_fields.string("token_file");
    tcp.token = read_token_file(token_file, tcp_fields.path_of("token_file"));
    tcp_fields.reject_unknown();
    server.tcp = tcp;
  }
  // pipe (Windows): on by default there; false turns it off.
  if (const auto* pipe_value = listen.raw("pipe"); pipe_value != nullptr && pipe_value->is_boolean()) {
    if (pipe_value->get<bool>()) {
      server.pipe = api::PipeListener{};
    } else {
      server.pipe.reset();
    }
  } else if (pipe_value != nullptr || server.pipe) {
    auto pipe_fields = listen.object("pipe");
    api::PipeListener pipe;
    pipe.name = parse_pipe_name(pipe_fields, pipe.name);
    pipe_fields.reject_unknown();
    server.pipe = pipe;
  }
  // hyperv (Windows on Hyper-V): off unless configured; null is the default.
  if (const auto* hyperv_value = listen.raw("hyperv"); hyperv_value != nullptr && !hyperv_value->is_null()) {
    auto hyperv_fields = listen.object("hyperv", true);
    api::HypervListener hyperv;
    hyperv.service_id = parse_hyperv_service_id(hyperv_fields);
    hyperv_fields.reject_unknown();
    server.hyperv = hyperv;
  }
  listen.reject_unknown();
  if (const auto unsupported = api::unsupported_listener(server); !unsupported.empty()) {
    throw FieldError(unsupported.substr(0, unsupported.find(':')), unsupported.substr(unsupported.find(':') + 2));
  }
  if (!server.unix_socket && !server.vsock && !server.tcp && !server.pipe && !server.hyperv) {
    throw FieldError("listen", std::string("no transport left: enable ") + api::available_listeners());
  }
}

void parse_limits(JsonFields fields, api::ServerLimits& limits) {
  limits.max_header_bytes = static_cast<std::size_t>(
      fields.integer("max_header_bytes", static_cast<std::int64_t>(limits.max_header_bytes), 1024,
                     1 << 20));
  limits.max_body_bytes = static_cast<std::size_t>(fields.integer(
      "max_body_bytes", static_cast<std::int64_t>(limits.max_body_bytes), 1024, 16 << 20));
  limits.read_timeout = fields.millis("read_timeout_ms", limits.read_timeout, std::chrono::hours(1));
  limits.keepalive_timeout =
      fields.millis("keepalive_timeout_ms", limits.keepalive_timeout, std::chrono::hours(1));
  limits.max_connections = static_cast<std::size_t>(fields.integer(
      "max_connections", static_cast<std::int64_t>(limits.max_connections), 1, 10'000));
  limits.handler_threads = static_cast<std::size_t>(fields.integer(
      "handler_threads", static_cast<std::int64_t>(limits.handler_threads), 2, 64));
  if (limits.read_timeout.count() == 0 || limits.keepalive_timeout.count() == 0) {
    throw FieldError(fields.path_of("read_timeout_ms"), "timeouts must be at least 1 ms");
  }
  fields.reject_unknown();
}

void parse_session(JsonFields fields, SessionLimits& session) {
  session.default_freeze_window =
      fields.millis("freeze_window_ms", session.default_freeze_window, std::chrono::hours(1));
  session.max_freeze_window =
      fields.millis("max_freeze_window_ms", session.max_freeze_window, std::chrono::hours(1));
  session.idle_timeout = fields.millis("idle_timeout_ms", session.idle_timeout, std::chrono::hours(24));
  if (session.default_freeze_window.count() == 0) {
    throw FieldError(fields.path_of("freeze_window_ms"), "must be at least 1 ms");
  }
  if (session.default_freeze_window > session.max_freeze_window) {
    throw FieldError(fields.path_of("freeze_window_ms"),
                     "is larger than max_freeze_window_ms (" +
                         std::to_string(session.max_freeze_window.count()) + ")");
  }
  if (session.idle_timeout.count() == 0) {
    throw FieldError(fields.path_of("idle_timeout_ms"), "must be at least 1 ms");
  }
  session.history = static_cast<std::size_t>(
      fields.integer("history", static_cast<std::int64_t>(session.history), 1, 10'000));
  auto timeouts = fields.object("phase_timeouts_ms");
  std::map<Phase, Millis> overrides;
  read_timeouts(timeouts, overrides);
  for (const auto& [phase, value] : overrides) {
    session.phase_timeouts.of(phase) = value;
  }
  fields.reject_unknown();
}

std::string parse_socket_path(JsonFields& fields, const std::string& key) {
  auto path = fields.string(key);
  if (path.empty() || path.front() != '/') {
    throw FieldError(fields.path_of(key), "must be an absolute path");
  }
  if (path.size() >= 108) {
    throw FieldError(fields.path_of(key), "too long for a Unix socket (max 107 bytes)");
  }
  return path;
}

// Read after the session section: the qga window must fit its limits.
void parse_qga(JsonFields fields, QgaConfig& qga, const SessionLimits& session) {
  qga.enabled = fields.boolean("enabled", true);
  if (const auto* port = fields.raw("virtio_serial_path"); port != nullptr) {
    if (port->is_null()) {
      qga.channels.virtio_serial_path.clear();
    } else if (!port->is_string()) {
      throw FieldError(fields.path_of("virtio_serial_path"),
                       "expected a path, \"\" or null (no virtio-serial port), got " +
                           describe_json(*port));
    } else {
      qga.channels.virtio_serial_path = port->get<std::string>();
      if (!qga.channels.virtio_serial_path.empty() &&
          !platform::is_absolute_path(qga.channels.virtio_serial_path)) {
        throw FieldError(fields.path_of("virtio_serial_path"), "must be an absolute path");
      }
    }
  }
  if (const auto* unix_value = fields.raw("unix_socket"); unix_value != nullptr && !unix_value->is_null()) {
    auto unix_fields = fields.object("unix_socket", true);
    qga::QgaUnixSocket unix_socket;
    unix_socket.path = parse_socket_path(unix_fields, "path");
    unix_socket.mode = parse_mode(unix_fields, "mode", unix_socket.mode);
    unix_fields.reject_unknown();
    qga.channels.unix_socket = unix_socket;
  }
  if (const auto* pipe_value = fields.raw("pipe"); pipe_value != nullptr && !pipe_value->is_null()) {
    auto pipe_fields = fields.object("pipe", true);
    qga::QgaPipe pipe;
    pipe.name = parse_pipe_name(pipe_fields, std::nullopt);
    pipe_fields.reject_unknown();
    qga.channels.pipe = pipe;
  }
  if (const auto* hyperv_value = fields.raw("hyperv"); hyperv_value != nullptr && !hyperv_value->is_null()) {
    auto hyperv_fields = fields.object("hyperv", true);
    qga::QgaHyperv hyperv;
    hyperv.service_id = parse_hyperv_service_id(hyperv_fields);
    hyperv_fields.reject_unknown();
    qga.channels.hyperv = hyperv;
  }
  // allowed_cids is checked even while vsock_port is off (null, the
  // documented default), so turning the port on cannot reveal a bad list.
  qga::QgaVsock vsock;
  vsock.allowed_cids = parse_cids(fields, "allowed_cids", vsock.allowed_cids);
  if (const auto* port = fields.raw("vsock_port"); port != nullptr && !port->is_null()) {
    vsock.port = static_cast<std::uint32_t>(
        fields.integer("vsock_port", std::nullopt, 1, 0xfffffffeLL));
    qga.channels.vsock = vsock;
  }
  // Unset, the default follows a smaller session.max_freeze_window_ms, so a
  // config that only narrows the session limits stays valid.
  qga.options.freeze_window =
      fields.millis("freeze_window_ms", std::min(qga.options.freeze_window, session.max_freeze_window),
                    std::chrono::hours(1));
  if (qga.options.freeze_window.count() == 0) {
    throw FieldError(fields.path_of("freeze_window_ms"), "must be at least 1 ms");
  }
  if (qga.options.freeze_window > session.max_freeze_window) {
    throw FieldError(fields.path_of("freeze_window_ms"),
                     "is larger than session.max_freeze_window_ms (" +
                         std::to_string(session.max_freeze_window.count()) + ")");
  }
  qga.options.max_object_bytes = static_cast<std::size_t>(
      fields.integer("max_object_bytes", static_cast<std::int64_t>(qga.options.max_object_bytes),
                     1024, 64 << 20));
  qga.channels.max_connections = static_cast<std::size_t>(fields.integer(
      "max_connections", static_cast<std::int64_t>(qga.channels.max_connections), 1, 1024));
  fields.reject_unknown();
  if (const auto unsupported = unsupported_qga_channel(qga.channels); !unsupported.empty()) {
    throw FieldError(unsupported.substr(0, unsupported.find(':')), unsupported.substr(unsupported.find(':') + 2));
  }
}

void parse_dbus(JsonFields fields, DbusConfig& dbus) {
  dbus.enabled = fields.boolean("enabled", dbus.enabled);
  dbus.bus = fields.string("bus", dbus.bus);
  if (dbus.bus != "system" && dbus.bus != "session" && dbus.bus != "address") {
    throw FieldError(fields.path_of("bus"), "expected system, session or address, got '" +
                                                dbus.bus + "'");
  }
  if (dbus.bus == "address") {
    dbus.address = fields.string("address");
    if (dbus.address.empty() || dbus.address.find(':') == std::string::npos) {
      throw FieldError(fields.path_of("address"),
                       "expected a D-Bus address such as unix:path=/run/my-bus");
    }
  } else if (fields.has("address")) {
    throw FieldError(fields.path_of("address"), "only valid with \"bus\": \"address\"");
  }
  dbus.group = fields.string("group", dbus.group);
  if (dbus.group.empty()) {
    throw FieldError(fields.path_of("group"), "expected a group name");
  }
  dbus.logind_inhibit = fields.boolean("logind_inhibit", dbus.logind_inhibit);
  fields.reject_unknown();
}

void parse_log(JsonFields fields, LogConfig& log) {
  log.target = fields.string("target", log.target);
  // The system's own log is journald on Linux, the Event Log on Windows.
  const std::string system_log = platform::system_log_name();
  if (log.target != "stderr" && log.target != system_log && log.target != "file") {
    throw FieldError(fields.path_of("target"), "expected stderr, " + system_log + " or file");
  }
  if (log.target == "file") {
    log.file = fields.string("file");
    if (!platform::is_absolute_path(log.file)) {
      throw FieldError(fields.path_of("file"), "must be an absolute path");
    }
  } else if (fields.has("file")) {
    throw FieldError(fields.path_of("file"), "only valid with target \"file\"");
  }
  const auto level = fields.string("level", "info");
  log.level = spdlog::level::from_str(level);
  if (level != "off" && log.level == spdlog::level::off) {
    throw FieldError(fields.path_of("level"),
                     "expected trace, debug, info, warning, error, critical or off");
  }
  log.ring_lines = static_cast<std::size_t>(
      fields.integer("ring_lines", static_cast<std::int64_t>(log.ring_lines), 16, 1'000'000));
  fields.reject_unknown();
}

std::vector<WriterEntry> parse_writers(const nlohmann::json* value,
                                       const WriterRegistry& registry) {
  std::vector<WriterEntry> entries;
  if (value == nullptr) {
    return entries;
  }
  if (!value->is_array()) {
    throw FieldError("writers", "expected an array of writers, got " + describe_json(*value));
  }
  std::set<std::string> names;
  for (std::size_t i = 0; i < value->size(); ++i) {
    const std::string path = "writers[" + std::to_string(i) + "]";
    JsonFields fields((*value)[i], path);
    WriterEntry entry;
    entry.path = path;
    entry.spec.type = fields.string("type");
    const auto* type = registry.find(entry.spec.type);
    if (type == nullptr) {
      std::string known;
      for (const auto& name : registry.type_names()) {
        known += (known.empty() ? "" : ", ") + name;
      }
      throw FieldError(fields.path_of("type"),
                       "unknown writer type '" + entry.spec.type + "' (known: " + known + ")");
    }
    entry.spec.name = fields.string("name", entry.spec.type);
    if (!valid_writer_name(entry.spec.name)) {
      throw FieldError(fields.path_of("name"),
                       "must be 1-64 characters of letters, digits, '_', '.', '-'");
    }
    if (!names.insert(entry.spec.name).second) {
      throw FieldError(fields.path_of("name"), "another writer is already named '" +
                                                   entry.spec.name + "'");
    }
    entry.spec.level = type->default_level;
    if (auto level = fields.optional_string("level")) {
      auto parsed = parse_level(*level);
      if (!parsed) {
        throw FieldError(fields.path_of("level"), "expected application, database or filesystem");
      }
      entry.spec.level = *parsed;
    }
    if (const auto* options = fields.raw("options")) {
      if (!options->is_object()) {
        throw FieldError(fields.path_of("options"), "expected an object");
      }
      entry.spec.options = *options;
    }
    auto timeouts = fields.object("timeouts_ms");
    read_timeouts(timeouts, entry.timeouts);
    fields.reject_unknown();
    entries.push_back(std::move(entry));
  }
  return entries;
}

// A NUL inside a string would be cut off silently wherever the string
// becomes a C string (paths, names): refuse it. The document's depth was
// bounded before parsing, so this recursion is too.
void refuse_nul(const nlohmann::json& value, const std::string& path) {
  if (value.is_string()) {
    if (value.get_ref<const std::string&>().find('\0') != std::string::npos) {
      throw FieldError(path, "contains a NUL character");
    }
  } else if (value.is_object()) {
    for (const auto& [key, item] : value.items()) {
      const auto item_path = path.empty() ? key : path + "." + key;
      if (key.find('\0') != std::string::npos) {
        throw FieldError(path, "a key contains a NUL character");
      }
      refuse_nul(item, item_path);
    }
  } else if (value.is_array()) {
    for (std::size_t i = 0; i < value.size(); ++i) {
      refuse_nul(value[i], path + "[" + std::to_string(i) + "]");
    }
  }
}

// nlohmann keeps the last of two equal keys without a word; this parser
// callback notices the second one and remembers its path.
struct DuplicateKeyCheck {
  struct Frame {
    bool object = false;
    std::set<std::string> keys;
    std::string path;      // of this container
    std::size_t next = 0;  // arrays: index of the next element
  };
  std::vector<Frame> frames;
  std::string pending_key;
  std::optional<std::string> found;

  std::string child_path() {
    if (frames.empty()) {
      return "";
    }
    auto& top = frames.back();
    if (top.object) {
      return top.path.empty() ? pending_key : top.path + "." + pending_key;
    }
    return top.path + "[" + std::to_string(top.next) + "]";
  }
  void value_done() {
    if (!frames.empty() && !frames.back().object) {
      ++frames.back().next;
    }
  }
  bool operator()(int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    (void)depth;
    using Event = nlohmann::json::parse_event_t;
    switch (event) {
      case Event::object_start:
      case Event::array_start:
        frames.push_back(Frame{event == Event::object_start, {}, child_path(), 0});
        break;
      case Event::object_end:
      case Event::array_end:
        frames.pop_back();
        value_done();
        break;
      case Event::key: {
        pending_key = parsed.get<std::string>();
        if (!frames.back().keys.insert(pending_key).second && !found) {
          found = child_path();
        }
        break;
      }
      case Event::value:
        value_done();
        break;
    }
    return true;
  }
};

}  // namespace

std::map<Phase, Millis> parse_writer_timeouts(const nlohmann::json& object,
                                              const std::string& path) {
  if (!object.is_object()) {
    throw FieldError(path, "expected an object");
  }
  JsonFields fields(object, path);
  std::map<Phase, Millis> timeouts;
  read_timeouts(fields, timeouts);
  return timeouts;
}

bool valid_writer_name(const std::string& name) {
  static const std::regex name_pattern("^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$");
  return std::regex_match(name, name_pattern);
}

AgentConfig parse_config(const nlohmann::json& document, const WriterRegistry& registry) {
  JsonFields root(document, "");
  AgentConfig config;
  api::set_default_listeners(config.server);
  const auto defaults = platform::agent_defaults();
  config.state_dir = defaults.state_dir;
  config.run_dir = defaults.run_dir;
  config.qga.channels.virtio_serial_path = defaults.qga_port;
  parse_listen(root.object("listen"), config.server);
  parse_limits(root.object("limits"), config.server.limits);
  parse_session(root.object("session"), config.session);
  parse_log(root.object("log"), config.log);
  parse_qga(root.object("qga"), config.qga, config.session);
  // One service id is one listening socket: the second bind would fail at
  // start, so say it now.
  if (config.server.hyperv && config.qga.channels.hyperv &&
      config.server.hyperv->service_id == config.qga.channels.hyperv->service_id) {
    throw FieldError("qga.hyperv.service_id",
                     "the same as listen.hyperv.service_id: the HTTP API and qga need one service id each");
  }
  parse_dbus(root.object("dbus"), config.dbus);
  config.state_dir = root.string("state_dir", config.state_dir);
  config.run_dir = root.string("run_dir", config.run_dir);
  for (const auto* key : {"state_dir", "run_dir"}) {
    const auto& dir = std::string(key) == "state_dir" ? config.state_dir : config.run_dir;
    if (!platform::is_absolute_path(dir)) {
      throw FieldError(key, "must be an absolute path");
    }
    // Missing is fine (the agent creates it on first use); anything but a
    // directory in the way, or below it, would only fail at freeze time.
    std::error_code ec;
    std::filesystem::path probe(dir);
    while (!probe.empty() && !std::filesystem::exists(std::filesystem::symlink_status(probe, ec))) {
      if (probe == probe.parent_path()) {
        break;
      }
      probe = probe.parent_path();
    }
    if (!std::filesystem::is_directory(probe, ec)) {
      throw FieldError(key, probe.string() == dir ? "'" + dir + "' exists and is not a directory"
                                                  : "'" + probe.string() + "' (on the way to '" + dir +
                                                        "') is not a directory");
    }
    if (probe.string() != dir) {
      config.warnings.push_back(std::string(key) + ": '" + dir +
                                "' does not exist yet; the agent creates it on first use");
    }
  }
  config.writers = parse_writers(root.raw("writers"), registry);
  root.reject_unknown();
  return config;
}

AgentConfig load_config(const std::string& path, const WriterRegistry& registry) {
  std::ifstream in(path);
  if (!in) {
    throw std::runtime_error("cannot read config file " + path + ": " + std::strerror(errno));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return parse_config_text(buffer.str(), registry, path);
}

AgentConfig parse_config_text(const std::string& text, const WriterRegistry& registry,
                              const std::string& source) {
  // Before parsing: nlohmann's parser recurses per bracket.
  if (!json_nesting_within(text, default_max_json_nesting)) {
    throw std::runtime_error("config file " + source + " nests deeper than " +
                             std::to_string(default_max_json_nesting) + " levels");
  }
  DuplicateKeyCheck duplicates;
  nlohmann::json document;
  try {
    document = nlohmann::json::parse(text, std::ref(duplicates));
  } catch (const nlohmann::json::exception& e) {
    // Not only parse_error: a number too large for a double is out_of_range
    // (found by tests/fuzz/fuzz_config).
    throw std::runtime_error("config file " + source + " is not valid JSON: " + e.what());
  }
  if (duplicates.found) {
    throw FieldError(*duplicates.found, "given more than once (the config must say each thing once)");
  }
  refuse_nul(document, "");
  return parse_config(document, registry);
}

std::vector<ConfiguredWriter> create_writers(const AgentConfig& config,
                                             const WriterRegistry& registry,
                                             const WriterEnvironment& environment) {
  std::vector<ConfiguredWriter> writers;
  for (const auto& entry : config.writers) {
    const auto* type = registry.find(entry.spec.type);
    if (type == nullptr) {
      throw FieldError(entry.path + ".type", "unknown writer type '" + entry.spec.type + "'");
    }
    ConfiguredWriter configured;
    configured.spec = entry.spec;
    configured.timeout_overrides = entry.timeouts;
    try {
      configured.writer = type->create(entry.spec, environment);
    } catch (const FieldError& e) {
      // Factories name fields relative to the writer ("options.x").
      throw FieldError(entry.path + "." + e.path(),
                       std::string(e.what()).substr(e.path().empty() ? 0 : e.path().size() + 2));
    } catch (const std::exception& e) {
      throw FieldError(entry.path, std::string("cannot create writer: ") + e.what());
    }
    writers.push_back(std::move(configured));
  }
  return writers;
}

std::string read_token_file(const std::string& path, const std::string& field_path) {
  if (auto problem = platform::secret_file_problem(path, "token file"); !problem.empty()) {
    throw FieldError(field_path, problem);
  }
  std::ifstream in(path);
  std::string token;
  std::getline(in, token);
  while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) {
    token.pop_back();
  }
  if (token.size() < 16) {
    throw FieldError(field_path, "token in " + path + " is shorter than 16 characters");
  }
  return token;
}

}  // namespace quiesce::agent
