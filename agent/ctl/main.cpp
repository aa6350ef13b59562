// quiescectl: the command line for the agent's v1 API. Talks to the agent
// through the host-bridge client on any transport the client knows.
//
// Exit codes (also in --help):
//   0  success
//   1  the agent answered with a failure (API error, a failed phase, a broken hold)
//   2  usage error
//   3  cannot connect to or talk with the agent (transport error, timeout)
#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "host-bridge/client/agent_client.hpp"

namespace {

using nlohmann::json;
using quiesce::client::AgentClient;
using quiesce::client::Result;
using quiesce::client::TransportError;

constexpr int exit_ok = 0;
constexpr int exit_agent_failure = 1;
constexpr int exit_usage = 2;
constexpr int exit_transport = 3;

constexpr const char* default_socket = "/run/quiesce/agent.sock";

constexpr const char* usage_text = R"(Usage: quiescectl [options] <command> [arguments]

Commands:
  status                   agent version, state, active session, uptime, last restore
  writers                  the configured writers: type, level, state, identity
  session show ID          one session: phase, writers, timings, errors, verdict
  session abort ID         abort a session (thaw and undo whatever was done)
  run [run options]        create a session, freeze, thaw and complete it in one go,
                           printing every phase; aborts the session if any phase fails

Run options:
  --writers A,B            writers to include (default: all configured)
  --freeze-window-ms N     how long the agent may stay frozen before its watchdog thaws
  --snapshot-id S          id passed to complete (default: quiescectl-<unix time>)
  --checkpoint-id C        checkpoint id recorded with the session

Options:
  --socket PATH            the agent's Unix socket (default: $QUIESCE_SOCKET or
                           /run/quiesce/agent.sock)
  --connect ENDPOINT       unix:/path | tcp:host:port | vsock:cid:port | hvsock:/uds/path:port
                           | qga:/path (the host end of the org.qemu.guest_agent.0
                           virtio-serial channel; one client at a time)
  --token-file FILE        bearer token for TCP (the file's content, whitespace trimmed)
  --timeout-ms N           deadline for each call (default 30000)
  --json                   machine output: one JSON document (run: one JSON line per phase)
  -h, --help               this text
  --version                print the version

Exit codes:
  0  success
  1  the agent reported a failure (API error, failed phase, hold not continuous)
  2  usage error
  3  cannot connect to or talk with the agent (connection refused, timeout, bad reply)
)";

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string socket;
  std::optional<std::string> connect;
  std::optional<std::string> token_file;
  std::chrono::milliseconds timeout{30'000};
  bool json_output = false;
  std::vector<std::string> words;  // command and its positional arguments
  // run
  std::optional<std::vector<std::string>> writers;
  std::optional<std::uint64_t> freeze_window_ms;
  std::optional<std::string> snapshot_id;
  std::optional<std::string> checkpoint_id;
};

volatile std::sig_atomic_t interrupted = 0;

void on_signal(int) { interrupted = 1; }

std::uint64_t parse_count(std::string_view option, const std::string& value) {
  std::size_t used = 0;
  std::uint64_t number = 0;
  try {
    number = std::stoull(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != value.size() || value.empty() || value.front() == '-') {
    throw UsageError(std::string(option) + " needs a non-negative number, got '" + value + "'");
  }
  return number;
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> items;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    if (!item.empty()) {
      items.push_back(item);
    }
  }
  return items;
}

