#include "platform/win/service.hpp"

#include <windows.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "platform/win/win_error.hpp"

namespace quiesce::platform::win {
namespace {

// Closes an SC_HANDLE on every path out.
struct ScHandle {
  SC_HANDLE handle = nullptr;
  explicit ScHandle(SC_HANDLE h) : handle(h) {}
  ScHandle(const ScHandle&) = delete;
  ScHandle& operator=(const ScHandle&) = delete;
  ~ScHandle() {
    if (handle != nullptr) {
      ::CloseServiceHandle(handle);
    }
  }
  explicit operator bool() const { return handle != nullptr; }
};

// One argument as CommandLineToArgvW reads it back: quoted, with
// backslashes doubled only where they precede a quote.
std::wstring quote_argument(const std::wstring& argument) {
  std::wstring out = L"\"";
  std::size_t backslashes = 0;
  for (const wchar_t c : argument) {
    if (c == L'\\') {
      ++backslashes;
      continue;
    }
    if (c == L'"') {
      out.append(backslashes * 2 + 1, L'\\');
    } else {
      out.append(backslashes, L'\\');
    }
    backslashes = 0;
    out.push_back(c);
  }
  out.append(backslashes * 2, L'\\');
  out.push_back(L'"');
  return out;
}

std::wstring command_line(const ServiceDefinition& definition) {
  std::wstring line = quote_argument(widen(definition.executable));
  for (const auto& argument : definition.arguments) {
    line += L" " + quote_argument(widen(argument));
  }
  return line;
}

// The body's view of the SCM (or of the console in the foreground).
class StopSignal {
 public:
  void request(std::string reason) {
    {
      std::lock_guard lock(mutex_);
      if (reason_.empty()) {
        reason_ = std::move(reason);
      }
    }
    wake_.notify_all();
  }
  std::string wait() {
    std::unique_lock lock(mutex_);
    wake_.wait(lock, [this] { return !reason_.empty(); });
    return reason_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable wake_;
  std::string reason_;
};

class ScmControl final : public ServiceControl {
 public:
  // The handle comes from registering this object's handler, so it is
  // attached after construction, before any status is reported.
  void attach(SERVICE_STATUS_HANDLE handle) { handle_ = handle; }

  void starting(std::chrono::milliseconds wait_hint) override { report(SERVICE_START_PENDING, wait_hint); }
  void running() override { report(SERVICE_RUNNING, std::chrono::milliseconds(0)); }
  void stopping(std::chrono::milliseconds wait_hint) override { report(SERVICE_STOP_PENDING, wait_hint); }
  std::string wait_for_stop() override { return stop_.wait(); }

  void stopped(int exit_code) {
    std::lock_guard lock(mutex_);
    SERVICE_STATUS status{};
    status.dwServiceType = SERVICE_WIN32_OWN_PROCESS;
    status.dwCurrentState = SERVICE_STOPPED;
    if (exit_code != 0) {
      status.dwWin32ExitCode = ERROR_SERVICE_SPECIFIC_ERROR;
      status.dwServiceSpecificExitCode = static_cast<DWORD>(exit_code);
    }
    ::SetServiceStatus(handle_, &status);
  }

  // The control handler (the dispatcher's thread): STOP and SHUTDOWN ask the
  // body to stop; the body reports STOP_PENDING as it releases.
  DWORD control(DWORD code) {
    switch (code) {
      case SERVICE_CONTROL_STOP:
        report(SERVICE_STOP_PENDING, std::chrono::seconds(30));
        stop_.request("stop");
        return NO_ERROR;
      case SERVICE_CONTROL_SHUTDOWN:
        report(SERVICE_STOP_PENDING, std::chrono::seconds(30));
        stop_.request("shutdown");
        return NO_ERROR;
      case SERVICE_CONTROL_INTERROGATE:
        return NO_ERROR;
      default:
        return ERROR_CALL_NOT_IMPLEMENTED;
    }
  }

 private:
  void report(DWORD state, std::chrono::milliseconds wait_hint) {
    std::lock_guard lock(mutex_);
    // Once stopping, a late "running" from the body must not undo it.
    if (state_ == SERVICE_STOP_PENDING && state == SERVICE_RUNNING) {
      return;
    }
    SERVICE_STATUS status{};
    status.dwServiceType = SERVICE_WIN32_OWN_PROCESS;
    status.dwCurrentState = state;
    status.dwControlsAccepted =
        state == SERVICE_RUNNING ? SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN : 0;
    status.dwWaitHint = static_cast<DWORD>(wait_hint.count());
    status.dwCheckPoint = state == SERVICE_RUNNING ? 0 : ++checkpoint_;
    state_ = state;
    ::SetServiceStatus(handle_, &status);
  }

