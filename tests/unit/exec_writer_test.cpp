// The exec writer with real child processes: the shipped Python example
// through a whole session, and a scripted child that misbehaves on request
// (killed mid-freeze, garbage, a missed deadline, a bad hello) to prove each
// failure gets the right error class and the child is started afresh.
#include <doctest/doctest.h>
#include <spdlog/logger.h>
#include <spdlog/sinks/ostream_sink.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include "quiesce/json_fields.hpp"
#include "quiesce/writer_registry.hpp"
#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"
#include "writers/exec/exec_writer.hpp"

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using quiesce::Clock;
using quiesce::ErrorClass;
using quiesce::PhaseContext;
using quiesce::Writer;

namespace {

const char* const python = "/usr/bin/python3";

std::string example_writer() {
  return std::string(QUIESCE_SOURCE_DIR) + "/writers/examples/exec-python/quiesce_example_writer.py";
}

// A child that behaves until told otherwise by FAULT: bad_hello, deep_hello,
// wrong_major, garbage_freeze, hang_freeze (ignores SIGTERM too),
// slow_freeze (writes its pid to PID_FILE, then sleeps), thaw_twice_fails.
// Every request's phase goes to CALLS, one per line, with the pid.
constexpr const char* scripted_child = R"PY(
import json, os, signal, sys, time
fault = os.environ.get("FAULT", "")
calls = os.environ.get("CALLS")
def note(text):
    if calls:
        with open(calls, "a") as f:
            f.write("%d %s\n" % (os.getpid(), text))
def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n"); sys.stdout.flush()
print("env EXAMPLE_VAR=%s PATH=%s NAME=%s HOME=%s" % (os.environ.get("EXAMPLE_VAR"),
      os.environ.get("PATH"), os.environ.get("QUIESCE_WRITER_NAME"), os.environ.get("HOME")),
      file=sys.stderr, flush=True)
if fault == "bad_hello":
    print("hello there", flush=True)
elif fault == "deep_hello":
    print("[" * 500000, flush=True)
elif fault == "wrong_major":
    send({"quiesce_exec": 2, "name": "future", "capabilities": ["freeze", "thaw"]})
else:
    send({"quiesce_exec": 1, "name": "scripted", "capabilities":
          ["identify", "prepare", "freeze", "thaw", "post_snapshot", "abort", "post_restore"]})
thaws = 0
for line in sys.stdin:
    req = json.loads(line)
    phase = req["phase"]
    note(phase)
    print("got %s deadline_ms=%s" % (phase, req.get("deadline_ms")), file=sys.stderr, flush=True)
    reply = {"id": req["id"], "ok": True}
    if phase == "freeze":
        thaws = 0
        if fault == "garbage_freeze":
            print("this is not json", flush=True); continue
        if fault == "hang_freeze":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(3600)
        if fault == "slow_freeze":
            with open(os.environ["PID_FILE"], "w") as f:
                f.write(str(os.getpid()))
            time.sleep(3600)
    if phase == "thaw":
        thaws += 1
        if fault == "thaw_twice_fails" and thaws > 1:
            reply = {"id": req["id"], "ok": False,
                     "error": {"class": "non_retryable", "message": "not frozen"}}
        else:
            reply["hold_continuous"] = True
    if phase == "identify":
        reply["identity"] = {"components": [{"kind": "test", "name": "scripted"}],
                             "metadata": {"pid": os.getpid()}}
    if phase == "post_snapshot":
        reply["artifacts"] = {"snapshot": req.get("snapshot_id")}
    if phase == "prepare" and fault == "prepare_retryable":
        reply = {"id": req["id"], "ok": False,
                 "error": {"class": "retryable", "message": "busy, try later"}}
    send(reply)
)PY";

class ExecFixture {
 public:
  ExecFixture() {
    std::ofstream(script_path()) << scripted_child;
    logger_ = std::make_shared<spdlog::logger>(
        "exec-test", std::make_shared<spdlog::sinks::ostream_sink_mt>(log_));
    logger_->set_level(spdlog::level::trace);
    logger_->set_pattern("%l %v");
    quiesce::writers::register_exec_writer(registry_);
  }

