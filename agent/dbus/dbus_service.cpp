#include "agent/dbus/dbus_service.hpp"

#include <fcntl.h>
#include <grp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <vector>

#include "agent/dbus/bus_connection.hpp"
#include "agent/dbus/logind_inhibitor.hpp"
#include "agent/dbus/remote_writer.hpp"
#include "quiesce/wire/errors.hpp"

namespace quiesce::agent::dbus {

namespace {

// Methods that change something run here, so the bus thread stays free for
// properties and Health. The coordinator runs one operation at a time and
// answers a second at once, so a few threads are plenty.
constexpr std::size_t kMethodThreads = 4;
// Calls waiting for a method thread beyond this are refused (a flood from one
// client must not grow memory without bound).
constexpr std::size_t kMaxQueuedCalls = 64;
constexpr std::size_t kMaxSessionIdBytes = 128;
constexpr std::size_t kMaxBodyBytes = 64 * 1024;

constexpr const char* kErrorPrefix = "org.quiesce.Error.";

// Writers registered at run time (RegisterWriter): one client may hold this
// many, all clients together that many. Each costs the agent a worker
// thread and a bus connection, and every one is called in every session.
constexpr std::size_t kMaxWritersPerClient = 16;
constexpr std::size_t kMaxWritersTotal = 64;
constexpr std::size_t kMaxOptionsBytes = 16 * 1024;

std::string errno_text(int negative_errno) { return std::strerror(-negative_errno); }

// A D-Bus error name from an API error code ("session_conflict" ->
// org.quiesce.Error.session_conflict); codes are [a-z_] (docs/api.md).
std::string error_name(const std::string& code) {
  std::string name = kErrorPrefix;
  for (char c : code) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || c == '_';
    name += ok ? c : '_';
  }
  return code.empty() ? name + "failed" : name;
}

bool valid_session_id(const std::string& id) {
  return !id.empty() && id.size() <= kMaxSessionIdBytes &&
         std::all_of(id.begin(), id.end(), [](char c) {
           return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_' || c == '.';
         });
}

}  // namespace

struct DbusService::Impl {
  Impl(Coordinator& coordinator_in, ApiRoutes& routes_in, DbusConfig config_in,
       std::shared_ptr<spdlog::logger> logger_in)
      : coordinator(coordinator_in),
        routes(routes_in),
        config(std::move(config_in)),
        logger(std::move(logger_in)) {}

  ~Impl() {
    if (wake_fd >= 0) {
      close(wake_fd);
    }
    if (inhibit_fd >= 0) {
      close(inhibit_fd);
    }
    if (!platform::libsystemd_loaded()) {
      return;  // libsystemd is missing: no sd-bus object was ever made
    }
    for (auto& registration : registrations) {
      sd().sd_bus_track_unref(registration->track);
    }
    sd().sd_bus_slot_unref(inhibit_call);
    sd().sd_bus_slot_unref(vtable_slot);
    sd().sd_bus_flush_close_unref(bus);
    sd().sd_event_unref(event);
  }

  Coordinator& coordinator;
  ApiRoutes& routes;
  DbusConfig config;
  std::shared_ptr<spdlog::logger> logger;
  std::optional<gid_t> privileged_gid;

  sd_bus* bus = nullptr;
  sd_event* event = nullptr;
  sd_bus_slot* vtable_slot = nullptr;
  int wake_fd = -1;
  std::thread bus_thread;
  // Read by the coordinator's threads: events before start or after stop
  // are dropped.
  std::atomic<bool> running{false};

  // Work for the bus thread, posted from any thread.
  std::mutex posted_mutex;
  std::deque<std::function<void()>> posted;

  // Work for the method threads.
  std::mutex calls_mutex;
  std::condition_variable calls_wake;
  std::deque<std::function<void()>> calls;
  bool stopping = false;
  std::vector<std::thread> method_threads;

  // A writer registered over D-Bus, for as long as its client is on the bus.
  struct Registration {
    Impl* impl = nullptr;
    std::string name;  // as the coordinator knows it
    std::shared_ptr<RemoteWriterLink> link;
    sd_bus_track* track = nullptr;  // tells when link->sender leaves the bus
  };

  // Bus thread only.
  std::vector<std::unique_ptr<Registration>> registrations;
  InhibitorState inhibitor;
  int inhibit_fd = -1;
  sd_bus_slot* inhibit_call = nullptr;
  std::string last_state;
  std::string last_active;
  std::string last_verdict;
  std::string last_writers;

  void connect();
  void post(std::function<void()> work);
  void run_posted();
  bool queue_call(std::function<void()> call);
  void method_thread_loop();

  // Access: root, the agent's own user, or a member of the configured group.
  // The policy file says the same; checking here too keeps a permissive bus
  // (a session bus, a test bus) from letting anyone freeze the guest.
  bool caller_may_change(sd_bus_message* message, std::string& who, sd_bus_error* error);