Options parse_arguments(int argc, char** argv) {
  Options options;
  const char* env_socket = std::getenv("QUIESCE_SOCKET");
  options.socket = env_socket != nullptr && *env_socket != '\0' ? env_socket : default_socket;

  std::vector<std::string> args(argv + 1, argv + argc);
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string arg = args[i];
    if (arg == "--") {
      options.words.insert(options.words.end(), args.begin() + static_cast<std::ptrdiff_t>(i) + 1, args.end());
      break;
    }
    if (arg.size() < 2 || arg[0] != '-') {
      options.words.push_back(arg);
      continue;
    }
    std::optional<std::string> inline_value;
    if (const auto eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      inline_value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    }
    const auto value = [&]() -> std::string {
      if (inline_value) {
        return *inline_value;
      }
      if (i + 1 >= args.size()) {
        throw UsageError(arg + " needs a value");
      }
      return args[++i];
    };
    if (arg == "-h" || arg == "--help") {
      options.words = {"help"};
      return options;
    }
    if (arg == "--version") {
      options.words = {"version"};
      return options;
    }
    if (arg == "--json") {
      options.json_output = true;
    } else if (arg == "--socket") {
      options.socket = value();
    } else if (arg == "--connect") {
      options.connect = value();
    } else if (arg == "--token-file") {
      options.token_file = value();
    } else if (arg == "--timeout-ms") {
      options.timeout = std::chrono::milliseconds(parse_count(arg, value()));
      if (options.timeout.count() == 0) {
        throw UsageError("--timeout-ms must be positive");
      }
    } else if (arg == "--writers") {
      options.writers = split_list(value());
      if (options.writers->empty()) {
        throw UsageError("--writers needs at least one writer name");
      }
    } else if (arg == "--freeze-window-ms") {
      options.freeze_window_ms = parse_count(arg, value());
    } else if (arg == "--snapshot-id") {
      options.snapshot_id = value();
    } else if (arg == "--checkpoint-id") {
      options.checkpoint_id = value();
    } else {
      throw UsageError("unknown option " + arg);
    }
  }
  return options;
}

std::string read_token(const std::string& path) {
  std::ifstream file(path);
  if (!file) {
    throw UsageError("cannot read token file " + path);
  }
  std::stringstream content;
  content << file.rdbuf();
  std::string token = content.str();
  const auto first = token.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) {
    throw UsageError("token file " + path + " is empty");
  }
  const auto last = token.find_last_not_of(" \t\r\n");
  return token.substr(first, last - first + 1);
}

// ---- human output ---------------------------------------------------------

std::string text_of(const json& value) {
  if (value.is_null()) {
    return "-";
  }
  if (value.is_string()) {
    return value.get<std::string>();
  }
  if (value.is_number_float()) {
    std::ostringstream out;
    out << std::fixed << std::setprecision(1) << value.get<double>();
    return out.str();
  }
  return value.dump();
}

std::string field(const json& object, const char* key) {
  if (!object.is_object() || !object.contains(key)) {
    return "-";
  }
  return text_of(object[key]);
}

void print_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> widths(header.size(), 0);
  const auto measure = [&](const std::vector<std::string>& row) {
    for (std::size_t c = 0; c < row.size() && c < widths.size(); ++c) {
      widths[c] = std::max(widths[c], row[c].size());
    }
  };
  measure(header);
  for (const auto& row : rows) {
    measure(row);
  }
  const auto print_row = [&](const std::vector<std::string>& row) {
    std::string line;
    for (std::size_t c = 0; c < row.size(); ++c) {
      line += row[c];
      if (c + 1 < row.size()) {
        line += std::string(widths[c] - row[c].size() + 2, ' ');
      }
    }
    std::cout << "  " << line << "\n";
  };
  print_row(header);
  for (const auto& row : rows) {
    print_row(row);
  }
}

std::string error_text(const json& error) {
  if (!error.is_object()) {
    return text_of(error);
  }
  std::string text;
  if (error.contains("class")) {
    text = field(error, "class") + ": ";
  } else if (error.contains("code")) {
    text = field(error, "code") + ": ";
  }
  return text + field(error, "message");
}