  [[nodiscard]] fs::path script_path() const { return tmp_ / "scripted.py"; }
  [[nodiscard]] fs::path calls_path() const { return tmp_ / "calls.log"; }
  [[nodiscard]] fs::path path(const std::string& name) const { return tmp_ / name; }

  std::unique_ptr<Writer> make(nlohmann::json options) {
    quiesce::WriterSpec spec{"exec", "ext", quiesce::Level::application, std::move(options)};
    return registry_.find("exec")->create(spec, quiesce::WriterEnvironment{logger_, "", ""});
  }

  // The scripted child with FAULT (and more environment) set.
  std::unique_ptr<Writer> scripted(const std::string& fault, nlohmann::json env = {}) {
    if (!env.is_object()) {
      env = nlohmann::json::object();
    }
    env["FAULT"] = fault;
    env["CALLS"] = calls_path().string();
    return make({{"command", {python, script_path().string()}},
                 {"env", env},
                 {"restart_backoff_ms", 0}});
  }

  [[nodiscard]] std::string log() const { return log_.str(); }
  [[nodiscard]] std::string calls() const {
    std::ifstream in(calls_path());
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }

 private:
  quiesce::test::TempDir tmp_{"exec-writer"};
  std::ostringstream log_;
  std::shared_ptr<spdlog::logger> logger_;
  quiesce::WriterRegistry registry_;
};

PhaseContext context(std::chrono::milliseconds timeout = 10s, std::stop_token stop = {}) {
  return PhaseContext{"session-1", Clock::now() + timeout, Clock::now() + 60s, std::move(stop)};
}

int child_pid(Writer& writer) {
  quiesce::Identity identity;
  auto status = writer.identify(context(), identity);
  REQUIRE(status.is_ok());
  return identity.metadata["exec"]["pid"].get<int>();
}

// Dead: gone, or a zombie nobody has reaped yet (the writer reaps at its next call).
bool dead(int pid) {
  if (::kill(pid, 0) != 0) {
    return true;
  }
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  auto paren = text.rfind(')');
  return paren != std::string::npos && paren + 2 < text.size() && text[paren + 2] == 'Z';
}

// flock(2) from another open file: fails while the writer holds the lock.
bool lock_is_free(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  REQUIRE(fd >= 0);
  bool free = ::flock(fd, LOCK_EX | LOCK_NB) == 0;
  ::close(fd);
  return free;
}

}  // namespace

TEST_CASE("exec writer: a full session with the Python example holds its lock from freeze to thaw") {
  ExecFixture f;
  const auto lock = f.path("app.lock");
  auto writer = f.make({{"command", {python, example_writer()}},
                        {"env", {{"QUIESCE_EXAMPLE_LOCK_FILE", lock.string()}}}});
  quiesce::Identity identity;
  REQUIRE(writer->identify(context(), identity).is_ok());
  CHECK(identity.components.size() == 1);
  CHECK(identity.components[0]["path"] == lock.string());
  CHECK(identity.metadata["exec"]["name"] == "example-python");
  CHECK(identity.metadata["exec"]["protocol"] == 1);

  REQUIRE(writer->prepare(context()).is_ok());
  CHECK(fs::exists(lock));
  CHECK(lock_is_free(lock));
  REQUIRE(writer->freeze(context()).is_ok());
  CHECK_FALSE(lock_is_free(lock));  // applications taking the lock now wait
  quiesce::HoldReport hold;
  REQUIRE(writer->thaw(context(), hold).is_ok());
  CHECK(hold.continuous);
  CHECK(lock_is_free(lock));
  nlohmann::json artifacts;
  REQUIRE(writer->post_snapshot(context(), quiesce::SnapshotInfo{"snap-7"}, artifacts).is_ok());
  CHECK(artifacts["lock_file"] == lock.string());
  CHECK(artifacts["snapshot_id"] == "snap-7");
  CHECK(artifacts["held_ms"].is_number_integer());
  REQUIRE(writer->post_restore(context(), quiesce::RestoreInfo{"cp-1", "old"}).is_ok());
  // Its stderr reached the agent log, attributed to the writer.
  CHECK(f.log().find("exec writer 'ext' (pid") != std::string::npos);
  CHECK(f.log().find("freeze: holding") != std::string::npos);
}

