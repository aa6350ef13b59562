#include "host-bridge/client/qga_transport.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <regex>
#include <system_error>
#include <utility>

namespace quiesce::client {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

std::string errno_text(int error) {
  return std::error_code(error, std::generic_category()).message();
}

// One connection to the qga socket for one call, with one deadline.
class QgaConnection {
 public:
  QgaConnection(const Endpoint& endpoint, Clock::time_point deadline, std::size_t max_line)
      : endpoint_(endpoint), deadline_(deadline), max_line_(max_line) {}
  QgaConnection(const QgaConnection&) = delete;
  QgaConnection& operator=(const QgaConnection&) = delete;
  ~QgaConnection() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
  }

  void connect() {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (endpoint_.path.size() >= sizeof address.sun_path) {
      fail(TransportError::Kind::connect, "socket path too long");
    }
    std::memcpy(address.sun_path, endpoint_.path.c_str(), endpoint_.path.size() + 1);
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd_ < 0) {
      fail(TransportError::Kind::connect, "cannot create socket: " + errno_text(errno));
    }
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
      if (errno != EINPROGRESS && errno != EAGAIN) {
        fail(TransportError::Kind::connect, "cannot connect: " + errno_text(errno));
      }
      wait_for(POLLOUT, "connecting");
      int error = 0;
      socklen_t size = sizeof error;
      ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &error, &size);
      if (error != 0) {
        fail(TransportError::Kind::connect, "cannot connect: " + errno_text(error));
      }
    }
  }

  // guest-sync-delimited with a random id: after it, the next line read is
  // the answer to the next command, whatever the channel held before.
  void sync() {
    static thread_local std::mt19937_64 random{std::random_device{}()};
    // qemu-ga takes the id as an int; keep it positive and below 2^31.
    const auto id = static_cast<std::int64_t>(random() % 0x7fffffffULL) + 1;
    // The leading 0xFF makes the agent drop any half-written object a
    // previous client left in the channel (qemu-ga's documented resync).
    write_all(std::string("\xff") +
                  json{{"execute", "guest-sync-delimited"}, {"arguments", {{"id", id}}}}.dump() +
                  "\n",
              false);
    while (true) {
      // Skip to the delimiter: everything before it is a stale reply.
      if (!skip_to_delimiter()) {
        continue;
      }
      // The reply follows the 0xFF; an older sync's reply may too.
      const auto line = read_line("the sync reply");
      const auto reply = json::parse(line, nullptr, false);
      if (reply.is_object() && reply.contains("return") && reply["return"] == id) {
        return;
      }
    }
  }

  // Sends one command; returns the reply object ({"return"} or {"error"}).
  json execute(const std::string& command, const json& arguments) {
    json request = {{"execute", command}};
    if (!arguments.is_null()) {
      request["arguments"] = arguments;
    }
    write_all(request.dump() + "\n", true);
    while (true) {
      const auto line = read_line("the reply to " + command);
      auto reply = json::parse(line, nullptr, false);
      if (reply.is_object() && (reply.contains("return") || reply.contains("error"))) {
        return reply;
      }
      if (!line.empty()) {
        fail(TransportError::Kind::protocol,
             "not a qga reply to " + command + ": " + line.substr(0, 200));
      }
    }
  }

  [[nodiscard]] bool request_sent() const { return request_sent_; }

 private:
  [[noreturn]] void fail(TransportError::Kind kind, const std::string& what) const {
    throw TransportError(kind, request_sent_, endpoint_.to_string() + ": " + what);
  }

  void wait_for(short events, const std::string& what) {
    while (true) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - Clock::now());
      if (left.count() <= 0) {
        fail(TransportError::Kind::timeout, what + " timed out");
      }
      pollfd fd{fd_, events, 0};
      const int ready =
          ::poll(&fd, 1, static_cast<int>(std::min<std::int64_t>(left.count(), 60'000)));
      if (ready < 0 && errno == EINTR) {
        continue;
      }
      if (ready < 0) {
        fail(TransportError::Kind::protocol, what + ": poll: " + errno_text(errno));
      }
      if (ready > 0) {
        return;
      }
    }
  }

  void write_all(std::string_view bytes, bool is_request) {
    if (is_request) {
      request_sent_ = true;
    }
    while (!bytes.empty()) {
      const auto written = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (written > 0) {
        bytes.remove_prefix(static_cast<std::size_t>(written));
      } else if (written < 0 && (errno == EAGAIN || errno == EINTR)) {
        wait_for(POLLOUT, "sending");
      } else {
        fail(TransportError::Kind::protocol, "sending failed: " + errno_text(errno));
      }
    }
  }

  void fill(const std::string& what) {
    wait_for(POLLIN, "reading " + what);
    char chunk[16 * 1024];
    const auto got = ::recv(fd_, chunk, sizeof chunk, 0);
    if (got == 0) {
      fail(TransportError::Kind::protocol,
           "the channel closed while reading " + what +
               (request_sent_ ? "" : " (is another client using the channel?)"));
    }
    if (got < 0) {
      if (errno == EAGAIN || errno == EINTR) {
        return;
      }
      fail(TransportError::Kind::protocol, "reading " + what + " failed: " + errno_text(errno));
    }
    buffer_.append(chunk, static_cast<std::size_t>(got));
  }

  // False when the buffer ran out first (call again after more arrived).
  bool skip_to_delimiter() {
    const auto at = buffer_.find('\xff');
    if (at == std::string::npos) {
      buffer_.clear();
      fill("the sync delimiter");
      return false;
    }
    buffer_.erase(0, at + 1);
    return true;
  }

  std::string read_line(const std::string& what) {
    while (true) {
      const auto end = buffer_.find('\n');
      if (end != std::string::npos) {
        std::string line = buffer_.substr(0, end);
        buffer_.erase(0, end + 1);
        while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) {
          line.pop_back();
        }
        return line;
      }
      if (buffer_.size() > max_line_) {
        fail(TransportError::Kind::protocol,
             what + " is larger than " + std::to_string(max_line_) + " bytes");
      }
      fill(what);
    }
  }

  const Endpoint& endpoint_;
  Clock::time_point deadline_;
  std::size_t max_line_;
  int fd_ = -1;
  std::string buffer_;
  bool request_sent_ = false;
};

