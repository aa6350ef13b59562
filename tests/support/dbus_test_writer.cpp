// A separate process that registers D-Bus writers with the agent through the
// SDK helper (quiesce/dbus_writer.hpp), as an application would. For the e2e
// tests: it appends one line per call to --log ("<path> <Method> <session>")
// and can misbehave on purpose.
//
//   quiesce-test-dbus-writer --address ADDR --log FILE [--path /p] [--level L]
//       [--options JSON] [--objects N] [--twice] [--hang METHOD] [--garbage]
//       [--lose-hold]
//
// --objects N  exports and registers N writers (/p/0 .. /p/N-1), logging
//              "register <path> ok <name>" or "register <path> refused <error>"
// --twice      registers the first path once more (to be refused)
// --hang M     method M sleeps 30 s before answering
// --garbage    exports a raw object whose every method answers an int32
// --lose-hold  Thaw answers continuous=false
// --then-unregister  unregisters the first path after registering, twice
//              (the second to be refused), logging "unregister <path> ..."
// Runs until SIGTERM; "ready" goes to the log once every registration ran.

#include <systemd/sd-bus.h>

#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "quiesce/dbus_writer.hpp"

namespace qd = quiesce::dbus_writer;

namespace {

volatile std::sig_atomic_t stop_requested = 0;

struct Options {
  std::string address;
  std::string log;
  std::string path = "/org/quiesce/test/Writer";
  std::string level = "application";
  std::string options = "{}";
  int objects = 1;
  bool twice = false;
  std::string hang;
  bool garbage = false;
  bool lose_hold = false;
  bool then_unregister = false;
};

void log_line(const Options& options, const std::string& line) {
  std::ofstream(options.log, std::ios::app) << line << std::endl;
}

// Every Writer1 method answers "i" 42, whatever it was asked.
int answer_garbage(sd_bus_message* message, void* /*userdata*/, sd_bus_error* /*error*/) {
  return sd_bus_reply_method_return(message, "i", 42);
}

const sd_bus_vtable kGarbageVtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_METHOD("Identify", "s", "i", answer_garbage, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("Prepare", "s", "i", answer_garbage, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("Freeze", "s", "i", answer_garbage, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("Thaw", "s", "i", answer_garbage, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("PostSnapshot", "ss", "i", answer_garbage, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("Abort", "s", "i", answer_garbage, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("PostRestore", "ss", "i", answer_garbage, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_VTABLE_END};

qd::Callbacks logging_callbacks(const Options& options, const std::string& path) {
  auto record = [&options, path](const std::string& method, const std::string& session) {
    log_line(options, path + " " + method + " " + session);
    if (options.hang == method) {
      std::this_thread::sleep_for(std::chrono::seconds(30));
    }
  };
  qd::Callbacks callbacks;
  callbacks.identify = [record, path](const std::string& session, std::string& identity) {
    record("Identify", session);
    identity = R"({"components": [{"kind": "app", "name": "test", "path": ")" + path +
               R"("}], "metadata": {"pid": )" + std::to_string(getpid()) + "}}";
    return qd::Outcome::ok();
  };
  callbacks.prepare = [record](const std::string& session) {
    record("Prepare", session);
    return qd::Outcome::ok();
  };
  callbacks.freeze = [record](const std::string& session) {
    record("Freeze", session);
    return qd::Outcome::ok();
  };
  callbacks.thaw = [record, &options](const std::string& session, bool& continuous,
                                      std::string& detail) {
    record("Thaw", session);
    if (options.lose_hold) {
      continuous = false;
      detail = "the test writer was told to lose its hold";
    }
    return qd::Outcome::ok();
  };
  callbacks.post_snapshot = [record](const std::string& session, const std::string& snapshot,
                                     std::string& artifacts) {
    record("PostSnapshot", session);
    artifacts = R"({"snapshot_seen": ")" + snapshot + R"("})";
    return qd::Outcome::ok();
  };
  callbacks.abort = [record](const std::string& session) {
    record("Abort", session);
    return qd::Outcome::ok();
  };
  callbacks.post_restore = [record](const std::string& /*checkpoint*/,
                                    const std::string& session) {
    record("PostRestore", session);
    return qd::Outcome::ok();
  };
  return callbacks;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << arg << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--address") {
      options.address = next();
    } else if (arg == "--log") {
      options.log = next();
    } else if (arg == "--path") {
      options.path = next();
    } else if (arg == "--level") {
      options.level = next();
    } else if (arg == "--options") {
      options.options = next();
    } else if (arg == "--objects") {
      options.objects = std::stoi(next());
    } else if (arg == "--twice") {
      options.twice = true;
    } else if (arg == "--hang") {
      options.hang = next();
    } else if (arg == "--garbage") {
      options.garbage = true;
    } else if (arg == "--then-unregister") {
      options.then_unregister = true;
    } else if (arg == "--lose-hold") {
      options.lose_hold = true;
    } else {
      std::cerr << "unknown argument " << arg << "\n";
      return 2;
    }
  }
  if (options.address.empty() || options.log.empty()) {
    std::cerr << "--address and --log are required\n";
    return 2;
  }
  std::signal(SIGTERM, [](int) { stop_requested = 1; });

