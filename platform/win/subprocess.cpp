// run_subprocess on Windows (the contract is platform/subprocess.hpp).
//
// The program is created suspended, put in a job object that kills every
// process in it when the job's last handle closes, and only then resumed:
// nothing it starts can escape the job before the job exists. A timeout or
// a stop terminates the job, so a hook dies with all its children. After a
// normal exit the kill-on-close limit is lifted before the job handle is
// closed: what the program deliberately left running (a helper holding a
// lock until the thaw hook ends it) survives, as on Linux.
//
// Output is read by polling the pipes with PeekNamedPipe on the caller's
// thread: anonymous pipes have no overlapped I/O, and a blocking ReadFile
// on a pipe a helper still holds could only be ended by CancelSynchronousIo.
#include <windows.h>

#include <algorithm>
#include <array>
#include <cwctype>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "platform/subprocess.hpp"
#include "platform/subprocess_output.hpp"
#include "platform/win/win_error.hpp"

namespace quiesce::platform {

namespace {

using Clock = std::chrono::steady_clock;
using win::last_error_text;
using win::widen;

// As on Linux: output still arriving after the exit is read this long.
constexpr std::chrono::milliseconds drain_after_exit{200};
// How often the pipes are looked at while the program runs.
constexpr DWORD poll_interval_ms = 10;
// How long a terminated program is waited for before going on.
constexpr DWORD terminate_wait_ms = 5000;

class Handle {
 public:
  Handle() = default;
  explicit Handle(HANDLE handle) : handle_(handle == INVALID_HANDLE_VALUE ? nullptr : handle) {}
  ~Handle() { reset(); }
  Handle(Handle&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  Handle& operator=(Handle&& other) noexcept {
    if (this != &other) {
      reset();
      handle_ = std::exchange(other.handle_, nullptr);
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  [[nodiscard]] HANDLE get() const { return handle_; }
  [[nodiscard]] bool valid() const { return handle_ != nullptr; }
  void reset() {
    if (handle_ != nullptr) {
      ::CloseHandle(handle_);
      handle_ = nullptr;
    }
  }

 private:
  HANDLE handle_ = nullptr;
};

// One argument as CommandLineToArgvW (and the C runtime) will split it back.
std::wstring quote_argument(const std::wstring& argument, bool always) {
  if (!always && !argument.empty() && argument.find_first_of(L" \t\n\v\"") == std::wstring::npos) {
    return argument;
  }
  std::wstring quoted = L"\"";
  for (auto it = argument.begin();; ++it) {
    std::size_t backslashes = 0;
    while (it != argument.end() && *it == L'\\') {
      ++it;
      ++backslashes;
    }
    if (it == argument.end()) {
      quoted.append(backslashes * 2, L'\\');  // before the closing quote
      break;
    }
    if (*it == L'"') {
      quoted.append(backslashes * 2 + 1, L'\\');
    } else {
      quoted.append(backslashes, L'\\');
    }
    quoted.push_back(*it);
  }
  quoted.push_back(L'"');
  return quoted;
}

std::wstring system_directory() {
  std::array<wchar_t, MAX_PATH> buffer{};
  const UINT n = ::GetSystemDirectoryW(buffer.data(), static_cast<UINT>(buffer.size()));
  return std::wstring(buffer.data(), n < buffer.size() ? n : 0);
}

std::wstring lower(std::wstring text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](wchar_t c) { return static_cast<wchar_t>(std::towlower(c)); });
  return text;
}

struct CommandLine {
  std::wstring application;  // the executable CreateProcessW runs (no search)
  std::wstring line;         // what it sees as its command line
  std::string error;         // why the argv cannot be run ("" when it can)
};

// cmd.exe expands %VAR% (and !VAR! with delayed expansion) even inside
// quotes, and treats & | < > ^ as operators outside them; a phase name or
// a hook's path never needs any of these, so one with such a character is
// refused rather than escaped.
constexpr std::wstring_view batch_unsafe = L"\"%!&|<>^\r\n";

CommandLine command_line(const std::vector<std::string>& argv) {
  CommandLine command;
  const std::wstring program = widen(argv.front());
  const std::wstring extension = lower(std::filesystem::path(program).extension().wstring());
  std::wstring arguments;
  for (std::size_t i = 1; i < argv.size(); ++i) {
    arguments += L" " + quote_argument(widen(argv[i]), false);
  }
  if (extension == L".bat" || extension == L".cmd") {
    for (std::size_t i = 0; i < argv.size(); ++i) {
      if (widen(argv[i]).find_first_of(batch_unsafe) != std::wstring::npos) {
        command.error = (i == 0 ? "batch file path '" : "argument '") + argv[i] +
                        "' has a character cmd.exe would interpret (\" % ! & | < > ^ or a "
                        "line break)";
        return command;
      }
    }
    // /d: no AutoRun commands from the registry run before the hook;
    // /s /c "...": cmd strips exactly the outer quotes and runs the rest.
    command.application = system_directory() + L"\\cmd.exe";
    command.line = quote_argument(command.application, true) + L" /d /s /c \"" +
                   quote_argument(program, true) + arguments + L"\"";
  } else if (extension == L".ps1") {
    command.application = system_directory() + L"\\WindowsPowerShell\\v1.0\\powershell.exe";
    command.line = quote_argument(command.application, true) +
                   L" -NoProfile -NonInteractive -ExecutionPolicy Bypass -File " +
                   quote_argument(program, true) + arguments;
  } else {
    command.application = program;
    command.line = quote_argument(program, true) + arguments;
  }
  return command;
}

// "NAME=value\0...\0\0", sorted by name without regard to case as
// CreateProcessW documents for an explicit environment block.
std::optional<std::wstring> environment_block(const std::vector<std::string>& env,
                                              std::string& error) {
  std::vector<std::wstring> entries;
  for (const auto& entry : env) {
    const auto equals = entry.find('=');
    if (equals == std::string::npos || equals == 0) {
      error = "environment entry '" + entry + "' is not NAME=value";
      return std::nullopt;
    }
    entries.push_back(widen(entry));
  }
  std::sort(entries.begin(), entries.end(), [](const std::wstring& a, const std::wstring& b) {
    return lower(a.substr(0, a.find(L'='))) < lower(b.substr(0, b.find(L'=')));
  });
  std::wstring block;
  for (const auto& entry : entries) {
    block += entry;
    block.push_back(L'\0');
  }
  block.push_back(L'\0');
  if (entries.empty()) {
    block.push_back(L'\0');  // an empty block is two NULs
  }
  return block;
}

struct OutputPipe {
  Handle read;
  Handle write;
};

std::optional<OutputPipe> make_output_pipe(std::string& error) {
  SECURITY_ATTRIBUTES inheritable{sizeof(SECURITY_ATTRIBUTES), nullptr, TRUE};
  HANDLE read = nullptr;
  HANDLE write = nullptr;
  if (!::CreatePipe(&read, &write, &inheritable, 0)) {
    error = "CreatePipe: " + last_error_text();
    return std::nullopt;
  }
  OutputPipe pipe{Handle(read), Handle(write)};
  // Only the child's end is inherited.
  if (!::SetHandleInformation(pipe.read.get(), HANDLE_FLAG_INHERIT, 0)) {
    error = "SetHandleInformation: " + last_error_text();
    return std::nullopt;
  }
  return pipe;
}

// Reads what is in the pipe now without blocking; false once the pipe is
// broken (every writer closed it) or fails.
[[nodiscard]] bool read_available(HANDLE pipe, StreamCollector& collector) {
  std::array<char, 16384> buffer{};
  for (;;) {
    DWORD available = 0;
    if (!::PeekNamedPipe(pipe, nullptr, 0, nullptr, &available, nullptr)) {
      return false;  // ERROR_BROKEN_PIPE: end of output
    }
    if (available == 0) {
      return true;
    }
    DWORD got = 0;
    const DWORD want = std::min<DWORD>(available, static_cast<DWORD>(buffer.size()));
    if (!::ReadFile(pipe, buffer.data(), want, &got, nullptr)) {
      return false;
    }
    collector.add(std::string_view(buffer.data(), got));
  }
}

std::wstring working_directory(const std::string& requested) {
  if (requested.empty()) {
    return L"";
  }
  if (requested == "/") {
    // The portable default ("/"): the root of the system drive.
    std::array<wchar_t, MAX_PATH> windows{};
    const UINT n = ::GetSystemWindowsDirectoryW(windows.data(), static_cast<UINT>(windows.size()));
    if (n >= 3 && n < windows.size()) {
      return std::wstring(windows.data(), 3);  // "C:\"
    }
  }
  return widen(requested);
}

}  // namespace

std::string SubprocessResult::describe() const {
  switch (outcome) {
    case Outcome::exited:
      return "exit status " + std::to_string(exit_code);
    case Outcome::signaled:
      return "killed by signal " + std::to_string(signal);
    case Outcome::timed_out:
      return "timed out after " + std::to_string(elapsed.count()) +
             " ms; its job object (the program and everything it started) was terminated";
    case Outcome::stopped:
      return "stopped after " + std::to_string(elapsed.count()) +
             " ms; its job object (the program and everything it started) was terminated";
    case Outcome::spawn_failed:
      return "could not start: " + error;
  }
  return "unknown outcome";
}

std::int64_t current_process_id() { return static_cast<std::int64_t>(::GetCurrentProcessId()); }

SubprocessResult run_subprocess(const SubprocessSpec& spec) {
  SubprocessResult result;
  const auto start = Clock::now();
  auto failed = [&](std::string error) {
    result.outcome = Outcome::spawn_failed;
    result.error = std::move(error);
    result.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    return result;
  };
  if (spec.argv.empty() || spec.argv.front().empty()) {
    return failed("no program given");
  }
  auto command = command_line(spec.argv);
  if (!command.error.empty()) {
    return failed(command.error);
  }
  std::string error;
  auto environment = environment_block(spec.env, error);
  if (!environment) {
    return failed(error);
  }
  auto out_pipe = make_output_pipe(error);
  if (!out_pipe) {
    return failed(error);
  }
  auto err_pipe = make_output_pipe(error);
  if (!err_pipe) {
    return failed(error);
  }
  SECURITY_ATTRIBUTES inheritable{sizeof(SECURITY_ATTRIBUTES), nullptr, TRUE};
  Handle null_input(::CreateFileW(L"NUL", GENERIC_READ, FILE_SHARE_READ | FILE_SHARE_WRITE,
                                  &inheritable, OPEN_EXISTING, 0, nullptr));
  if (!null_input.valid()) {
    return failed("opening NUL: " + last_error_text());
  }

  Handle job(::CreateJobObjectW(nullptr, nullptr));
  if (!job.valid()) {
    return failed("CreateJobObjectW: " + last_error_text());
  }
  JOBOBJECT_EXTENDED_LIMIT_INFORMATION limits{};
  limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
  if (!::SetInformationJobObject(job.get(), JobObjectExtendedLimitInformation, &limits,
                                 sizeof limits)) {
    return failed("SetInformationJobObject(KILL_ON_JOB_CLOSE): " + last_error_text());
  }

  // Only these three handles reach the child, whatever else the agent has
  // marked inheritable on another thread meanwhile (a pipe end of a
  // concurrent run would otherwise keep that run's output open).
  std::array<HANDLE, 3> inherited{null_input.get(), out_pipe->write.get(), err_pipe->write.get()};
  SIZE_T list_size = 0;
  ::InitializeProcThreadAttributeList(nullptr, 1, 0, &list_size);
  std::vector<char> list_storage(list_size);
  auto* attributes = reinterpret_cast<LPPROC_THREAD_ATTRIBUTE_LIST>(list_storage.data());
  if (!::InitializeProcThreadAttributeList(attributes, 1, 0, &list_size)) {
    return failed("InitializeProcThreadAttributeList: " + last_error_text());
  }
  struct AttributeListCleanup {
    LPPROC_THREAD_ATTRIBUTE_LIST list;
    ~AttributeListCleanup() { ::DeleteProcThreadAttributeList(list); }
  } cleanup{attributes};
  if (!::UpdateProcThreadAttribute(attributes, 0, PROC_THREAD_ATTRIBUTE_HANDLE_LIST,
                                   inherited.data(), sizeof(HANDLE) * inherited.size(), nullptr,
                                   nullptr)) {
    return failed("UpdateProcThreadAttribute(HANDLE_LIST): " + last_error_text());
  }

  STARTUPINFOEXW startup{};
  startup.StartupInfo.cb = sizeof startup;
  startup.StartupInfo.dwFlags = STARTF_USESTDHANDLES;
  startup.StartupInfo.hStdInput = null_input.get();
  startup.StartupInfo.hStdOutput = out_pipe->write.get();
  startup.StartupInfo.hStdError = err_pipe->write.get();
  startup.lpAttributeList = attributes;
  PROCESS_INFORMATION process{};
  const auto cwd = working_directory(spec.working_dir);
  std::wstring mutable_line = command.line;  // CreateProcessW may write to it
  if (!::CreateProcessW(command.application.c_str(), mutable_line.data(), nullptr, nullptr, TRUE,
                        CREATE_SUSPENDED | CREATE_UNICODE_ENVIRONMENT | CREATE_NO_WINDOW |
                            EXTENDED_STARTUPINFO_PRESENT,
                        environment->data(), cwd.empty() ? nullptr : cwd.c_str(),
                        &startup.StartupInfo, &process)) {
    return failed("CreateProcessW " + win::narrow(command.application) + ": " +
                  last_error_text());
  }
  Handle process_handle(process.hProcess);
  Handle thread_handle(process.hThread);
  result.pid = static_cast<std::int64_t>(process.dwProcessId);
  // Our copies of the child's ends: the pipes break when the child's last
  // holder closes them, which must not be us.
  out_pipe->write.reset();
  err_pipe->write.reset();
  null_input.reset();

  if (!::AssignProcessToJobObject(job.get(), process_handle.get())) {
    const auto why = last_error_text();
    ::TerminateProcess(process_handle.get(), 1);
    return failed("AssignProcessToJobObject: " + why);
  }
  if (::ResumeThread(thread_handle.get()) == static_cast<DWORD>(-1)) {
    const auto why = last_error_text();
    ::TerminateJobObject(job.get(), 1);
    return failed("ResumeThread: " + why);
  }
  thread_handle.reset();

  StreamCollector out(OutputStream::out, spec, result.stdout_text, result.dropped_bytes, nullptr);
  StreamCollector err(OutputStream::err, spec, result.stderr_text, result.dropped_bytes,
                      &result.last_stderr_line);
  bool out_open = true;
  bool err_open = true;
  auto read_pipes = [&] {
    if (out_open) {
      out_open = read_available(out_pipe->read.get(), out);
    }
    if (err_open) {
      err_open = read_available(err_pipe->read.get(), err);
    }
  };

  std::optional<Outcome> killed;
  for (;;) {
    read_pipes();
    const DWORD wait = ::WaitForSingleObject(process_handle.get(), poll_interval_ms);
    if (wait == WAIT_OBJECT_0) {
      break;
    }
    if (wait == WAIT_FAILED) {
      result.error = "WaitForSingleObject: " + last_error_text();
      killed = Outcome::stopped;
    } else if (spec.stop.stop_requested()) {
      killed = Outcome::stopped;
    } else if (Clock::now() >= spec.deadline) {
      killed = Outcome::timed_out;
    }
    if (killed) {
      // Everything in the job, at once: a batch file's children included.
      // Bounded: should the job refuse (it cannot, short of a broken
      // handle), the program itself is terminated and the caller is not
      // held beyond the deadline for long.
      if (!::TerminateJobObject(job.get(), 1) ||
          ::WaitForSingleObject(process_handle.get(), terminate_wait_ms) != WAIT_OBJECT_0) {
        ::TerminateProcess(process_handle.get(), 1);
        ::WaitForSingleObject(process_handle.get(), terminate_wait_ms);
      }
      break;
    }
  }
  DWORD exit_code = 0;
  if (::GetExitCodeProcess(process_handle.get(), &exit_code)) {
    result.exit_code = static_cast<int>(exit_code);
  }
  if (!killed) {
    // What it deliberately left running stays: lift the kill-on-close
    // limit before our handle (the job's last) goes.
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION keep{};
    ::SetInformationJobObject(job.get(), JobObjectExtendedLimitInformation, &keep, sizeof keep);
  }

  const auto drain_until = Clock::now() + drain_after_exit;
  while ((out_open || err_open) && Clock::now() < drain_until) {
    read_pipes();
    if (out_open || err_open) {
      ::Sleep(poll_interval_ms);
    }
  }
  out.finish();
  err.finish();
  result.outcome = killed.value_or(Outcome::exited);
  result.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  return result;
}

}  // namespace quiesce::platform
