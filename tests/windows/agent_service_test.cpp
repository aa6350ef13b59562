// The Windows agent as it runs for real, under wine: quiesce-agent.exe
// installed as a service by its own --install, started and stopped with
// sc.exe and net.exe, reached over TCP with the token, over its named pipe
// (a full session) and over the qga pipe; bad input refused. One process
// drives it all (each wine process start costs seconds), calling the
// tools a user would.
#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "tests/support/temp_dir.hpp"

namespace {

using nlohmann::json;
using namespace std::chrono_literals;

// Absolute (Z:\work\...): a Linux path is drive-relative to Windows.
const std::filesystem::path agent_exe =
    std::filesystem::absolute(std::filesystem::path(QUIESCE_BUILD_DIR) / "bin" / "quiesce-agent.exe");
constexpr const char* service_name = "quiesce-agent";

std::wstring widen(const std::string& text) { return std::filesystem::path(text).wstring(); }

struct ProcessResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr, interleaved
};

// Runs a command line (a Windows one: sc.exe, net.exe, the agent) to its
// end, with its output captured.
ProcessResult run(const std::wstring& command_line, std::chrono::seconds timeout = 120s) {
  SECURITY_ATTRIBUTES inherit{sizeof(SECURITY_ATTRIBUTES), nullptr, TRUE};
  HANDLE read_end = nullptr;
  HANDLE write_end = nullptr;
  REQUIRE(::CreatePipe(&read_end, &write_end, &inherit, 0));
  ::SetHandleInformation(read_end, HANDLE_FLAG_INHERIT, 0);
  STARTUPINFOW startup{};
  startup.cb = sizeof startup;
  startup.dwFlags = STARTF_USESTDHANDLES;
  startup.hStdOutput = write_end;
  startup.hStdError = write_end;
  startup.hStdInput = ::GetStdHandle(STD_INPUT_HANDLE);
  PROCESS_INFORMATION process{};
  std::wstring line = command_line;
  const BOOL created =
      ::CreateProcessW(nullptr, line.data(), nullptr, nullptr, TRUE, 0, nullptr, nullptr, &startup, &process);
  ::CloseHandle(write_end);
  ProcessResult result;
  if (!created) {
    ::CloseHandle(read_end);
    result.output = "CreateProcess failed: " + std::to_string(::GetLastError());
    return result;
  }
  // Read on a thread: a child filling the pipe would otherwise never end.
  std::thread reader([&] {
    char buffer[4096];
    DWORD got = 0;
    while (::ReadFile(read_end, buffer, sizeof buffer, &got, nullptr) && got > 0) {
      result.output.append(buffer, got);
    }
  });
  if (::WaitForSingleObject(process.hProcess, static_cast<DWORD>(timeout.count() * 1000)) != WAIT_OBJECT_0) {
    ::TerminateProcess(process.hProcess, 99);
    ::WaitForSingleObject(process.hProcess, INFINITE);
  }
  DWORD code = 0;
  ::GetExitCodeProcess(process.hProcess, &code);
  result.exit_code = static_cast<int>(code);
  reader.join();
  ::CloseHandle(read_end);
  ::CloseHandle(process.hProcess);
  ::CloseHandle(process.hThread);
  return result;
}

std::wstring quoted(const std::filesystem::path& path) { return L"\"" + path.wstring() + L"\""; }

ProcessResult agent(const std::wstring& arguments) { return run(quoted(agent_exe) + L" " + arguments); }

DWORD service_state() {
  SC_HANDLE manager = ::OpenSCManagerW(nullptr, nullptr, SC_MANAGER_CONNECT);
  SC_HANDLE service = ::OpenServiceW(manager, widen(service_name).c_str(), SERVICE_QUERY_STATUS);
  SERVICE_STATUS status{};
  DWORD state = 0;
  if (service != nullptr && ::QueryServiceStatus(service, &status)) {
    state = status.dwCurrentState;
  }
  if (service != nullptr) {
    ::CloseServiceHandle(service);
  }
  ::CloseServiceHandle(manager);
  return state;  // 0: not installed
}