  // Runs a v1 route; fills a D-Bus reply from its answer.
  api::Response run_route(const std::string& method, const std::string& target,
                          const std::string& body, const std::string& who);
  static void reply_with(sd_bus_message* message, const api::Response& response);
  int route_method(sd_bus_message* message, const std::string& method,
                   const std::string& target, const std::string& body, bool changes,
                   sd_bus_error* error);

  int register_writer(sd_bus_message* message, sd_bus_error* error);
  int unregister_writer(sd_bus_message* message, sd_bus_error* error);
  // The client left the bus: its writers are dropped (a session that froze
  // one still thaws it, and its verdict says the hold broke).
  void drop_registration(Registration* registration, bool client_left);

  nlohmann::json health() const { return coordinator.health(); }
  std::string current_state() const;
  std::string current_active_session() const;
  std::string current_verdict() const;
  nlohmann::json current_writers() const;

  void emit_session_signal(const std::string& id, const std::string& state,
                           const nlohmann::json& verdict);
  void emit_changed_properties();
  void take_inhibitor();
  void release_inhibitor();
  // From the coordinator's thread: the inhibitor and State follow the hold.
  void hold_changed(bool started);
};

void DbusService::Impl::connect() {
  std::string where;
  int r = open_bus(config, &bus, where);
  if (r < 0) {
    throw std::runtime_error("cannot connect to " + where + ": " + errno_text(r));
  }
  r = sd().sd_bus_request_name(bus, kBusName, 0);
  if (r == -EEXIST) {
    throw std::runtime_error(std::string(kBusName) + " is already owned on " + where +
                             " (another agent is running)");
  }
  if (r < 0) {
    throw std::runtime_error("cannot own " + std::string(kBusName) + " on " + where + ": " +
                             errno_text(r) +
                             (r == -EACCES ? " (is the policy file org.quiesce.Agent1.conf "
                                             "installed in dbus-1/system.d?)"
                                           : ""));
  }
}

void DbusService::Impl::post(std::function<void()> work) {
  {
    std::lock_guard lock(posted_mutex);
    posted.push_back(std::move(work));
  }
  const std::uint64_t one = 1;
  // A full counter still wakes the loop; nothing to do about a failed write.
  [[maybe_unused]] auto written = write(wake_fd, &one, sizeof one);
}

void DbusService::Impl::run_posted() {
  std::uint64_t count = 0;
  [[maybe_unused]] auto got = read(wake_fd, &count, sizeof count);
  std::deque<std::function<void()>> batch;
  {
    std::lock_guard lock(posted_mutex);
    batch.swap(posted);
  }
  for (auto& work : batch) {
    work();
  }
}

bool DbusService::Impl::queue_call(std::function<void()> call) {
  {
    std::lock_guard lock(calls_mutex);
    if (stopping || calls.size() >= kMaxQueuedCalls) {
      return false;
    }
    calls.push_back(std::move(call));
  }
  calls_wake.notify_one();
  return true;
}

void DbusService::Impl::method_thread_loop() {
  for (;;) {
    std::function<void()> call;
    {
      std::unique_lock lock(calls_mutex);
      calls_wake.wait(lock, [&] { return stopping || !calls.empty(); });
      if (calls.empty()) {
        return;
      }
      call = std::move(calls.front());
      calls.pop_front();
    }
    call();
  }
}

bool DbusService::Impl::caller_may_change(sd_bus_message* message, std::string& who,
                                          sd_bus_error* error) {
  sd_bus_creds* creds = nullptr;
  // AUGMENT fills what the bus does not tell (the groups) from /proc, which
  // is no disk and safe while frozen.
  int r = sd().sd_bus_query_sender_creds(
      message,
      SD_BUS_CREDS_UID | SD_BUS_CREDS_EUID | SD_BUS_CREDS_GID | SD_BUS_CREDS_EGID |
          SD_BUS_CREDS_SUPPLEMENTARY_GIDS | SD_BUS_CREDS_PID | SD_BUS_CREDS_AUGMENT,
      &creds);
  if (r < 0) {
    sd().sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                           "cannot tell who is calling (%s): only root or members of group '%s' "
                           "may change the agent's state",
                           errno_text(r).c_str(), config.group.c_str());
    return false;
  }
  uid_t uid = static_cast<uid_t>(-1);
  if (sd().sd_bus_creds_get_euid(creds, &uid) < 0) {
    if (sd().sd_bus_creds_get_uid(creds, &uid) < 0) {
      uid = static_cast<uid_t>(-1);
    }
  }
  pid_t pid = 0;
  (void)sd().sd_bus_creds_get_pid(creds, &pid);
  who = "uid " + (uid == static_cast<uid_t>(-1) ? std::string("?") : std::to_string(uid)) +
        " pid " + std::to_string(pid);
  bool allowed = uid == 0 || (uid != static_cast<uid_t>(-1) && uid == geteuid());
  if (!allowed && privileged_gid) {
    gid_t gid = 0;
    if ((sd().sd_bus_creds_get_egid(creds, &gid) >= 0 ||
         sd().sd_bus_creds_get_gid(creds, &gid) >= 0) &&
        gid == *privileged_gid) {
      allowed = true;
    }
    const gid_t* groups = nullptr;
    int count = sd().sd_bus_creds_get_supplementary_gids(creds, &groups);
    for (int i = 0; i < count && !allowed; ++i) {
      allowed = groups[i] == *privileged_gid;
    }
  }
  sd().sd_bus_creds_unref(creds);
  if (!allowed) {
    sd().sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                           "%s may not change the agent's state: only root or members of group "
                           "'%s' may (reading properties is open to all)",
                           who.c_str(), config.group.c_str());
    logger->warn("dbus: refused {} from {}: not root, not in group '{}'",
                 sd().sd_bus_message_get_member(message), who, config.group);
  }
  return allowed;
}