  sd_bus* bus = nullptr;
  int r = sd_bus_new(&bus);
  if (r >= 0) {
    r = sd_bus_set_address(bus, options.address.c_str());
  }
  if (r >= 0) {
    r = sd_bus_set_bus_client(bus, 1);
  }
  if (r >= 0) {
    r = sd_bus_start(bus);
  }
  if (r < 0) {
    std::cerr << "cannot connect to " << options.address << "\n";
    return 1;
  }

  std::vector<std::string> paths;
  for (int i = 0; i < options.objects; ++i) {
    paths.push_back(options.objects == 1 ? options.path
                                         : options.path + "/w" + std::to_string(i));
  }
  std::vector<std::unique_ptr<qd::BusWriter>> writers;
  std::vector<sd_bus_slot*> garbage_slots;
  for (const auto& path : paths) {
    if (options.garbage) {
      // A raw object, not a BusWriter (which always answers the right types).
      sd_bus_slot* slot = nullptr;
      sd_bus_add_object_vtable(bus, &slot, path.c_str(), qd::kWriterInterface, kGarbageVtable,
                               nullptr);
      garbage_slots.push_back(slot);
      sd_bus_error error = SD_BUS_ERROR_NULL;
      sd_bus_message* reply = nullptr;
      r = sd_bus_call_method(bus, qd::kAgentBusName, qd::kAgentPath, qd::kAgentInterface,
                             "RegisterWriter", &error, &reply, "oss", path.c_str(),
                             options.level.c_str(), options.options.c_str());
      log_line(options, "register " + path + (r >= 0 ? " ok" : " refused ") +
                            (error.name != nullptr ? error.name : ""));
      sd_bus_error_free(&error);
      sd_bus_message_unref(reply);
      continue;
    }
    writers.push_back(
        std::make_unique<qd::BusWriter>(bus, path, logging_callbacks(options, path)));
    try {
      auto name = writers.back()->register_with_agent(options.level, options.options);
      log_line(options, "register " + path + " ok " + name);
    } catch (const std::exception& e) {
      log_line(options, "register " + path + " refused " + e.what());
    }
  }
  if (options.twice && !writers.empty()) {
    try {
      writers.front()->register_with_agent(options.level, options.options);
      log_line(options, "register " + paths.front() + " ok (twice)");
    } catch (const std::exception& e) {
      log_line(options, "register " + paths.front() + " refused " + e.what());
    }
  }
  for (int attempt = 0; options.then_unregister && !writers.empty() && attempt < 2; ++attempt) {
    try {
      writers.front()->unregister_from_agent();
      log_line(options, "unregister " + paths.front() + " ok");
    } catch (const std::exception& e) {
      log_line(options, "unregister " + paths.front() + " refused " + e.what());
    }
  }
  log_line(options, "ready");
  qd::run_bus(bus, [] { return stop_requested == 0; });
  writers.clear();
  for (auto* slot : garbage_slots) {
    sd_bus_slot_unref(slot);
  }
  sd_bus_flush_close_unref(bus);
  return 0;
}
