// quiesce-agent: the guest agent daemon. See docs/agent.md.
//
// Exit codes: 0 stopped cleanly (SIGTERM/SIGINT), 1 runtime failure,
// 2 usage error, 3 invalid config, 4 cannot listen.

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <iostream>
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
#include "agent/dbus/dbus_service.hpp"
#include "agent/qga/qga_channels.hpp"
#include "agent/qga/qga_service.hpp"
#include "platform/linux/systemd_notify.hpp"
#include "quiesce/writer_registry.hpp"

namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;
constexpr int kExitConfig = 3;
constexpr int kExitListen = 4;

void print_help() {
  std::cout << "Usage: quiesce-agent [--config PATH] [--check-config]\n"
               "       quiesce-agent --version | --help\n\n"
               "The Quiesce guest agent: brings applications and filesystems to a consistent\n"
               "state when the host asks, holds them while it snapshots the disks, releases them.\n\n"
               "  --config PATH    config file (default /etc/quiesce/agent.json)\n"
               "  --check-config   validate the config and the writers' options, then exit\n"
               "  --version        print the version\n"
               "  --help           this text\n\n"
               "Exit codes: 0 clean stop, 1 runtime failure, 2 usage error, 3 invalid config,\n"
               "4 cannot listen.\n";
}