api::Response DbusService::Impl::run_route(const std::string& method, const std::string& target,
                                           const std::string& body, const std::string& who) {
  api::Request request;
  request.method = method;
  request.target = target;
  request.body = body;
  request.peer.transport = api::Transport::dbus;
  request.peer.description = "dbus " + who;
  return routes.handle(request);
}

void DbusService::Impl::reply_with(sd_bus_message* message, const api::Response& response) {
  if (response.status < 400) {
    sd().sd_bus_reply_method_return(message, "s", response.body.c_str());
    return;
  }
  const auto error = wire::error_of_response(response.status, response.body);
  sd().sd_bus_reply_method_errorf(message, error_name(error.code).c_str(), "%s",
                                  error.message.c_str());
}

int DbusService::Impl::route_method(sd_bus_message* message, const std::string& method,
                                    const std::string& target, const std::string& body,
                                    bool changes, sd_bus_error* error) {
  std::string who = "uid ? pid ?";
  if (changes && !caller_may_change(message, who, error)) {
    return -EACCES;
  }
  if (!changes) {
    // Reads take the coordinator's state lock only briefly: answer here.
    reply_with(message, run_route(method, target, body, who));
    return 1;
  }
  // sd-bus reference counts are not atomic: the message is referenced and
  // released on the bus thread only; the method thread just carries it.
  sd_bus_message* pending = sd().sd_bus_message_ref(message);
  const bool queued = queue_call([this, pending, method, target, body, who] {
    auto response = run_route(method, target, body, who);
    logger->info("dbus {}: {} {} -> {}", who, method, target, response.status);
    post([pending, response] {
      reply_with(pending, response);
      sd().sd_bus_message_unref(pending);
    });
  });
  if (!queued) {
    sd().sd_bus_message_unref(pending);
    sd().sd_bus_error_setf(error, SD_BUS_ERROR_LIMITS_EXCEEDED,
                           "too many calls in progress (%zu waiting); try again", kMaxQueuedCalls);
    return -EBUSY;
  }
  return 1;  // answered later, from the bus thread
}