Result error_result(unsigned status, std::string code, std::string message, bool retryable) {
  wire::ApiError error;
  error.http_status = status;
  error.code = std::move(code);
  error.message = std::move(message);
  error.retryable = retryable;
  Result result;
  result.status = status;
  result.body = wire::to_json(error);
  result.raw_body = result.body.dump();
  result.error = std::move(error);
  return result;
}

Result json_result(unsigned status, json body) {
  Result result;
  result.status = status;
  result.raw_body = body.dump();
  result.body = std::move(body);
  return result;
}

// A qga {"error": {class, desc}} as an API error: the class becomes the code.
Result from_qga_error(const json& reply, const std::string& command) {
  const auto& error = reply["error"];
  const std::string cls = error.is_object() ? error.value("class", "GenericError") : "GenericError";
  const std::string desc = error.is_object() ? error.value("desc", "") : reply.dump();
  return error_result(500, "qga_" + cls, "qemu-guest-agent: " + command + ": " + desc, false);
}

json fallback_agent(const QgaPeerState& state) {
  return {{"kind", "qemu-guest-agent"}, {"version", state.version}};
}

constexpr const char* kFallbackNote =
    "a stock qemu-guest-agent answered: only filesystems are quiesced (guest-fsfreeze-*), no "
    "application or database writers, no artifacts";

// The v1 calls a host makes, played with qemu-ga's fsfreeze commands.
class Fallback {
 public:
  Fallback(QgaConnection& connection, QgaPeerState& state)
      : connection_(connection), state_(state) {}