TEST_CASE("exec writer: a child killed mid-freeze fails freeze non_retryable - the next call restarts it") {
  ExecFixture f;
  auto writer = f.scripted("slow_freeze", {{"PID_FILE", f.path("pid").string()}});
  const int first_pid = child_pid(*writer);
  REQUIRE(writer->prepare(context()).is_ok());

  std::thread killer([&] {
    REQUIRE(quiesce::test::eventually(5s, [&] { return fs::exists(f.path("pid")); }));
    ::kill(first_pid, SIGKILL);
  });
  auto status = writer->freeze(context());
  killer.join();
  REQUIRE_FALSE(status.is_ok());
  CHECK(status.error().error_class == ErrorClass::non_retryable);
  CHECK(status.error().message.find("writer process was killed by signal 9") != std::string::npos);
  CHECK(status.error().message.find("during freeze") != std::string::npos);

  // The coordinator aborts next: a fresh child (fresh hello) takes it.
  REQUIRE(writer->abort(context()).is_ok());
  const int second_pid = child_pid(*writer);
  CHECK(second_pid != first_pid);
  CHECK(f.calls().find(std::to_string(second_pid) + " abort") != std::string::npos);
}

TEST_CASE("exec writer: a child that dies while holding breaks the hold - thaw says so") {
  ExecFixture f;
  auto writer = f.scripted("");
  const int pid = child_pid(*writer);
  REQUIRE(writer->prepare(context()).is_ok());
  REQUIRE(writer->freeze(context()).is_ok());
  ::kill(pid, SIGKILL);
  REQUIRE(quiesce::test::eventually(5s, [&] { return dead(pid); }));
  quiesce::HoldReport hold;
  REQUIRE(writer->thaw(context(), hold).is_ok());
  CHECK_FALSE(hold.continuous);
  CHECK(hold.detail.find("while holding") != std::string::npos);
  // No fresh child was started just to be told to thaw.
  CHECK(f.calls().find("thaw") == std::string::npos);
  // The next session works with a new child and keeps its hold.
  REQUIRE(writer->prepare(context()).is_ok());
  REQUIRE(writer->freeze(context()).is_ok());
  quiesce::HoldReport next;
  REQUIRE(writer->thaw(context(), next).is_ok());
  CHECK(next.continuous);
}

TEST_CASE("exec writer: garbage on stdout is a protocol error and the child is replaced") {
  ExecFixture f;
  auto writer = f.scripted("garbage_freeze");
  const int pid = child_pid(*writer);
  auto status = writer->freeze(context());
  REQUIRE_FALSE(status.is_ok());
  CHECK(status.error().error_class == ErrorClass::non_retryable);
  CHECK(status.error().message.find("protocol error") != std::string::npos);
  CHECK(status.error().message.find("this is not json") != std::string::npos);
  CHECK(::kill(pid, 0) != 0);  // killed: its state is unknown
  REQUIRE(writer->abort(context()).is_ok());
  CHECK(child_pid(*writer) != pid);
}