int DbusService::Impl::register_writer(sd_bus_message* message, sd_bus_error* error) {
  const char* path = nullptr;
  const char* level_text = nullptr;
  const char* options_text = nullptr;
  if (int r = sd().sd_bus_message_read(message, "oss", &path, &level_text, &options_text); r < 0) {
    return r;
  }
  std::string who;
  if (!caller_may_change(message, who, error)) {
    return -EACCES;
  }
  const std::string sender = sd().sd_bus_message_get_sender(message) != nullptr
                                 ? sd().sd_bus_message_get_sender(message)
                                 : "";
  auto level = parse_level(level_text);
  if (!level) {
    sd().sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                           "level '%.32s': expected application, database or filesystem",
                           level_text);
    return -EINVAL;
  }
  const std::string options_json = *options_text == '\0' ? "{}" : options_text;
  auto options = nlohmann::json::parse(options_json, nullptr, false);
  if (options_json.size() > kMaxOptionsBytes || !options.is_object()) {
    sd().sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                           "options: expected a JSON object of at most %zu bytes "
                           "({\"name\": ..., \"timeouts_ms\": {...}})",
                           kMaxOptionsBytes);
    return -EINVAL;
  }
  // By default the name comes from the object path: /com/example/Db -> dbus.com.example.Db.
  std::string name = "dbus" + std::string(path);
  std::replace(name.begin(), name.end(), '/', '.');
  std::map<Phase, Millis> timeouts;
  for (const auto& [key, value] : options.items()) {
    if (key == "name" && value.is_string()) {
      name = value.get<std::string>();
    } else if (key == "timeouts_ms") {
      try {
        timeouts = parse_writer_timeouts(value, "options.timeouts_ms");
      } catch (const std::exception& e) {
        sd().sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "%s", e.what());
        return -EINVAL;
      }
    } else {
      sd().sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                             "options.%.64s: unknown (expected name, a string, and timeouts_ms)",
                             key.c_str());
      return -EINVAL;
    }
  }
  if (!valid_writer_name(name)) {
    sd().sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                           "writer name '%.80s': must be 1-64 letters, digits, '_', '.', '-' (give "
                           "options.name when the object path is long)",
                           name.c_str());
    return -EINVAL;
  }
  std::size_t from_sender = 0;
  for (const auto& registration : registrations) {
    if (registration->link->sender == sender) {
      if (registration->link->path == path) {
        sd().sd_bus_error_setf(error, "org.quiesce.Error.writer_exists",
                               "%s is already registered by this connection (as '%s')", path,
                               registration->name.c_str());
        return -EEXIST;
      }
      ++from_sender;
    }
  }
  if (from_sender >= kMaxWritersPerClient || registrations.size() >= kMaxWritersTotal) {
    sd().sd_bus_error_setf(error, SD_BUS_ERROR_LIMITS_EXCEEDED,
                           "too many writers registered: at most %zu per connection and %zu in all "
                           "(this connection has %zu, all have %zu)",
                           kMaxWritersPerClient, kMaxWritersTotal, from_sender,
                           registrations.size());
    return -EBUSY;
  }

  auto registration = std::make_unique<Registration>();
  registration->impl = this;
  registration->name = name;
  registration->link = std::make_shared<RemoteWriterLink>();
  registration->link->sender = sender;
  registration->link->path = path;
  auto on_gone = [](sd_bus_track* /*track*/, void* userdata) -> int {
    // Null once dropped: sd-bus may look at a track again before freeing it.
    if (auto* gone = static_cast<Registration*>(userdata)) {
      gone->impl->drop_registration(gone, true);
    }
    return 0;
  };
  int r = sd().sd_bus_track_new(bus, &registration->track, on_gone, registration.get());
  if (r >= 0) {
    r = sd().sd_bus_track_add_sender(registration->track, message);
  }
  if (r < 0) {
    sd().sd_bus_track_unref(registration->track);
    sd().sd_bus_error_setf(error, SD_BUS_ERROR_FAILED, "cannot watch %s on the bus: %s",
                           sender.c_str(), errno_text(r).c_str());
    return r;
  }
  ConfiguredWriter configured;
  configured.spec.type = "dbus";
  configured.spec.name = name;
  configured.spec.level = *level;
  configured.spec.options = options;
  configured.writer = std::make_unique<RemoteWriter>(config, registration->link);
  configured.timeout_overrides = timeouts;
  auto added = coordinator.add_writer(std::move(configured));
  if (!added.ok()) {
    sd().sd_bus_track_unref(registration->track);
    sd().sd_bus_error_set(error, error_name(added.error().code).c_str(),
                          added.error().message.c_str());
    return -EEXIST;
  }
  logger->info("dbus: {} ({}) registered writer '{}' at {}, level {}", sender, who, name, path,
               level_text);
  registrations.push_back(std::move(registration));
  emit_changed_properties();
  return sd().sd_bus_reply_method_return(message, "s", name.c_str());
}

int DbusService::Impl::unregister_writer(sd_bus_message* message, sd_bus_error* error) {
  const char* path = nullptr;
  if (int r = sd().sd_bus_message_read(message, "o", &path); r < 0) {
    return r;
  }
  std::string who;
  if (!caller_may_change(message, who, error)) {
    return -EACCES;
  }
  const char* sender = sd().sd_bus_message_get_sender(message);
  auto it = std::find_if(registrations.begin(), registrations.end(), [&](const auto& entry) {
    return sender != nullptr && entry->link->sender == sender && entry->link->path == path;
  });
  if (it == registrations.end()) {
    sd().sd_bus_error_setf(error, "org.quiesce.Error.unknown_writer",
                           "%s is not registered by this connection", path);
    return -ENOENT;
  }
  const std::string name = (*it)->name;
  drop_registration(it->get(), false);
  return sd().sd_bus_reply_method_return(message, "s", name.c_str());
}

