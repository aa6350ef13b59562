// quiesce-agent.exe: the guest agent on Windows, as a service or in the
// foreground. See docs/windows.md; daemon/main.cpp is the Linux agent.
//
// Exit codes as on Linux: 0 stopped cleanly, 1 runtime failure, 2 usage
// error, 3 invalid config, 4 cannot listen; --install and --uninstall
// return 1 when the service manager refused.

#include <windows.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include <spdlog/sinks/stdout_color_sinks.h>

#include "agent/api/http_server.hpp"
#include "agent/core/agent_logging.hpp"
#include "agent/core/api_routes.hpp"
#include "agent/core/config.hpp"
#include "agent/core/coordinator.hpp"
#include "agent/core/startup_recovery.hpp"
#include "agent/qga/qga_channels.hpp"
#include "agent/qga/qga_service.hpp"
#include "platform/defaults.hpp"
#include "platform/win/service.hpp"
#include "platform/win/win_error.hpp"
#include "quiesce/writer_registry.hpp"

namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;
constexpr int kExitConfig = 3;
constexpr int kExitListen = 4;

constexpr const char* kServiceName = "quiesce-agent";
// How long the SCM is told to wait for each step of a start or a stop; a
// stop thaws every writer, bounded by their thaw and abort timeouts.
constexpr std::chrono::seconds kStartHint{30};
constexpr std::chrono::seconds kStopHint{60};

void print_help() {
  std::cout << "Usage: quiesce-agent [--config PATH] [--check-config]\n"
               "       quiesce-agent --install [--config PATH] | --uninstall\n"
               "       quiesce-agent --version | --help\n\n"
               "The Quiesce guest agent: brings applications and filesystems to a consistent\n"
               "state when the host asks, holds them while it snapshots the disks, releases them.\n\n"
               "  --config PATH    config file (default %ProgramData%\\Quiesce\\agent.json)\n"
               "  --check-config   validate the config and the writers' options, then exit\n"
               "  --install        install the service 'quiesce-agent' (automatic start,\n"
               "                   restarted on failure) running with this config\n"
               "  --uninstall      stop the service (thawing whatever it holds) and remove it\n"
               "  --service        run under the service control manager (what --install sets)\n"
               "  --version        print the version\n"
               "  --help           this text\n\n"
               "Without --service the agent runs in this console until Ctrl+C.\n"
               "Exit codes: 0 clean stop, 1 runtime failure, 2 usage error, 3 invalid config,\n"
               "4 cannot listen.\n";
}

std::string this_executable() {
  std::wstring buffer(MAX_PATH, L'\0');
  while (true) {
    const DWORD length = ::GetModuleFileNameW(nullptr, buffer.data(), static_cast<DWORD>(buffer.size()));
    if (length < buffer.size()) {
      buffer.resize(length);
      return quiesce::platform::win::narrow(buffer);
    }
    buffer.resize(buffer.size() * 2);
  }
}

std::string absolute_path(const std::string& path) {
  std::error_code ec;
  const auto absolute = std::filesystem::absolute(std::filesystem::path(quiesce::platform::win::widen(path)), ec);
  return ec ? path : quiesce::platform::win::narrow(absolute.wstring());
}

// Everything the running agent is made of. Never destroyed: a writer stuck
// in a call would make joining its worker thread hang, and everything that
// matters is released by stop() before the process ends (as on Linux).
struct RunningAgent {
  std::optional<quiesce::agent::StartupRecovery> recovery;
  quiesce::agent::AgentLogger logging;
  std::unique_ptr<quiesce::agent::HoldLogObserver> log_observer;
  quiesce::agent::ObserverList observers;
  std::unique_ptr<quiesce::agent::Coordinator> coordinator;
  std::unique_ptr<quiesce::agent::ApiRoutes> routes;
  std::unique_ptr<quiesce::api::HttpServer> server;
  std::thread io_thread;
  std::unique_ptr<quiesce::agent::qga::QgaService> qga_service;
  std::unique_ptr<quiesce::agent::qga::QgaChannels> qga_channels;
};