// The freeze order a writer reports per component (the fsfreeze writer's
// waves, what each filesystem is stored on, and why), with its notes.
void print_freeze_order(const json& writers) {
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> notes;
  for (const auto& writer : writers) {
    if (!writer.contains("identity") || !writer["identity"].is_object()) {
      continue;
    }
    for (const auto& component : writer["identity"].value("components", json::array())) {
      if (!component.is_object() || !component.contains("wave")) {
        continue;
      }
      std::string stored_on;
      for (const auto& lower : component.value("stored_on", json::array())) {
        stored_on += (stored_on.empty() ? "" : ",") + text_of(lower);
      }
      rows.push_back({field(writer, "name"), field(component, "wave"), field(component, "path"),
                      field(component, "fstype"), stored_on.empty() ? "-" : stored_on,
                      field(component, "wave_reason")});
      for (const auto& note : component.value("notes", json::array())) {
        notes.push_back(field(component, "path") + ": " + text_of(note));
      }
    }
  }
  if (rows.empty()) {
    return;
  }
  std::cout << "freeze order (wave 0 first, thaw in reverse):\n";
  print_table({"WRITER", "WAVE", "MOUNT", "FSTYPE", "STORED ON", "WHY"}, rows);
  for (const auto& note : notes) {
    std::cout << "  note: " << note << "\n";
  }
}

void print_session(const json& session) {
  std::cout << "session " << field(session, "id") << "  state " << field(session, "state");
  if (session.contains("freeze_window_ms") && !session["freeze_window_ms"].is_null()) {
    std::cout << "  freeze window " << field(session, "freeze_window_ms") << " ms";
  }
  if (session.contains("checkpoint_id") && !session["checkpoint_id"].is_null()) {
    std::cout << "  checkpoint " << field(session, "checkpoint_id");
  }
  std::cout << "\n";

  // Timing columns in protocol order, then whatever else the agent reports.
  const std::vector<std::string> phases = {"identify", "prepare", "freeze",        "hold",
                                           "thaw",     "complete", "post_snapshot", "abort"};
  const json writers = session.value("writers", json::array());
  std::vector<std::string> present;
  for (const auto& phase : phases) {
    for (const auto& writer : writers) {
      if (writer.contains("timings_ms") && writer["timings_ms"].contains(phase)) {
        present.push_back(phase);
        break;
      }
    }
  }
  for (const auto& writer : writers) {
    if (writer.contains("timings_ms") && writer["timings_ms"].is_object()) {
      for (const auto& [key, unused] : writer["timings_ms"].items()) {
        if (std::find(present.begin(), present.end(), key) == present.end()) {
          present.push_back(key);
        }
      }
    }
  }
  if (!writers.empty()) {
    std::vector<std::string> header = {"WRITER", "TYPE", "LEVEL", "STATE"};
    for (const auto& phase : present) {
      header.push_back(phase + " ms");
    }
    header.push_back("ERROR");
    std::vector<std::vector<std::string>> rows;
    for (const auto& writer : writers) {
      std::vector<std::string> row = {field(writer, "name"), field(writer, "type"), field(writer, "level"),
                                      field(writer, "state")};
      for (const auto& phase : present) {
        row.push_back(writer.contains("timings_ms") ? field(writer["timings_ms"], phase.c_str()) : "-");
      }
      row.push_back(writer.contains("error") && !writer["error"].is_null() ? error_text(writer["error"]) : "-");
      rows.push_back(std::move(row));
    }
    print_table(header, rows);
    print_freeze_order(writers);
  }
  if (session.contains("timings_ms") && session["timings_ms"].is_object() && !session["timings_ms"].empty()) {
    // Protocol order first (JSON objects come back sorted by name).
    const auto& timings = session["timings_ms"];
    std::vector<std::string> order;
    for (const auto& phase : phases) {
      if (timings.contains(phase)) {
        order.push_back(phase);
      }
    }
    for (const auto& [phase, unused] : timings.items()) {
      if (std::find(order.begin(), order.end(), phase) == order.end()) {
        order.push_back(phase);
      }
    }
    std::cout << "  timings:";
    for (const auto& phase : order) {
      std::cout << " " << phase << " " << text_of(timings[phase]) << " ms";
    }
    std::cout << "\n";
  }
  if (session.contains("verdict") && session["verdict"].is_object()) {
    const auto& verdict = session["verdict"];
    const bool continuous = verdict.value("continuous", false);
    std::cout << "  hold: " << (continuous ? "continuous" : "NOT continuous") << ", " << field(verdict, "hold_ms")
              << " ms";
    if (!continuous) {
      std::cout << " (snapshot is crash-consistent only)";
    }
    if (verdict.contains("reasons") && verdict["reasons"].is_array() && !verdict["reasons"].empty()) {
      std::cout << "; reasons:";
      for (const auto& reason : verdict["reasons"]) {
        std::cout << " " << text_of(reason) << ";";
      }
    }
    std::cout << "\n";
  }
  if (session.contains("artifacts") && session["artifacts"].is_object() && !session["artifacts"].empty()) {
    std::cout << "  artifacts: " << session["artifacts"].dump() << "\n";
  }
  if (session.contains("error") && !session["error"].is_null()) {
    const auto& error = session["error"];
    std::cout << "  error: " << error_text(error);
    if (error.contains("writer") && !error["writer"].is_null()) {
      std::cout << " (writer " << field(error, "writer") << ")";
    }
    std::cout << "\n";
  }
}