void DbusService::Impl::drop_registration(Registration* registration, bool client_left) {
  auto it = std::find_if(registrations.begin(), registrations.end(),
                         [&](const auto& entry) { return entry.get() == registration; });
  if (it == registrations.end()) {
    return;
  }
  auto owned = std::move(*it);
  registrations.erase(it);
  // A writer that unregistered is still there for a session that holds it.
  owned->link->vanished = client_left;
  logger->info("dbus: writer '{}' ({} at {}) dropped: {}", owned->name, owned->link->sender,
               owned->link->path, client_left ? "its bus name left the bus" : "it unregistered");
  (void)coordinator.remove_writer(owned->name);
  // Not from inside its own handler's stack frame: sd-bus holds a reference
  // while it calls the handler, so the unref here only drops ours.
  sd().sd_bus_track_set_userdata(owned->track, nullptr);
  sd().sd_bus_track_unref(owned->track);
  emit_changed_properties();
}

std::string DbusService::Impl::current_state() const {
  return coordinator.health().value("state", "idle");
}

std::string DbusService::Impl::current_active_session() const {
  auto session = coordinator.health()["session"];
  return session.is_string() ? session.get<std::string>() : std::string();
}

std::string DbusService::Impl::current_verdict() const {
  // The newest session that has thawed carries the last verdict.
  auto sessions = coordinator.list_sessions()["sessions"];
  for (auto it = sessions.rbegin(); it != sessions.rend(); ++it) {
    if (it->contains("verdict") && !(*it)["verdict"].is_null()) {
      return (*it)["verdict"].dump();
    }
  }
  return {};
}

nlohmann::json DbusService::Impl::current_writers() const {
  return coordinator.writers_status()["writers"];
}

namespace {

DbusService::Impl& impl_of(void* userdata) { return *static_cast<DbusService::Impl*>(userdata); }

int get_state(sd_bus* /*bus*/, const char* /*path*/, const char* /*interface*/,
              const char* /*property*/, sd_bus_message* reply, void* userdata,
              sd_bus_error* /*error*/) {
  return sd().sd_bus_message_append(reply, "s", impl_of(userdata).current_state().c_str());
}

int get_active_session(sd_bus* /*bus*/, const char* /*path*/, const char* /*interface*/,
                       const char* /*property*/, sd_bus_message* reply, void* userdata,
                       sd_bus_error* /*error*/) {
  return sd().sd_bus_message_append(reply, "s", impl_of(userdata).current_active_session().c_str());
}

int get_last_verdict(sd_bus* /*bus*/, const char* /*path*/, const char* /*interface*/,
                     const char* /*property*/, sd_bus_message* reply, void* userdata,
                     sd_bus_error* /*error*/) {
  return sd().sd_bus_message_append(reply, "s", impl_of(userdata).current_verdict().c_str());
}

// a(sss): name, level, state of each writer.
int get_writers(sd_bus* /*bus*/, const char* /*path*/, const char* /*interface*/,
                const char* /*property*/, sd_bus_message* reply, void* userdata,
                sd_bus_error* /*error*/) {
  int r = sd().sd_bus_message_open_container(reply, 'a', "(sss)");
  if (r < 0) {
    return r;
  }
  for (const auto& writer : impl_of(userdata).current_writers()) {
    r = sd().sd_bus_message_append(reply, "(sss)", writer.value("name", "").c_str(),
                                   writer.value("level", "").c_str(),
                                   writer.value("state", "").c_str());
    if (r < 0) {
      return r;
    }
  }
  return sd().sd_bus_message_close_container(reply);
}

// Reads one string argument; a missing or wrong one is InvalidArgs.
int read_string(sd_bus_message* message, std::string& out) {
  const char* text = nullptr;
  int r = sd().sd_bus_message_read(message, "s", &text);
  if (r >= 0) {
    out = text;
  }
  return r;
}

int checked_session_id(sd_bus_message* message, std::string& id, sd_bus_error* error) {
  int r = read_string(message, id);
  if (r < 0) {
    return r;
  }
  if (!valid_session_id(id)) {
    sd().sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                           "'%.64s' is not a session id (letters, digits, '-', '_', '.'; at most "
                           "%zu bytes)",
                           id.c_str(), kMaxSessionIdBytes);
    return -EINVAL;
  }
  return 0;
}

int method_health(sd_bus_message* message, void* userdata, sd_bus_error* error) {
  return impl_of(userdata).route_method(message, "GET", "/v1/health", "", false, error);
}

int method_list_writers(sd_bus_message* message, void* userdata, sd_bus_error* error) {
  return impl_of(userdata).route_method(message, "GET", "/v1/writers", "", false, error);
}

int method_get_session(sd_bus_message* message, void* userdata, sd_bus_error* error) {
  std::string id;
  if (int r = checked_session_id(message, id, error); r < 0) {
    return r;
  }
  return impl_of(userdata).route_method(message, "GET", "/v1/sessions/" + id, "", false, error);
}