TEST_CASE("exec writer: a missed deadline is a timeout and the child is killed, even one ignoring SIGTERM") {
  ExecFixture f;
  auto writer = f.scripted("hang_freeze");
  const int pid = child_pid(*writer);
  const auto start = Clock::now();
  auto status = writer->freeze(context(300ms));
  const auto took = Clock::now() - start;
  REQUIRE_FALSE(status.is_ok());
  CHECK(status.error().error_class == ErrorClass::timeout);
  CHECK(status.error().message.find("no reply to freeze") != std::string::npos);
  CHECK(took < 3s);
  CHECK(::kill(pid, 0) != 0);
  // The stop token is honoured the same way.
  std::stop_source stop;
  std::thread stopper([&] {
    std::this_thread::sleep_for(200ms);
    stop.request_stop();
  });
  auto stopped = writer->freeze(context(30s, stop.get_token()));
  stopper.join();
  REQUIRE_FALSE(stopped.is_ok());
  CHECK(stopped.error().error_class == ErrorClass::timeout);
  CHECK(stopped.error().message.find("stop requested") != std::string::npos);
}

TEST_CASE("exec writer: a bad hello or a wrong protocol major is refused clearly") {
  ExecFixture f;
  SUBCASE("not JSON") {
    auto writer = f.scripted("bad_hello");
    quiesce::Identity identity;
    auto status = writer->identify(context(), identity);
    REQUIRE_FALSE(status.is_ok());
    CHECK(status.error().error_class == ErrorClass::non_retryable);
    CHECK(status.error().message.find("protocol error: the hello is not a JSON object: 'hello there'") !=
          std::string::npos);
  }
  SUBCASE("nested 500000 deep (under the 1 MiB line limit)") {
    // The recursive JSON parser overflowed the agent's stack on this; the
    // depth is now checked before parsing.
    auto writer = f.scripted("deep_hello");
    quiesce::Identity identity;
    auto status = writer->identify(context(), identity);
    REQUIRE_FALSE(status.is_ok());
    CHECK(status.error().message.find("protocol error: the hello is not a JSON object") != std::string::npos);
  }
  SUBCASE("wrong major") {
    auto writer = f.scripted("wrong_major");
    auto status = writer->prepare(context());
    REQUIRE_FALSE(status.is_ok());
    CHECK(status.error().error_class == ErrorClass::non_retryable);
    CHECK(status.error().message.find("speaks quiesce_exec 2, this agent speaks 1") !=
          std::string::npos);
  }
  SUBCASE("a program that cannot start") {
    auto writer = f.make({{"command", {f.path("missing").string()}}});
    auto status = writer->prepare(context());
    REQUIRE_FALSE(status.is_ok());
    CHECK(status.error().message.find("cannot start the writer process") != std::string::npos);
  }
}

TEST_CASE("exec writer: an error reply keeps its class - the child keeps running") {
  ExecFixture f;
  auto writer = f.scripted("prepare_retryable");
  const int pid = child_pid(*writer);
  auto status = writer->prepare(context());
  REQUIRE_FALSE(status.is_ok());
  CHECK(status.error().error_class == ErrorClass::retryable);
  CHECK(status.error().message == "busy, try later");
  CHECK(child_pid(*writer) == pid);
}

TEST_CASE("exec writer: the child gets exactly the configured environment - stderr is logged by line") {
  ExecFixture f;
  auto writer = f.scripted("", {{"EXAMPLE_VAR", "hello-env"}});
  REQUIRE(writer->prepare(context()).is_ok());
  const auto log = f.log();
  CHECK(log.find("env EXAMPLE_VAR=hello-env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:"
                 "/usr/bin:/sbin:/bin NAME=ext HOME=None") != std::string::npos);
  CHECK(log.find("got prepare deadline_ms=") != std::string::npos);
}

TEST_CASE("exec writer: options are checked") {
  ExecFixture f;
  auto refused = [&](nlohmann::json options, const std::string& text) {
    try {
      [[maybe_unused]] auto writer = f.make(std::move(options));
      FAIL("accepted");
    } catch (const quiesce::FieldError& e) {
      CHECK(std::string(e.what()).find(text) != std::string::npos);
    }
  };
  refused({{"command", {"python3", "x.py"}}}, "must be an absolute path");
  refused(nlohmann::json::object(), "options.command");
  refused({{"command", {python}}, {"env", {{"A", 1}}}}, "options.env.A");
  refused({{"command", {python}}, {"bogus", 1}}, "bogus");
}
