#pragma once
// The agent config file (JSON, default /etc/quiesce/agent.json), validated
// whole at start: every error names the field and says what is wrong.
// The full reference is docs/config.md.

#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <spdlog/common.h>

#include "agent/api/http_server.hpp"
#include "agent/core/coordinator.hpp"
#include "agent/qga/qga_channels.hpp"
#include "agent/qga/qga_service.hpp"
#include "quiesce/json_fields.hpp"
#include "quiesce/writer_registry.hpp"

namespace quiesce::agent {

inline constexpr const char* kDefaultConfigPath = "/etc/quiesce/agent.json";

struct LogConfig {
  std::string target = "stderr";  // stderr | journald (Linux) or eventlog (Windows) | file
  std::string file;               // with target "file"
  spdlog::level::level_enum level = spdlog::level::info;
  std::size_t ring_lines = 10'000;  // kept in memory while frozen
};

struct WriterEntry {
  WriterSpec spec;
  std::map<Phase, Millis> timeouts;
  std::string path;  // "writers[2]", for error messages
};

// qemu-guest-agent's protocol (docs/qga.md): on by default on the
// virtio-serial port, so a guest that runs Quiesce instead of qemu-ga is
// reached by libvirt and Proxmox with nothing changed on the host.
struct QgaConfig {
  bool enabled = true;
  qga::QgaChannelsConfig channels;
  qga::QgaOptions options;
};

// The agent's place on D-Bus (docs/dbus.md): org.quiesce.Agent1 and the
// logind inhibitor. Off unless configured: a guest without a bus must not
// start with a warning it cannot act on.
struct DbusConfig {
  bool enabled = false;
  std::string bus = "system";  // system | session | address
  std::string address;         // with bus "address": a D-Bus address ("unix:path=...")
  // Members of this group (and root) may start sessions; others only read.
  std::string group = "quiesce";
  bool logind_inhibit = true;  // delay sleep and shutdown while anything is frozen
};

struct AgentConfig {
  api::ServerConfig server;
  SessionLimits session;
  LogConfig log;
  QgaConfig qga;
  DbusConfig dbus;
  std::string state_dir = "/var/lib/quiesce";
  std::string run_dir = "/run/quiesce";
  std::vector<WriterEntry> writers;
  // What is allowed but worth telling the admin (printed by --check-config,
  // logged at start).
  std::vector<std::string> warnings;
};

// Per-phase timeouts of one writer ({"freeze": 500, ...}, each 1 ms to 24 h):
// a configured writer's "timeouts_ms", a D-Bus writer's options. Throws
// FieldError naming `path`.
std::map<Phase, Millis> parse_writer_timeouts(const nlohmann::json& object,
                                              const std::string& path);
// A writer name: 1-64 letters, digits, '_', '.', '-', not starting with a sign.
[[nodiscard]] bool valid_writer_name(const std::string& name);

// Throws FieldError (field path + message) on anything wrong.
AgentConfig parse_config(const nlohmann::json& document, const WriterRegistry& registry);
// Throws FieldError, or std::runtime_error when the file cannot be read/parsed.
AgentConfig load_config(const std::string& path, const WriterRegistry& registry);
// The text of a config file: nesting bounded before parsing, duplicate keys
// and NUL characters refused. `source` names it in errors.
AgentConfig parse_config_text(const std::string& text, const WriterRegistry& registry,
                              const std::string& source);

// Creates every configured writer. Throws FieldError naming
// "writers[i].options.<field>" when a writer refuses its options.
std::vector<ConfiguredWriter> create_writers(const AgentConfig& config,
                                             const WriterRegistry& registry,
                                             const WriterEnvironment& environment);

// "" or why a configured qga channel cannot be served on this OS, naming the
// field (per OS: core/config_<os>.cpp).
[[nodiscard]] std::string unsupported_qga_channel(const qga::QgaChannelsConfig& channels);

// Reads a bearer token file that must be owned by root (or the agent's own
// user) and unreadable by group and others.
std::string read_token_file(const std::string& path, const std::string& field_path);

}  // namespace quiesce::agent