  Result run(std::string_view method, const std::string& path, const json& body) {
    static const std::regex session_path("^/v1/sessions/([^/]+)(/(freeze|thaw|complete))?$");
    if (path == "/v1/health" && method == "GET") {
      return health();
    }
    if (path == "/v1/writers" && method == "GET") {
      return json_result(200, {{"writers", json::array({writer("idle")})},
                               {"agent", fallback_agent(state_)},
                               {"note", kFallbackNote}});
    }
    if (path == "/v1/sessions" && method == "POST") {
      return create(body);
    }
    std::smatch match;
    if (std::regex_match(path, match, session_path)) {
      const std::string id = match[1];
      const std::string action = match[3];
      if (!state_.session_id || *state_.session_id != id) {
        return error_result(404, "session_not_found", "no session " + id + " on this client",
                            false);
      }
      if (action.empty() && method == "GET") {
        return session_status();
      }
      if (action.empty() && method == "DELETE") {
        return abort();
      }
      if (action == "freeze" && method == "POST") {
        return freeze();
      }
      if (action == "thaw" && method == "POST") {
        return thaw();
      }
      if (action == "complete" && method == "POST") {
        auto result = session_body("completed");
        result["artifacts"] = json::object();
        state_.session_id.reset();
        return json_result(200, std::move(result));
      }
    }
    return error_result(404, "not_supported",
                        std::string(method) + " " + path +
                            " is not available from a stock qemu-guest-agent (" + kFallbackNote +
                            ")",
                        false);
  }

 private:
  json writer(const std::string& writer_state) const {
    return {{"name", "qemu-guest-agent"},
            {"type", "fsfreeze"},
            {"level", "filesystem"},
            {"state", writer_state},
            {"hold", nullptr},
            {"timings_ms", json::object()},
            {"identity", {{"agent", fallback_agent(state_)}, {"quiesced", "filesystems"}}}};
  }

  json session_body(const std::string& session_state) const {
    return {{"id", state_.session_id.value_or("")},
            {"state", session_state},
            {"agent", fallback_agent(state_)},
            {"quiesced", "filesystems"},
            {"note", kFallbackNote},
            {"writers", json::array({writer(session_state)})}};
  }

  std::optional<std::string> fsfreeze_status(Result& failure) {
    const auto reply = connection_.execute("guest-fsfreeze-status", nullptr);
    if (reply.contains("error")) {
      failure = from_qga_error(reply, "guest-fsfreeze-status");
      return std::nullopt;
    }
    return reply["return"].is_string() ? reply["return"].get<std::string>()
                                       : std::string("unknown");
  }

  Result health() {
    Result failure;
    const auto status = fsfreeze_status(failure);
    if (!status) {
      return failure;
    }
    return json_result(200, {{"kind", "qemu-guest-agent"},
                             {"agent", fallback_agent(state_)},
                             {"version", state_.version},
                             {"state", *status == "frozen" ? "frozen" : "idle"},
                             {"quiesced", "filesystems"},
                             {"note", kFallbackNote}});
  }

  Result create(const json& body) {
    if (state_.session_id) {
      return error_result(409, "session_conflict",
                          "session " + *state_.session_id + " is still open on this client", true);
    }
    if (body.is_object() && body.contains("writers")) {
      return error_result(400, "invalid_request",
                          "a stock qemu-guest-agent has no writers to choose from (" +
                              std::string(kFallbackNote) + ")",
                          false);
    }
    static thread_local std::mt19937_64 random{std::random_device{}()};
    char id[32];
    std::snprintf(id, sizeof id, "qga-%012llx",
                  static_cast<unsigned long long>(random() & 0xffffffffffffULL));
    state_.session_id = id;
    state_.frozen_at.reset();
    return json_result(201, session_body("prepared"));
  }

  Result session_status() {
    Result failure;
    const auto status = fsfreeze_status(failure);
    if (!status) {
      return failure;
    }
    return json_result(200, session_body(*status == "frozen" ? "frozen" : "prepared"));
  }

  Result freeze() {
    const auto reply = connection_.execute("guest-fsfreeze-freeze", nullptr);
    if (reply.contains("error")) {
      return from_qga_error(reply, "guest-fsfreeze-freeze");
    }
    state_.frozen_at = Clock::now();
    state_.filesystems_frozen =
        reply["return"].is_number_unsigned() ? reply["return"].get<std::uint64_t>() : 0;
    auto result = session_body("frozen");
    result["filesystems"] = state_.filesystems_frozen;
    return json_result(200, std::move(result));
  }

