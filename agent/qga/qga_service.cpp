#include "agent/qga/qga_service.hpp"

#include <algorithm>
#include <functional>
#include <mutex>
#include <optional>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/core/api_routes.hpp"
#include "agent/core/coordinator.hpp"
#include "agent/qga/qga_framing.hpp"
#include "agent/qga/qga_guest_info.hpp"

namespace quiesce::agent::qga {

namespace {

// qemu's error classes that qemu-ga answers with.
constexpr const char* kGenericError = "GenericError";
constexpr const char* kCommandNotFound = "CommandNotFound";

constexpr char kDelimiter = '\xFF';

// What `quiesce-api` accepts: the HTTP server's own body limit, so a request
// cannot do over the qga channel what it could not do over HTTP.
constexpr std::size_t kMaxApiBodyBytes = 64 * 1024;
constexpr std::size_t kMaxApiPathBytes = 2048;

// Input is framed in slices of this size so that the replies to one read
// are produced (and their memory bounded) as the read is consumed.
constexpr std::size_t kFeedSlice = 4096;

struct QgaError {
  std::string error_class;
  std::string desc;
};

enum class ParamType { integer, string, string_list, any };

struct Param {
  const char* name;
  ParamType type;
  bool required;
};

struct Command;
using Handler = std::function<nlohmann::json(const nlohmann::json& arguments, const std::string& peer)>;

struct Command {
  std::string name;
  std::vector<Param> params;
  bool allowed_while_frozen = false;
  bool success_response = true;
  Handler handler;          // empty: listed by guest-info as disabled, never run
  std::string not_offered;  // why it is disabled
};

const char* type_name(ParamType type) {
  switch (type) {
    case ParamType::integer: return "integer";
    case ParamType::string: return "string";
    case ParamType::string_list: return "array";
    case ParamType::any: return "any";
  }
  return "any";
}

bool is_int64(const nlohmann::json& value) {
  if (value.is_number_integer() && !value.is_number_unsigned()) {
    return true;
  }
  return value.is_number_unsigned() &&
         value.get<std::uint64_t>() <= static_cast<std::uint64_t>(INT64_MAX);
}

// Checks `arguments` against a command's parameters the way qemu's QAPI
// input visitor does: declared members in order (missing, wrong type), then
// anything left over.
void check_arguments(const Command& command, const nlohmann::json& arguments) {
  for (const auto& param : command.params) {
    auto it = arguments.find(param.name);
    if (it == arguments.end()) {
      if (param.required) {
        throw QgaError{kGenericError, std::string("Parameter '") + param.name + "' is missing"};
      }
      continue;
    }
    const auto& value = *it;
    bool fits = true;
    switch (param.type) {
      case ParamType::integer: fits = is_int64(value); break;
      case ParamType::string: fits = value.is_string(); break;
      case ParamType::string_list:
        fits = value.is_array();
        if (fits) {
          for (std::size_t i = 0; i < value.size(); ++i) {
            if (!value[i].is_string()) {
              throw QgaError{kGenericError, std::string("Invalid parameter type for '") +
                                                param.name + "[" + std::to_string(i) +
                                                "]', expected: string"};
            }
          }
        }
        break;
      case ParamType::any: break;
    }
    if (!fits) {
      throw QgaError{kGenericError, std::string("Invalid parameter type for '") + param.name +
                                        "', expected: " + type_name(param.type)};
    }
  }
  for (const auto& [key, value] : arguments.items()) {
    const bool declared = std::any_of(command.params.begin(), command.params.end(),
                                      [&](const Param& param) { return key == param.name; });
    if (!declared) {
      throw QgaError{kGenericError, "Parameter '" + key + "' is unexpected"};
    }
  }
}

std::string reply_line(const nlohmann::json& reply) {
  // Replies must stay valid UTF-8 whatever a request carried: replace, not throw.
  return reply.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

std::string error_line(const std::string& error_class, const std::string& desc,
                       const nlohmann::json* id = nullptr) {
  nlohmann::json reply = {{"error", {{"class", error_class}, {"desc", desc}}}};
  if (id != nullptr) {
    reply["id"] = *id;
  }
  return reply_line(reply);
}

// Filesystems a session's filesystem-level writers hold, from what each
// reported at identify in this session (after narrowing to mount points).
std::int64_t filesystems_in(const nlohmann::json& session) {
  std::int64_t count = 0;
  for (const auto& writer : session.value("writers", nlohmann::json::array())) {
    if (writer.value("level", "") != "filesystem" || !writer.contains("identity") ||
        !writer["identity"].is_object()) {
      continue;
    }
    for (const auto& component :
         writer["identity"].value("components", nlohmann::json::array())) {
      if (component.is_object() && component.value("kind", "") == "filesystem") {
        ++count;
      }
    }
  }
  return count;
}

}  // namespace

struct QgaService::Impl {
  Impl(Coordinator& coordinator_in, ApiRoutes& routes_in, QgaOptions options_in,
       std::shared_ptr<spdlog::logger> logger_in)
      : coordinator(coordinator_in),
        routes(routes_in),
        options(options_in),
        logger(std::move(logger_in)) {
    build_commands();
  }