void print_api_error(const Result& result) {
  const auto& error = *result.error;
  std::cerr << "quiescectl: agent answered " << result.status << " " << error.code << ": " << error.message;
  if (error.writer) {
    std::cerr << " (writer " << *error.writer << ")";
  }
  if (error.retryable) {
    std::cerr << " [retryable]";
  }
  std::cerr << "\n";
}

// ---- commands ---------------------------------------------------------------

int command_status(AgentClient& client, const Options& options) {
  const auto result = client.health();
  if (options.json_output) {
    std::cout << (result.body.is_null() ? json(result.raw_body) : result.body).dump(2) << "\n";
  }
  if (!result.ok()) {
    print_api_error(result);
    return exit_agent_failure;
  }
  if (!options.json_output) {
    const auto& h = result.body;
    print_table({"FIELD", "VALUE"}, {{"agent", field(h, "version")},
                                     {"state", field(h, "state")},
                                     {"session", field(h, "session")},
                                     {"uptime", field(h, "uptime_s") + " s"},
                                     {"last restore", field(h, "last_restore")},
                                     {"endpoint", client.options().endpoint.to_string()}});
  }
  return exit_ok;
}

int command_writers(AgentClient& client, const Options& options) {
  const auto result = client.writers();
  if (options.json_output) {
    std::cout << (result.body.is_null() ? json(result.raw_body) : result.body).dump(2) << "\n";
  }
  if (!result.ok()) {
    print_api_error(result);
    return exit_agent_failure;
  }
  if (!options.json_output) {
    std::vector<std::vector<std::string>> rows;
    for (const auto& writer : result.body.value("writers", json::array())) {
      std::string components = "-";
      if (writer.contains("identity") && writer["identity"].contains("components")) {
        const auto& list = writer["identity"]["components"];
        if (list.is_array() && !list.empty()) {
          components.clear();
          for (const auto& component : list) {
            // A component is an object; its name is what a person scans for.
            std::string label = text_of(component);
            for (const char* key : {"name", "path", "mount"}) {
              if (component.is_object() && component.contains(key) && component[key].is_string()) {
                label = component[key].get<std::string>();
                break;
              }
            }
            components += (components.empty() ? "" : ",") + label;
          }
        }
      }
      rows.push_back({field(writer, "name"), field(writer, "type"), field(writer, "level"), field(writer, "state"),
                      components,
                      writer.contains("error") && !writer["error"].is_null() ? error_text(writer["error"]) : "-"});
    }
    print_table({"NAME", "TYPE", "LEVEL", "STATE", "COMPONENTS", "ERROR"}, rows);
    print_freeze_order(result.body.value("writers", json::array()));
  }
  return exit_ok;
}

int command_session(AgentClient& client, const Options& options) {
  if (options.words.size() != 3 || (options.words[1] != "show" && options.words[1] != "abort")) {
    throw UsageError("usage: quiescectl session show|abort ID");
  }
  const auto& id = options.words[2];
  const auto result = options.words[1] == "show" ? client.session(id) : client.abort(id);
  if (options.json_output) {
    std::cout << (result.body.is_null() ? json(result.raw_body) : result.body).dump(2) << "\n";
  }
  if (!result.ok()) {
    print_api_error(result);
    return exit_agent_failure;
  }
  if (!options.json_output) {
    print_session(result.body);
  }
  const auto state = result.body.value("state", std::string());
  return state == "failed" ? exit_agent_failure : exit_ok;
}