int method_create_session(sd_bus_message* message, void* userdata, sd_bus_error* error) {
  std::string body;
  if (int r = read_string(message, body); r < 0) {
    return r;
  }
  if (body.size() > kMaxBodyBytes) {
    sd().sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                           "the request is larger than %zu bytes", kMaxBodyBytes);
    return -EINVAL;
  }
  return impl_of(userdata).route_method(message, "POST", "/v1/sessions",
                                        body.empty() ? "{}" : body, true, error);
}

int session_action(sd_bus_message* message, void* userdata, sd_bus_error* error,
                   const char* http_method, const char* suffix) {
  std::string id;
  if (int r = checked_session_id(message, id, error); r < 0) {
    return r;
  }
  return impl_of(userdata).route_method(message, http_method, "/v1/sessions/" + id + suffix, "",
                                        true, error);
}

int method_freeze(sd_bus_message* message, void* userdata, sd_bus_error* error) {
  return session_action(message, userdata, error, "POST", "/freeze");
}

int method_thaw(sd_bus_message* message, void* userdata, sd_bus_error* error) {
  return session_action(message, userdata, error, "POST", "/thaw");
}

int method_abort(sd_bus_message* message, void* userdata, sd_bus_error* error) {
  return session_action(message, userdata, error, "DELETE", "");
}

int method_complete(sd_bus_message* message, void* userdata, sd_bus_error* error) {
  std::string id;
  if (int r = checked_session_id(message, id, error); r < 0) {
    return r;
  }
  std::string snapshot_id;
  if (int r = read_string(message, snapshot_id); r < 0) {
    return r;
  }
  nlohmann::json body = {{"snapshot_id", snapshot_id}};
  return impl_of(userdata).route_method(message, "POST", "/v1/sessions/" + id + "/complete",
                                        body.dump(), true, error);
}

int method_register_writer(sd_bus_message* message, void* userdata, sd_bus_error* error) {
  return impl_of(userdata).register_writer(message, error);
}

int method_unregister_writer(sd_bus_message* message, void* userdata, sd_bus_error* error) {
  return impl_of(userdata).unregister_writer(message, error);
}

// Every method is UNPRIVILEGED for sd-bus's own check (which would demand
// CAP_SYS_ADMIN and so shut out the `quiesce` group): the agent decides.
constexpr auto kOpen = SD_BUS_VTABLE_UNPRIVILEGED;

// SD_BUS_VTABLE_START(0), but for the address of libsystemd's
// sd_bus_object_vtable_format, which the macro takes at link time and which
// start() puts in once the library is loaded (it is not linked).
constexpr sd_bus_vtable vtable_start_unlinked() {
  sd_bus_vtable start{};
  start.type = _SD_BUS_VTABLE_START;
  start.flags = 0;
  start.x.start.element_size = sizeof(sd_bus_vtable);
  start.x.start.features = _SD_BUS_VTABLE_PARAM_NAMES;
  start.x.start.vtable_format_reference = nullptr;
  return start;
}