std::pair<DWORD, std::wstring> service_config() {
  SC_HANDLE manager = ::OpenSCManagerW(nullptr, nullptr, SC_MANAGER_CONNECT);
  SC_HANDLE service = ::OpenServiceW(manager, widen(service_name).c_str(), SERVICE_QUERY_CONFIG);
  std::pair<DWORD, std::wstring> out{0, L""};
  DWORD size = 0;
  if (service != nullptr) {
    ::QueryServiceConfigW(service, nullptr, 0, &size);
    std::vector<unsigned char> buffer(size);
    auto* config = reinterpret_cast<QUERY_SERVICE_CONFIGW*>(buffer.data());
    if (size > 0 && ::QueryServiceConfigW(service, config, size, &size)) {
      out = {config->dwStartType, config->lpBinaryPathName};
    }
    ::CloseServiceHandle(service);
  }
  ::CloseServiceHandle(manager);
  return out;
}

bool wait_for_state(DWORD wanted, std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (service_state() == wanted) {
      return true;
    }
    std::this_thread::sleep_for(100ms);
  }
  return false;
}

// Removes the service whatever happened to the test (stopping it thaws).
struct ServiceCleanup {
  ~ServiceCleanup() {
    if (service_state() != 0) {
      (void)agent(L"--uninstall");
    }
  }
};

// The API token, in a file the agent accepts: made by the label's fixture
// (tests/windows/CMakeLists.txt) from the Linux side with mode 0600. Wine
// derives a file's access list from its Unix mode and back: an access list
// set from here (SetNamedSecurityInfo, what the installer's icacls does)
// came back as mode 0775, world-readable, which the agent rightly refuses.
const std::filesystem::path token_file =
    std::filesystem::absolute(std::filesystem::path(QUIESCE_BUILD_DIR) / "tests" / "windows" / "service-token");

std::string read_token() {
  std::ifstream in(token_file);
  std::string token;
  std::getline(in, token);
  return token;
}