  Result thaw() {
    // qemu-ga has no freeze window: only a thaw (ours or another client's)
    // ends its hold, so the hold was continuous when the status still says
    // frozen right before our thaw.
    Result failure;
    const auto status = fsfreeze_status(failure);
    if (!status) {
      return failure;
    }
    const auto reply = connection_.execute("guest-fsfreeze-thaw", nullptr);
    if (reply.contains("error")) {
      return from_qga_error(reply, "guest-fsfreeze-thaw");
    }
    const double hold_ms =
        state_.frozen_at
            ? std::chrono::duration<double, std::milli>(Clock::now() - *state_.frozen_at).count()
            : 0.0;
    const bool continuous = *status == "frozen" && state_.frozen_at.has_value();
    auto result = session_body("thawed");
    result["verdict"] = {{"continuous", continuous},
                         {"hold_ms", hold_ms},
                         {"scope", "filesystems"},
                         {"filesystems_thawed", reply["return"]},
                         {"reason", continuous ? json(nullptr)
                                               : json("the filesystems were not frozen any more "
                                                      "before the thaw")}};
    state_.frozen_at.reset();
    return json_result(200, std::move(result));
  }

  Result abort() {
    Result failure;
    const auto status = fsfreeze_status(failure);
    if (!status) {
      return failure;
    }
    if (*status == "frozen") {
      const auto reply = connection_.execute("guest-fsfreeze-thaw", nullptr);
      if (reply.contains("error")) {
        return from_qga_error(reply, "guest-fsfreeze-thaw");
      }
    }
    state_.frozen_at.reset();
    auto result = session_body("aborted");
    state_.session_id.reset();
    return json_result(200, std::move(result));
  }

  QgaConnection& connection_;
  QgaPeerState& state_;
};

}  // namespace

Result qga_request(const Endpoint& endpoint, QgaPeerState& state, std::string_view method,
                   std::string_view path, const std::string* body,
                   std::chrono::milliseconds timeout, std::size_t max_response_bytes) {
  QgaConnection connection(endpoint, Clock::now() + timeout, max_response_bytes);
  connection.connect();
  connection.sync();

  json body_json = nullptr;
  if (body != nullptr && !body->empty()) {
    body_json = json::parse(*body, nullptr, false);
    if (body_json.is_discarded()) {
      throw std::invalid_argument("qga: the request body is not JSON");
    }
  }

  if (state.kind != QgaPeerState::Kind::qemu_guest_agent) {
    json arguments = {{"method", std::string(method)}, {"path", std::string(path)}};
    if (!body_json.is_null()) {
      arguments["body"] = body_json;
    }
    const auto reply = connection.execute("quiesce-api", arguments);
    if (reply.contains("return")) {
      state.kind = QgaPeerState::Kind::quiesce;
      const auto& answer = reply["return"];
      if (!answer.is_object() || !answer.contains("status") ||
          !answer["status"].is_number_unsigned()) {
        throw TransportError(TransportError::Kind::protocol, true,
                             endpoint.to_string() + ": quiesce-api answered without a status: " +
                                 answer.dump().substr(0, 200));
      }
      Result result;
      result.status = answer["status"].get<unsigned>();
      const auto& answer_body = answer.contains("body") ? answer["body"] : json(nullptr);
      // Text routes (/metrics) come back as a JSON string.
      if (answer_body.is_string()) {
        result.raw_body = answer_body.get<std::string>();
        result.body = json::parse(result.raw_body, nullptr, false);
        if (result.body.is_discarded()) {
          result.body = nullptr;
        }
      } else {
        result.body = answer_body;
        result.raw_body = answer_body.is_null() ? std::string() : answer_body.dump();
      }
      if (result.status >= 400) {
        result.error = wire::error_of_response(result.status, result.raw_body);
      }
      return result;
    }
    const auto& error = reply["error"];
    const bool not_found = error.is_object() && error.value("class", "") == "CommandNotFound" &&
                           error.value("desc", "").find("frozen state") == std::string::npos;
    if (!not_found) {
      return from_qga_error(reply, "quiesce-api");
    }
    // A stock qemu-guest-agent: it has no quiesce-api. Say so once per client.
    const auto info = connection.execute("guest-info", nullptr);
    state.kind = QgaPeerState::Kind::qemu_guest_agent;
    if (info.contains("return") && info["return"].is_object()) {
      state.version = info["return"].value("version", "");
    }
  }
  Fallback fallback(connection, state);
  return fallback.run(method, std::string(path), body_json);
}

}  // namespace quiesce::client