  SERVICE_STATUS_HANDLE handle_ = nullptr;
  std::mutex mutex_;
  DWORD state_ = SERVICE_START_PENDING;
  DWORD checkpoint_ = 0;
  StopSignal stop_;
};

// The SCM's callbacks carry no pointer of ours (ServiceMain has none), so
// what run_service() was given waits here for the one ServiceMain call.
struct ServiceRun {
  std::wstring name;
  ServiceBody body;
  int exit_code = 0;
  std::string error;
};
ServiceRun* current_run = nullptr;

DWORD WINAPI control_handler(DWORD code, DWORD, LPVOID, LPVOID context) {
  return static_cast<ScmControl*>(context)->control(code);
}

void WINAPI service_main(DWORD, LPWSTR*) {
  ServiceRun& run = *current_run;
  auto control = std::make_unique<ScmControl>();
  // No control arrives before the first status report (the SCM sends none
  // to a service still in its initial START_PENDING), so attaching after
  // registering races with nothing.
  const SERVICE_STATUS_HANDLE handle =
      ::RegisterServiceCtrlHandlerExW(run.name.c_str(), control_handler, control.get());
  if (handle == nullptr) {
    run.error = "RegisterServiceCtrlHandlerEx: " + last_error_text();
    run.exit_code = -1;
    return;
  }
  control->attach(handle);
  control->starting(std::chrono::seconds(10));
  try {
    run.exit_code = run.body(*control);
  } catch (const std::exception& e) {
    run.error = e.what();
    run.exit_code = 1;
  }
  control->stopped(run.exit_code);
  // The dispatcher returns once STOPPED is reported; the control object must
  // outlive a last control call racing with it.
  static_cast<void>(control.release());
}

class ConsoleControl final : public ServiceControl {
 public:
  void starting(std::chrono::milliseconds) override {}
  void running() override {}
  void stopping(std::chrono::milliseconds) override {}
  std::string wait_for_stop() override { return stop.wait(); }
  StopSignal stop;
};
ConsoleControl* console_control = nullptr;

BOOL WINAPI console_handler(DWORD event) {
  switch (event) {
    case CTRL_C_EVENT:
    case CTRL_BREAK_EVENT:
    case CTRL_CLOSE_EVENT:
    case CTRL_SHUTDOWN_EVENT:
      if (console_control != nullptr) {
        console_control->stop.request("ctrl-c");
        // CTRL_CLOSE_EVENT ends the process when this returns: give the
        // body the time Windows allows (5 s) to release first.
        if (event == CTRL_CLOSE_EVENT || event == CTRL_SHUTDOWN_EVENT) {
          std::this_thread::sleep_for(std::chrono::seconds(5));
        }
      }
      return TRUE;
    default:
      return FALSE;
  }
}

}  // namespace

std::string install_service(const ServiceDefinition& definition, std::vector<std::string>& warnings) {
  const ScHandle manager(::OpenSCManagerW(nullptr, nullptr, SC_MANAGER_CONNECT | SC_MANAGER_CREATE_SERVICE));
  if (!manager) {
    return "cannot open the service control manager: " + last_error_text();
  }
  const std::wstring name = widen(definition.name);
  const std::wstring display = widen(definition.display_name);
  const std::wstring line = command_line(definition);
  const ScHandle service(::CreateServiceW(manager.handle, name.c_str(), display.c_str(), SERVICE_ALL_ACCESS,
                                          SERVICE_WIN32_OWN_PROCESS, SERVICE_AUTO_START, SERVICE_ERROR_NORMAL,
                                          line.c_str(), nullptr, nullptr, nullptr, nullptr, nullptr));
  if (!service) {
    const DWORD code = ::GetLastError();
    if (code == ERROR_SERVICE_EXISTS) {
      return "service '" + definition.name + "' is already installed (--uninstall first)";
    }
    return "cannot create service '" + definition.name + "': " + error_text(code);
  }
  const auto undo = [&](const std::string& what) {
    const std::string why = what + ": " + last_error_text();
    ::DeleteService(service.handle);
    return why;
  };
  std::wstring description = widen(definition.description);
  SERVICE_DESCRIPTIONW description_info{description.data()};
  if (!::ChangeServiceConfig2W(service.handle, SERVICE_CONFIG_DESCRIPTION, &description_info)) {
    return undo("cannot set the service description");
  }
  std::vector<SC_ACTION> actions;
  for (const auto delay : definition.restart_delays) {
    actions.push_back(SC_ACTION{SC_ACTION_RESTART, static_cast<DWORD>(delay.count())});
  }
  SERVICE_FAILURE_ACTIONSW failure{};
  failure.dwResetPeriod = 24 * 60 * 60;
  failure.cActions = static_cast<DWORD>(actions.size());
  failure.lpsaActions = actions.data();
  if (!::ChangeServiceConfig2W(service.handle, SERVICE_CONFIG_FAILURE_ACTIONS, &failure)) {
    return undo("cannot set the service's recovery actions");
  }
  // A non-zero exit code reported with STOPPED counts as a failure too (the
  // agent exits 1 on a runtime failure without crashing).
  SERVICE_FAILURE_ACTIONS_FLAG on_non_crash{TRUE};
  if (!::ChangeServiceConfig2W(service.handle, SERVICE_CONFIG_FAILURE_ACTIONS_FLAG, &on_non_crash)) {
    if (::GetLastError() != ERROR_INVALID_LEVEL) {
      return undo("cannot set the service's recovery on non-crash failures");
    }
    // A service manager without this level (wine's) still restarts after a
    // crash; an exit with a failure code is then not restarted.
    warnings.push_back("this service manager cannot restart the agent after a non-crash failure "
                       "(SERVICE_CONFIG_FAILURE_ACTIONS_FLAG: " + last_error_text() + "); it restarts it after crashes only");
  }
  return "";
}

std::string uninstall_service(const std::string& name, std::chrono::milliseconds stop_timeout) {
  const ScHandle manager(::OpenSCManagerW(nullptr, nullptr, SC_MANAGER_CONNECT));
  if (!manager) {
    return "cannot open the service control manager: " + last_error_text();
  }
  const ScHandle service(
      ::OpenServiceW(manager.handle, widen(name).c_str(), SERVICE_STOP | SERVICE_QUERY_STATUS | DELETE));
  if (!service) {
    const DWORD code = ::GetLastError();
    if (code == ERROR_SERVICE_DOES_NOT_EXIST) {
      return "service '" + name + "' is not installed";
    }
    return "cannot open service '" + name + "': " + error_text(code);
  }
  SERVICE_STATUS status{};
  if (::QueryServiceStatus(service.handle, &status) && status.dwCurrentState != SERVICE_STOPPED) {
    // The agent thaws and aborts before it reports STOPPED: wait for that
    // rather than deleting a service that still holds a freeze.
    if (status.dwCurrentState != SERVICE_STOP_PENDING &&
        !::ControlService(service.handle, SERVICE_CONTROL_STOP, &status)) {
      return "cannot stop service '" + name + "': " + last_error_text();
    }
    const auto deadline = std::chrono::steady_clock::now() + stop_timeout;
    while (::QueryServiceStatus(service.handle, &status) && status.dwCurrentState != SERVICE_STOPPED) {
      if (std::chrono::steady_clock::now() >= deadline) {
        return "service '" + name + "' did not stop within " + std::to_string(stop_timeout.count()) + " ms";
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }
  if (!::DeleteService(service.handle)) {
    return "cannot delete service '" + name + "': " + last_error_text();
  }
  return "";
}

int run_service(const std::string& name, ServiceBody body, std::string& error) {
  ServiceRun run{widen(name), std::move(body), 0, {}};
  current_run = &run;
  std::wstring table_name = run.name;
  SERVICE_TABLE_ENTRYW table[] = {{table_name.data(), service_main}, {nullptr, nullptr}};
  if (!::StartServiceCtrlDispatcherW(table)) {
    const DWORD code = ::GetLastError();
    current_run = nullptr;
    error = code == ERROR_FAILED_SERVICE_CONTROLLER_CONNECT
                ? "not started by the service control manager (run without --service for the foreground)"
                : "StartServiceCtrlDispatcher: " + error_text(code);
    return -1;
  }
  current_run = nullptr;
  error = run.error;
  return run.exit_code;
}

int run_in_foreground(ServiceBody body) {
  ConsoleControl control;
  console_control = &control;
  ::SetConsoleCtrlHandler(console_handler, TRUE);
  const int code = body(control);
  ::SetConsoleCtrlHandler(console_handler, FALSE);
  console_control = nullptr;
  return code;
}

}  // namespace quiesce::platform::win