// create → freeze → thaw → complete. Anything that fails once the session
// exists aborts it, so the guest is never left frozen by this tool.
class RunCommand {
 public:
  RunCommand(AgentClient& client, const Options& options) : client_(client), options_(options) {}

  int execute() {
    json create_options = json::object();
    if (options_.writers) {
      create_options["writers"] = *options_.writers;
    }
    if (options_.freeze_window_ms) {
      create_options["freeze_window_ms"] = *options_.freeze_window_ms;
    }
    if (options_.checkpoint_id) {
      create_options["checkpoint_id"] = *options_.checkpoint_id;
    }
    const std::string snapshot_id =
        options_.snapshot_id.value_or("quiescectl-" + std::to_string(std::time(nullptr)));

    const auto created = phase("create", [&] { return client_.create_session(create_options); }, "prepared");
    if (!created) {
      if (transport_failed_) {
        // The create may have reached the agent; we cannot know its id.
        std::cerr << "quiescectl: a session may have been created; see 'quiescectl status'\n";
      }
      return finish(exit_agent_failure);
    }
    session_id_ = created->body.value("id", std::string());
    if (session_id_.empty()) {
      std::cerr << "quiescectl: the agent's create answer carries no session id\n";
      return finish(exit_agent_failure);
    }
    if (!phase("freeze", [&] { return client_.freeze(session_id_); }, "frozen")) {
      return abort_and_finish();
    }
    const auto thawed = phase("thaw", [&] { return client_.thaw(session_id_); }, "thawed");
    if (!thawed) {
      return abort_and_finish();
    }
    bool continuous = false;
    if (thawed->body.contains("verdict") && thawed->body["verdict"].is_object()) {
      continuous = thawed->body["verdict"].value("continuous", false);
    }
    // Complete even over a broken hold: post-snapshot work still has to run
    // and the host still learns the snapshot id; the exit code says the
    // result is only crash-consistent.
    if (!phase("complete", [&] { return client_.complete(session_id_, snapshot_id); }, "completed")) {
      return abort_and_finish();
    }
    if (!continuous) {
      std::cerr << "quiescectl: the hold was not continuous; treat the snapshot as crash-consistent\n";
      return finish(exit_agent_failure);
    }
    return finish(exit_ok);
  }

 private:
  template <typename Call>
  std::optional<Result> phase(const char* name, Call call, const char* expected_state) {
    if (interrupted != 0) {
      report_failure(name, "interrupted by a signal");
      transport_failed_ = false;
      return std::nullopt;
    }
    const auto started = std::chrono::steady_clock::now();
    try {
      auto result = call();
      const auto elapsed = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started);
      report(name, result, elapsed.count());
      if (!result.ok()) {
        return std::nullopt;
      }
      const auto state = result.body.value("state", std::string());
      if (state != expected_state) {
        report_failure(name, std::string("session is '") + state + "', expected '" + expected_state + "'");
        return std::nullopt;
      }
      return result;
    } catch (const TransportError& e) {
      transport_failed_ = true;
      report_failure(name, e.what());
      return std::nullopt;
    }
  }

  void report(const char* name, const Result& result, double elapsed_ms) {
    if (options_.json_output) {
      json line = {{"phase", name}, {"http_status", result.status}, {"elapsed_ms", elapsed_ms}};
      if (result.error) {
        line["error"] = quiesce::wire::to_json(*result.error)["error"];
      } else {
        line["session"] = result.body;
      }
      std::cout << line.dump() << std::endl;
      return;
    }
    std::cout << "[" << name << "] " << result.status << " in " << std::fixed << std::setprecision(1) << elapsed_ms
              << " ms\n";
    if (result.error) {
      print_api_error(result);
    } else {
      print_session(result.body);
    }
    std::cout << std::flush;
  }

  void report_failure(const char* name, const std::string& why) {
    if (options_.json_output) {
      std::cout << json{{"phase", name}, {"failure", why}}.dump() << std::endl;
    } else {
      std::cerr << "quiescectl: " << name << " failed: " << why << "\n";
    }
  }

  int abort_and_finish() {
    const int code = transport_failed_ ? exit_transport : exit_agent_failure;
    const auto started = std::chrono::steady_clock::now();
    try {
      const auto result = client_.abort(session_id_);
      const auto elapsed = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started);
      report("abort", result, elapsed.count());
      if (!result.ok()) {
        std::cerr << "quiescectl: abort of session " << session_id_
                  << " failed; check the agent (quiescectl session show " << session_id_ << ")\n";
      }
    } catch (const TransportError& e) {
      report_failure("abort", e.what());
      std::cerr << "quiescectl: could not abort session " << session_id_
                << "; the agent's freeze-window watchdog will thaw it. Retry with: quiescectl session abort "
                << session_id_ << "\n";
      return finish(exit_transport);
    }
    return finish(code);
  }

  int finish(int code) {
    if (code != exit_ok && transport_failed_ && code == exit_agent_failure) {
      code = exit_transport;
    }
    if (options_.json_output) {
      std::cout << json{{"result", code == exit_ok ? "ok" : "failed"},
                        {"session", session_id_.empty() ? json(nullptr) : json(session_id_)},
                        {"exit_code", code}}
                       .dump()
                << std::endl;
    }
    return code;
  }

  AgentClient& client_;
  const Options& options_;
  std::string session_id_;
  bool transport_failed_ = false;
};

