#pragma once
// The Windows service: what systemd (the unit file, sd_notify, SIGTERM) is
// to the Linux agent. install/uninstall talk to the Service Control
// Manager; run_service() hands the process to the SCM's dispatcher;
// run_in_foreground() runs the same body in a console, Ctrl+C standing in
// for SERVICE_CONTROL_STOP (for debugging).
//
// The body is the agent: it reports progress while it starts, says when it
// is running, then waits for the stop request and releases everything
// (thaw, abort) before it returns. The SCM is told STOPPED only after the
// body returned, so a stop never leaves a freeze held behind a service the
// SCM believes stopped.

#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace quiesce::platform::win {

struct ServiceDefinition {
  std::string name;          // the key: "quiesce-agent" (sc start quiesce-agent)
  std::string display_name;  // services.msc
  std::string description;
  // The command the SCM runs: this executable and its arguments.
  std::string executable;
  std::vector<std::string> arguments;
  // Restart after a crash: the delays of the first, second and later
  // failures (SERVICE_FAILURE_ACTIONS); the failure count resets after a day.
  std::vector<std::chrono::milliseconds> restart_delays{std::chrono::seconds(5), std::chrono::seconds(30),
                                                        std::chrono::seconds(60)};
};

// CreateService (own process, auto start, LocalSystem), its description and
// its recovery actions. Returns "" or why not (already installed, not an
// administrator...); an error leaves nothing half-installed. `warnings` gets
// what the service manager would not do but the service works without
// (wine's has no "recover after a non-crash failure" setting).
[[nodiscard]] std::string install_service(const ServiceDefinition& definition, std::vector<std::string>& warnings);
// Stops the service if it runs (waiting up to `stop_timeout`), then
// DeleteService. Returns "" or why not.
[[nodiscard]] std::string uninstall_service(const std::string& name,
                                            std::chrono::milliseconds stop_timeout);

// What the body is given: progress reports and the stop request.
class ServiceControl {
 public:
  virtual ~ServiceControl() = default;
  // SERVICE_START_PENDING with a fresh checkpoint: "still starting, give me
  // `wait_hint` more".
  virtual void starting(std::chrono::milliseconds wait_hint) = 0;
  // SERVICE_RUNNING: accepts STOP and SHUTDOWN from now on.
  virtual void running() = 0;
  // SERVICE_STOP_PENDING with a fresh checkpoint, while the body releases.
  virtual void stopping(std::chrono::milliseconds wait_hint) = 0;
  // Blocks until STOP or SHUTDOWN (or Ctrl+C in the foreground); returns
  // what asked: "stop", "shutdown", "ctrl-c".
  virtual std::string wait_for_stop() = 0;
};

// The body returns the process's exit code; non-zero is reported to the SCM
// as a service-specific error (and triggers the recovery actions).
using ServiceBody = std::function<int(ServiceControl&)>;

// StartServiceCtrlDispatcher: blocks until the service stopped. Returns the
// body's exit code, or -1 with `error` set when this process was not started
// by the SCM (ERROR_FAILED_SERVICE_CONTROLLER_CONNECT) or the dispatcher
// failed.
int run_service(const std::string& name, ServiceBody body, std::string& error);

// The body in this console: Ctrl+C, Ctrl+Break and closing the console ask
// it to stop.
int run_in_foreground(ServiceBody body);

}  // namespace quiesce::platform::win