  Coordinator& coordinator;
  ApiRoutes& routes;
  QgaOptions options;
  std::shared_ptr<spdlog::logger> logger;
  GuestSources sources;
  std::vector<Command> commands;  // in guest-info's order

  // qga freeze and thaw run one at a time whichever channel they come from;
  // the session they made is agent-wide, as qemu-ga's frozen state is.
  std::mutex freeze_mutex;
  std::optional<std::string> qga_session;  // guarded by freeze_mutex

  void build_commands();
  std::string handle(const std::string& text, const std::string& peer);
  nlohmann::json freeze(const std::optional<std::vector<std::string>>& mountpoints,
                        const std::string& peer);
  nlohmann::json thaw(const std::string& peer);
  nlohmann::json info() const;
  nlohmann::json quiesce_api(const nlohmann::json& arguments, const std::string& peer);
  void finish_stale_session_locked();
};

void QgaService::Impl::build_commands() {
  auto no_args = std::vector<Param>{};
  auto sync_args = std::vector<Param>{{"id", ParamType::integer, true}};
  auto add = [&](std::string name, std::vector<Param> params, bool while_frozen, Handler handler) {
    commands.push_back(Command{std::move(name), std::move(params), while_frozen, true,
                               std::move(handler), {}});
  };
  // The order of qemu-ga's own guest-info for the commands both offer.
  add("guest-sync-delimited", sync_args, true,
      [](const nlohmann::json& arguments, const std::string&) { return arguments["id"]; });
  add("guest-sync", sync_args, true,
      [](const nlohmann::json& arguments, const std::string&) { return arguments["id"]; });
  add("guest-ping", no_args, true,
      [](const nlohmann::json&, const std::string&) { return nlohmann::json::object(); });
  add("guest-info", no_args, true,
      [this](const nlohmann::json&, const std::string&) { return info(); });
  add("guest-get-time", no_args, false,
      [](const nlohmann::json&, const std::string&) { return guest_time(); });
  add("guest-fsfreeze-status", no_args, true,
      [this](const nlohmann::json&, const std::string&) {
        return nlohmann::json(coordinator.frozen() ? "frozen" : "thawed");
      });
  add("guest-fsfreeze-freeze", no_args, false,
      [this](const nlohmann::json&, const std::string& peer) { return freeze(std::nullopt, peer); });
  add("guest-fsfreeze-freeze-list", {{"mountpoints", ParamType::string_list, false}}, false,
      [this](const nlohmann::json& arguments, const std::string& peer) {
        std::optional<std::vector<std::string>> mountpoints;
        if (arguments.contains("mountpoints")) {
          mountpoints = arguments["mountpoints"].get<std::vector<std::string>>();
        }
        return freeze(mountpoints, peer);
      });
  add("guest-fsfreeze-thaw", no_args, true,
      [this](const nlohmann::json&, const std::string& peer) { return thaw(peer); });
  add("guest-get-osinfo", no_args, false,
      [this](const nlohmann::json&, const std::string&) { return guest_osinfo(sources); });
  add("guest-get-host-name", no_args, false,
      [](const nlohmann::json&, const std::string&) { return guest_host_name(); });
  add("guest-get-timezone", no_args, false,
      [](const nlohmann::json&, const std::string&) { return guest_timezone(); });
  add("guest-get-users", no_args, false,
      [](const nlohmann::json&, const std::string&) { return guest_users(); });
  add("guest-get-fsinfo", no_args, false,
      [this](const nlohmann::json&, const std::string&) { return guest_fsinfo(sources); });
  add("guest-network-get-interfaces", no_args, false,
      [this](const nlohmann::json&, const std::string&) {
        return guest_network_interfaces(sources);
      });
  // Quiesce's own: the v1 API over this channel. Allowed while frozen: the
  // native API is how a host thaws its own session over virtio-serial, and
  // its handlers do no I/O on the frozen disks (DESIGN.md invariant 4).
  add("quiesce-api",
      {{"method", ParamType::string, true},
       {"path", ParamType::string, true},
       {"body", ParamType::any, false}},
      true,
      [this](const nlohmann::json& arguments, const std::string& peer) {
        return quiesce_api(arguments, peer);
      });

  // qemu-ga commands a quiesce agent does not offer: listed by guest-info as
  // disabled (as qemu-ga lists the commands its --block-rpcs turned off), so
  // a host sees they exist and are off; calling one answers CommandNotFound.
  const std::string reason = "not offered by the Quiesce agent (docs/qga.md)";
  for (const char* name :
       {"guest-exec", "guest-exec-status", "guest-file-open", "guest-file-close",
        "guest-file-read", "guest-file-write", "guest-file-seek", "guest-file-flush",
        "guest-set-user-password", "guest-set-time", "guest-set-vcpus", "guest-get-vcpus",
        "guest-set-memory-blocks", "guest-get-memory-blocks", "guest-get-memory-block-info",
        "guest-fstrim", "guest-get-disks", "guest-get-devices", "guest-get-diskstats",
        "guest-get-cpustats", "guest-ssh-get-authorized-keys", "guest-ssh-add-authorized-keys",
        "guest-ssh-remove-authorized-keys"}) {
    commands.push_back(Command{name, {}, false, true, {}, reason});
  }
  // These answer nothing on success in qemu-ga (the guest goes away).
  for (const char* name :
       {"guest-shutdown", "guest-suspend-disk", "guest-suspend-ram", "guest-suspend-hybrid"}) {
    commands.push_back(Command{name, {}, false, false, {}, reason});
  }
}

nlohmann::json QgaService::Impl::info() const {
  nlohmann::json supported = nlohmann::json::array();
  for (const auto& command : commands) {
    supported.push_back({{"name", command.name},
                         {"enabled", static_cast<bool>(command.handler)},
                         {"success-response", command.success_response}});
  }
  return {{"version", QUIESCE_VERSION}, {"supported_commands", supported}};
}

std::string QgaService::Impl::handle(const std::string& text, const std::string& peer) {
  nlohmann::json request;
  try {
    request = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    // parse_error, and out_of_range for numbers past a double (1e99999).
    // nlohmann's message starts with its own tag: keep what it says.
    std::string message = e.what();
    if (auto bracket = message.find("] "); bracket != std::string::npos) {
      message = message.substr(bracket + 2);
    }
    return error_line(kGenericError, "JSON parse error: " + message);
  }
  if (!request.is_object()) {
    return error_line(kGenericError, "QMP input must be a JSON object");
  }
  const nlohmann::json* id = request.contains("id") ? &request["id"] : nullptr;
  try {
    std::string name;
    for (const auto& [key, value] : request.items()) {
      if (key == "execute") {
        if (!value.is_string()) {
          throw QgaError{kGenericError, "QMP input member 'execute' must be a string"};
        }
        name = value.get<std::string>();
      } else if (key == "arguments") {
        if (!value.is_object()) {
          throw QgaError{kGenericError, "QMP input member 'arguments' must be an object"};
        }
      } else if (key != "id") {
        throw QgaError{kGenericError, "QMP input member '" + key + "' is unexpected"};
      }
    }
    if (!request.contains("execute")) {
      throw QgaError{kGenericError, "QMP input lacks member 'execute'"};
    }
    auto command = std::find_if(commands.begin(), commands.end(),
                                [&](const Command& c) { return c.name == name; });
    if (command == commands.end()) {
      throw QgaError{kCommandNotFound, "The command " + name + " has not been found"};
    }
    if (!command->handler) {
      throw QgaError{kCommandNotFound,
                     "Command " + name + " has been disabled: " + command->not_offered};
    }
    if (!command->allowed_while_frozen && coordinator.frozen()) {
      throw QgaError{kCommandNotFound,
                     "Command " + name + " has been disabled: the agent is in frozen state"};
    }
    const auto arguments =
        request.contains("arguments") ? request["arguments"] : nlohmann::json::object();
    check_arguments(*command, arguments);
    logger->debug("qga {}: {}", peer, name);
    nlohmann::json reply = {{"return", command->handler(arguments, peer)}};
    if (id != nullptr) {
      reply["id"] = *id;
    }
    auto line = reply_line(reply);
    // guest-sync-delimited: the 0xFF tells the client where the stale
    // replies it must skip end.
    return name == "guest-sync-delimited" ? kDelimiter + line : line;
  } catch (const QgaError& error) {
    return error_line(error.error_class, error.desc, id);
  } catch (const std::exception& e) {
    logger->warn("qga {}: command failed: {}", peer, e.what());
    return error_line(kGenericError, e.what(), id);
  }
}

void QgaService::Impl::finish_stale_session_locked() {
  if (!qga_session) {
    return;
  }
  const auto id = *qga_session;
  auto status = coordinator.session_status(id);
  if (status.ok()) {
    const auto state = status.value().value("state", "");
    if (state == "thawed" || state == "prepared") {
      // The freeze window ran out and no guest-fsfreeze-thaw came (or a
      // freeze was cut short): end the session so it does not block the next.
      logger->warn("qga: session {} ({}) was never thawed by the host; aborting it", id, state);
      (void)coordinator.abort(id);
    }
  }
  qga_session.reset();
}

nlohmann::json QgaService::Impl::freeze(const std::optional<std::vector<std::string>>& mountpoints,
                                        const std::string& peer) {
  std::lock_guard lock(freeze_mutex);
  finish_stale_session_locked();
  SessionRequest request;
  request.origin = "qga";
  request.freeze_window = options.freeze_window;
  request.mountpoints = mountpoints;
  auto created = coordinator.create_session(request);
  if (!created.ok()) {
    logger->warn("qga {}: guest-fsfreeze-freeze refused: {}", peer, created.error().message);
    throw QgaError{kGenericError, created.error().message};
  }
  const auto id = created.value()["id"].get<std::string>();
  auto frozen = coordinator.freeze(id);
  if (!frozen.ok()) {
    // The coordinator rolled back whatever froze; a session the freeze did
    // not even start (another operation held it) is ended here.
    if (auto status = coordinator.session_status(id);
        status.ok() && status.value().value("state", "") == "prepared") {
      (void)coordinator.abort(id);
    }
    logger->warn("qga {}: guest-fsfreeze-freeze failed, nothing is left frozen: {}", peer,
                 frozen.error().message);
    throw QgaError{kGenericError, frozen.error().message};
  }
  qga_session = id;
  const auto count = filesystems_in(frozen.value());
  logger->info("qga {}: session {} frozen ({} filesystem(s), window {} ms)", peer, id, count,
               options.freeze_window.count());
  return count;
}

nlohmann::json QgaService::Impl::thaw(const std::string& peer) {
  std::lock_guard lock(freeze_mutex);
  if (!qga_session) {
    if (coordinator.frozen()) {
      const auto health = coordinator.health();
      throw QgaError{kGenericError,
                     "the freeze is held by session " + health.value("session", std::string("?")) +
                         " of the native API, not by guest-fsfreeze-freeze; thaw it there "
                         "(quiesce-api POST /v1/sessions/<id>/thaw)"};
    }
    return 0;  // nothing frozen: as qemu-ga, thaw is a no-op
  }
  const auto id = *qga_session;
  auto status = coordinator.session_status(id);
  if (!status.ok()) {
    qga_session.reset();
    return 0;
  }
  nlohmann::json session = status.value();
  const auto state = session.value("state", "");
  if (state == "frozen" || state == "thawing" || state == "freezing") {
    auto thawed = coordinator.thaw(id);
    if (!thawed.ok()) {
      throw QgaError{kGenericError, thawed.error().message};
    }
    session = thawed.value();
  }
  qga_session.reset();
  const auto& verdict = session["verdict"];
  const bool continuous = verdict.is_object() && verdict.value("continuous", false);
  const auto final_state = session.value("state", "");
  // The coordinator ends a qga session as soon as its window thaws it; its
  // verdict is what this thaw must report (once: qga_session is reset).
  const bool ended_by_window = final_state == "aborted" && verdict.is_object() &&
                               verdict.value("watchdog_fired", false);
  if (final_state != "thawed" && !ended_by_window) {
    return 0;  // ended some other way meanwhile (aborted through the native API)
  }
  const auto count = filesystems_in(session);
  if (!continuous) {
    const auto reasons = verdict.is_object() ? verdict.value("reasons", nlohmann::json::array())
                                             : nlohmann::json::array();
    logger->warn("qga {}: session {} thawed, hold NOT continuous: {}", peer, id, reasons.dump());
    // No post-snapshot: the snapshot taken over this hold is crash-consistent
    // at best, and writers must not hand out artifacts that say otherwise.
    (void)coordinator.abort(id);
    std::string why;
    for (const auto& reason : reasons) {
      why += (why.empty() ? "" : "; ") + reason.get<std::string>();
    }
    throw QgaError{kGenericError,
                   "the freeze did not hold until guest-fsfreeze-thaw (" + why +
                       "): filesystems are thawed, but a snapshot taken during this freeze is "
                       "not application-consistent (session " +
                       id + ")"};
  }
  logger->info("qga {}: session {} thawed, hold {:.1f} ms, continuous", peer, id,
               verdict.value("hold_ms", 0.0));
  auto completed = coordinator.complete(id, "qga-" + id);
  if (!completed.ok()) {
    // Thawed all the same: the count stands, the failure is in the session.
    logger->warn("qga {}: session {}: post-snapshot failed: {}", peer, id,
                 completed.error().message);
  }
  return count;
}

nlohmann::json QgaService::Impl::quiesce_api(const nlohmann::json& arguments,
                                             const std::string& peer) {
  api::Request request;
  request.method = arguments["method"].get<std::string>();
  request.target = arguments["path"].get<std::string>();
  if (request.method.empty() || request.method.size() > 16 ||
      !std::all_of(request.method.begin(), request.method.end(),
                   [](char c) { return c >= 'A' && c <= 'Z'; })) {
    throw QgaError{kGenericError,
                   "Parameter 'method' must be an HTTP method in capitals (GET, POST, DELETE)"};
  }
  if (request.method == "HEAD") {
    request.method = "GET";  // as the HTTP server hands HEAD to the routes
  }
  if (request.target.empty() || request.target.front() != '/' ||
      request.target.size() > kMaxApiPathBytes) {
    throw QgaError{kGenericError, "Parameter 'path' must be an absolute path such as "
                                  "/v1/health, at most " +
                                      std::to_string(kMaxApiPathBytes) + " bytes"};
  }
  if (arguments.contains("body") && !arguments["body"].is_null()) {
    const auto& body = arguments["body"];
    request.body = body.is_string() ? body.get<std::string>() : body.dump();
  }
  if (request.body.size() > kMaxApiBodyBytes) {
    throw QgaError{kGenericError, "Parameter 'body' is larger than " +
                                      std::to_string(kMaxApiBodyBytes) + " bytes"};
  }
  request.peer.transport = api::Transport::qga;
  request.peer.description = "qga " + peer;
  auto response = routes.handle(request);
  nlohmann::json body = response.body;
  if (response.content_type == "application/json") {
    auto parsed = nlohmann::json::parse(response.body, nullptr, false);
    if (!parsed.is_discarded()) {
      body = std::move(parsed);
    }
  }
  logger->info("qga {}: quiesce-api {} {} -> {}", peer, request.method, request.target,
               response.status);
  return {{"status", response.status}, {"body", body}};
}

namespace {

class Connection final : public QgaConnection {
 public:
  Connection(QgaService::Impl& service, std::string peer, bool can_close, FramingLimits limits)
      : service_(service), peer_(std::move(peer)), can_close_(can_close), splitter_(limits) {}