int run(int argc, char** argv) {
  Options options;
  try {
    options = parse_arguments(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "quiescectl: " << e.what() << "\n(see quiescectl --help)\n";
    return exit_usage;
  }
  if (options.words.empty()) {
    std::cerr << usage_text;
    return exit_usage;
  }
  const auto& command = options.words[0];
  if (command == "help") {
    std::cout << usage_text;
    return exit_ok;
  }
  if (command == "version") {
    std::cout << "quiescectl " << QUIESCE_VERSION << "\n";
    return exit_ok;
  }

  try {
    quiesce::client::ClientOptions client_options;
    client_options.endpoint = quiesce::client::Endpoint::parse(options.connect.value_or("unix:" + options.socket));
    client_options.timeout = options.timeout;
    if (options.token_file) {
      client_options.token = read_token(*options.token_file);
    }
    AgentClient client(client_options);

    const bool has_run_options =
        options.writers || options.freeze_window_ms || options.snapshot_id || options.checkpoint_id;
    if (has_run_options && command != "run") {
      throw UsageError("--writers, --freeze-window-ms, --snapshot-id and --checkpoint-id only apply to 'run'");
    }
    if (command == "status" || command == "writers" || command == "run") {
      if (options.words.size() != 1) {
        throw UsageError("'" + command + "' takes no arguments");
      }
    }
    if (command == "status") {
      return command_status(client, options);
    }
    if (command == "writers") {
      return command_writers(client, options);
    }
    if (command == "session") {
      return command_session(client, options);
    }
    if (command == "run") {
      // Let Ctrl-C / SIGTERM finish the call in progress and then abort the
      // session, instead of dying with the guest frozen.
      struct sigaction action {};
      action.sa_handler = on_signal;
      sigemptyset(&action.sa_mask);
      sigaction(SIGINT, &action, nullptr);
      sigaction(SIGTERM, &action, nullptr);
      return RunCommand(client, options).execute();
    }
    throw UsageError("unknown command '" + command + "'");
  } catch (const UsageError& e) {
    std::cerr << "quiescectl: " << e.what() << "\n(see quiescectl --help)\n";
    return exit_usage;
  } catch (const std::invalid_argument& e) {
    std::cerr << "quiescectl: " << e.what() << "\n";
    return exit_usage;
  } catch (const TransportError& e) {
    std::cerr << "quiescectl: cannot talk to the agent: " << e.what() << "\n";
    return exit_transport;
  } catch (const std::exception& e) {
    std::cerr << "quiescectl: " << e.what() << "\n";
    return exit_agent_failure;
  }
}

}  // namespace

int main(int argc, char** argv) { return run(argc, argv); }