int run_agent(const std::string& config_path, quiesce::platform::win::ServiceControl& control) {
  quiesce::WriterRegistry registry;
  quiesce::register_builtin_writers(registry);
  quiesce::agent::AgentConfig config;
  try {
    config = quiesce::agent::load_config(config_path, registry);
  } catch (const std::exception& e) {
    std::cerr << "quiesce-agent: invalid config " << config_path << ": " << e.what() << "\n";
    return kExitConfig;
  }
  auto& agent = *new RunningAgent;  // see RunningAgent: deliberately never freed
  // Before the log opens, as on Linux: a previous instance may have died
  // with hooks frozen; their thaw runs now, and what it logged is written
  // once the log is open.
  agent.recovery.emplace(config.run_dir);
  try {
    agent.logging = quiesce::agent::make_agent_logger(config.log);
  } catch (const std::exception& e) {
    std::cerr << "quiesce-agent: cannot open the log: " << e.what() << "\n";
    return kExitConfig;
  }
  const auto logger = agent.logging.logger;
  for (const auto& warning : config.warnings) {
    logger->warn("config: {}", warning);
  }
  control.starting(kStartHint);
  quiesce::WriterEnvironment environment{logger, config.run_dir, config.state_dir};
  std::vector<quiesce::agent::ConfiguredWriter> writers;
  try {
    writers = quiesce::agent::create_writers(config, registry, environment);
  } catch (const std::exception& e) {
    logger->critical("invalid config {}: {}", config_path, e.what());
    std::cerr << "quiesce-agent: invalid config " << config_path << ": " << e.what() << "\n";
    return kExitConfig;
  }
  logger->info("quiesce-agent {} starting with {} writer(s)", QUIESCE_VERSION, writers.size());
  agent.recovery->replay_to(*logger);
  agent.log_observer = std::make_unique<quiesce::agent::HoldLogObserver>(
      agent.logging.hold_sink, [](const std::string&) {});
  agent.observers.add(agent.log_observer.get());
  agent.coordinator = std::make_unique<quiesce::agent::Coordinator>(
      std::move(writers), config.session, logger,
      quiesce::agent::MarkerPaths{config.state_dir, config.run_dir}, &agent.observers);
  control.starting(kStartHint);
  agent.coordinator->identify_all();
  agent.coordinator->detect_restore();

  agent.routes = std::make_unique<quiesce::agent::ApiRoutes>(*agent.coordinator, logger);
  agent.server = std::make_unique<quiesce::api::HttpServer>(
      config.server, [routes = agent.routes.get()](const quiesce::api::Request& r) { return routes->handle(r); },
      logger);
  try {
    agent.server->start();
  } catch (const std::exception& e) {
    logger->critical("cannot listen: {}", e.what());
    std::cerr << "quiesce-agent: cannot listen: " << e.what() << "\n";
    return kExitListen;
  }
  if (auto port = agent.server->tcp_port()) {
    logger->info("tcp port {}", *port);
  }
  agent.io_thread = std::thread([server = agent.server.get()] { server->run(); });

  // qemu-guest-agent's protocol: the same route table behind other framing.
  if (config.qga.enabled) {
    agent.qga_service = std::make_unique<quiesce::agent::qga::QgaService>(*agent.coordinator, *agent.routes,
                                                                          config.qga.options, logger);
    agent.qga_channels = std::make_unique<quiesce::agent::qga::QgaChannels>(
        config.qga.channels,
        [service = agent.qga_service.get()](const std::string& peer, bool can_close) {
          return service->connect(peer, can_close);
        },
        logger);
    try {
      agent.qga_channels->start();
    } catch (const std::exception& e) {
      logger->critical("cannot listen: {}", e.what());
      std::cerr << "quiesce-agent: cannot listen: " << e.what() << "\n";
      agent.server->stop();
      agent.io_thread.join();
      return kExitListen;
    }
  }

  control.running();
  logger->info("ready");
  const std::string reason = control.wait_for_stop();
  logger->info("{} requested: stopping", reason);
  control.stopping(kStopHint);
  agent.coordinator->shutdown();  // thaws / aborts whatever is active
  control.stopping(kStopHint);
  if (agent.qga_channels) {
    agent.qga_channels->stop();  // after the coordinator: a qga freeze in progress has returned
  }
  agent.server->stop();
  agent.io_thread.join();
  logger->info("stopped");
  logger->flush();
  std::fflush(nullptr);
  return kExitOk;
}