  QgaOutput feed(std::string_view bytes) override {
    QgaOutput output;
    if (closed_) {
      output.close = true;
      return output;
    }
    std::vector<Frame> frames;
    while (!bytes.empty()) {
      const auto slice = bytes.substr(0, kFeedSlice);
      bytes.remove_prefix(slice.size());
      frames.clear();
      splitter_.feed(slice, frames);
      for (const auto& frame : frames) {
        switch (frame.kind) {
          case Frame::Kind::value:
            output.bytes += service_.handle(frame.text, peer_);
            break;
          case Frame::Kind::syntax_error:
            output.bytes += error_line(kGenericError, frame.text);
            break;
          case Frame::Kind::limit_exceeded:
            service_.logger->warn("qga {}: {}{}", peer_, frame.text,
                                  can_close_ ? "; closing the connection"
                                             : "; skipping the rest of that input");
            output.bytes += error_line(kGenericError, frame.text);
            if (can_close_) {
              closed_ = true;
              output.close = true;
              return output;
            }
            break;
        }
      }
    }
    return output;
  }

 private:
  QgaService::Impl& service_;
  std::string peer_;
  bool can_close_;
  JsonStreamSplitter splitter_;
  bool closed_ = false;
};

}  // namespace

QgaService::QgaService(Coordinator& coordinator, ApiRoutes& routes, QgaOptions options,
                       std::shared_ptr<spdlog::logger> logger)
    : impl_(std::make_unique<Impl>(coordinator, routes, options, std::move(logger))) {}

QgaService::~QgaService() = default;

std::unique_ptr<QgaConnection> QgaService::connect(const std::string& peer, bool can_close) {
  impl_->logger->info("qga: {} connected", peer);
  return std::make_unique<Connection>(
      *impl_, peer, can_close,
      FramingLimits{impl_->options.max_object_bytes, impl_->options.max_nesting});
}

}  // namespace quiesce::agent::qga