sd_bus_vtable kAgentVtable[] = {
    vtable_start_unlinked(),
    SD_BUS_PROPERTY("State", "s", get_state, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("ActiveSession", "s", get_active_session, 0,
                    SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("LastVerdict", "s", get_last_verdict, 0,
                    SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("Writers", "a(sss)", get_writers, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_METHOD_WITH_NAMES("Health", "", , "s", SD_BUS_PARAM(health), method_health, kOpen),
    SD_BUS_METHOD_WITH_NAMES("ListWriters", "", , "s", SD_BUS_PARAM(writers),
                             method_list_writers, kOpen),
    SD_BUS_METHOD_WITH_NAMES("GetSession", "s", SD_BUS_PARAM(session), "s", SD_BUS_PARAM(status),
                             method_get_session, kOpen),
    SD_BUS_METHOD_WITH_NAMES("CreateSession", "s", SD_BUS_PARAM(request), "s",
                             SD_BUS_PARAM(status), method_create_session, kOpen),
    SD_BUS_METHOD_WITH_NAMES("Freeze", "s", SD_BUS_PARAM(session), "s", SD_BUS_PARAM(status),
                             method_freeze, kOpen),
    SD_BUS_METHOD_WITH_NAMES("Thaw", "s", SD_BUS_PARAM(session), "s", SD_BUS_PARAM(status),
                             method_thaw, kOpen),
    SD_BUS_METHOD_WITH_NAMES("Complete", "ss", SD_BUS_PARAM(session) SD_BUS_PARAM(snapshot_id),
                             "s", SD_BUS_PARAM(status), method_complete, kOpen),
    SD_BUS_METHOD_WITH_NAMES("Abort", "s", SD_BUS_PARAM(session), "s", SD_BUS_PARAM(status),
                             method_abort, kOpen),
    SD_BUS_METHOD_WITH_NAMES("RegisterWriter", "oss",
                             SD_BUS_PARAM(path) SD_BUS_PARAM(level) SD_BUS_PARAM(options), "s",
                             SD_BUS_PARAM(name), method_register_writer, kOpen),
    SD_BUS_METHOD_WITH_NAMES("UnregisterWriter", "o", SD_BUS_PARAM(path), "s",
                             SD_BUS_PARAM(name), method_unregister_writer, kOpen),
    SD_BUS_SIGNAL_WITH_NAMES("SessionCreated", "s", SD_BUS_PARAM(session), 0),
    SD_BUS_SIGNAL_WITH_NAMES("Frozen", "s", SD_BUS_PARAM(session), 0),
    SD_BUS_SIGNAL_WITH_NAMES("Thawed", "sbs",
                             SD_BUS_PARAM(session) SD_BUS_PARAM(continuous) SD_BUS_PARAM(verdict),
                             0),
    SD_BUS_SIGNAL_WITH_NAMES("Completed", "s", SD_BUS_PARAM(session), 0),
    SD_BUS_SIGNAL_WITH_NAMES("Aborted", "ss", SD_BUS_PARAM(session) SD_BUS_PARAM(state), 0),
    SD_BUS_VTABLE_END};

int on_wake(sd_event_source* /*source*/, int /*fd*/, uint32_t /*events*/, void* userdata) {
  impl_of(userdata).run_posted();
  return 0;
}

}  // namespace

void DbusService::Impl::emit_session_signal(const std::string& id, const std::string& state,
                                            const nlohmann::json& verdict) {
  int r = 0;
  if (state == "prepared") {
    r = sd().sd_bus_emit_signal(bus, kObjectPath, kInterface, "SessionCreated", "s", id.c_str());
  } else if (state == "frozen") {
    r = sd().sd_bus_emit_signal(bus, kObjectPath, kInterface, "Frozen", "s", id.c_str());
  } else if (state == "thawed") {
    const bool continuous = verdict.is_object() && verdict.value("continuous", false);
    r = sd().sd_bus_emit_signal(bus, kObjectPath, kInterface, "Thawed", "sbs", id.c_str(),
                                static_cast<int>(continuous), verdict.dump().c_str());
  } else if (state == "completed") {
    r = sd().sd_bus_emit_signal(bus, kObjectPath, kInterface, "Completed", "s", id.c_str());
  } else {
    // aborted, failed, expired: the session ended without completing.
    r = sd().sd_bus_emit_signal(bus, kObjectPath, kInterface, "Aborted", "ss", id.c_str(),
                                state.c_str());
  }
  if (r < 0) {
    logger->warn("dbus: cannot emit the signal for session {} {}: {}", id, state, errno_text(r));
  }
}

void DbusService::Impl::emit_changed_properties() {
  std::vector<const char*> changed;
  auto check = [&changed](std::string now, std::string& last, const char* name) {
    if (now != last) {
      last = std::move(now);
      changed.push_back(name);
    }
  };
  check(current_state(), last_state, "State");
  check(current_active_session(), last_active, "ActiveSession");
  check(current_verdict(), last_verdict, "LastVerdict");
  check(current_writers().dump(), last_writers, "Writers");
  if (changed.empty()) {
    return;
  }
  changed.push_back(nullptr);
  int r = sd().sd_bus_emit_properties_changed_strv(bus, kObjectPath, kInterface,
                                                   const_cast<char**>(changed.data()));
  if (r < 0) {
    logger->warn("dbus: cannot emit PropertiesChanged: {}", errno_text(r));
  }
}

void DbusService::Impl::take_inhibitor() {
  auto on_reply = [](sd_bus_message* reply, void* userdata, sd_bus_error* /*error*/) -> int {
    auto& self = impl_of(userdata);
    self.inhibit_call = sd().sd_bus_slot_unref(self.inhibit_call);
    if (const sd_bus_error* failure = sd().sd_bus_message_get_error(reply)) {
      self.inhibitor.refused();
      // No logind (a container, a guest without systemd): nothing to delay.
      self.logger->debug("dbus: no logind inhibitor while frozen: {}",
                         failure->message != nullptr ? failure->message : failure->name);
      return 0;
    }
    int fd = -1;
    if (sd().sd_bus_message_read(reply, "h", &fd) < 0 || fd < 0) {
      self.inhibitor.refused();
      self.logger->debug("dbus: logind answered Inhibit without a descriptor");
      return 0;
    }
    // The descriptor belongs to the message: keep a copy of our own.
    int owned = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (owned < 0) {
      self.inhibitor.refused();
      return 0;
    }
    if (self.inhibitor.granted() == InhibitorState::Action::release) {
      close(owned);
      return 0;
    }
    self.inhibit_fd = owned;
    self.logger->debug("dbus: holding a logind delay inhibitor for sleep and shutdown");
    return 0;
  };
  int r = sd().sd_bus_call_method_async(
      bus, &inhibit_call, "org.freedesktop.login1", "/org/freedesktop/login1",
      "org.freedesktop.login1.Manager", "Inhibit", on_reply, this, "ssss", "sleep:shutdown",
      "quiesce-agent", "filesystems are frozen for a snapshot; the thaw comes within seconds",
      "delay");
  if (r < 0) {
    inhibitor.refused();
    logger->debug("dbus: cannot ask logind for an inhibitor: {}", errno_text(r));
  }
}

void DbusService::Impl::release_inhibitor() {
  if (inhibit_fd >= 0) {
    close(inhibit_fd);
    inhibit_fd = -1;
    logger->debug("dbus: released the logind inhibitor");
  }
}

void DbusService::Impl::hold_changed(bool started) {
  if (!running) {
    return;
  }
  post([this, started] {
    if (config.logind_inhibit) {
      const auto action = started ? inhibitor.hold_started() : inhibitor.hold_ended();
      if (action == InhibitorState::Action::request) {
        take_inhibitor();
      } else if (action == InhibitorState::Action::release) {
        release_inhibitor();
      }
    }
    emit_changed_properties();
  });
}

DbusService::DbusService(Coordinator& coordinator, ApiRoutes& routes, DbusConfig config,
                         std::shared_ptr<spdlog::logger> logger)
    : impl_(std::make_unique<Impl>(coordinator, routes, std::move(config), std::move(logger))) {}

DbusService::~DbusService() { stop(); }

void DbusService::start() {
  auto& impl = *impl_;
  // Looked up now, not per call: /etc/group is on a disk that may be frozen.
  if (struct group* entry = getgrnam(impl.config.group.c_str())) {
    impl.privileged_gid = entry->gr_gid;
  } else {
    impl.logger->info("dbus: group '{}' does not exist: only root may change the agent's state",
                      impl.config.group);
  }
  impl.connect();  // loads libsystemd
  kAgentVtable[0].x.start.vtable_format_reference = sd().sd_bus_object_vtable_format;
  int r = sd().sd_bus_add_object_vtable(impl.bus, &impl.vtable_slot, kObjectPath, kInterface,
                                        kAgentVtable, &impl);
  if (r < 0) {
    throw std::runtime_error("cannot export " + std::string(kObjectPath) + ": " + errno_text(r));
  }
  impl.wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (impl.wake_fd < 0) {
    throw std::runtime_error("eventfd: " + std::string(std::strerror(errno)));
  }
  r = sd().sd_event_new(&impl.event);
  if (r >= 0) {
    r = sd().sd_event_add_io(impl.event, nullptr, impl.wake_fd, EPOLLIN, on_wake, &impl);
  }
  if (r >= 0) {
    r = sd().sd_bus_attach_event(impl.bus, impl.event, SD_EVENT_PRIORITY_NORMAL);
  }
  if (r < 0) {
    throw std::runtime_error("cannot set up the D-Bus event loop: " + errno_text(r));
  }
  impl.last_state = impl.current_state();
  impl.last_active = impl.current_active_session();
  impl.last_verdict = impl.current_verdict();
  impl.last_writers = impl.current_writers().dump();
  for (std::size_t i = 0; i < kMethodThreads; ++i) {
    impl.method_threads.emplace_back([&impl] { impl.method_thread_loop(); });
  }
  impl.bus_thread = std::thread([&impl] {
    int loop = sd().sd_event_loop(impl.event);
    if (loop < 0) {
      impl.logger->error("dbus: the event loop stopped: {}", errno_text(loop));
    }
  });
  impl.running = true;
  impl.logger->info("dbus: {} on {}", kBusName,
                    impl.config.bus == "address" ? impl.config.address : impl.config.bus + " bus");
}

void DbusService::stop() {
  auto& impl = *impl_;
  impl.running = false;
  {
    std::lock_guard lock(impl.calls_mutex);
    impl.stopping = true;
  }
  impl.calls_wake.notify_all();
  for (auto& thread : impl.method_threads) {
    thread.join();
  }
  impl.method_threads.clear();
  if (impl.bus_thread.joinable()) {
    impl.post([&impl] { sd().sd_event_exit(impl.event, 0); });
    impl.bus_thread.join();
  }
}

void DbusService::hold_started() { impl_->hold_changed(true); }

void DbusService::hold_ended() { impl_->hold_changed(false); }

void DbusService::session_changed(const std::string& session_id, const std::string& state,
                                  const nlohmann::json& verdict) {
  if (!impl_->running) {
    return;
  }
  impl_->post([&impl = *impl_, session_id, state, verdict] {
    impl.emit_session_signal(session_id, state, verdict);
    impl.emit_changed_properties();
  });
}

}  // namespace quiesce::agent::dbus
