// quiesce-writer-check, the real binary: the shipped examples pass it, and
// it names the check a deliberately broken writer fails.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/support/processes.hpp"
#include "tests/support/temp_dir.hpp"

namespace fs = std::filesystem;

namespace {

// Runs the checker; returns its exit code and its output.
int check(const std::vector<std::string>& args, std::string& output) {
  const auto binary = quiesce::test::built_binary("quiesce-writer-check");
  REQUIRE_MESSAGE(fs::exists(binary),
                  "build the quiesce-writer-check target first (" << binary.string() << ")");
  std::vector<std::string> argv{binary.string()};
  argv.insert(argv.end(), args.begin(), args.end());
  return quiesce::test::run_command(argv, &output);
}

// The table row of one check.
std::string row(const std::string& output, const std::string& name) {
  std::istringstream lines(output);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(name + " ", 0) == 0) {
      return line;
    }
  }
  return "";
}

std::string example_options() {
  return nlohmann::json{{"command",
                         {"/usr/bin/python3", std::string(QUIESCE_SOURCE_DIR) +
                                                  "/writers/examples/exec-python/"
                                                  "quiesce_example_writer.py"}}}
      .dump();
}

}  // namespace

TEST_CASE("quiesce-writer-check: the Python exec example passes every check") {
  std::string output;
  int code = check({"--type", "exec", "--options", example_options()}, output);
  INFO(output);
  CHECK(code == 0);
  CHECK(output.find("13 checks: 13 passed, 0 failed") != std::string::npos);
  CHECK(row(output, "freeze_deadline").find("pass") != std::string::npos);
}

TEST_CASE("quiesce-writer-check: the delay writer passes, also as JSON, also with a long freeze") {
  std::string output;
  int code = check({"--type", "delay", "--json"}, output);
  INFO(output);
  REQUIRE(code == 0);
  auto report = nlohmann::json::parse(output);
  CHECK(report["passed"] == true);
  CHECK(report["type"] == "delay");
  CHECK(report["checks"].size() == 13);

  // A freeze that would take a minute: the checker's stop token cuts it short.
  output.clear();
  code = check({"--type", "delay", "--options", R"({"delays_ms": {"freeze": 60000}})",
                "--call-timeout-ms", "300"},
               output);
  INFO(output);
  CHECK(code == 0);
}

TEST_CASE("quiesce-writer-check: a delay writer failing thaw fails, naming the checks") {
  std::string output;
  int code = check({"--type", "delay", "--options", R"({"fail": {"thaw": "retryable"}})"}, output);
  INFO(output);
  CHECK(code == 1);
  CHECK(row(output, "thaw_without_freeze").find("FAIL") != std::string::npos);
  CHECK(row(output, "thaw_twice").find("FAIL") != std::string::npos);
  CHECK(row(output, "identify").find("pass") != std::string::npos);
}

TEST_CASE("quiesce-writer-check: an exec writer whose second thaw fails is caught by thaw_twice") {
  quiesce::test::TempDir tmp("writer-check");
  const auto script = tmp / "broken.py";
  // Conforms in everything but idempotent thaw.
  std::ofstream(script) << R"PY(
import json, sys
def send(o):
    sys.stdout.write(json.dumps(o) + "\n"); sys.stdout.flush()
send({"quiesce_exec": 1, "name": "broken", "capabilities": ["freeze", "thaw"]})
frozen = False
for line in sys.stdin:
    req = json.loads(line)
    if req["phase"] == "freeze":
        frozen = True
        send({"id": req["id"], "ok": True})
    elif frozen:
        frozen = False
        send({"id": req["id"], "ok": True, "hold_continuous": True})
    else:
        send({"id": req["id"], "ok": False, "error": {"class": "non_retryable", "message": "not frozen"}})
)PY";
  std::string output;
  int code = check({"--type", "exec", "--options",
                    nlohmann::json{{"command", {"/usr/bin/python3", script.string()}},
                                   {"restart_backoff_ms", 0}}
                        .dump()},
                   output);
  INFO(output);
  CHECK(code == 1);
  CHECK(row(output, "thaw_twice").find("FAIL") != std::string::npos);
  CHECK(row(output, "thaw_twice").find("not frozen") != std::string::npos);
  CHECK(row(output, "full_cycle").find("pass") != std::string::npos);
}

TEST_CASE("quiesce-writer-check: bad usage and bad options exit 2") {
  std::string output;
  CHECK(check({"--type", "no-such-type"}, output) == 2);
  CHECK(output.find("unknown writer type 'no-such-type'") != std::string::npos);
  output.clear();
  CHECK(check({"--type", "exec", "--options", R"({"command": ["relative"]})"}, output) == 2);
  CHECK(output.find("options.command") != std::string::npos);
}

TEST_CASE("quiesce-writer-check: the C and C++ plugin examples pass every check") {
  quiesce::test::TempDir dir;
  // The checker applies the agent's ownership rules to the .so; relax the
  // owner check only, as a non-root developer build needs.
  const std::vector<std::pair<std::string, nlohmann::json>> plugins{
      {QUIESCE_TOUCH_FILE_PLUGIN, {{"path", (dir / "marker").string()}}},
      {QUIESCE_FLOCK_PLUGIN, {{"lock_file", (dir / "lock").string()}}}};
  for (const auto& [so, plugin_options] : plugins) {
    CAPTURE(so);
    const auto options = nlohmann::json{{"path", so},
                                        {"allow_non_root_owner", true},
                                        {"options", plugin_options}}
                             .dump();
    std::string output;
    int code = check({"--type", "plugin", "--options", options}, output);
    INFO(output);
    CHECK(code == 0);
    CHECK(output.find("13 checks: 13 passed, 0 failed") != std::string::npos);
  }
}