// The service manager's watchdog must never fire during a hold the agent
// granted: it would end the agent (and with it the hold) on a healthy
// system. A hung agent is still caught: the freeze holder thaws at the
// window's end by itself, and the watchdog fires after that. So the
// largest window stays below the watchdog's timeout, with a margin for a
// ping that is late; returns what was changed, to log.
std::optional<std::string> clamp_freeze_window_to_watchdog(
    quiesce::agent::SessionLimits& limits, const quiesce::platform::SystemdNotifier& notifier) {
  auto interval = notifier.watchdog_interval();  // half the timeout
  if (!interval) {
    return std::nullopt;
  }
  const auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(*interval * 2);
  const auto margin = std::min<std::chrono::milliseconds>(std::chrono::seconds(10), timeout / 4);
  const auto largest = timeout - margin;
  if (limits.max_freeze_window <= largest) {
    return std::nullopt;
  }
  std::string text = "the largest freeze window is " +
                     std::to_string(limits.max_freeze_window.count()) +
                     " ms but the service watchdog (WatchdogSec=) is " +
                     std::to_string(timeout.count()) + " ms: windows are limited to " +
                     std::to_string(largest.count()) + " ms";
  limits.max_freeze_window = largest;
  limits.default_freeze_window = std::min(limits.default_freeze_window, largest);
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path = quiesce::agent::kDefaultConfigPath;
  bool check_only = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      print_help();
      return kExitOk;
    }
    if (arg == "--version") {
      std::cout << "quiesce-agent " << QUIESCE_VERSION << "\n";
      return kExitOk;
    }
    if (arg == "--check-config") {
      check_only = true;
    } else if (arg == "--config" && i + 1 < argc) {
      config_path = argv[++i];
    } else if (arg.rfind("--config=", 0) == 0) {
      config_path = arg.substr(9);
    } else {
      std::cerr << "quiesce-agent: unknown argument '" << arg << "' (see --help)\n";
      return kExitUsage;
    }
  }

  // Signals are taken by sigwait() in main; block them before any thread
  // starts so every thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  quiesce::WriterRegistry registry;
  quiesce::register_builtin_writers(registry);

  quiesce::agent::AgentConfig config;
  try {
    config = quiesce::agent::load_config(config_path, registry);
  } catch (const std::exception& e) {
    std::cerr << "quiesce-agent: invalid config " << config_path << ": " << e.what() << "\n";
    return kExitConfig;
  }

  // Before anything that may write (the log, the state dir): a previous
  // instance may have died holding a freeze, of "/" perhaps.
  std::optional<quiesce::agent::StartupRecovery> recovery;
  if (!check_only) {
    recovery.emplace(config.run_dir);
  }
  quiesce::platform::SystemdNotifier notifier;
  const auto window_clamp = clamp_freeze_window_to_watchdog(config.session, notifier);

  quiesce::agent::AgentLogger logging;
  std::shared_ptr<spdlog::logger> logger;
  if (check_only) {
    // --check-config writes nothing: no log file or directory is created,
    // the writers' factories log to stderr.
    logger = std::make_shared<spdlog::logger>(
        "check-config", std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    for (const auto& warning : config.warnings) {
      std::cerr << "quiesce-agent: warning: " << warning << "\n";
    }
  } else {
    try {
      logging = quiesce::agent::make_agent_logger(config.log);
    } catch (const std::exception& e) {
      std::cerr << "quiesce-agent: cannot open the log: " << e.what() << "\n";
      return kExitConfig;
    }
    logger = logging.logger;
    for (const auto& warning : config.warnings) {
      logger->warn("config: {}", warning);
    }
  }

  quiesce::WriterEnvironment environment{logger, config.run_dir, config.state_dir};
  std::vector<quiesce::agent::ConfiguredWriter> writers;
  try {
    writers = quiesce::agent::create_writers(config, registry, environment);
  } catch (const std::exception& e) {
    std::cerr << "quiesce-agent: invalid config " << config_path << ": " << e.what() << "\n";
    return kExitConfig;
  }
  if (check_only) {
    std::cout << "config " << config_path << " is valid: " << writers.size() << " writer(s)\n";
    return kExitOk;
  }

  logger->info("quiesce-agent {} starting with {} writer(s)", QUIESCE_VERSION, writers.size());
  recovery->replay_to(*logger);
  if (window_clamp) {
    logger->warn("{}", *window_clamp);
    config.qga.options.freeze_window =
        std::min(config.qga.options.freeze_window, config.session.max_freeze_window);
  }

  quiesce::agent::HoldLogObserver log_observer(
      logging.hold_sink, [&notifier](const std::string& status) { notifier.status(status); });
  quiesce::agent::ObserverList observers;
  observers.add(&log_observer);
  quiesce::agent::Coordinator coordinator(std::move(writers), config.session, logger,
                                          {config.state_dir, config.run_dir}, &observers);
  coordinator.identify_all();
  coordinator.detect_restore();

  quiesce::agent::ApiRoutes routes(coordinator, logger);
  // Before the other listeners: no session can start before it watches.
  std::optional<quiesce::agent::dbus::DbusService> dbus_service;
  if (config.dbus.enabled) {
    dbus_service.emplace(coordinator, routes, config.dbus, logger);
    try {
      dbus_service->start();
    } catch (const std::exception& e) {
      logger->critical("cannot listen on D-Bus: {}", e.what());
      return kExitListen;
    }
    observers.add(&*dbus_service);
  }
  quiesce::api::HttpServer server(
      config.server, [&routes](const quiesce::api::Request& r) { return routes.handle(r); },
      logger);
  try {
    server.start();
  } catch (const std::exception& e) {
    logger->critical("cannot listen: {}", e.what());
    return kExitListen;
  }
  std::thread io_thread([&server] { server.run(); });

  // qemu-guest-agent's protocol: the same route table behind other framing.
  std::optional<quiesce::agent::qga::QgaService> qga_service;
  std::optional<quiesce::agent::qga::QgaChannels> qga_channels;
  if (config.qga.enabled) {
    qga_service.emplace(coordinator, routes, config.qga.options, logger);
    qga_channels.emplace(
        config.qga.channels,
        [&qga_service](const std::string& peer, bool can_close) {
          return qga_service->connect(peer, can_close);
        },
        logger);
    try {
      qga_channels->start();
    } catch (const std::exception& e) {
      logger->critical("cannot listen: {}", e.what());
      server.stop();
      io_thread.join();
      return kExitListen;
    }
  }

  notifier.ready("ready");
  std::jthread watchdog_pinger;
  if (auto interval = notifier.watchdog_interval()) {
    // Only under systemd with WatchdogSec=: the one periodic wakeup we allow.
    watchdog_pinger = std::jthread([&notifier, interval](const std::stop_token& stop) {
      std::mutex mutex;
      std::condition_variable_any wake;
      std::unique_lock lock(mutex);
      while (!wake.wait_for(lock, stop, *interval, [] { return false; }) &&
             !stop.stop_requested()) {
        notifier.watchdog();
      }
    });
  }
  logger->info("ready");

  int signo = 0;
  sigwait(&stop_signals, &signo);
  logger->info("received {}: stopping", strsignal(signo));
  notifier.stopping();
  coordinator.shutdown();  // thaws / aborts whatever is active
  if (qga_channels) {
    qga_channels->stop();  // after the coordinator: a qga freeze in progress has returned
  }
  server.stop();
  io_thread.join();
  if (dbus_service) {
    dbus_service->stop();
  }
  watchdog_pinger = {};
  logger->info("stopped");
  logger->flush();
  // Skip destructors: a writer stuck in a call would make joining its worker
  // thread hang, and everything that matters was released above.
  std::fflush(nullptr);
  std::_Exit(kExitOk);
  return kExitFailure;
}