int check_config(const std::string& config_path) {
  quiesce::WriterRegistry registry;
  quiesce::register_builtin_writers(registry);
  try {
    const auto config = quiesce::agent::load_config(config_path, registry);
    for (const auto& warning : config.warnings) {
      std::cerr << "quiesce-agent: warning: " << warning << "\n";
    }
    // The writers' factories log to stderr; nothing is written anywhere.
    auto logger = std::make_shared<spdlog::logger>("check-config",
                                                   std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    const quiesce::WriterEnvironment environment{logger, config.run_dir, config.state_dir};
    const auto writers = quiesce::agent::create_writers(config, registry, environment);
    std::cout << "config " << config_path << " is valid: " << writers.size() << " writer(s)\n";
    return kExitOk;
  } catch (const std::exception& e) {
    std::cerr << "quiesce-agent: invalid config " << config_path << ": " << e.what() << "\n";
    return kExitConfig;
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path = quiesce::platform::agent_defaults().config_file;
  enum class Mode { foreground, service, check, install, uninstall } mode = Mode::foreground;
  int modes = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      print_help();
      return kExitOk;
    }
    if (arg == "--version") {
      std::cout << "quiesce-agent " << QUIESCE_VERSION << "\n";
      return kExitOk;
    }
    if (arg == "--check-config") {
      mode = Mode::check;
      ++modes;
    } else if (arg == "--install") {
      mode = Mode::install;
      ++modes;
    } else if (arg == "--uninstall") {
      mode = Mode::uninstall;
      ++modes;
    } else if (arg == "--service") {
      mode = Mode::service;
      ++modes;
    } else if (arg == "--config" && i + 1 < argc) {
      config_path = argv[++i];
    } else if (arg.rfind("--config=", 0) == 0) {
      config_path = arg.substr(9);
    } else {
      std::cerr << "quiesce-agent: unknown argument '" << arg << "' (see --help)\n";
      return kExitUsage;
    }
  }
  if (modes > 1) {
    std::cerr << "quiesce-agent: --check-config, --install, --uninstall and --service exclude each other\n";
    return kExitUsage;
  }

  switch (mode) {
    case Mode::check:
      return check_config(config_path);
    case Mode::install: {
      // A service that could not start is not installed: the config is
      // checked first, and the service is given its absolute path.
      if (const int status = check_config(config_path); status != kExitOk) {
        return status;
      }
      quiesce::platform::win::ServiceDefinition definition;
      definition.name = kServiceName;
      definition.display_name = "Quiesce agent";
      definition.description =
          "Brings applications and file systems to a consistent state while the host snapshots the disks.";
      definition.executable = this_executable();
      definition.arguments = {"--service", "--config", absolute_path(config_path)};
      std::vector<std::string> warnings;
      if (const auto error = quiesce::platform::win::install_service(definition, warnings); !error.empty()) {
        std::cerr << "quiesce-agent: " << error << "\n";
        return kExitFailure;
      }
      for (const auto& warning : warnings) {
        std::cerr << "quiesce-agent: warning: " << warning << "\n";
      }
      std::cout << "service " << kServiceName << " installed (automatic start): sc start " << kServiceName << "\n";
      return kExitOk;
    }
    case Mode::uninstall: {
      if (const auto error = quiesce::platform::win::uninstall_service(kServiceName, 2 * kStopHint);
          !error.empty()) {
        std::cerr << "quiesce-agent: " << error << "\n";
        return kExitFailure;
      }
      std::cout << "service " << kServiceName << " removed\n";
      return kExitOk;
    }
    case Mode::service: {
      std::string error;
      const int status = quiesce::platform::win::run_service(
          kServiceName,
          [&config_path](quiesce::platform::win::ServiceControl& control) { return run_agent(config_path, control); },
          error);
      if (status < 0 || !error.empty()) {
        std::cerr << "quiesce-agent: " << error << "\n";
      }
      std::fflush(nullptr);
      std::_Exit(status < 0 ? kExitFailure : status);
    }
    case Mode::foreground: {
      const int status = quiesce::platform::win::run_in_foreground(
          [&config_path](quiesce::platform::win::ServiceControl& control) { return run_agent(config_path, control); });
      std::fflush(nullptr);
      std::_Exit(status);
    }
  }
  return kExitFailure;
}
