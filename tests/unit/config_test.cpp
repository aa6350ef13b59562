// The agent config: valid files load, and every kind of mistake is refused
// with the path of the field and what is wrong.

#include <doctest/doctest.h>

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "agent/core/config.hpp"
#include "tests/support/temp_dir.hpp"

using namespace quiesce;
using namespace quiesce::agent;

namespace {

WriterRegistry builtin_registry() {
  WriterRegistry registry;
  register_builtin_writers(registry);
  return registry;
}

std::string error_of(const nlohmann::json& document) {
  auto registry = builtin_registry();
  try {
    auto config = parse_config(document, registry);
    WriterEnvironment env;
    (void)create_writers(config, registry, env);
  } catch (const FieldError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("a full config loads with defaults filled in") {
  auto registry = builtin_registry();
  auto config = parse_config(nlohmann::json::parse(R"({
    "listen": {"unix": {"path": "/tmp/q.sock", "mode": "0600"}, "vsock": false},
    "session": {"freeze_window_ms": 2000, "phase_timeouts_ms": {"freeze": 500}},
    "log": {"target": "stderr", "level": "debug"},
    "writers": [
      {"type": "delay", "name": "app", "options": {"delays_ms": {"freeze": 5}}},
      {"type": "delay", "name": "fs-ish", "level": "filesystem", "timeouts_ms": {"thaw": 100}}
    ]})"),
                             registry);
  REQUIRE(config.server.unix_socket);
  CHECK(config.server.unix_socket->path == "/tmp/q.sock");
  CHECK(config.server.unix_socket->mode == 0600);
  CHECK_FALSE(config.server.vsock);
  CHECK_FALSE(config.server.tcp);
  CHECK(config.session.default_freeze_window.count() == 2000);
  CHECK(config.session.phase_timeouts.freeze.count() == 500);
  REQUIRE(config.writers.size() == 2);
  CHECK(config.writers[0].spec.level == Level::application);
  CHECK(config.writers[1].spec.level == Level::filesystem);
  CHECK(config.writers[1].timeouts.at(Phase::thaw).count() == 100);
  WriterEnvironment env;
  CHECK(create_writers(config, registry, env).size() == 2);
}

TEST_CASE("an empty config means the defaults: unix socket and vsock, no tcp") {
  auto registry = builtin_registry();
  auto config = parse_config(nlohmann::json::object(), registry);
  REQUIRE(config.server.unix_socket);
  CHECK(config.server.unix_socket->path == "/run/quiesce/agent.sock");
  REQUIRE(config.server.vsock);
  CHECK(config.server.vsock->allowed_cids == std::vector<std::uint32_t>{2});
  CHECK_FALSE(config.server.tcp);
  CHECK(config.session.default_freeze_window.count() == 10'000);
}

TEST_CASE("config errors name the field and what is wrong") {
  using nlohmann::json;
  CHECK(error_of(json::parse(R"({"bogus": 1})")) == "bogus: unknown field");
  CHECK(error_of(json::parse(R"({"session": {"freeze_window_ms": "10s"}})")) ==
        "session.freeze_window_ms: expected an integer, got string \"10s\"");
  CHECK(error_of(json::parse(R"({"session": {"freeze_window_ms": 90000}})"))
            .find("session.freeze_window_ms: is larger than max_freeze_window_ms") == 0);
  CHECK(error_of(json::parse(R"({"writers": [{"type": "nope"}]})"))
            .find("writers[0].type: unknown writer type 'nope'") == 0);
  CHECK(error_of(json::parse(R"({"writers": [{"type": "delay"}, {"type": "delay"}]})")) ==
        "writers[1].name: another writer is already named 'delay'");
  CHECK(error_of(json::parse(R"({"writers": [{"type": "delay", "level": "kernel"}]})")) ==
        "writers[0].level: expected application, database or filesystem");
  CHECK(error_of(json::parse(
            R"({"writers": [{"type": "delay", "options": {"delays_ms": {"freeze": -1}}}]})"))
            .find("writers[0].options.delays_ms.freeze: must be between 0 and") == 0);
  CHECK(error_of(json::parse(R"({"writers": [{"type": "delay", "options": {"x": 1}}]})")) ==
        "writers[0].options.x: unknown field");
  CHECK(error_of(json::parse(R"({"listen": {"unix": {"mode": "rw"}}})")) ==
        "listen.unix.mode: expected an octal mode such as \"0660\"");
  CHECK(error_of(json::parse(R"({"listen": {"unix": false, "vsock": false}})")) ==
        "listen: no transport left: enable unix, vsock or tcp");
  CHECK(error_of(json::parse(R"({"listen": {"tcp": {"port": 1}}})")) ==
        "listen.tcp.token_file: required field is missing");
  CHECK(error_of(json::parse(R"({"log": {"target": "syslog"}})")) ==
        "log.target: expected stderr, journald or file");
  CHECK(error_of(json::parse(R"([1, 2])")) == "expected an object, got array [1,2]");
}

TEST_CASE("named pipes are a Windows transport: Linux refuses them naming the field") {
  using nlohmann::json;
  CHECK(error_of(json::parse(R"({"listen": {"pipe": {"name": "\\\\.\\pipe\\quiesce"}}})")) ==
        "listen.pipe: named pipes are a Windows transport (Linux has listen.unix)");
  CHECK(error_of(json::parse(R"({"listen": {"pipe": true}})")) ==
        "listen.pipe: named pipes are a Windows transport (Linux has listen.unix)");
  CHECK(error_of(json::parse(R"({"qga": {"pipe": {"name": "\\\\.\\pipe\\qga"}}})")) ==
        "qga.pipe: named pipes are a Windows transport (Linux has qga.unix_socket)");
  // A malformed name is named as such first, on every OS.
  CHECK(error_of(json::parse(R"({"listen": {"pipe": {"name": "quiesce"}}})"))
            .find("listen.pipe.name: expected a local pipe name") == 0);
  auto registry = builtin_registry();
  CHECK_FALSE(parse_config(json::object(), registry).server.pipe);
}

TEST_CASE("Hyper-V sockets are a Windows transport: Linux refuses them, a bad GUID first") {
  using nlohmann::json;
  CHECK(error_of(json::parse(
            R"({"listen": {"hyperv": {"service_id": "f58797f6-c9a4-4b5d-a2c6-6b3a8b8f1a2e"}}})")) ==
        "listen.hyperv: Hyper-V sockets are a Windows transport (Linux has listen.vsock)");
  CHECK(error_of(json::parse(
            R"({"qga": {"hyperv": {"service_id": "F58797F6-C9A4-4B5D-A2C6-6B3A8B8F1A2E"}}})")) ==
        "qga.hyperv: Hyper-V sockets are a Windows transport (Linux has qga.vsock_port)");
  // The GUID is checked on every OS, strictly: 8-4-4-4-12 hex, no braces.
  for (const char* bad : {"{f58797f6-c9a4-4b5d-a2c6-6b3a8b8f1a2e}", "f58797f6-c9a4-4b5d-a2c6-6b3a8b8f1a2",
                          "f58797f6xc9a4-4b5d-a2c6-6b3a8b8f1a2e", "z58797f6-c9a4-4b5d-a2c6-6b3a8b8f1a2e", ""}) {
    const json config = {{"listen", {{"hyperv", {{"service_id", bad}}}}}};
    CHECK_MESSAGE(error_of(config).find("listen.hyperv.service_id: expected a GUID") == 0, bad);
  }
  CHECK(error_of(json::parse(
            R"({"listen": {"hyperv": {"service_id": "00000000-0000-0000-0000-000000000000"}}})")) ==
        "listen.hyperv.service_id: the zero GUID names no service");
  CHECK(error_of(json::parse(R"({"listen": {"hyperv": {}}})")) == "listen.hyperv.service_id: required field is missing");
  auto registry = builtin_registry();
  CHECK_FALSE(parse_config(json::object(), registry).server.hyperv);
  CHECK(parse_config(json::parse(R"({"listen": {"hyperv": null}})"), registry).server.hyperv == std::nullopt);
}

TEST_CASE("the TCP token file must be private and long enough") {
  test::TempDir dir;
  const auto path = (dir / "token").string();
  std::ofstream(path) << "0123456789abcdef0123\n";
  ::chmod(path.c_str(), 0644);
  CHECK_THROWS_WITH_AS(read_token_file(path, "listen.tcp.token_file"),
                       doctest::Contains("must not be accessible by group or others"), FieldError);
  ::chmod(path.c_str(), 0600);
  CHECK(read_token_file(path, "listen.tcp.token_file") == "0123456789abcdef0123");
  std::ofstream(path) << "short\n";
  CHECK_THROWS_WITH_AS(read_token_file(path, "f"), doctest::Contains("shorter than 16"), FieldError);
  CHECK_THROWS_AS(read_token_file((dir / "missing").string(), "f"), FieldError);
}

TEST_CASE("a config file that is not JSON is refused with the parser's position") {
  test::TempDir dir;
  const auto path = (dir / "agent.json").string();
  std::ofstream(path) << "{\"writers\": [}";
  auto registry = builtin_registry();
  CHECK_THROWS_WITH(load_config(path, registry), doctest::Contains("is not valid JSON"));
  CHECK_THROWS_WITH(load_config((dir / "nope.json").string(), registry),
                    doctest::Contains("cannot read config file"));
}

TEST_CASE("qga: defaults, a full section, and every mistake refused with its field") {
  auto registry = builtin_registry();
  auto defaults = parse_config(nlohmann::json::object(), registry);
  CHECK(defaults.qga.enabled);
  CHECK(defaults.qga.channels.virtio_serial_path == "/dev/virtio-ports/org.qemu.guest_agent.0");
  CHECK_FALSE(defaults.qga.channels.unix_socket);
  CHECK_FALSE(defaults.qga.channels.vsock);
  CHECK(defaults.qga.options.freeze_window.count() == 60000);

  auto full = parse_config(nlohmann::json::parse(R"({"qga": {
    "enabled": true, "virtio_serial_path": null,
    "unix_socket": {"path": "/run/q/qga.sock", "mode": "0660"},
    "vsock_port": 7701, "allowed_cids": [2, 3],
    "freeze_window_ms": 30000, "max_object_bytes": 4096, "max_connections": 5}})"),
                           registry);
  CHECK(full.qga.channels.virtio_serial_path.empty());
  REQUIRE(full.qga.channels.unix_socket);
  CHECK(full.qga.channels.unix_socket->path == "/run/q/qga.sock");
  CHECK(full.qga.channels.unix_socket->mode == 0660);
  REQUIRE(full.qga.channels.vsock);
  CHECK(full.qga.channels.vsock->port == 7701);
  CHECK(full.qga.channels.vsock->allowed_cids == std::vector<std::uint32_t>{2, 3});
  CHECK(full.qga.options.freeze_window.count() == 30000);
  CHECK(full.qga.options.max_object_bytes == 4096);
  CHECK(full.qga.channels.max_connections == 5);

  // A smaller session maximum narrows the unset qga window instead of failing.
  auto narrow = parse_config(
      nlohmann::json::parse(R"({"session": {"freeze_window_ms": 1000, "max_freeze_window_ms": 8000}})"),
      registry);
  CHECK(narrow.qga.options.freeze_window.count() == 8000);

  CHECK(error_of(nlohmann::json::parse(R"({"qga": {"enable": true}})")).find("qga.enable") !=
        std::string::npos);
  CHECK(error_of(nlohmann::json::parse(R"({"qga": {"enabled": "yes"}})")).find("qga.enabled") !=
        std::string::npos);
  CHECK(error_of(nlohmann::json::parse(R"({"qga": {"virtio_serial_path": 3}})"))
            .find("qga.virtio_serial_path") != std::string::npos);
  CHECK(error_of(nlohmann::json::parse(R"({"qga": {"virtio_serial_path": "dev/x"}})"))
            .find("absolute") != std::string::npos);
  CHECK(error_of(nlohmann::json::parse(R"({"qga": {"unix_socket": {"path": "/x", "owner": 1}}})"))
            .find("qga.unix_socket.owner") != std::string::npos);
  CHECK(error_of(nlohmann::json::parse(R"({"qga": {"unix_socket": {"mode": "0600"}}})"))
            .find("qga.unix_socket.path") != std::string::npos);
  // Checked even while vsock_port is off (the documented defaults list it).
  CHECK(error_of(nlohmann::json::parse(R"({"qga": {"allowed_cids": [2]}})")).empty());
  CHECK(error_of(nlohmann::json::parse(R"({"qga": {"allowed_cids": [0]}})"))
            .find("qga.allowed_cids[0]") != std::string::npos);
  CHECK(error_of(nlohmann::json::parse(R"({"qga": {"vsock_port": 0}})")).find("qga.vsock_port") !=
        std::string::npos);
  CHECK(error_of(nlohmann::json::parse(R"({"qga": {"freeze_window_ms": 120000}})"))
            .find("max_freeze_window_ms") != std::string::npos);
  CHECK(error_of(nlohmann::json::parse(R"({"qga": {"max_object_bytes": 10}})"))
            .find("qga.max_object_bytes") != std::string::npos);
}

namespace {

std::string text_error_of(const std::string& text) {
  auto registry = builtin_registry();
  try {
    (void)parse_config_text(text, registry, "test.json");
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("the defaults block printed in docs/config.md is a valid config") {
  // Issue #15 item 6: it had null group and null tcp, which were refused.
  std::ifstream in(std::string(QUIESCE_SOURCE_DIR) + "/docs/config.md");
  REQUIRE(in);
  std::stringstream doc;
  doc << in.rdbuf();
  const std::string text = doc.str();
  const auto marker = text.find("these are the defaults:");
  REQUIRE(marker != std::string::npos);
  const auto begin = text.find("```json\n", marker);
  REQUIRE(begin != std::string::npos);
  const auto end = text.find("```", begin + 8);
  REQUIRE(end != std::string::npos);
  const auto block = text.substr(begin + 8, end - begin - 8);
  auto registry = builtin_registry();
  AgentConfig parsed;
  REQUIRE_NOTHROW(parsed = parse_config_text(block, registry, "docs/config.md"));
  // And they are the defaults: the same as an empty config.
  const auto empty = parse_config(nlohmann::json::object(), registry);
  CHECK(parsed.server.limits.max_body_bytes == empty.server.limits.max_body_bytes);
  CHECK(parsed.server.vsock->allowed_cids == empty.server.vsock->allowed_cids);
  CHECK_FALSE(parsed.server.tcp);
  CHECK_FALSE(parsed.server.unix_socket->group);
  CHECK(parsed.session.max_freeze_window == empty.session.max_freeze_window);
  CHECK(parsed.qga.options.freeze_window == empty.qga.options.freeze_window);
  CHECK_FALSE(parsed.qga.channels.vsock);
  CHECK(parsed.state_dir == empty.state_dir);
}

TEST_CASE("config: every value issue #15 found accepted is refused, naming the field") {
  // tcp.address is an IP literal; port 0 and CIDs 0 / any are refused.
  CHECK(error_of(nlohmann::json::parse(R"({"listen": {"tcp": {"address": "not an address", "port": 7701, "token_file": "/x"}}})"))
            .find("listen.tcp.address") == 0);
  CHECK(error_of(nlohmann::json::parse(R"({"listen": {"tcp": {"address": "::1", "port": 0, "token_file": "/x"}}})"))
            .find("listen.tcp.port") == 0);
  CHECK(error_of(nlohmann::json::parse(R"({"listen": {"vsock": {"allowed_cids": [2, 0]}}})"))
            .find("listen.vsock.allowed_cids[1]") == 0);
  CHECK(error_of(nlohmann::json::parse(R"({"listen": {"vsock": {"allowed_cids": [4294967295]}}})"))
            .find("listen.vsock.allowed_cids[0]") == 0);
  // A NUL would silently cut a path short.
  CHECK(text_error_of(R"({"state_dir": "/var/lib/quiesce\u0000/evil"})").find("state_dir: contains a NUL") == 0);
  CHECK(text_error_of(R"({"writers": [{"type": "delay", "name": "a\u0000b"}]})").find("writers[0].name: contains a NUL") == 0);
  // Duplicate keys: the last one no longer wins silently.
  CHECK(text_error_of(R"({"run_dir": "/run/a", "run_dir": "/run/b"})") == "run_dir: given more than once (the config must say each thing once)");
  CHECK(text_error_of(R"({"writers": [{"type": "delay"}, {"type": "delay", "name": "x", "name": "y"}]})").find("writers[1].name: given more than once") == 0);
  CHECK(text_error_of(R"({"limits": {"max_connections": 2}, "session": {}, "limits": {}})").find("limits: given more than once") == 0);
  // The same key in different objects is fine.
  CHECK(text_error_of(R"({"listen": {"unix": {"mode": "0600"}}, "qga": {"unix_socket": {"path": "/run/q.sock", "mode": "0600"}}})").empty());
  // A number too large for a double is a JSON error too, not an escaping
  // out_of_range (tests/fuzz/corpus/config/number_overflow).
  CHECK(text_error_of(R"({"limits": {"max_connections": 770044e444444444}})").find("is not valid JSON") != std::string::npos);
  // Nesting is bounded before parsing (the parser recurses).
  CHECK(text_error_of("{\"writers\": " + std::string(100'000, '[') + std::string(100'000, ']') + "}").find("nests deeper than 64") != std::string::npos);

  // state_dir / run_dir: a regular file, or a file on the way, is refused;
  // missing is allowed with a warning (the agent creates it).
  test::TempDir dir;
  std::ofstream((dir / "file").string()) << "x";
  const auto file = (dir / "file").string();
  CHECK(error_of({{"state_dir", file}}) == "state_dir: '" + file + "' exists and is not a directory");
  CHECK(error_of({{"run_dir", file + "/sub"}}).find("run_dir: '" + file + "' (on the way to") == 0);
  auto registry = builtin_registry();
  const auto missing = parse_config({{"state_dir", (dir / "not-yet").string()}}, registry);
  CHECK(std::any_of(missing.warnings.begin(), missing.warnings.end(),
                    [](const std::string& w) { return w.find("state_dir:") == 0; }));
}