std::uint16_t free_tcp_port() {
  const SOCKET probe = ::socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(probe, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
  int size = sizeof address;
  REQUIRE(::getsockname(probe, reinterpret_cast<sockaddr*>(&address), &size) == 0);
  ::closesocket(probe);
  return ntohs(address.sin_port);
}

struct HttpAnswer {
  int status = 0;
  std::string body;
  json parsed() const { return json::parse(body, nullptr, false); }
};

std::string http_request_text(const std::string& method, const std::string& target, const std::string& body,
                              const std::string& token) {
  std::string request = method + " " + target + " HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n";
  if (!token.empty()) {
    request += "Authorization: Bearer " + token + "\r\n";
  }
  if (!body.empty() || method == "POST") {
    request += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  return request + "\r\n" + body;
}

// Whether `raw` holds a whole response (head and Content-Length bytes of
// body): a client closes then, as HTTP clients do, rather than waiting for
// the agent to hang up.
bool complete_response(const std::string& raw) {
  const auto end_of_head = raw.find("\r\n\r\n");
  if (end_of_head == std::string::npos) {
    return false;
  }
  const auto field = raw.find("Content-Length: ");
  if (field == std::string::npos || field > end_of_head) {
    return false;
  }
  const auto length = std::stoul(raw.substr(field + 16, raw.find("\r\n", field) - field - 16));
  return raw.size() >= end_of_head + 4 + length;
}

HttpAnswer parse_http(const std::string& raw) {
  HttpAnswer answer;
  if (raw.rfind("HTTP/1.1 ", 0) == 0) {
    answer.status = std::stoi(raw.substr(9, 3));
  }
  const auto end_of_head = raw.find("\r\n\r\n");
  if (end_of_head != std::string::npos) {
    answer.body = raw.substr(end_of_head + 4);
  }
  return answer;
}

HttpAnswer tcp_http(std::uint16_t port, const std::string& method, const std::string& target,
                    const std::string& body, const std::string& token) {
  const SOCKET connection = ::socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(port);
  if (::connect(connection, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    ::closesocket(connection);
    return {};
  }
  const std::string request = http_request_text(method, target, body, token);
  ::send(connection, request.data(), static_cast<int>(request.size()), 0);
  std::string raw;
  char buffer[4096];
  int got = 0;
  while (!complete_response(raw) && (got = ::recv(connection, buffer, sizeof buffer, 0)) > 0) {
    raw.append(buffer, static_cast<std::size_t>(got));
  }
  ::closesocket(connection);
  return parse_http(raw);
}

HANDLE open_pipe(const std::string& name) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (true) {
    const HANDLE pipe = ::CreateFileW(widen(name).c_str(), GENERIC_READ | GENERIC_WRITE, 0, nullptr,
                                      OPEN_EXISTING, 0, nullptr);
    if (pipe != INVALID_HANDLE_VALUE || std::chrono::steady_clock::now() > deadline) {
      return pipe;
    }
    // All instances busy (or the agent between two): wait for one.
    ::WaitNamedPipeW(widen(name).c_str(), 1000);
  }
}

// Whether anything serves the pipe now (no waiting, unlike open_pipe).
bool pipe_exists(const std::string& name) {
  const HANDLE pipe = ::CreateFileW(widen(name).c_str(), GENERIC_READ | GENERIC_WRITE, 0, nullptr, OPEN_EXISTING, 0,
                                    nullptr);
  if (pipe == INVALID_HANDLE_VALUE) {
    return ::GetLastError() == ERROR_PIPE_BUSY;
  }
  ::CloseHandle(pipe);
  return true;
}

std::string read_response(HANDLE pipe) {
  std::string raw;
  char buffer[4096];
  DWORD got = 0;
  while (!complete_response(raw) && ::ReadFile(pipe, buffer, sizeof buffer, &got, nullptr) && got > 0) {
    raw.append(buffer, got);
  }
  return raw;
}

HttpAnswer pipe_http(const std::string& name, const std::string& method, const std::string& target,
                     const std::string& body = "") {
  const HANDLE pipe = open_pipe(name);
  if (pipe == INVALID_HANDLE_VALUE) {
    return {};
  }
  const std::string request = http_request_text(method, target, body, "");
  DWORD written = 0;
  ::WriteFile(pipe, request.data(), static_cast<DWORD>(request.size()), &written, nullptr);
  const std::string raw = read_response(pipe);
  ::CloseHandle(pipe);
  return parse_http(raw);
}

// One qga command on its own connection, its reply line.
json qga(const std::string& pipe_name, const json& command) {
  const HANDLE pipe = open_pipe(pipe_name);
  if (pipe == INVALID_HANDLE_VALUE) {
    return json();
  }
  const std::string text = command.dump() + "\n";
  DWORD written = 0;
  ::WriteFile(pipe, text.data(), static_cast<DWORD>(text.size()), &written, nullptr);
  std::string reply;
  char c = 0;
  DWORD got = 0;
  while (::ReadFile(pipe, &c, 1, &got, nullptr) && got == 1 && c != '\n') {
    reply.push_back(c);
  }
  ::CloseHandle(pipe);
  return json::parse(reply, nullptr, false);
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string random_suffix() {
  std::random_device seed;
  return std::to_string(std::mt19937_64(seed())() % 1000000000ULL);
}

struct Winsock {
  Winsock() {
    WSADATA data{};
    ::WSAStartup(MAKEWORD(2, 2), &data);
  }
  ~Winsock() { ::WSACleanup(); }
};

struct AgentSetup {
  quiesce::test::TempDir dir{"quiesce-service"};
  std::string token = read_token();
  std::uint16_t port = free_tcp_port();
  std::string api_pipe = R"(\\.\pipe\quiesce-test-)" + random_suffix();
  std::string qga_pipe = R"(\\.\pipe\quiesce-qga-test-)" + random_suffix();
  std::filesystem::path config = dir / "agent.json";
  std::filesystem::path log = dir / "agent.log";

  AgentSetup() {
    REQUIRE_MESSAGE(token.size() >= 16, "no token in ", token_file.string(), " (made by the test's fixture)");
    json document = {
        {"listen",
         {{"pipe", {{"name", api_pipe}}},
          {"tcp", {{"address", "127.0.0.1"}, {"port", port}, {"token_file", token_file.string()}}}}},
        {"log", {{"target", "file"}, {"file", log.string()}, {"level", "debug"}}},
        {"qga", {{"pipe", {{"name", qga_pipe}}}}},
        {"state_dir", (dir / "state").string()},
        {"run_dir", (dir / "run").string()},
        {"writers", json::array({{{"name", "app"}, {"type", "delay"}, {"options", {{"delays_ms", {{"freeze", 50}}}}}}})},
    };
    std::ofstream(config) << document.dump(2);
  }
};

}  // namespace

TEST_CASE("--check-config refuses bad configs with the field and the reason, and changes nothing") {
  quiesce::test::TempDir dir("quiesce-check");
  const auto check = [&](const std::string& text) {
    std::ofstream(dir / "agent.json") << text;
    return agent(L"--check-config --config " + quoted(dir / "agent.json"));
  };
  const auto state_dir = (dir / "state").string();
  const auto with_dirs = [&](const std::string& rest) {
    return R"({"state_dir": )" + json(state_dir).dump() + R"(, "run_dir": )" + json((dir / "run").string()).dump() +
           (rest.empty() ? "" : ", " + rest) + "}";
  };

  const auto good = check(with_dirs(R"("writers": [{"name": "app", "type": "delay"}])"));
  CHECK_MESSAGE(good.exit_code == 0, good.output);
  CHECK(good.output.find("is valid: 1 writer(s)") != std::string::npos);

  const auto malformed = check("{\"writers\": [");
  CHECK(malformed.exit_code == 3);
  CHECK_MESSAGE(malformed.output.find("invalid config") != std::string::npos, malformed.output);

  const auto unix_socket = check(with_dirs(R"("listen": {"unix": {"path": "/run/x.sock"}})"));
  CHECK(unix_socket.exit_code == 3);
  CHECK_MESSAGE(unix_socket.output.find("listen.unix: Unix sockets are a Linux transport") != std::string::npos,
                unix_socket.output);

  const auto bad_pipe = check(with_dirs(R"("listen": {"pipe": {"name": "quiesce"}})"));
  CHECK(bad_pipe.exit_code == 3);
  CHECK_MESSAGE(bad_pipe.output.find("listen.pipe.name") != std::string::npos, bad_pipe.output);

  const auto nothing_left = check(with_dirs(R"("listen": {"pipe": false})"));
  CHECK(nothing_left.exit_code == 3);
  CHECK_MESSAGE(nothing_left.output.find("listen: no transport left: enable pipe, tcp or hyperv") != std::string::npos,
                nothing_left.output);

  const auto relative = check(R"({"state_dir": "state"})");
  CHECK(relative.exit_code == 3);
  CHECK_MESSAGE(relative.output.find("state_dir: must be an absolute path") != std::string::npos, relative.output);

  const auto unknown_writer = check(with_dirs(R"("writers": [{"name": "app", "type": "fsfreeze"}])"));
  CHECK(unknown_writer.exit_code == 3);
  CHECK_MESSAGE(unknown_writer.output.find("fsfreeze") != std::string::npos, unknown_writer.output);

  CHECK_FALSE(std::filesystem::exists(state_dir));  // a check writes nothing
}

// Hyper-V sockets (listen.hyperv, qga.hyperv): the config is checked here
// as on Windows; wine has no AF_HYPERV, so a start that asks for one must
// fail at once, naming the transport and the WSA error, and leave nothing
// listening (the pipe it would also have served is free afterwards).
TEST_CASE("Hyper-V sockets: a valid service GUID is accepted, a bad one refused, a start without AF_HYPERV fails") {
  quiesce::test::TempDir dir("quiesce-hyperv");
  const auto state_dir = (dir / "state").string();
  const std::string api_pipe = R"(\\.\pipe\quiesce-hyperv-test-)" + random_suffix();
  const auto write_config = [&](const json& listen, const json& qga_section) {
    json document = {{"listen", listen},
                     {"qga", qga_section},
                     {"log", {{"target", "file"}, {"file", (dir / "agent.log").string()}}},
                     {"state_dir", state_dir},
                     {"run_dir", (dir / "run").string()},
                     {"writers", json::array({{{"name", "app"}, {"type", "delay"}}})}};
    std::ofstream(dir / "agent.json") << document.dump(2);
  };
  const auto check_config = [&] { return agent(L"--check-config --config " + quoted(dir / "agent.json")); };
  const std::string service_id = "F58797F6-C9A4-4B5D-A2C6-6B3A8B8F1A2E";  // mixed case is still a GUID
  const json no_virtio = {{"virtio_serial_path", nullptr}};

  write_config({{"pipe", false}, {"hyperv", {{"service_id", service_id}}}}, no_virtio);
  const auto valid = check_config();
  CHECK_MESSAGE(valid.exit_code == 0, valid.output);

  json qga_hyperv = no_virtio;
  qga_hyperv["hyperv"] = {{"service_id", "a42e7cda-d03f-480c-9cc2-a4de20abb878"}};
  write_config({{"pipe", {{"name", api_pipe}}}}, qga_hyperv);
  const auto valid_qga = check_config();
  CHECK_MESSAGE(valid_qga.exit_code == 0, valid_qga.output);

  for (const std::string bad : {"{f58797f6-c9a4-4b5d-a2c6-6b3a8b8f1a2e}", "f58797f6-c9a4-4b5d-a2c6-6b3a8b8f1a2",
                                "f58797f6c9a44b5da2c66b3a8b8f1a2e00000", "g58797f6-c9a4-4b5d-a2c6-6b3a8b8f1a2e"}) {
    write_config({{"pipe", false}, {"hyperv", {{"service_id", bad}}}}, no_virtio);
    const auto refused = check_config();
    CHECK_MESSAGE(refused.exit_code == 3, bad, ": ", refused.output);
    CHECK_MESSAGE(refused.output.find("listen.hyperv.service_id: expected a GUID") != std::string::npos,
                  refused.output);
  }
  write_config({{"pipe", false}, {"hyperv", {{"service_id", "00000000-0000-0000-0000-000000000000"}}}}, no_virtio);
  const auto zero = check_config();
  CHECK(zero.exit_code == 3);
  CHECK_MESSAGE(zero.output.find("listen.hyperv.service_id: the zero GUID names no service") != std::string::npos,
                zero.output);
  json bad_qga = no_virtio;
  bad_qga["hyperv"] = {{"service_id", "parent"}};
  write_config({{"pipe", {{"name", api_pipe}}}}, bad_qga);
  const auto refused_qga = check_config();
  CHECK(refused_qga.exit_code == 3);
  CHECK_MESSAGE(refused_qga.output.find("qga.hyperv.service_id: expected a GUID") != std::string::npos,
                refused_qga.output);
  json same_as_http = no_virtio;
  same_as_http["hyperv"] = {{"service_id", service_id}};
  write_config({{"pipe", false}, {"hyperv", {{"service_id", service_id}}}}, same_as_http);
  const auto shared_id = check_config();
  CHECK(shared_id.exit_code == 3);
  CHECK_MESSAGE(shared_id.output.find("qga.hyperv.service_id: the same as listen.hyperv.service_id") !=
                    std::string::npos,
                shared_id.output);
  write_config({{"pipe", false}, {"hyperv", {{"service_id", service_id}, {"vm_id", "x"}}}}, no_virtio);
  const auto unknown_field = check_config();
  CHECK(unknown_field.exit_code == 3);
  CHECK_MESSAGE(unknown_field.output.find("listen.hyperv.vm_id") != std::string::npos, unknown_field.output);
  CHECK_FALSE(std::filesystem::exists(state_dir));  // a check writes nothing

  // The HTTP API on a Hyper-V socket, beside a pipe: the start fails with
  // exit code 4 (cannot listen) before the pipe is served.
  write_config({{"pipe", {{"name", api_pipe}}}, {"hyperv", {{"service_id", service_id}}}}, no_virtio);
  const auto http_start = run(quoted(agent_exe) + L" --config " + quoted(dir / "agent.json"), 60s);
  CHECK_MESSAGE(http_start.exit_code == 4, http_start.output);
  CHECK_MESSAGE(http_start.output.find("cannot listen: hyperv service f58797f6-c9a4-4b5d-a2c6-6b3a8b8f1a2e listener: "
                                       "socket(AF_HYPERV, SOCK_STREAM, HV_PROTOCOL_RAW) failed with WSA error") !=
                    std::string::npos,
                http_start.output);
  CHECK(read_file(dir / "agent.log").find("hyperv service") != std::string::npos);
  CHECK_MESSAGE(!pipe_exists(api_pipe), "the pipe still answers after a failed start");

  // qga on a Hyper-V socket: the same, after the HTTP API had started.
  write_config({{"pipe", {{"name", api_pipe}}}}, qga_hyperv);
  const auto qga_start = run(quoted(agent_exe) + L" --config " + quoted(dir / "agent.json"), 60s);
  CHECK_MESSAGE(qga_start.exit_code == 4, qga_start.output);
  CHECK_MESSAGE(qga_start.output.find("cannot listen: qga hyperv service a42e7cda-d03f-480c-9cc2-a4de20abb878 "
                                      "listener: socket(AF_HYPERV, SOCK_STREAM, HV_PROTOCOL_RAW) failed with WSA "
                                      "error") != std::string::npos,
                qga_start.output);
  CHECK_MESSAGE(!pipe_exists(api_pipe), "the pipe still answers after a failed start");
}

TEST_CASE("the agent as a service: installed, started, served on TCP, its pipe and qga, stopped mid-freeze") {
  Winsock winsock;
  AgentSetup setup;
  ServiceCleanup cleanup;
  REQUIRE_MESSAGE(service_state() == 0, "a quiesce-agent service is installed already in this wine prefix");

  const auto installed = agent(L"--install --config " + quoted(setup.config));
  REQUIRE_MESSAGE(installed.exit_code == 0, installed.output);
  const auto twice = agent(L"--install --config " + quoted(setup.config));
  CHECK(twice.exit_code == 1);
  CHECK_MESSAGE(twice.output.find("already installed") != std::string::npos, twice.output);
  // What the service manager keeps (wine's sc.exe has no "qc" to show it).
  const auto [start_type, command_line] = service_config();
  CHECK(start_type == SERVICE_AUTO_START);
  CHECK_MESSAGE(command_line.find(L"--service") != std::wstring::npos, std::filesystem::path(command_line).string());

  const auto started = run(L"net.exe start quiesce-agent");
  CHECK_MESSAGE(started.exit_code == 0, started.output);
  REQUIRE_MESSAGE(wait_for_state(SERVICE_RUNNING, 60s), read_file(setup.log));

  {
    INFO("HTTP over TCP with the bearer token");
    const auto health = tcp_http(setup.port, "GET", "/v1/health", "", setup.token);
    CHECK_MESSAGE(health.status == 200, health.body);
    CHECK(health.parsed().value("state", "") == "idle");
    const auto no_token = tcp_http(setup.port, "GET", "/v1/health", "", "");
    CHECK(no_token.status == 401);
    const auto bad_token = tcp_http(setup.port, "GET", "/v1/health", "", "wrong-token-0123456789");
    CHECK(bad_token.status == 401);
    CHECK(bad_token.parsed()["error"].value("code", "") == "unauthorized");
    const auto malformed = tcp_http(setup.port, "POST", "/v1/sessions", "{\"writers\": [", setup.token);
    CHECK(malformed.status == 400);
    CHECK_MESSAGE(malformed.parsed().contains("error"), malformed.body);
  }
  {
    INFO("a full session over the named pipe");
    const auto created = pipe_http(setup.api_pipe, "POST", "/v1/sessions", "{}");
    REQUIRE_MESSAGE(created.status == 201, created.status, " ", created.body);
    const std::string id = created.parsed().value("id", "");
    const auto frozen = pipe_http(setup.api_pipe, "POST", "/v1/sessions/" + id + "/freeze", "{}");
    CHECK_MESSAGE(frozen.status == 200, frozen.body);
    CHECK(frozen.parsed().value("state", "") == "frozen");
    const auto thawed = pipe_http(setup.api_pipe, "POST", "/v1/sessions/" + id + "/thaw", "{}");
    CHECK_MESSAGE(thawed.status == 200, thawed.body);
    CHECK(thawed.parsed()["verdict"].value("continuous", false));
    const auto completed = pipe_http(setup.api_pipe, "POST", "/v1/sessions/" + id + "/complete",
                                     R"({"snapshot_id": "snap-1"})");
    CHECK_MESSAGE(completed.status == 200, completed.body);
    CHECK(completed.parsed().value("state", "") == "completed");
    const auto log = read_file(setup.log);
    CHECK_MESSAGE(log.find("pipe pid ") != std::string::npos, log);  // the caller was identified
  }
  {
    INFO("the qga protocol over its pipe");
    const auto ping = qga(setup.qga_pipe, {{"execute", "guest-ping"}});
    CHECK_MESSAGE(ping.contains("return"), ping.dump());
    const auto info = qga(setup.qga_pipe, {{"execute", "guest-info"}});
    CHECK_MESSAGE(info["return"].contains("supported_commands"), info.dump());
    const auto status = qga(setup.qga_pipe, {{"execute", "guest-fsfreeze-status"}});
    CHECK(status.value("return", "") == "thawed");
    const auto unknown = qga(setup.qga_pipe, {{"execute", "guest-no-such-command"}});
    CHECK_MESSAGE(unknown["error"].value("class", "") == "CommandNotFound", unknown.dump());
    const auto log = read_file(setup.log);
    CHECK_MESSAGE(log.find("org.qemu.guest_agent.0 does not exist") != std::string::npos, log);
  }
  {
    INFO("sc stop during a freeze: the session is aborted before the service reports STOPPED");
    const auto created = pipe_http(setup.api_pipe, "POST", "/v1/sessions", "{}");
    REQUIRE_MESSAGE(created.status == 201, created.body);
    const std::string id = created.parsed().value("id", "");
    const auto frozen = pipe_http(setup.api_pipe, "POST", "/v1/sessions/" + id + "/freeze", "{}");
    REQUIRE(frozen.parsed().value("state", "") == "frozen");
    const auto stopped = run(L"sc.exe stop quiesce-agent");
    CHECK_MESSAGE(stopped.exit_code == 0, stopped.output);
    CHECK(wait_for_state(SERVICE_STOPPED, 60s));
    const auto log = read_file(setup.log);
    CHECK_MESSAGE(log.find("stop requested: stopping") != std::string::npos, log);
    CHECK_MESSAGE(log.find("shutting down: aborting active session " + id) != std::string::npos, log);
    CHECK_MESSAGE(log.find("session " + id + ": aborting") != std::string::npos, log);
    // Nothing is left listening.
    CHECK(tcp_http(setup.port, "GET", "/v1/health", "", setup.token).status == 0);
  }

  const auto removed = agent(L"--uninstall");
  CHECK_MESSAGE(removed.exit_code == 0, removed.output);
  CHECK(service_state() == 0);
}
